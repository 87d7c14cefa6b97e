"""Lazy LLaVA dataset: records are checked upfront, tokenised and their images loaded per step.

With a vision feature cache (llava.train.feature_cache) a sample carries its images' cached
tower outputs ("image_features") instead of pixels ("images"), and no image is decoded.
A video record's frames are rows of those tensors too, and "video_frames" says how many.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from torch.utils.data import Dataset

from llava.mm_utils import (
    MAX_IMAGE_PIXELS, AnyRes, ImageOutsideFolder, ImageTooLarge, image_path_in_folder, image_size_of, load_image,
    process_images,
)
from llava.preprocess import Sample, preprocess, sequence_lengths
from llava.records import (
    InvalidRecord, UnreadableRecord, image_paths, num_visuals, raise_first_error, read_records, record_problems,
    repeated_ids, video_path,
)
from llava.train.feature_cache import FeatureCache, UnreadableImage
from llava.video import VideoError, VideoSettings, frame_total, load_frames, process_frames

logger = logging.getLogger(__name__)

# Rough tokens per word, used only to group similar lengths together.
_IMAGE_LENGTH_BONUS = 128
_SKIP_HINT = "pass --skip_invalid True to skip such records"


@dataclass
class DataStats:
    """What happened to the records, reported at the end of the run."""

    total: int = 0
    skipped: dict = field(default_factory=dict)  # reason -> count
    truncated: dict = field(default_factory=dict)  # record index -> record id; a record reloaded each epoch counts once

    def skip(self, error: InvalidRecord) -> None:
        self.skipped[error.kind] = self.skipped.get(error.kind, 0) + 1


def warn_duplicate_ids(records: list, data_path: str) -> None:
    """Records sharing an `id` are trained as given (a repeat may be on purpose), but never silently."""
    repeats = repeated_ids(record.get("id") for record in records)
    if repeats:
        logger.warning("%s: %d record id(s) appear more than once (%s); each copy is trained on. Remove the "
                       "repeats if they are not meant to weigh double (python -m llava.data.validate lists them)",
                       data_path, *repeats)


class LazySupervisedDataset(Dataset):
    """LLaVA records -> {"input_ids", "labels", "images"}; bad records raise or are skipped and counted."""

    def __init__(
        self,
        data_path: str,
        tokenizer,
        template: str,
        image_folder: str | None = None,
        image_processor=None,
        model_config=None,
        max_length: int | None = None,
        image_tokens: int = 1,
        mm_use_im_start_end: bool = False,
        skip_invalid: bool = False,
        lazy: bool = True,
        feature_cache: FeatureCache | None = None,
        max_image_pixels: int | None = MAX_IMAGE_PIXELS,
        allow_outside_image_folder: bool = False,
        anyres: AnyRes | None = None,
        video: VideoSettings | None = None,
    ):
        """`anyres`: the model's AnyRes settings; each image then fills `anyres.tokens(its size)` positions
        instead of `image_tokens`, and its pixels are its tiles. `video`: how the model samples and pools
        videos (records with a "video" are refused without it)."""
        self.tokenizer = tokenizer
        self.anyres = anyres
        self.video = video
        self.template = template
        self.image_folder = image_folder or ""
        self.image_processor = image_processor
        self.model_config = model_config
        self.max_length = max_length
        self.image_tokens = image_tokens
        self.mm_use_im_start_end = mm_use_im_start_end
        self.skip_invalid = skip_invalid
        self.feature_cache = feature_cache
        self.max_image_pixels = max_image_pixels
        self.allow_outside_image_folder = allow_outside_image_folder
        self.stats = DataStats()
        if not os.path.exists(data_path):
            raise FileNotFoundError(f"data file {data_path} does not exist; check --data_path / --eval_data_path")
        unreadable = []
        records = read_records(data_path, on_error=self._unreadable(unreadable))
        self.records = self._validate(records, data_path, len(unreadable))
        self._bad: set[int] = set()  # records that failed to load, each counted once
        self._token_lengths: list[int] | None = None
        self._preloaded = None
        if not lazy:
            self.preload()

    # -- upfront checks ----------------------------------------------------------------------
    def _unreadable(self, unreadable: list):
        """What to do with a record the file garbles: stop, or (--skip_invalid) count and skip it."""

        def on_error(error: UnreadableRecord) -> None:
            if not self.skip_invalid:
                raise UnreadableRecord(f"{error} ({_SKIP_HINT})", error.kind) from None
            unreadable.append(error)
            self.stats.skip(error)
            logger.warning("skipping %s", error)

        return on_error

    def _validate(self, records: list, data_path: str, unreadable: int = 0) -> list:
        """Cheap checks over every record (structure, roles, markers, image files) before step 1."""
        kept = []
        self.stats.total = len(records) + unreadable
        for n, record in enumerate(records):
            record_id = record.get("id", f"#{n}") if isinstance(record, dict) else f"#{n}"
            try:
                raise_first_error(record_id, record_problems(record))
                paths = image_paths(record)
                if num_visuals(record) and self.image_processor is None:
                    raise InvalidRecord(record_id, "has an image but the model has no vision tower", "no_vision_tower")
                if video_path(record) is not None and self.video is None:
                    raise InvalidRecord(record_id, "has a video but no video settings were given", "no_video_settings")
                for path in paths:
                    full = self._image_file(record_id, path)
                    if not os.path.isfile(full):
                        raise InvalidRecord(record_id, f"image {full} does not exist; check --image_folder", "missing image")
                if video_path(record) is not None:
                    full = self._image_file(record_id, video_path(record))
                    if not os.path.isfile(full):
                        raise InvalidRecord(record_id, f"video {full} does not exist; check --image_folder", "missing video")
            except InvalidRecord as error:
                if not self.skip_invalid:
                    raise InvalidRecord(
                        record_id, f"{error.reason} (in {data_path}; pass --skip_invalid True to skip such records)",
                        error.kind,
                    ) from None
                self.stats.skip(error)
                logger.warning("skipping %s", error)
                continue
            kept.append(record)
        if not kept:
            raise ValueError(f"{data_path}: no valid record left out of {self.stats.total}")
        warn_duplicate_ids(kept, data_path)
        return kept

    # -- lengths for grouped sampling -------------------------------------------------------
    @property
    def modality_lengths(self) -> list[int]:
        """Approximate length; negative for text-only records (official LLaVA's convention)."""
        lengths = []
        for record in self.records:
            words = sum(len(turn["value"].split()) for turn in record["conversations"])
            lengths.append(words + _IMAGE_LENGTH_BONUS if num_visuals(record) else -words)
        return lengths

    @property
    def lengths(self) -> list[int]:
        return [abs(n) for n in self.modality_lengths]

    @property
    def modality_token_lengths(self) -> list[int]:
        """Exact positions each record fills in the LLM (text tokens + patches per image), negative
        for text-only records; what `--train_sampling_strategy group_by_length` sorts by.

        Tokenised once (in batches, about 0.3 ms a record on one core) and cached.
        """
        if self._token_lengths is None:
            logger.info("measuring the token length of %d records for length grouping", len(self.records))
            counts = sequence_lengths(
                [(record["conversations"], num_visuals(record), self._record_image_tokens(record))
                 for record in self.records],
                self.tokenizer,
                self.template,
                mm_use_im_start_end=self.mm_use_im_start_end,
                max_length=self.max_length,
                image_tokens=self.image_tokens,
            )
            self._token_lengths = [n if num_visuals(r) else -n for n, r in zip(counts, self.records)]
        return self._token_lengths

    def _record_image_tokens(self, record) -> list[int]:
        """Each of the record's images' positions; AnyRes sizes come from the feature cache or the file's header,
        a video's frame count from the cache or the video's header."""
        if video_path(record) is not None:
            path = os.path.join(self.image_folder, video_path(record))
            try:
                frames = self.feature_cache.frames(path) if self.feature_cache is not None else self.video.num_frames(frame_total(path))
            except (VideoError, KeyError):
                frames = 1  # refused when its sample is built; any count will do here
            return [self.video.tokens(frames)]
        paths = [os.path.join(self.image_folder, path) for path in image_paths(record)]
        if self.anyres is None:
            return [self.image_tokens] * len(paths)
        counts = []
        for path in paths:
            try:
                size = self.feature_cache.size(path) if self.feature_cache is not None else image_size_of(path)
            except (OSError, ValueError, KeyError):
                size = None  # an unreadable image: its record is refused when built; any count will do here
            counts.append(self.anyres.tokens(size) if size else self.image_tokens)
        return counts

    # -- samples ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        if self._preloaded is not None:
            return self._preloaded[i]
        # With --skip_invalid a bad record is replaced by the next good one (and counted once).
        for attempt in range(len(self.records)):
            index = (i + attempt) % len(self.records)
            if index in self._bad:
                continue
            try:
                return self._build(index)
            except InvalidRecord as error:
                self._reject(index, error)
        raise RuntimeError("every record failed to load; see the warnings above")

    def _reject(self, index: int, error: InvalidRecord) -> None:
        if not self.skip_invalid:
            raise InvalidRecord(error.record_id, f"{error.reason} ({_SKIP_HINT})", error.kind) from None
        self._bad.add(index)
        self.stats.skip(error)
        logger.warning("skipping %s", error)

    def preload(self) -> None:
        """--lazy_preprocess False: every sample tokenised (and its images loaded) before training."""
        self._preloaded = self._build_all()

    def _build_all(self) -> list[dict]:
        items, kept = [], []
        for index, record in enumerate(self.records):
            try:
                items.append(self._build(index))
                kept.append(record)
            except InvalidRecord as error:
                self._reject(index, error)
        if not items:
            raise ValueError("no valid record left; see the warnings above")
        self.records, self._bad = kept, set()
        return items

    def image_files(self) -> list[str]:
        """Every image the valid records use, as paths on disk (what a feature cache must hold)."""
        return [os.path.join(self.image_folder, path) for record in self.records for path in image_paths(record)]

    def video_files(self) -> list[str]:
        """Every video the valid records use, as paths on disk."""
        return [os.path.join(self.image_folder, video_path(r)) for r in self.records if video_path(r) is not None]

    def _image_file(self, record_id, path) -> str:
        try:
            return image_path_in_folder(self.image_folder, path, "--allow_outside_image_folder True",
                                        allow_outside=self.allow_outside_image_folder)
        except ImageOutsideFolder as e:
            raise InvalidRecord(record_id, str(e), "image outside --image_folder") from None

    def _build(self, index: int) -> dict:
        record = self.records[index]
        record_id = record.get("id", f"#{index}")
        if video_path(record) is not None:
            return self._build_video(index, record, record_id)
        paths = image_paths(record)
        if self.feature_cache is not None:
            images = []
            features, sizes = self._cached_features(record_id, paths) if paths else (None, [])
        else:
            images, features = [self._load_image(record_id, path) for path in paths], None
            sizes = [image.size for image in images]
        image_tokens = [self.anyres.tokens(size) for size in sizes] if self.anyres is not None else self.image_tokens
        sample = self._preprocess(index, record, record_id, len(paths), image_tokens)
        item = {"input_ids": sample.input_ids, "labels": sample.labels}
        if images:
            item["images"] = process_images(images, self.image_processor, self.model_config)
        if features is not None:
            item["image_features"] = features
        if self.anyres is not None and paths:
            # The model lays each image's tiles out by its size; packing counts each image's positions.
            item["image_sizes"] = sizes
            item["image_tokens"] = image_tokens
        return item

    def _preprocess(self, index: int, record, record_id, num_images: int, image_tokens) -> Sample:
        sample: Sample = preprocess(
            record["conversations"],
            self.tokenizer,
            self.template,
            record_id=record_id,
            num_images=num_images,
            mm_use_im_start_end=self.mm_use_im_start_end,
            max_length=self.max_length,
            image_tokens=image_tokens,
        )
        if sample.truncated and index not in self.stats.truncated:
            self.stats.truncated[index] = record_id
            logger.warning(
                "record %r: %d tokens with its images expanded, cut to --model_max_length %d; the answer tokens past "
                "it are not learned", record_id, sample.length, self.max_length,
            )
        return sample

    def _build_video(self, index: int, record, record_id) -> dict:
        """A video record: its sampled frames (or their cached tower outputs) behind its one marker."""
        path = os.path.join(self.image_folder, video_path(record))
        try:
            if self.feature_cache is not None:
                rows = self.feature_cache.lookup([path])
            else:
                frames = load_frames(path, self.video.frames_upbound, self.video.force_sample)
                rows = process_frames(frames, self.image_processor, self.model_config)
        except UnreadableImage as e:
            raise InvalidRecord(record_id, str(e), e.kind) from None
        except VideoError as e:
            raise InvalidRecord(record_id, str(e), "corrupt video") from None
        tokens = [self.video.tokens(len(rows))]
        sample = self._preprocess(index, record, record_id, 1, tokens)
        item = {"input_ids": sample.input_ids, "labels": sample.labels, "video_frames": [len(rows)], "image_tokens": tokens}
        item["image_features" if self.feature_cache is not None else "images"] = rows
        if self.anyres is not None:
            item["image_sizes"] = [(0, 0)]  # a video's frames are never tiled; the model skips its entry
        return item

    def _cached_features(self, record_id, paths: list[str]):
        try:
            return self.feature_cache.lookup_with_sizes([os.path.join(self.image_folder, path) for path in paths])
        except UnreadableImage as e:
            raise InvalidRecord(record_id, str(e), e.kind) from None

    def _load_image(self, record_id, path: str):
        full = os.path.join(self.image_folder, path)
        try:
            return load_image(full, max_pixels=self.max_image_pixels)
        except ImageTooLarge as e:
            raise InvalidRecord(record_id, e.hint("--max_image_pixels"), "image too large") from None
        except (OSError, ValueError) as e:
            raise InvalidRecord(record_id, f"image {full} cannot be read ({e})", "corrupt image") from None


