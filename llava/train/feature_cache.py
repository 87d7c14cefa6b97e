"""A disk cache of the frozen vision tower's outputs, so stage 1 skips image decode and the tower.

When the tower is frozen its output for an image never changes during training: computed once,
it can replace the pixels in every later step, and only the projector (and the LLM) run.

Layout of the cache directory:
    index.json               the key and its parts, dtype, shape, image path -> [first row, rows] and
                             (width, height), unreadable images
    features-<key>.npy       (rows, patches, hidden) array, read memory-mapped (np.load(mmap_mode="r"))

An image is one row, or with AnyRes (--image_aspect_ratio anyres / anyres_max_N) one row per tile (its
base tile first, then its grid), so lookups hand the model exactly what the tower would have given.
A video is one row per sampled frame; the frame sampling (--frames_upbound, --force_sample) is part of
the key, and each video's modification time and size are kept, so an edited video is re-read.

Features are stored in the tower's dtype (bf16 as its raw uint16 bits, since numpy has no bf16),
exactly the values the tower hands the projector. The key hashes everything that decides those
values: tower weights and config, select layer / feature, the image processor's config,
image_aspect_ratio (and AnyRes grid pinpoints), dtype and the transformers version. A cache whose key differs, or that lacks
some of the dataset's images, is recomputed (a log line says why). Files are written under a
temporary name and renamed; index.json is renamed last, so a reader never sees a half-written cache.

Build ahead of training (same code as `--vision_feature_cache DIR` runs on first use):
    python -m llava.train.feature_cache --vision_tower T --data_path F --image_folder D --out DIR
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import types

import numpy as np
import torch
import transformers
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from llava.mm_utils import (
    MAX_IMAGE_PIXELS, AnyRes, ImageTooLarge, image_path_in_folder, image_size_of, is_anyres, load_image, process_images,
    processor_side,
)
from llava.records import image_paths, read_records, video_path, write_json
from llava.video import VideoError, VideoSettings, frame_total, load_frames, process_frames

logger = logging.getLogger(__name__)

FORMAT = 3  # 2: rows per image (AnyRes tiles) and image sizes; 3: videos' frames
INDEX = "index.json"
# numpy has no bfloat16: such features are stored as their raw 16 bits and viewed back on read.
_NUMPY_STORAGE = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16}
_DTYPES = {str(d).removeprefix("torch."): d for d in _NUMPY_STORAGE}
NEEDS_FROZEN_TOWER = (
    "--vision_feature_cache needs a frozen vision tower (its outputs must not change during training); "
    "drop 'vision_tower' from --train_modules or drop --vision_feature_cache"
)


# -- the key -----------------------------------------------------------------------------------
def key_parts(tower, image_processor, image_aspect_ratio: str | None, max_image_pixels: int | None = MAX_IMAGE_PIXELS,
              image_grid_pinpoints=None, video: VideoSettings | None = None) -> dict:
    """Everything that decides the cached values (and which images are refused), each part readable so a
    log can name what changed."""
    anyres = is_anyres(image_aspect_ratio)
    return {
        "format": FORMAT,
        **tower.feature_key(),
        "image_processor": image_processor.to_json_string(),
        # anyres_max_N only shrinks features after the projector: its tiles are anyres' tiles.
        "image_aspect_ratio": "anyres" if anyres else image_aspect_ratio or "square",
        "image_grid_pinpoints": _pinpoints(image_grid_pinpoints, processor_side(image_processor)) if anyres else None,
        "transformers": transformers.__version__,
        "max_image_pixels": max_image_pixels,
        # Caches built before load_image applied EXIF orientation hold sideways phone photos.
        "image_orientation": "exif",
        # Which frames a video is: only for caches that hold videos (an image cache is kept when these change).
        "video_sampling": video.sampling if video is not None else None,
    }


def cache_key(parts: dict) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()


# -- reading -----------------------------------------------------------------------------------
class UnreadableImage(ValueError):
    """An image the cache could not decode when it was built (the dataset reports it like a corrupt file)."""

    def __init__(self, message: str, kind: str = "corrupt image"):
        super().__init__(message)
        self.kind = kind


class FeatureCache:
    """Read side: `lookup(paths)` -> (n, patches, hidden) tensor of the tower's outputs for those images."""

    def __init__(self, directory: str):
        self.directory = directory
        with open(os.path.join(directory, INDEX), encoding="utf-8") as f:
            self.index = json.load(f)
        self.key = self.index["key"]
        self.dtype = _DTYPES[self.index["dtype"]]
        self.rows: dict[str, list[int]] = self.index["rows"]  # path -> [first row, rows]
        self.sizes: dict[str, list[int]] = self.index["sizes"]  # path -> [width, height]
        self.unreadable: dict[str, str] = self.index["unreadable"]
        self.too_large: set[str] = set(self.index.get("too_large", ()))
        self.videos: dict[str, list[int]] = self.index.get("videos", {})  # path -> [mtime_ns, bytes]
        self._array = None  # opened on first use, in each data-loader worker

    def __getstate__(self):
        # Pickling (data-loader workers under spawn) must not copy the mapped array.
        return {**self.__dict__, "_array": None}

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(os.path.join(self.directory, self.index["features_file"]), mmap_mode="r")
        return self._array

    @property
    def feature_shape(self) -> tuple[int, int]:
        return tuple(self.index["shape"][1:])

    def covers(self, paths) -> bool:
        return all(_normalise(p) in self.rows or _normalise(p) in self.unreadable for p in paths)

    def frames(self, path: str) -> int:
        """How many sampled frames (rows) the video has in the cache."""
        key = _normalise(path)
        if key in self.unreadable:
            raise UnreadableImage(self.unreadable[key], "corrupt video")
        return self.rows[key][1]

    def size(self, path: str) -> tuple[int, int]:
        """The image's (width, height) as it was loaded (upright)."""
        return tuple(self.sizes[_normalise(path)])

    def lookup_with_sizes(self, paths: list[str]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """`lookup(paths)` and each image's (width, height)."""
        return self.lookup(paths), [self.size(path) for path in paths]

    def lookup(self, paths: list[str]) -> torch.Tensor:
        """(rows of all `paths`, patches, hidden): each image's row, or its tiles' rows, in order."""
        rows = []
        for path in paths:
            key = _normalise(path)
            if key in self.unreadable:
                kind = "image too large" if key in self.too_large else "corrupt video" if key in self.videos else "corrupt image"
                raise UnreadableImage(self.unreadable[key], kind)
            if key not in self.rows:
                raise KeyError(f"image {path} is not in the vision feature cache {self.directory}; "
                               "delete the cache folder to rebuild it")
            first, count = self.rows[key]
            rows.extend(range(first, first + count))
        features = torch.from_numpy(np.ascontiguousarray(self.array[rows]))
        return features.view(self.dtype) if self.dtype == torch.bfloat16 else features


def _normalise(path: str) -> str:
    return os.path.abspath(path)


# -- building ----------------------------------------------------------------------------------
class _PixelDataset(Dataset):
    """One image -> its pixels as the training dataset would make them (None if it cannot be read)."""

    def __init__(self, paths, image_processor, image_aspect_ratio, max_image_pixels=MAX_IMAGE_PIXELS,
                 image_grid_pinpoints=None, videos=frozenset(), video: VideoSettings | None = None):
        self.paths = paths
        self.videos, self.video = videos, video
        self.max_image_pixels = max_image_pixels
        self.image_processor = image_processor
        # What process_images reads.
        self.config = types.SimpleNamespace(image_aspect_ratio=image_aspect_ratio, image_grid_pinpoints=image_grid_pinpoints)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        if self.paths[i] in self.videos:
            try:
                frames = load_frames(self.paths[i], self.video.frames_upbound, self.video.force_sample)
            except VideoError as e:
                return i, None, (str(e), False)
            return i, (process_frames(frames, self.image_processor, self.config), None), None
        try:
            image = load_image(self.paths[i], max_pixels=self.max_image_pixels)
        except ImageTooLarge as e:
            return i, None, (e.hint("--max_image_pixels"), True)
        except (OSError, ValueError) as e:
            return i, None, (f"image {self.paths[i]} cannot be read ({e})", False)
        return i, (process_images([image], self.image_processor, self.config), image.size), None


def _collate(items):
    return items


def _stale_reason(directory: str, parts: dict, paths: list[str], videos=()) -> str | None:
    """Why the cache in `directory` cannot serve `paths` with these settings; None if it can."""
    try:
        cache = FeatureCache(directory)
    except FileNotFoundError:
        return "no cache yet"
    except (ValueError, KeyError) as e:
        return f"unreadable index ({e})"
    if cache.key != cache_key(parts):
        old = cache.index.get("parts", {})
        changed = [name for name in parts if old.get(name) != parts[name]]
        return f"{', '.join(changed) or 'key'} changed"
    if not os.path.exists(os.path.join(directory, cache.index["features_file"])):
        return "features file missing"
    missing = sum(1 for p in paths if not cache.covers([p]))
    if missing:
        return f"{missing} of the dataset's images are not in it"
    changed = [p for p in videos if cache.videos.get(p) != _video_stamp(p)]
    if changed:
        return f"{len(changed)} video(s) changed since it was built (e.g. {changed[0]})"
    return None


def _pinpoints(value, tile: int) -> list | None:
    from llava.mm_utils import parse_grid_pinpoints

    return [list(pair) for pair in parse_grid_pinpoints(value, tile)] if value is not None else None


def _rows_per_image(paths, image_processor, image_aspect_ratio, image_grid_pinpoints, videos=frozenset(),
                    video: VideoSettings | None = None) -> list[int]:
    """Rows each image takes: 1, or with AnyRes its tiles (from the file's header; 0 if unreadable); a video
    its sampled frames (from its header)."""
    if videos:
        counts = _rows_per_image([p for p in paths if p not in videos], image_processor, image_aspect_ratio,
                                 image_grid_pinpoints)[::-1]
        return [_video_rows(p, video) if p in videos else counts.pop() for p in paths]
    if not is_anyres(image_aspect_ratio):
        return [1] * len(paths)
    config = types.SimpleNamespace(image_aspect_ratio=image_aspect_ratio, image_grid_pinpoints=image_grid_pinpoints)
    anyres = AnyRes.from_config(config, tile=processor_side(image_processor))
    rows = []
    for path in paths:
        try:
            rows.append(anyres.num_tiles(image_size_of(path)))
        except (OSError, ValueError):
            rows.append(0)  # reported as unreadable when its pixels are loaded
    return rows


def _video_rows(path: str, video: VideoSettings) -> int:
    try:
        return video.num_frames(frame_total(path))
    except VideoError:
        return 0  # reported as unreadable when its frames are loaded


def _video_stamp(path: str) -> list[int]:
    stat = os.stat(path)
    return [stat.st_mtime_ns, stat.st_size]


@torch.no_grad()
def build(directory: str, tower, image_processor, image_aspect_ratio, paths: list[str], parts: dict,
          batch_size: int = 32, num_workers: int = 0, device=None, image_grid_pinpoints=None, videos=frozenset(),
          video: VideoSettings | None = None) -> None:
    """Run the tower over every image (every tile, with AnyRes) and every video's sampled frames in `paths` and
    write the cache (atomically) to `directory`. `videos`: which of `paths` are videos."""
    os.makedirs(directory, exist_ok=True)
    key = cache_key(parts)
    features_file = f"features-{key}.npy"
    counts = _rows_per_image(paths, image_processor, image_aspect_ratio, image_grid_pinpoints, videos, video)
    firsts = np.cumsum([0, *counts[:-1]]).tolist() if counts else []
    shape = (sum(counts), tower.num_patches, tower.hidden_size)
    storage = _NUMPY_STORAGE[tower.dtype]
    fd, tmp_features = tempfile.mkstemp(dir=directory, prefix=".features-", suffix=".npy.tmp")
    os.close(fd)
    unreadable, too_large, sizes = {}, [], {}
    was_training, previous_device = tower.training, tower.device
    tower.eval()
    if device is not None:
        tower.to(device)
    try:
        out = np.lib.format.open_memmap(tmp_features, mode="w+", dtype=storage, shape=shape)
        pixels = _PixelDataset(paths, image_processor, image_aspect_ratio, parts.get("max_image_pixels", MAX_IMAGE_PIXELS),
                               image_grid_pinpoints, videos, video)
        loader = DataLoader(pixels, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
        with tqdm(total=len(paths), desc="vision feature cache", unit="img") as progress:
            for items in loader:
                good = [(i, loaded) for i, loaded, _ in items if loaded is not None]
                unreadable.update({_normalise(paths[i]): error[0] for i, loaded, error in items if loaded is None})
                too_large += [_normalise(paths[i]) for i, loaded, error in items if loaded is None and error[1]]
                for i, (tiles, size) in good:
                    if len(tiles) != counts[i]:
                        raise RuntimeError(f"image {paths[i]} gave {len(tiles)} tiles, its header {counts[i]}")
                    if size is not None:
                        sizes[_normalise(paths[i])] = list(size)
                if good:
                    features = tower(torch.cat([tiles for _, (tiles, _) in good])).to("cpu")
                    if tower.dtype == torch.bfloat16:
                        features = features.view(torch.uint16)
                    rows = [row for i, _ in good for row in range(firsts[i], firsts[i] + counts[i])]
                    out[rows] = features.numpy()
                progress.update(len(items))
        out.flush()
        del out
        os.replace(tmp_features, os.path.join(directory, features_file))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_features)
        raise
    finally:
        tower.train(was_training)
        if device is not None:
            tower.to(previous_device)
    index = {
        "format": FORMAT, "key": key, "parts": parts, "features_file": features_file,
        "dtype": str(tower.dtype).removeprefix("torch."), "shape": list(shape),
        "rows": {_normalise(p): [firsts[i], counts[i]] for i, p in enumerate(paths) if _normalise(p) not in unreadable},
        "sizes": sizes, "unreadable": unreadable, "too_large": too_large,
        "videos": {p: _video_stamp(p) for p in sorted(videos)},
    }
    write_json(os.path.join(directory, INDEX), index, ensure_ascii=True)
    for name in os.listdir(directory):  # earlier generations, now unreferenced
        if name.startswith("features-") and name != features_file:
            os.remove(os.path.join(directory, name))


def ensure(directory: str, tower, image_processor, image_aspect_ratio, paths, build_allowed: bool = True,
           max_image_pixels: int | None = MAX_IMAGE_PIXELS, image_grid_pinpoints=None, videos=(),
           video: VideoSettings | None = None, **build_kwargs) -> FeatureCache:
    """The cache in `directory` for these images (and `videos`, sampled as `video` says) and settings: reused
    when valid, else (re)built.

    `build_allowed=False` (ranks that waited for the main process) raises instead of building.
    """
    if tower.is_trainable:
        raise ValueError(NEEDS_FROZEN_TOWER)
    videos = sorted({_normalise(p) for p in videos})
    if videos and video is None:
        raise ValueError("caching videos needs their frame sampling (video=VideoSettings(...))")
    paths = sorted({_normalise(p) for p in paths} | set(videos))
    parts = key_parts(tower, image_processor, image_aspect_ratio, max_image_pixels, image_grid_pinpoints,
                      video if videos else None)
    reason = _stale_reason(directory, parts, paths, videos)
    if reason is None:
        logger.info("vision feature cache %s is up to date (%d images); reusing it", directory, len(paths))
    elif not build_allowed:
        raise RuntimeError(f"vision feature cache {directory} is not usable after the main process built it: {reason}")
    else:
        logger.info("computing the vision feature cache in %s for %d images: %s", directory, len(paths), reason)
        build(directory, tower, image_processor, image_aspect_ratio, paths, parts, image_grid_pinpoints=image_grid_pinpoints,
              videos=frozenset(videos), video=video, **build_kwargs)
    return FeatureCache(directory)


# -- command line ------------------------------------------------------------------------------
def main(argv=None) -> None:
    from llava.model.multimodal_encoder import load_vision_tower

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision_tower", required=True)
    parser.add_argument("--data_path", required=True, nargs="+", help="one or more LLaVA JSON/JSONL files")
    parser.add_argument("--image_folder", default="")
    parser.add_argument("--out", required=True, help="cache folder (pass it to training as --vision_feature_cache)")
    parser.add_argument("--mm_vision_select_layer", type=int, default=-2)
    parser.add_argument("--mm_vision_select_feature", default="patch")
    parser.add_argument("--image_aspect_ratio", default="square", help="square, pad, anyres or anyres_max_N")
    parser.add_argument("--image_grid_pinpoints", default=None,
                        help="AnyRes canvases, as training gets them (e.g. '(1x1),...,(3x3)')")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32",
                        help="the training run's dtype (bfloat16 for --bf16 True); part of the key")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--max_image_pixels", type=int, default=MAX_IMAGE_PIXELS,
                        help="images with more pixels are refused before decoding (as in training)")
    parser.add_argument("--frames_upbound", type=int, default=VideoSettings.frames_upbound,
                        help="videos: at most this many evenly spaced frames, as training samples them")
    parser.add_argument("--force_sample", action="store_true", help="videos: always exactly --frames_upbound frames")
    parser.add_argument("--allow_outside_image_folder", action="store_true",
                        help="accept absolute image paths and paths that climb out of --image_folder")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    tower = load_vision_tower(args.vision_tower, args.mm_vision_select_layer, args.mm_vision_select_feature)
    tower.to(_DTYPES[args.dtype])
    records = [record for data in args.data_path for record in read_records(data) if isinstance(record, dict)]
    paths, videos = ([image_path_in_folder(args.image_folder, p, "--allow_outside_image_folder",
                                           allow_outside=args.allow_outside_image_folder) for p in group]
                     for group in ([p for r in records for p in image_paths(r)],
                                   [video_path(r) for r in records if video_path(r) is not None]))
    ensure(args.out, tower, tower.load_image_processor(), args.image_aspect_ratio, paths, videos=videos,
           video=VideoSettings(args.frames_upbound, args.force_sample),
           max_image_pixels=args.max_image_pixels or None, image_grid_pinpoints=args.image_grid_pinpoints,
           batch_size=args.batch_size, num_workers=args.num_workers, device=args.device)


if __name__ == "__main__":
    from llava.errors import run

    run(main)
