"""Image loading and processing, prompt tokenisation with image placeholders, stopping criteria."""

from __future__ import annotations

import io
import os
from typing import Sequence

import torch
from PIL import Image, UnidentifiedImageError
from transformers import StoppingCriteria

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX


# -- images --------------------------------------------------------------------------------
def load_image(source) -> Image.Image:
    """An RGB image from a path, raw bytes, a file object or a PIL image.

    Errors name the source so a bad record can be found in a large dataset.
    """
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    try:
        if isinstance(source, (bytes, bytearray)):
            image = Image.open(io.BytesIO(source))
        elif isinstance(source, (str, os.PathLike)):
            if not os.path.exists(source):
                raise FileNotFoundError(f"image file not found: {source}")
            image = Image.open(source)
        else:
            image = Image.open(source)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        name = source if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__}>"
        raise ValueError(f"cannot decode image {name}: {exc}") from exc
    return image.convert("RGB")


def expand2square(image: Image.Image, background_color) -> Image.Image:
    """Pad to a square, centring the image, so no content is cropped away."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background_color)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def processor_mean_color(image_processor) -> tuple[int, int, int]:
    return tuple(int(x * 255) for x in image_processor.image_mean)


def process_images(images: Sequence[Image.Image], image_processor, model_cfg=None) -> torch.Tensor:
    """Turn PIL images into a (N, C, H, W) tensor following `image_aspect_ratio` ('pad' or 'square')."""
    aspect = getattr(model_cfg, "image_aspect_ratio", None) or "square"
    if aspect == "pad":
        images = [expand2square(img, processor_mean_color(image_processor)) for img in images]
    elif aspect not in ("square", "resize", "original"):
        raise ValueError(f"image_aspect_ratio {aspect!r} is not supported; use 'pad' or 'square'")
    return image_processor(images=list(images), return_tensors="pt")["pixel_values"]


# -- text ----------------------------------------------------------------------------------
def tokenizer_image_token(
    prompt: str,
    tokenizer,
    image_token_index: int = IMAGE_TOKEN_INDEX,
    return_tensors: str | None = None,
    return_offsets: bool = False,
):
    """Tokenise `prompt`, replacing each "<image>" by `image_token_index`.

    Chunks between images are tokenised separately, exactly as the model sees them at
    inference. With `return_offsets=True` also returns each token's (start, end)
    character span in `prompt` ((-1, -1) for the BOS and image tokens), which training
    uses to find the answer tokens.
    """
    chunks = prompt.split(DEFAULT_IMAGE_TOKEN)
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    cursor = 0
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.append(image_token_index)
            offsets.append((-1, -1))
            cursor += len(DEFAULT_IMAGE_TOKEN)
        enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=return_offsets)
        ids.extend(enc["input_ids"])
        if return_offsets:
            offsets.extend((cursor + s, cursor + e) for s, e in enc["offset_mapping"])
        cursor += len(chunk)
    if _adds_bos(tokenizer):
        ids.insert(0, tokenizer.bos_token_id)
        offsets.insert(0, (-1, -1))
    if return_tensors == "pt":
        ids = torch.tensor(ids, dtype=torch.long)
    elif return_tensors is not None:
        raise ValueError(f"unsupported return_tensors {return_tensors!r}")
    return (ids, offsets) if return_offsets else ids


def tokenizer_image_tokens(prompts: Sequence[str], tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX) -> list:
    """`tokenizer_image_token(prompt, tokenizer, return_tensors="pt")` for several prompts, in one tokenizer call.

    The same ids (each chunk between images is still tokenised on its own); a batch pays the
    tokenizer's per-call cost once instead of once per chunk.
    """
    chunked = [prompt.split(DEFAULT_IMAGE_TOKEN) for prompt in prompts]
    flat = [chunk for chunks in chunked for chunk in chunks]
    encoded = iter(tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else [])
    bos = [tokenizer.bos_token_id] if _adds_bos(tokenizer) else []
    result = []
    for chunks in chunked:
        ids = list(bos)
        for i in range(len(chunks)):
            if i > 0:
                ids.append(image_token_index)
            ids.extend(next(encoded))
        result.append(torch.tensor(ids, dtype=torch.long))
    return result


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer prepends BOS on its own (LLaMA, OPT do; GPT-2-style Phi/MPT do not)."""
    if tokenizer.bos_token_id is None:
        return False
    cached = getattr(tokenizer, "_llava_adds_bos", None)
    if cached is None:
        probe = tokenizer("a")["input_ids"]
        cached = len(probe) > 0 and probe[0] == tokenizer.bos_token_id
        try:
            tokenizer._llava_adds_bos = cached
        except AttributeError:  # pragma: no cover - exotic tokenizer objects
            pass
    return cached


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop each sequence once its generated text ends with one of `keywords` (the template's stop string)."""

    def __init__(self, keywords: Sequence[str], tokenizer, input_ids: torch.Tensor | None = None):
        self.keywords = [k for k in keywords if k]
        self.tokenizer = tokenizer
        # With inputs_embeds, generate() returns only new tokens; with input_ids, the prompt too.
        self.start_len = input_ids.shape[1] if input_ids is not None else 0
        self.max_keyword_tokens = max(
            (len(tokenizer(k, add_special_tokens=False)["input_ids"]) for k in self.keywords), default=1
        )

    def __call__(self, output_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(output_ids.shape[0], dtype=torch.bool, device=output_ids.device)
        if not self.keywords:
            return done
        window = min(output_ids.shape[1] - self.start_len, self.max_keyword_tokens + 2)
        if window <= 0:
            return done
        tails = self.tokenizer.batch_decode(output_ids[:, -window:], skip_special_tokens=False)
        for row, text in enumerate(tails):
            done[row] = any(k in text for k in self.keywords)
        return done


def strip_stop_str(text: str, stop_str: str | None) -> str:
    """Cut generated text at the first stop string and trim whitespace."""
    if stop_str and stop_str in text:
        text = text[: text.index(stop_str)]
    return text.strip()
