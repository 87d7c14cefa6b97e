"""Image loading and processing, prompt tokenisation with image placeholders, stopping criteria."""

from __future__ import annotations

import ast
import io
import math
import os
import re
import warnings
from dataclasses import dataclass
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


def _load_whole(image: Image.Image) -> None:
    """Decode every pixel, refusing a truncated file even where another library (lmms-eval's task module
    does) has set Pillow's process-wide LOAD_TRUNCATED_IMAGES, which would fill the missing rows with grey."""
    from PIL import ImageFile

    accepted = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        image.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = accepted


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
            _load_whole(image)
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
    """Turn PIL images into a (N, C, H, W) tensor following `image_aspect_ratio` ('pad', 'square' or AnyRes).

    With AnyRes ('anyres', 'anyres_max_N') each image becomes 1 + its grid's tiles (`AnyRes.tiles`),
    all images' tiles concatenated in order: (sum of tiles, C, H, W). Their sizes (`Image.size`)
    tell the model how many tiles are each image's and how to lay them out.
    """
    aspect = getattr(model_cfg, "image_aspect_ratio", None) or "square"
    if is_anyres(aspect):
        anyres = AnyRes.from_config(model_cfg, tile=processor_side(image_processor))
        return torch.cat([anyres.tiles(img, image_processor) for img in images]) if images else torch.zeros(0)
    if aspect == "pad":
        images = [expand2square(img, processor_mean_color(image_processor)) for img in images]
    elif aspect not in ("square", "resize", "original"):
        raise ValueError(f"image_aspect_ratio {aspect!r} is not supported; use 'pad', 'square', 'anyres' or 'anyres_max_N'")
    return image_processor(images=list(images), return_tensors="pt")["pixel_values"]


def processor_side(image_processor) -> int:
    """The side of the square images `image_processor` produces (the tower's input)."""
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop:
        return int(crop["height"])
    size = image_processor.size
    return int(size["height"] if "height" in size else size["shortest_edge"])


# -- AnyRes (LLaVA-NeXT) ---------------------------------------------------------------------
# An image is resized (aspect kept) and padded onto the best of a few canvases ("grid pinpoints",
# whole multiples of the tower's input size), cut into tower-sized tiles, and shown to the tower as
# those tiles plus the whole image squashed to one tile (the "base"). The model lays the tiles' patch
# features back out as one feature map, so the number of LLM positions an image fills depends on its size.
MERGE_TYPES = ("flat", "spatial", "spatial_unpad")
_ANYRES_MAX = re.compile(r"anyres_max_(\d+)")
# LLaVA-NeXT shrinks a feature map only when it is more than this factor (per side) over the budget.
_DOWNSCALE_SLACK = 1.1


def is_anyres(image_aspect_ratio: str | None) -> bool:
    return image_aspect_ratio == "anyres" or bool(_ANYRES_MAX.fullmatch(image_aspect_ratio or ""))


def anyres_max_tiles(image_aspect_ratio: str) -> int | None:
    """N of 'anyres_max_N': the feature map is shrunk to about N tiles' worth of patches; None for 'anyres'."""
    match = _ANYRES_MAX.fullmatch(image_aspect_ratio)
    return int(match.group(1)) if match else None


def parse_grid_pinpoints(value, tile: int) -> list[tuple[int, int]]:
    """LLaVA-NeXT's `image_grid_pinpoints` as (width, height) canvases in pixels.

    Accepts a list of pairs, its string form ("[(336, 672), (672, 336)]"), or the range form
    "(1x1),...,(6x6)": every (i x j) grid from the first pair to the last, in tiles of `tile` pixels.
    """
    if isinstance(value, str) and "x" in value:
        corners = re.findall(r"\((\d+)\s*x\s*(\d+)\)", value)
        if not corners:
            raise ValueError(f"image_grid_pinpoints {value!r}: expected a range like '(1x1),...,(6x6)'")
        (a0, b0), (a1, b1) = map(int, corners[0]), map(int, corners[-1])
        pairs = [(i * tile, j * tile) for i in range(a0, a1 + 1) for j in range(b0, b1 + 1)]
    else:
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise ValueError(f"image_grid_pinpoints {value!r}: expected a list of (width, height) pairs") from None
        pairs = [tuple(int(n) for n in pair) for pair in value or ()]
    if not pairs or any(len(p) != 2 or p[0] <= 0 or p[1] <= 0 for p in pairs):
        raise ValueError(f"image_grid_pinpoints {value!r}: give at least one (width, height) pair of positive sizes")
    uneven = [p for p in pairs if p[0] % tile or p[1] % tile]
    if uneven:
        raise ValueError(
            f"image_grid_pinpoints {uneven[:3]} are not whole multiples of the tower's {tile}-px input; "
            f"give sizes in steps of {tile} (or the '(1x1),...,(NxM)' form)"
        )
    return pairs


def select_best_resolution(size: tuple[int, int], resolutions: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The canvas (width, height) showing most of the image's pixels once it is fitted into it (aspect
    kept); among equals, the one wasting least area. The first such canvas in the list wins ties."""
    width, height = size
    best, best_shown, best_waste = None, -1, None
    for cw, ch in resolutions:
        scale = min(cw / width, ch / height)
        shown = min(int(width * scale) * int(height * scale), width * height)
        waste = cw * ch - shown
        if shown > best_shown or (shown == best_shown and waste < best_waste):
            best, best_shown, best_waste = (cw, ch), shown, waste
    return best


def fit_size(size: tuple[int, int], canvas: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the image resized into `canvas` with its aspect kept: one side fills it."""
    (width, height), (cw, ch) = size, canvas
    if cw / width < ch / height:
        return cw, min(math.ceil(height * (cw / width)), ch)
    return min(math.ceil(width * (ch / height)), cw), ch


def resize_and_pad_image(image: Image.Image, canvas: tuple[int, int]) -> Image.Image:
    """The image fitted into `canvas` (aspect kept) and centred on black."""
    fitted = fit_size(image.size, canvas)
    result = Image.new("RGB", canvas, (0, 0, 0))
    result.paste(image.resize(fitted), ((canvas[0] - fitted[0]) // 2, (canvas[1] - fitted[1]) // 2))
    return result


def divide_to_patches(image: Image.Image, tile: int) -> list[Image.Image]:
    """`tile`-px squares of `image`, row by row."""
    width, height = image.size
    return [image.crop((x, y, x + tile, y + tile)) for y in range(0, height, tile) for x in range(0, width, tile)]


def unpadded_size(map_size: tuple[int, int], image_size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of a (rows, cols) feature map once the rows or columns that show only the canvas'
    padding are dropped (the image was centred on it, aspect kept)."""
    (rows, cols), (width, height) = map_size, image_size
    if width / height > cols / rows:  # padded above and below
        shown = int(height * (cols / width))
        return rows - 2 * ((rows - shown) // 2), cols
    shown = int(width * (rows / height))
    return rows, cols - 2 * ((cols - shown) // 2)


@dataclass(frozen=True)
class AnyRes:
    """How an image is tiled and how many LLM positions its features fill, from the model config.

    `tile`: the tower's input side in pixels; `side`: its patches per tile side; `tile_tokens`: the
    positions one tile's features fill (side**2, plus CLS with mm_vision_select_feature 'cls_patch').
    Without `side` it only tiles (`grid`, `num_tiles`, `tiles`).
    """

    pinpoints: tuple[tuple[int, int], ...]
    tile: int
    side: int = 0
    tile_tokens: int = 0
    merge: str = "flat"
    max_tiles: int | None = None

    @classmethod
    def from_config(cls, config, tile: int, side: int = 0, tile_tokens: int = 0) -> "AnyRes":
        aspect = getattr(config, "image_aspect_ratio", None)
        if not is_anyres(aspect):
            raise ValueError(f"image_aspect_ratio {aspect!r} is not AnyRes ('anyres' or 'anyres_max_N')")
        pinpoints = getattr(config, "image_grid_pinpoints", None)
        if pinpoints is None:
            raise ValueError(f"image_aspect_ratio {aspect!r} needs image_grid_pinpoints (--image_grid_pinpoints)")
        merge = getattr(config, "mm_patch_merge_type", None) or "flat"
        if not side:  # tiling only (image processing, the feature cache): the merge settings do not matter
            return cls(tuple(parse_grid_pinpoints(pinpoints, tile)), tile)
        if merge not in MERGE_TYPES:
            raise ValueError(f"mm_patch_merge_type {merge!r} is not supported; choose one of {', '.join(MERGE_TYPES)}")
        max_tiles = anyres_max_tiles(aspect)
        if max_tiles is not None and merge != "spatial_unpad":
            raise ValueError(f"image_aspect_ratio {aspect!r} shrinks the unpadded feature map, which only "
                             "mm_patch_merge_type 'spatial_unpad' builds; pass that, or image_aspect_ratio 'anyres'")
        if tile_tokens and merge != "flat" and tile_tokens != side * side:
            raise ValueError(f"mm_patch_merge_type {merge!r} lays patches out on a {side} x {side} grid, but each tile "
                             f"gives {tile_tokens} features (mm_vision_select_feature 'cls_patch'?); use 'patch' or 'flat'")
        return cls(tuple(parse_grid_pinpoints(pinpoints, tile)), tile, side, tile_tokens, merge, max_tiles)

    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """(columns, rows) of tiles an image of `size` (width, height) is cut into."""
        width, height = select_best_resolution(size, self.pinpoints)
        return width // self.tile, height // self.tile

    def num_tiles(self, size: tuple[int, int]) -> int:
        """Tiles the tower sees for one image: its grid's, plus the base image."""
        cols, rows = self.grid(size)
        return 1 + cols * rows

    def map_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of the grid's feature map as the LLM gets it: unpadded, then shrunk to the
        anyres_max_N budget (spatial_unpad); the whole grid (spatial)."""
        cols, rows = self.grid(size)
        rows, cols = rows * self.side, cols * self.side
        if self.merge != "spatial_unpad":
            return rows, cols
        rows, cols = unpadded_size((rows, cols), size)
        if self.max_tiles is not None:
            factor = math.sqrt(rows * cols / (self.max_tiles * self.side**2))
            if factor > _DOWNSCALE_SLACK:
                rows, cols = int(rows // factor), int(cols // factor)
        return rows, cols

    def tokens(self, size: tuple[int, int]) -> int:
        """LLM positions the image fills: the base tile, then the grid (a newline position ends each
        of its rows with spatial_unpad)."""
        if self.merge == "flat":
            return self.num_tiles(size) * self.tile_tokens
        rows, cols = self.map_size(size)
        return self.side * self.side + rows * (cols + (self.merge == "spatial_unpad"))

    def tiles(self, image: Image.Image, image_processor) -> torch.Tensor:
        """(1 + tiles, C, tile, tile) pixels: the base image squashed to one tile, then the grid row by row."""
        canvas = resize_and_pad_image(image, select_best_resolution(image.size, self.pinpoints))
        base = image.resize((self.tile, self.tile))
        return image_processor(images=[base, *divide_to_patches(canvas, self.tile)], return_tensors="pt")["pixel_values"]


@dataclass(frozen=True)
class Tiles:
    """One image's AnyRes pixels (`AnyRes.tiles`) with the image's (width, height)."""

    pixels: torch.Tensor
    size: tuple[int, int]


def image_size_of(path) -> tuple[int, int]:
    """(width, height) of the image at `path` as `load_image` turns it upright, from its header alone."""
    with Image.open(path) as image:
        width, height = image.size
        # EXIF orientations 5-8 turn the image a quarter: width and height swap.
        return (height, width) if image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8) else (width, height)


# -- text ----------------------------------------------------------------------------------
def tokenizer_image_token(
    prompt: str,
    tokenizer,
    image_token_index: int = IMAGE_TOKEN_INDEX,
    return_tensors: str | None = None,
    return_offsets: bool = False,
    add_special_tokens: bool = True,
):
    """Tokenise `prompt`, replacing each "<image>" by `image_token_index`.

    Chunks between images are tokenised separately, exactly as the model sees them at
    inference. With `return_offsets=True` also returns each token's (start, end)
    character span in `prompt` ((-1, -1) for the BOS and image tokens), which training
    uses to find the answer tokens. `add_special_tokens=False`: no BOS of the tokenizer's
    own (a prompt from the tokenizer's chat template writes its BOS itself).
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
    if add_special_tokens and _adds_bos(tokenizer):
        ids.insert(0, tokenizer.bos_token_id)
        offsets.insert(0, (-1, -1))
    if return_tensors == "pt":
        ids = torch.tensor(ids, dtype=torch.long)
    elif return_tensors is not None:
        raise ValueError(f"unsupported return_tensors {return_tensors!r}")
    return (ids, offsets) if return_offsets else ids


def tokenizer_image_tokens(prompts: Sequence[str], tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX,
                           add_special_tokens: bool = True) -> list:
    """`tokenizer_image_token(prompt, tokenizer, return_tensors="pt")` for several prompts, in one tokenizer call.

    The same ids (each chunk between images is still tokenised on its own); a batch pays the
    tokenizer's per-call cost once instead of once per chunk.
    """
    chunked = [prompt.split(DEFAULT_IMAGE_TOKEN) for prompt in prompts]
    flat = [chunk for chunks in chunked for chunk in chunks]
    encoded = iter(tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else [])
    bos = [tokenizer.bos_token_id] if add_special_tokens and _adds_bos(tokenizer) else []
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
