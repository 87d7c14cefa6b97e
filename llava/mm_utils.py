"""Image loading and processing, prompt tokenisation with image placeholders, stopping criteria."""

from __future__ import annotations

import io
import os
import warnings
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import StoppingCriteria

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX


# -- images --------------------------------------------------------------------------------
# Far above any image a LLaVA tower needs (a 336-px crop), below what a worker can decode cheaply:
# a 12000 x 12000 image (144 MP) takes a training process to ~2.4 GB.
MAX_IMAGE_PIXELS = 64_000_000
# What transparent pixels become once an image is flattened to RGB.
BACKGROUND = (255, 255, 255)


class ImageTooLarge(ValueError):
    """An image over the pixel limit, refused before it is decoded."""

    def hint(self, flag: str) -> str:
        """The message, naming `flag` when our limit (not Pillow's own bomb limit) refused the image."""
        return f"{self} ({flag} sets the limit)" if "over the limit of" in str(self) else str(self)


def _describe(source) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__}>"


def _check_size(image: Image.Image, source, max_pixels: int | None) -> None:
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(
            f"image {_describe(source)} is {width} x {height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,}; downscale it, or raise the limit if you really mean to decode it"
        )


def _to_8bit(image: Image.Image) -> Image.Image:
    """Integer and float single-channel modes scaled (not clipped) into 0..255.

    Pillow's own convert clips: a 16-bit PNG ("I;16", or "I" in older Pillow) would turn almost
    white. 16-bit data is divided by 257 (65535 -> 255); "I" data beyond 0..65535 and "F" data
    beyond 0..1 are stretched from their own minimum and maximum.
    """
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        low, high = (0.0, 1.0) if array.size == 0 or (array.min() >= 0 and array.max() <= 1) else (array.min(), array.max())
    elif array.size == 0 or (array.min() >= 0 and array.max() <= 65535):
        low, high = 0.0, 65535.0
    else:
        low, high = array.min(), array.max()
    scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image, background=BACKGROUND) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: high bit depths scaled, transparency composited over `background`."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    if (image.mode == "P" and "transparency" in image.info) or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
        flat = Image.new("RGB", image.size, background)
        flat.paste(image, mask=image.getchannel("A"))
        return flat
    return image.convert("RGB")


EXIF_ORIENTATION = 0x0112


def upright(image: Image.Image) -> Image.Image:
    """`image` turned as its EXIF orientation tag says (phone photos store pixels sideways and the tag)."""
    if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
        return image  # the common case: no copy
    return ImageOps.exif_transpose(image)


def load_image(source, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """An 8-bit RGB image from a path, raw bytes, a file object or a PIL image, upright.

    Every Pillow mode converts correctly (16-bit and float scaled, transparency over white,
    CMYK and palettes to RGB), and an EXIF orientation tag is applied, as photo viewers do.
    Images over `max_pixels` are refused (`ImageTooLarge`) from their header, before any pixel
    is decoded; None lifts the limit. Errors name the source so a bad
    record can be found in a large dataset.
    """
    if isinstance(source, Image.Image):
        _check_size(source, source, max_pixels)
        return to_rgb(upright(source))
    image = _open_checked(source, max_pixels, decode=True)
    return to_rgb(upright(image))


def probe_image(source, max_pixels: int | None = MAX_IMAGE_PIXELS) -> None:
    """`load_image`'s checks from the header alone (a file that is no image, or too large), nothing decoded.

    Cheap enough to run over a whole question file before generation; a file damaged after its
    header still fails only in `load_image`.
    """
    _open_checked(source, max_pixels, decode=False).close()


def _open_checked(source, max_pixels: int | None, decode: bool) -> Image.Image:
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise FileNotFoundError(f"image file not found: {source}")
    try:
        with warnings.catch_warnings():
            # Our own limit decides; Pillow's bomb warning would only repeat it (or fire below it).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        _check_size(image, source, max_pixels)
        if decode:
            image.load()
    except Image.DecompressionBombError as exc:
        # Pillow refuses some sizes in open() itself (over twice its own limit), whatever ours is.
        raise ImageTooLarge(f"image {_describe(source)} is too large to decode safely ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"cannot decode image {_describe(source)}: {exc}") from exc
    return image


class ImageOutsideFolder(ValueError):
    """An image path that is absolute, climbs out of the image folder with '..', or links out of it."""


def image_path_in_folder(folder: str | None, path: str, allow_flag: str, folder_flag: str = "--image_folder",
                         allow_outside: bool = False) -> str:
    """`path` as a record or question names it, joined to `folder`.

    Absolute paths, paths that climb out of `folder` with '..' and paths that a symbolic link takes out
    of it are refused (`ImageOutsideFolder`, naming `allow_flag`) unless `allow_outside`: a dataset should
    not read files from anywhere on the machine without a word. Links that stay inside the folder (and a
    folder that is itself a link) are fine.
    """
    full = os.path.join(folder or "", path)
    if allow_outside:
        return full
    if os.path.isabs(path):
        where = "is absolute"
    elif os.path.normpath(path).split(os.sep)[0] == os.pardir:
        where = "climbs out of the folder with '..'"
    else:
        root, target = os.path.realpath(folder or os.curdir), os.path.realpath(full)
        where = None if os.path.commonpath([root, target]) == root else f"is a link to {target}, outside the folder"
    if where:
        raise ImageOutsideFolder(
            f"image path {path!r} {where}; images must lie inside {folder_flag} "
            f"({folder or 'the working directory'}): fix the path, or pass {allow_flag} to allow it"
        )
    return full


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
