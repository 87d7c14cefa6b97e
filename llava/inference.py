"""Prompt building and (batched, streaming) generation shared by model_vqa, the CLI and the web demo.

    engine = InferenceEngine.from_pretrained("checkpoints/llava-phi")
    conv = engine.new_conversation()
    engine.add_user_turn(conv, "What colour is the shape?", has_image=True)
    answer = engine.generate([engine.prepare(conv, image)])[0]

Several images: `add_user_turn(conv, "Is <image> like <image>?", has_image=2)` and
`prepare(conv, [image_a, image_b])` (each image at its marker, or all before the text when it has
none); a video: `prepare(conv, [engine.process_video(path)])` with one marker.
"""

from __future__ import annotations

import dataclasses
import os
from threading import Thread
from typing import Iterator, Sequence

import torch
from transformers import TextIteratorStreamer

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.conversation import Conversation, get_conv_template
from llava.mm_utils import (
    KeywordsStoppingCriteria, Tiles, load_image, process_images, strip_stop_str, tokenizer_image_token,
    tokenizer_image_tokens,
)
from llava.video import load_frames, process_frames


def get_model_name_from_path(model_path: str) -> str:
    """Official LLaVA's model id: the directory name, with its parent for `checkpoint-N` dirs."""
    parts = os.path.normpath(model_path).split(os.sep)
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


@dataclasses.dataclass
class Prepared:
    """One request ready for the model: token ids (IMAGE_TOKEN_INDEX at the image) and its pixels."""

    input_ids: torch.Tensor  # (T,)
    image: torch.Tensor | None  # (C, H, W), AnyRes tiles (tiles, C, H, W), or None for a text-only request
    prompt: str
    image_size: tuple[int, int] | None = None  # (width, height) of an AnyRes image, which its tiles' layout needs
    # Several images or a video: `image` holds every marker's rows (N, C, H, W) in order, and these say
    # each marker's (width, height) under AnyRes and its frame count (0: an image) when one is a video.
    image_sizes: list | None = None
    video_frames: list | None = None


@dataclasses.dataclass(frozen=True)
class Frames:
    """A video's sampled frames as pixels, (frames, C, H, W): one marker's worth."""

    pixels: torch.Tensor


@dataclasses.dataclass
class GenerationSettings:
    temperature: float = 0.0
    top_p: float | None = None
    num_beams: int = 1
    max_new_tokens: int = 128

    def generate_kwargs(self) -> dict:
        kwargs = dict(max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, use_cache=True)
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        else:
            kwargs["do_sample"] = False
        return kwargs


class InferenceEngine:
    """A loaded checkpoint plus the conversation template its prompts are rendered with."""

    def __init__(self, tokenizer, model, image_processor, context_len: int, conv_mode: str | None = None):
        self.tokenizer, self.model, self.image_processor, self.context_len = tokenizer, model, image_processor, context_len
        if conv_mode is None:
            from llava.model.registry import trained_conv_template

            conv_mode = trained_conv_template(model.config)
        # Unknown names fail here, listing the choices; 'chat_template' binds (and checks) the tokenizer's own.
        self._template = get_conv_template(conv_mode, tokenizer)
        self.conv_mode = conv_mode

    @classmethod
    def from_pretrained(
        cls,
        model_path: str,
        model_base: str | None = None,
        conv_mode: str | None = None,
        load_4bit: bool = False,
        load_8bit: bool = False,
        device: str | None = None,
    ) -> "InferenceEngine":
        from llava.model.builder import load_pretrained_model

        if conv_mode is not None:
            get_conv_template(conv_mode)  # an unknown template fails before the model loads
        tokenizer, model, image_processor, context_len = load_pretrained_model(
            model_path, model_base, load_4bit=load_4bit, load_8bit=load_8bit, device=device
        )
        return cls(tokenizer, model, image_processor, context_len, conv_mode)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- prompts ---------------------------------------------------------------------------------
    def new_conversation(self) -> Conversation:
        return self._template.copy()

    def image_prefix(self, conv: Conversation | None = None) -> str:
        """The image marker as the template writes it in training (start/end tokens, <Image> tags), then a newline."""
        conv = conv or self.new_conversation()
        return conv.image_text(getattr(self.model.config, "mm_use_im_start_end", False)) + "\n"

    def add_user_turn(self, conv: Conversation, text: str, has_image: bool | int) -> None:
        """Append a user message and an open assistant turn. `has_image`: whether (or how many images, a video
        counting as one) go with it: each at its own <image> marker when `text` has one per image, else all
        before the text (as official LLaVA puts its one image)."""
        count = int(has_image)
        if count and text.count(DEFAULT_IMAGE_TOKEN) == count:
            text = text.replace(DEFAULT_IMAGE_TOKEN, self.image_prefix(conv)[:-1])
        elif count:
            text = self.image_prefix(conv) * count + text
        conv.append_message(conv.roles[0], text)
        conv.append_message(conv.roles[1], None)

    def process_image(self, image) -> torch.Tensor | Tiles:
        """(C, H, W) pixels for an image path, bytes or PIL image, as the checkpoint was trained (AnyRes: `Tiles`)."""
        return self.process_images([image])[0]

    def process_images(self, images: Sequence) -> torch.Tensor | list[Tiles]:
        """(N, C, H, W) pixels for several images in one image-processor call (its per-call cost is paid once);
        with AnyRes, each image's `Tiles`."""
        loaded = [load_image(image) for image in images]
        anyres = self._anyres()
        if anyres is not None:
            return [Tiles(anyres.tiles(image, self.image_processor), image.size) for image in loaded]
        return process_images(loaded, self.image_processor, self.model.config)

    def process_video(self, path: str, frame_transform=None) -> Frames:
        """A video's frames, sampled as the checkpoint was trained (frames_upbound, force_sample in its config).

        `frame_transform`: PIL image -> PIL image, applied to each frame before the processor (the image
        ablations replace frames as they replace images)."""
        video = self._video()
        frames = load_frames(path, video.frames_upbound, video.force_sample)
        if frame_transform is not None:
            frames = [frame_transform(frame) for frame in frames]
        return Frames(process_frames(frames, self.image_processor, self.model.config))

    def _video(self):
        from llava.model.llava_arch import video_for

        return video_for(self.model.config, self.model.get_vision_tower())

    def _anyres(self):
        from llava.model.llava_arch import anyres_for

        return anyres_for(self.model.config, self.model.get_vision_tower())

    def prepare(self, conv: Conversation, image=None, input_ids: torch.Tensor | None = None) -> Prepared:
        """Tokenise the conversation's prompt; `image` is a path, bytes, PIL image or `process_image` output, or a
        list of them (and `process_video` outputs), one per <image> marker in order.

        `input_ids`: the prompt already tokenised (`tokenizer_image_tokens` does a batch in one call).
        """
        prompt = conv.get_prompt()
        if input_ids is None:
            input_ids = tokenizer_image_token(
                prompt, self.tokenizer, return_tensors="pt", add_special_tokens=conv.add_special_tokens
            )
        markers = int((input_ids == IMAGE_TOKEN_INDEX).sum())
        if not isinstance(image, (list, tuple)):
            pixels = image if image is None or isinstance(image, (torch.Tensor, Tiles)) else self.process_image(image)
            size = pixels.size if isinstance(pixels, Tiles) else None
            self._check_room(len(input_ids) + markers * (self._image_tokens(size) - 1))
            if isinstance(pixels, Tiles):
                return Prepared(input_ids, pixels.pixels, prompt, pixels.size)
            return Prepared(input_ids, pixels, prompt)
        if markers != len(image):
            raise ValueError(f"the prompt has {markers} <image> markers but {len(image)} image(s)/video were given; "
                             "give one per marker")
        if len(image) == 1 and not isinstance(image[0], Frames):
            return self.prepare(conv, image[0], input_ids)
        rows, sizes, frames, length = [], [], [], len(input_ids) - markers
        for visual in image:
            if not isinstance(visual, (torch.Tensor, Tiles, Frames)):
                visual = self.process_image(visual)
            if isinstance(visual, Frames):
                rows.append(visual.pixels)
                sizes.append((0, 0))  # a video's frames are never tiled
                frames.append(len(visual.pixels))
                length += self._video().tokens(len(visual.pixels))
                continue
            size = visual.size if isinstance(visual, Tiles) else None
            pixels = visual.pixels if isinstance(visual, Tiles) else visual
            rows.append(pixels if pixels.ndim == 4 else pixels[None])
            sizes.append(size)
            frames.append(0)
            length += self._image_tokens(size)
        self._check_room(length)
        return Prepared(input_ids, torch.cat(rows) if rows else None, prompt,
                        image_sizes=sizes if self._anyres() is not None else None,
                        video_frames=frames if any(frames) else None)

    def _check_room(self, length: int) -> None:
        if length >= self.context_len:
            # The model would otherwise cut the prompt; an answer to half a question is worse than none.
            raise ValueError(
                f"the prompt is {length} tokens with the image expanded, which leaves no room to answer within "
                f"the model's context of {self.context_len} tokens; shorten the question or start a new conversation"
            )

    def tokenize(self, convs: Sequence[Conversation]) -> list[torch.Tensor]:
        """The prompts of several conversations tokenised in one call (`prepare(..., input_ids=...)` takes them)."""
        special = convs[0].add_special_tokens if convs else True
        return tokenizer_image_tokens([conv.get_prompt() for conv in convs], self.tokenizer, add_special_tokens=special)

    def _image_tokens(self, size: tuple[int, int] | None) -> int:
        """Positions the image fills in the LLM (AnyRes: depends on its `size`)."""
        tower = self.model.get_vision_tower()
        if tower is None:
            return 1
        anyres = self._anyres() if size is not None else None
        return anyres.tokens(size) if anyres is not None else tower.num_patches

    # -- generation ------------------------------------------------------------------------------
    def _batch(self, items: Sequence[Prepared]) -> dict:
        """Left-pad a batch (decoder-only generation continues from the right edge)."""
        pad_id = self.tokenizer.pad_token_id
        width = max(len(item.input_ids) for item in items)
        input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            input_ids[row, width - len(item.input_ids) :] = item.input_ids
            attention_mask[row, width - len(item.input_ids) :] = 1
        with_images = [item for item in items if item.image is not None]
        pixels, extra = None, {}
        if with_images:
            tower = self.model.get_vision_tower()
            # Every marker's rows in turn: an image's pixels (or AnyRes tiles), a video's frames.
            pixels = torch.cat([item.image[None] if item.image.ndim == 3 else item.image for item in with_images])
            if self._anyres() is not None:  # the sizes that lay each image's tiles out
                sizes = [size for item in with_images for size in (item.image_sizes or [item.image_size])]
                extra["image_sizes"] = torch.tensor(sizes, dtype=torch.long, device=self.device)
            if any(item.video_frames for item in with_images):
                frames = [n for item in with_images
                          for n in (item.video_frames or [0] * int((item.input_ids == IMAGE_TOKEN_INDEX).sum()))]
                extra["video_frames"] = torch.tensor(frames, dtype=torch.long, device=self.device)
            pixels = pixels.to(device=self.device, dtype=tower.dtype)
        return dict(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device), images=pixels,
                    **extra)

    def _generate_kwargs(self, batch: dict, settings: GenerationSettings, stop_str: str) -> dict:
        kwargs = dict(**batch, **settings.generate_kwargs(), pad_token_id=self.tokenizer.pad_token_id)
        stop_id = self._single_token_id(stop_str)
        if stop_id is not None:
            # A stop string that is one token (Phi's and LLaMA's "<|endoftext|>", "</s>") stops a row
            # like EOS does, inside generate(), with no per-step decoding of every row's tail.
            kwargs["eos_token_id"] = sorted(set(self._eos_ids()) | {stop_id})
        else:
            kwargs["stopping_criteria"] = [KeywordsStoppingCriteria([stop_str], self.tokenizer)]
        return kwargs

    def _single_token_id(self, text: str) -> int | None:
        if not text:
            return None
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None

    def _eos_ids(self) -> list[int]:
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return []
        return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]

    def generate(
        self, items: Sequence[Prepared], settings: GenerationSettings | None = None, stop_str: str | None = None
    ) -> list[str]:
        """Answers for a batch of prepared requests, cut at the template's stop string."""
        settings = settings or GenerationSettings()
        stop_str = stop_str if stop_str is not None else self.new_conversation().stop_str
        batch = self._batch(items)
        with torch.inference_mode():
            output_ids = self.model.generate(**self._generate_kwargs(batch, settings, stop_str))
        texts = self.tokenizer.batch_decode(output_ids, skip_special_tokens=False)
        return [self._clean(text, stop_str) for text in texts]

    def stream(
        self, item: Prepared, settings: GenerationSettings | None = None, stop_str: str | None = None
    ) -> Iterator[str]:
        """Yield the answer as it grows (text so far, stop string and special tokens removed)."""
        settings = settings or GenerationSettings()
        stop_str = stop_str if stop_str is not None else self.new_conversation().stop_str
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=False, timeout=600)
        kwargs = self._generate_kwargs(self._batch([item]), settings, stop_str)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(streamer=streamer, **kwargs)
            except BaseException as exc:  # re-raised in the caller's thread below
                errors.append(exc)
                streamer.end()

        thread = Thread(target=run, daemon=True)
        thread.start()
        text = ""
        for piece in streamer:
            text += piece
            visible = self._visible(text, stop_str)
            if visible is not None:
                yield visible
            if stop_str and stop_str in text:
                break
        thread.join()
        if errors:
            raise errors[0]
        yield self._clean(text, stop_str)

    def _clean(self, text: str, stop_str: str) -> str:
        text = strip_stop_str(text, stop_str)
        for token in self.tokenizer.all_special_tokens:
            text = text.replace(token, "")
        return text.strip()

    def _visible(self, text: str, stop_str: str) -> str | None:
        """The part of a partial answer that cannot turn into the stop string; None if nothing new is safe."""
        if stop_str:
            if stop_str in text:
                text = text[: text.index(stop_str)]
            else:  # hold back a tail that might be the start of the stop string
                for k in range(min(len(stop_str) - 1, len(text)), 0, -1):
                    if stop_str.startswith(text[-k:]):
                        text = text[:-k]
                        break
        return self._clean(text, "") if text.strip() else None
