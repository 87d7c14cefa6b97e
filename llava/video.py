"""Videos as sampled frames (LLaVA-OneVision's convention): decoding, frame sampling and token counts.

A video is `frames_upbound` frames (or all of them, when it has fewer) taken at evenly spaced
indices; with `force_sample` always exactly `frames_upbound` (a short video repeats frames). Each
frame is one single view for the tower (never AnyRes tiles); the model pools each frame's patch
grid by `mm_spatial_pool_stride` (`mm_spatial_pool_mode` average, max or bilinear) and puts every
frame's pooled features, in order, where the video's one <image> marker was, followed by one
`image_newline` when the model has one (mm_patch_merge_type spatial_unpad; LLaVA-NeXT's "one_token").

Decoding uses PyAV (`pip install av`, the `video` extra), whose wheels ship ffmpeg.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass

import numpy as np

from llava.mm_utils import is_anyres, process_images

POOL_MODES = ("average", "max", "bilinear")
NEWLINE_POSITIONS = ("one_token",)
DEFAULT_FRAMES_UPBOUND = 32  # OneVision's
DEFAULT_POOL_STRIDE = 2
DEFAULT_POOL_MODE = "bilinear"


class VideoError(ValueError):
    """A video that cannot be used: missing, undecodable, or without a frame."""


def _av():
    try:
        import av
    except ImportError:
        raise VideoError("reading videos needs PyAV: pip install av (or the 'video' extra: pip install -e '.[video]')") from None
    return av


def pooled_side(side: int, stride: int, mode: str) -> int:
    """Patches per side of one frame after pooling (average/max floor, bilinear rounds up, as OneVision)."""
    if mode not in POOL_MODES:
        raise ValueError(f"mm_spatial_pool_mode {mode!r}: choose one of {', '.join(POOL_MODES)}")
    if stride < 1:
        raise ValueError(f"mm_spatial_pool_stride {stride}: give 1 (no pooling) or more")
    return math.ceil(side / stride) if mode == "bilinear" else side // stride


def frame_indices(total: int, upbound: int, force_sample: bool = False) -> list[int]:
    """Evenly spaced frame indices of a `total`-frame video: min(total, upbound) of them, or `upbound` when forced."""
    if total <= 0:
        return []
    count = upbound if force_sample else min(total, upbound)
    return np.linspace(0, total - 1, count).round().astype(int).tolist()


@dataclass(frozen=True)
class VideoSettings:
    """How a model samples and pools videos, and so how many LLM positions a video fills."""

    frames_upbound: int = DEFAULT_FRAMES_UPBOUND
    force_sample: bool = False
    pool_stride: int = DEFAULT_POOL_STRIDE
    pool_mode: str = DEFAULT_POOL_MODE
    side: int = 0  # the tower's patches per side (0: sampling only)
    newline: bool = False  # one image_newline after the frames

    @classmethod
    def from_config(cls, config, side: int = 0, tile_tokens: int = 0) -> "VideoSettings":
        """Settings from the model config's fields (LLaVA-NeXT's names); `side`: the tower's patches per side."""
        settings = cls(
            frames_upbound=int(getattr(config, "frames_upbound", None) or DEFAULT_FRAMES_UPBOUND),
            force_sample=bool(getattr(config, "force_sample", False)),
            pool_stride=int(getattr(config, "mm_spatial_pool_stride", None) or DEFAULT_POOL_STRIDE),
            pool_mode=getattr(config, "mm_spatial_pool_mode", None) or DEFAULT_POOL_MODE,
            side=side,
            newline=getattr(config, "mm_patch_merge_type", None) == "spatial_unpad",
        )
        settings.check(tile_tokens)
        return settings

    def check(self, tile_tokens: int = 0) -> None:
        if self.frames_upbound < 1:
            raise ValueError(f"frames_upbound {self.frames_upbound}: give the most frames a video may show (1 or more)")
        pooled_side(max(self.side, 1), self.pool_stride, self.pool_mode)
        if tile_tokens and self.side and tile_tokens != self.side * self.side:
            raise ValueError(f"videos pool each frame's {self.side} x {self.side} patch grid, but the tower gives "
                             f"{tile_tokens} features per frame (mm_vision_select_feature 'cls_patch'?); use 'patch'")

    @property
    def sampling(self) -> dict:
        """What decides which frames are decoded (part of a feature cache's key)."""
        return {"frames_upbound": self.frames_upbound, "force_sample": self.force_sample}

    def num_frames(self, total: int) -> int:
        return len(frame_indices(total, self.frames_upbound, self.force_sample))

    @property
    def frame_tokens(self) -> int:
        return pooled_side(self.side, self.pool_stride, self.pool_mode) ** 2

    def tokens(self, frames: int) -> int:
        """LLM positions a video of `frames` sampled frames fills."""
        return frames * self.frame_tokens + int(self.newline)


def frame_total(path: str) -> int:
    """Frames in the video's first video stream: from its header, else by counting packets (nothing decoded)."""
    av = _av()
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoError(f"video {path} has no frames (no video stream)")
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            return sum(1 for packet in container.demux(stream) if packet.size)
    except av.FFmpegError as e:
        raise VideoError(f"video {path} cannot be read ({e})") from None


def load_frames(path: str, upbound: int, force_sample: bool = False) -> list:
    """The sampled frames of the video at `path`, as RGB PIL images (`frame_indices` of its frame count).

    Raises VideoError for a file that is missing, not a video or has no frame. Should the header
    promise more frames than the stream holds, the missing ones repeat the last frame decoded, so a
    video always gives the count its header announced (token counts are made from the header).
    """
    av = _av()
    wanted = frame_indices(frame_total(path), upbound, force_sample)
    if not wanted:
        raise VideoError(f"video {path} has no frames")
    frames, last = [], None
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            position = 0
            for index, frame in enumerate(container.decode(stream)):
                if index > wanted[-1]:
                    break
                last = frame
                while position < len(wanted) and wanted[position] == index:
                    frames.append(frame.to_image())
                    position += 1
    except av.FFmpegError as e:
        raise VideoError(f"video {path} cannot be decoded ({e})") from None
    if last is None:
        raise VideoError(f"video {path} has no frames that decode")
    frames += [last.to_image()] * (len(wanted) - len(frames))
    return [frame.convert("RGB") for frame in frames]


def process_frames(frames, image_processor, model_cfg=None):
    """(frames, C, H, W) pixels: each frame one view as the model's images are, AnyRes models padding instead of tiling."""
    aspect = getattr(model_cfg, "image_aspect_ratio", None) or "square"
    return process_images(frames, image_processor, types.SimpleNamespace(image_aspect_ratio="pad" if is_anyres(aspect) else aspect))
