"""The multimodal glue shared by every backbone.

`LlavaMetaModel` is mixed into a backbone's inner model (`LlamaModel`, `PhiModel`, ...)
and owns the vision tower and projector, so their state-dict keys are
`model.vision_tower.*` and `model.mm_projector.*` as in official LLaVA checkpoints.
`LlavaMetaForCausalLM` is mixed into the causal-LM class: it encodes images, splices
their features into the token embeddings at each IMAGE_TOKEN_INDEX, and wraps
`forward`/`generate` so official LLaVA's calling convention works unchanged.
"""

from __future__ import annotations

import inspect
import logging
import math

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_PATCH_TOKEN,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
)
from llava.mm_utils import MERGE_TYPES, AnyRes, is_anyres, unpadded_size
from llava.model.layout import FULL, CheckpointLayout
from llava.model.multimodal_encoder import VisionTower, build_vision_tower, load_vision_tower
from llava.model.multimodal_projector import build_vision_projector
from llava.video import NEWLINE_POSITIONS, VideoSettings

logger = logging.getLogger(__name__)

# transformers 5.24 renamed the KV-cache argument and output field `past_key_values` to `cache`
# (the old name still works, with a FutureWarning on every call); pass it under this version's name.
_CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _strip_prefix_to(state_dict: dict, marker: str) -> dict:
    """Keys after `marker`: "model.mm_projector.0.weight" -> "0.weight" for marker "mm_projector."."""
    return {k.split(marker, 1)[1]: v for k, v in state_dict.items() if marker in k}


def load_projector_weights(projector: nn.Module, path: str, weights: dict | None = None) -> None:
    """Load an official-layout `mm_projector.bin` (keys `*mm_projector.*`) into `projector`.

    `weights`: the file's contents when the caller has already read it (named by `path` in errors).
    """
    if weights is None:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    weights = _strip_prefix_to(weights, "mm_projector.")
    if not weights:
        raise ValueError(f"{path} holds no 'mm_projector.*' weights; is it a stage-1 mm_projector.bin?")
    expected = projector.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in weights.items()
        if k in expected and expected[k].shape != v.shape and expected[k].numel() > 0
    ]
    if mismatched or set(weights) != set(expected):
        raise ValueError(
            f"projector weights in {path} do not fit this model's projector "
            f"(missing {sorted(set(expected) - set(weights))}, unexpected {sorted(set(weights) - set(expected))}, "
            f"shape mismatches {mismatched}); check --mm_projector_type and the vision tower"
        )
    projector.load_state_dict(weights)


# -- AnyRes: one image's tile features -> the sequence the LLM sees -----------------------------
def anyres_for(config, tower) -> AnyRes | None:
    """The config's AnyRes settings for this tower; None when images are single tiles ('pad', 'square')."""
    if tower is None or not is_anyres(getattr(config, "image_aspect_ratio", None)):
        return None
    return AnyRes.from_config(config, tile=tower.image_size, side=tower.num_patches_per_side,
                              tile_tokens=tower.num_patches)


def check_image_settings(config) -> None:
    """Refuse, naming the field, image settings of LLaVA / LLaVA-NeXT configs this code cannot reproduce.

    The video fields (mm_spatial_pool_stride / mode, frames_upbound, force_sample, mm_newline_position,
    add_faster_video) act on videos only and are checked when a video is shown (`video_for`). Fields that act only with an
    aspect ratio refused here (image_crop_resolution / image_split_resolution: 'crop_split') are
    accepted and have no effect.
    """
    aspect = getattr(config, "image_aspect_ratio", None) or "square"
    merge = getattr(config, "mm_patch_merge_type", None) or "flat"
    if aspect not in ("square", "pad", "resize", "original") and not is_anyres(aspect):
        raise ValueError(f"image_aspect_ratio {aspect!r} (LLaVA-NeXT's highres / crop_split tiling) is not supported; "
                         "supported: square, pad, anyres, anyres_max_N")
    if merge not in MERGE_TYPES:
        raise ValueError(f"mm_patch_merge_type {merge!r} is not supported; supported: {', '.join(MERGE_TYPES)}")
    if merge != "flat" and not is_anyres(aspect):
        raise ValueError(f"mm_patch_merge_type {merge!r} lays out AnyRes tiles, but image_aspect_ratio is {aspect!r}; "
                         "use anyres / anyres_max_N, or mm_patch_merge_type 'flat'")
    resampler = getattr(config, "mm_resampler_type", None)
    if resampler:
        raise ValueError(f"mm_resampler_type {resampler!r}: vision resamplers are not supported")


def video_for(config, tower) -> VideoSettings | None:
    """How this model samples and pools videos; None without a vision tower. Video settings this code cannot
    reproduce are refused here, naming the field (a checkpoint holding them still answers about images)."""
    if tower is None:
        return None
    newline = getattr(config, "mm_newline_position", None) or "one_token"
    if newline not in NEWLINE_POSITIONS:
        raise ValueError(f"mm_newline_position {newline!r} is not supported for videos; supported: "
                         f"{', '.join(NEWLINE_POSITIONS)}")
    if getattr(config, "add_faster_video", False):
        raise ValueError("add_faster_video: the second, coarser video stream is not supported; set it to false")
    return VideoSettings.from_config(config, side=tower.num_patches_per_side, tile_tokens=tower.num_patches)


def pool_frames(features: torch.Tensor, video: VideoSettings) -> torch.Tensor:
    """(frames, side * side, D) patch features -> (frames, pooled side ** 2, D), each frame's grid pooled by the
    stride (OneVision's spatial pooling; `video.frame_tokens` gives the size without running this)."""
    frames, _, dim = features.shape
    grid = features.view(frames, video.side, video.side, dim).permute(0, 3, 1, 2)
    if video.pool_stride > 1:
        if video.pool_mode == "average":
            grid = nn.functional.avg_pool2d(grid, video.pool_stride)
        elif video.pool_mode == "max":
            grid = nn.functional.max_pool2d(grid, video.pool_stride)
        else:
            side = math.ceil(video.side / video.pool_stride)
            grid = nn.functional.interpolate(grid, size=[side, side], mode="bilinear")
    return grid.permute(0, 2, 3, 1).reshape(frames, -1, dim)


def uses_image_newline(config) -> bool:
    """Whether the model carries the learned `image_newline` (LLaVA-NeXT's spatial_unpad merge)."""
    return getattr(config, "mm_patch_merge_type", None) == "spatial_unpad"


def unpad_features(feature_map: torch.Tensor, image_size) -> torch.Tensor:
    """(D, rows, cols) grid features without the rows or columns that show only the canvas' padding.

    `image_size`: the image's (width, height); it was centred on the canvas with its aspect kept.
    """
    rows, cols = feature_map.shape[1:]
    kept_rows, kept_cols = unpadded_size((rows, cols), tuple(image_size))
    top, left = (rows - kept_rows) // 2, (cols - kept_cols) // 2
    return feature_map[:, top : top + kept_rows, left : left + kept_cols]


def pack_image_features(features, image_sizes, anyres: AnyRes, newline: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Each image's (1 + tiles, patches, D) projected tile features -> its (positions, D) sequence.

    flat: every tile's patches in turn, the base tile first. spatial: the base tile, then the grid's
    tiles put back together as one feature map, read row by row. spatial_unpad: the same map without the
    padding's rows/columns, shrunk to anyres_max_N's budget, with `newline` after each row, so the LLM
    can tell the map's shape. `anyres.tokens(size)` gives each result's length without running this.
    """
    packed = []
    side = anyres.side
    for tiles, size in zip(features, image_sizes):
        size = tuple(int(n) for n in size)
        if anyres.merge == "flat":
            packed.append(tiles.flatten(0, 1))
            continue
        cols, rows = anyres.grid(size)
        dim = tiles.shape[-1]
        # (rows, cols, side, side, D) -> (D, rows * side, cols * side): tile rows interleaved with patch rows.
        grid = tiles[1:].view(rows, cols, side, side, dim).permute(4, 0, 2, 1, 3).reshape(dim, rows * side, cols * side)
        if anyres.merge == "spatial_unpad":
            grid = unpad_features(grid, size)
            height, width = anyres.map_size(size)
            if (height, width) != tuple(grid.shape[1:]):  # anyres_max_N: over budget, shrunk
                grid = nn.functional.interpolate(grid[None], [height, width], mode="bilinear")[0]
            grid = torch.cat([grid, newline.to(grid.dtype)[:, None, None].expand(dim, height, 1)], dim=2)
        packed.append(torch.cat([tiles[0], grid.flatten(1).transpose(0, 1)]))
    return packed


class LlavaMetaModel:
    """Mixin for a backbone's inner model: adds `vision_tower` and `mm_projector`."""

    def __init__(self, config):
        super().__init__(config)
        if getattr(config, "mm_vision_tower", None):
            check_image_settings(config)
            self.vision_tower = build_vision_tower(config)
            self.mm_projector = build_vision_projector(config, self.get_input_embeddings().embedding_dim)
            if uses_image_newline(config):  # filled from the checkpoint's `model.image_newline`
                self.image_newline = nn.Parameter(torch.zeros(self.get_input_embeddings().embedding_dim))

    def get_vision_tower(self) -> VisionTower | None:
        return getattr(self, "vision_tower", None)

    def initialize_vision_modules(
        self,
        vision_tower: str,
        mm_projector_type: str = "linear",
        mm_vision_select_layer: int = -2,
        mm_vision_select_feature: str = "patch",
        pretrain_mm_mlp_adapter: str | None = None,
        mm_patch_merge_type: str = "flat",
    ) -> None:
        """Attach a pretrained vision tower and a fresh (or stage-1) projector to a plain LLM.

        Records every choice in the config so the saved checkpoint rebuilds the same model.
        `mm_patch_merge_type` 'spatial_unpad' adds the learned `image_newline` (AnyRes; see `pack_image_features`).
        """
        config = self.config
        tower = self.get_vision_tower()
        if tower is None or tower.vision_tower_name != vision_tower:
            tower = load_vision_tower(vision_tower, mm_vision_select_layer, mm_vision_select_feature)
            self.vision_tower = tower
        tower.select(mm_vision_select_layer, mm_vision_select_feature)

        config.mm_vision_tower = vision_tower
        config.mm_vision_config = tower.config.to_dict()
        config.mm_vision_select_layer = mm_vision_select_layer
        config.mm_vision_select_feature = mm_vision_select_feature
        config.mm_hidden_size = tower.hidden_size
        config.mm_projector_type = mm_projector_type
        config.use_mm_proj = True
        config.mm_patch_merge_type = mm_patch_merge_type
        if uses_image_newline(config) and getattr(self, "image_newline", None) is None:
            hidden = self.get_input_embeddings().embedding_dim
            # LLaVA-NeXT's scale: about the size of one embedding coordinate.
            self.image_newline = nn.Parameter(torch.randn(hidden, dtype=self.get_input_embeddings().weight.dtype) / math.sqrt(hidden))

        projector = getattr(self, "mm_projector", None)
        if projector is None:
            self.mm_projector = build_vision_projector(config, self.get_input_embeddings().embedding_dim)
        self.mm_projector.requires_grad_(True)
        if pretrain_mm_mlp_adapter:
            load_projector_weights(self.mm_projector, pretrain_mm_mlp_adapter)


class LlavaMetaForCausalLM:
    """Mixin for a backbone's causal-LM class (listed first, so it wraps `forward`/`generate`)."""

    # Training turns this on (--label_logits_only): with labels, forward returns only the loss.
    label_logits_only = False
    # Why packed rows (--packing) cannot work with this backbone; None where they do. A backbone opts
    # in once its attention keeps packed samples apart given position_ids and no attention mask.
    packing_unsupported: str | None = "its attention has not been checked to keep packed samples apart"

    def get_model(self):
        return getattr(self, self.base_model_prefix)

    def get_vision_tower(self) -> VisionTower | None:
        return self.get_model().get_vision_tower()

    @classmethod
    def from_pretrained(cls, *args, llava_checkpoint: CheckpointLayout | None = None, **kwargs):
        """Also fills the vision tower when the weight files lack it (LoRA/stage-1 bases, official checkpoints).

        `llava_checkpoint`: the checkpoint this is loaded for, as `llava.model.layout` resolved it; for a
        LoRA or stage-1 one the weights loaded here are its base's, so a missing projector is expected
        (the checkpoint's files supply it) and the tower may come from the checkpoint's copy.
        """
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        model.config.architectures = [type(model).__name__]  # not the plain LLM's class a base config names
        missing = set(info.get("missing_keys", ())) | model.__dict__.pop("_vision_keys_missing", set())
        loaded_from = str(args[0] if args else kwargs.get("pretrained_model_name_or_path"))
        dropped = sorted(info.get("unexpected_keys", ()))
        if dropped:  # a weight this class has no place for would silently vanish from the trained model
            raise ValueError(
                f"{loaded_from} holds {len(dropped)} weight(s) {type(model).__name__} has no place for, e.g. "
                f"{', '.join(dropped[:3])}; it is another family's checkpoint: load it with the backbone of its "
                "model_type (leave --backbone out)"
            )
        layout = llava_checkpoint or CheckpointLayout(loaded_from, FULL, mm_vision_tower=getattr(model.config, "mm_vision_tower", None))
        tower = model.get_vision_tower()
        if tower is not None and any(".vision_tower." in key for key in missing):
            source = layout.load_tower_weights(tower)
            logger.info("vision tower weights from %s (the weight files hold none)", source)
        if layout.kind == FULL and any(".mm_projector." in key for key in missing):
            logger.warning("%s holds no mm_projector weights: the projector is randomly initialised", loaded_from)
        newline = getattr(model.get_model(), "image_newline", None)
        if newline is not None and any(key.endswith("image_newline") for key in missing):
            # Left as allocated otherwise (garbage); a stage-1 or LoRA checkpoint's own files may fill it next.
            with torch.no_grad():
                newline.copy_(torch.randn(newline.shape, generator=torch.Generator().manual_seed(0)) / math.sqrt(newline.numel()))
            if layout.kind == FULL:
                logger.warning("%s holds no image_newline (mm_patch_merge_type spatial_unpad): randomly initialised",
                               loaded_from)
        return (model, info) if want_info else model

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        # transformers' load report would list every tower/projector weight as MISSING ("newly
        # initialized") although from_pretrained above fills them right after; report the rest.
        super()._adjust_missing_and_unexpected_keys(loading_info)
        vision = {k for k in loading_info.missing_keys
                  if ".vision_tower." in k or ".mm_projector." in k or k.endswith(".image_newline")}
        self._vision_keys_missing = vision
        loading_info.missing_keys = set(loading_info.missing_keys) - vision

    # -- images ----------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) pixels -> (N, num_patches, hidden) embeddings in the LLM's space."""
        return self.project_features(self.get_vision_tower()(images))

    def project_features(self, features: torch.Tensor) -> torch.Tensor:
        """The vision tower's (N, num_patches, mm_hidden) output (fresh or cached) -> LLM embeddings."""
        projector = self.get_model().mm_projector
        first = next(projector.parameters(), None)
        if first is not None:
            features = features.to(device=first.device, dtype=first.dtype)
        return projector(features)

    def _images_for_markers(self, images, markers_per_sample: torch.Tensor) -> torch.Tensor:
        """Line the given images up with the <image> markers, in row-major order.

        Accepts one image per marker, or official LLaVA's layout where each sample with no
        marker still carries one placeholder image (those are dropped unencoded).
        """
        if isinstance(images, (list, tuple)):
            images = torch.cat([img.unsqueeze(0) if img.ndim == 3 else img for img in images], dim=0)
        elif images.ndim == 5:
            images = images.flatten(0, 1)
        n_markers = int(markers_per_sample.sum())
        n_images = images.shape[0]
        if n_images == n_markers:
            return images
        text_only = markers_per_sample == 0
        if n_images == n_markers + int(text_only.sum()):
            consumed = torch.where(text_only, 1, markers_per_sample)
            owner = torch.repeat_interleave(torch.arange(len(consumed), device=consumed.device), consumed)
            return images[~text_only.to(images.device)[owner.to(images.device)]]
        raise ValueError(
            f"the batch has {n_markers} <image> markers (per sample: {markers_per_sample.tolist()}) "
            f"but {n_images} images were given; pass exactly one image per <image> marker"
        )

    # -- the merge -------------------------------------------------------------------------
    def prepare_inputs_labels_for_multimodal(
        self, input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes=None,
        image_features=None, padding_side: str | None = None, video_frames=None,
    ):
        """Replace each IMAGE_TOKEN_INDEX in `input_ids` by that image's projected patch features.

        `image_features` (instead of `images`): the tower's outputs, one per marker, e.g. from a
        vision feature cache; then only the projector runs.

        Returns `(input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels)`
        as official LLaVA does: `input_ids` is None once embeddings were built. Image positions
        get IGNORE_INDEX labels. Samples are re-padded on the side their padding came from
        (`padding_side` when given: generation continues from the right edge, so it asks for "left" even
        when the prompts needed no padding but their images differ in length), and cut to `tokenizer_model_max_length` (never inside an image).

        Packed rows (`position_ids` restarting at 0 where each sample starts, as --packing
        collates them) come back with per-sample positions counted after image expansion and
        `attention_mask=None`, from which the backbone builds a block-diagonal causal mask.

        `video_frames` (one per marker; 0 for an image): a marker with n > 0 is a video whose n frames are
        the next n rows of `images` / `image_features`; their features are pooled (`pool_frames`) and fill
        the marker's place in order.
        """
        tower = self.get_vision_tower()
        if tower is None or input_ids is None:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels
        if isinstance(image_features, (list, tuple)):
            image_features = torch.cat(list(image_features))
        is_image = input_ids == IMAGE_TOKEN_INDEX
        markers_per_sample = is_image.sum(dim=1)
        n_markers = int(markers_per_sample.sum())
        packed = self._is_packed(input_ids, position_ids, attention_mask)
        if packed and self.packing_unsupported:
            raise ValueError(
                f"packed rows (--packing) cannot be trained with {type(self).__name__}: {self.packing_unsupported}"
            )

        placeholder = n_markers == 0 and (images is not None or image_features is not None) and self._in_lockstep()
        if n_markers == 0 and not packed and not placeholder:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels

        # The vision modules run first, whatever the batch holds: on its images, or on one placeholder
        # whose features are merged nowhere. Every rank then runs the same modules in the same order
        # and its vision parameters get (zero) gradients in the same order, which ZeRO-3's parameter
        # fetches and ZeRO-2/3's gradient buckets need (a rank skipping them aborts or hangs the job).
        anyres = anyres_for(self.config, tower)
        if video_frames is not None and n_markers and bool((torch.as_tensor(video_frames) > 0).any()):
            projected, counts = self._with_videos(images, image_features, image_sizes, video_frames, n_markers, anyres)
            merged = self._merge(input_ids, is_image, attention_mask, labels, projected, counts, past_key_values,
                                 position_ids if packed else None, padding_side)
            return (None, *merged)
        projected = None
        if image_features is not None:
            if anyres is not None:
                features = image_features if n_markers else image_features.new_zeros(1, *self._feature_shape(image_features))
            else:
                features = self._images_for_markers(image_features, markers_per_sample) if n_markers else (
                    image_features.new_zeros(1, *self._feature_shape(image_features)))
            projected = self.project_features(features)
        elif images is not None:
            if anyres is not None:
                if isinstance(images, (list, tuple)):
                    images = torch.cat(list(images))
                pixels = images if n_markers else self._placeholder_image()
            else:
                pixels = self._images_for_markers(images, markers_per_sample) if n_markers else self._placeholder_image()
            projected = self.encode_images(pixels)
        elif n_markers:
            raise ValueError(f"input_ids hold {n_markers} <image> markers but no images were passed")

        counts = None
        if projected is not None and anyres is not None:
            projected, counts = self._pack_anyres(projected, image_sizes, n_markers, anyres)
        elif projected is not None:
            counts = torch.full((n_markers,), projected.shape[1], dtype=torch.long, device=input_ids.device)
            projected = projected.flatten(0, 1)
        merged = self._merge(
            input_ids, is_image, attention_mask, labels, projected, counts, past_key_values, position_ids if packed else None,
            padding_side,
        )
        return (None, *merged)

    def _with_videos(self, images, image_features, image_sizes, video_frames, n_markers: int, anyres: AnyRes | None):
        """A batch holding videos: (positions of every marker's image or video, D) and each marker's count."""
        frames = [int(n) for n in torch.as_tensor(video_frames).tolist()]
        if len(frames) != n_markers:
            raise ValueError(f"the batch has {n_markers} <image> markers but {len(frames)} video_frames; pass one per "
                             "marker (0 for an image)")
        sizes = [None] * n_markers
        if anyres is not None:
            if image_sizes is None or len(image_sizes) != n_markers:
                raise ValueError(f"image_aspect_ratio {self.config.image_aspect_ratio!r}: pass image_sizes, one "
                                 "(width, height) per marker (any value for a video's)")
            sizes = [tuple(int(n) for n in size) for size in (image_sizes.tolist() if torch.is_tensor(image_sizes) else image_sizes)]
        rows = [n if n else (anyres.num_tiles(size) if anyres is not None else 1) for n, size in zip(frames, sizes)]
        source = image_features if image_features is not None else images
        if source is None:
            raise ValueError(f"input_ids hold {n_markers} <image> markers but no images were passed")
        if isinstance(source, (list, tuple)):
            source = torch.cat(list(source))
        if source.shape[0] != sum(rows):
            raise ValueError(f"the markers need {sum(rows)} rows of images ({rows} per marker: frames of videos, "
                             f"tiles or one per image) but {source.shape[0]} were given")
        projected = self.project_features(source) if image_features is not None else self.encode_images(source)
        video = video_for(self.config, self.get_vision_tower())
        newline = getattr(self.get_model(), "image_newline", None)
        pieces = []
        for part, n, size in zip(projected.split(rows), frames, sizes):
            if n:
                piece = pool_frames(part, video).flatten(0, 1)
                if video.newline:  # LLaVA-NeXT's "one_token": one newline after the video
                    piece = torch.cat([piece, newline.to(piece.dtype)[None]])
                pieces.append(piece)
            elif anyres is not None:
                pieces.append(pack_image_features([part], [size], anyres, newline)[0])
            else:
                pieces.append(part.flatten(0, 1))
        counts = torch.tensor([len(p) for p in pieces], dtype=torch.long, device=projected.device)
        return torch.cat(pieces), counts

    def _pack_anyres(self, projected: torch.Tensor, image_sizes, n_markers: int, anyres: AnyRes):
        """All tiles' (tiles, patches, D) projected features -> (positions of every image, D) and each image's count."""
        newline = getattr(self.get_model(), "image_newline", None)
        if anyres.merge == "spatial_unpad" and newline is None:
            raise ValueError("mm_patch_merge_type 'spatial_unpad' needs the model's image_newline, which it lacks")
        if n_markers == 0:  # the placeholder: the newline joins the graph too, so it gets its (zero) gradient
            flat = projected.flatten(0, 1)
            if newline is not None:
                flat = flat + 0 * newline.to(flat.dtype)
            return flat, torch.zeros(0, dtype=torch.long, device=flat.device)
        if image_sizes is None:
            raise ValueError(
                f"image_aspect_ratio {self.config.image_aspect_ratio!r} lays each image's tiles out by the image's size: "
                "pass image_sizes, one (width, height) per image"
            )
        sizes = [tuple(int(n) for n in size) for size in (image_sizes.tolist() if torch.is_tensor(image_sizes) else image_sizes)]
        if len(sizes) != n_markers:
            raise ValueError(f"the batch has {n_markers} <image> markers but {len(sizes)} image_sizes; pass one per image")
        tiles = [anyres.num_tiles(size) for size in sizes]
        if sum(tiles) != projected.shape[0]:
            raise ValueError(
                f"the images' sizes {sizes} call for {sum(tiles)} tiles ({tiles} per image) under "
                f"image_grid_pinpoints {self.config.image_grid_pinpoints!r}, but {projected.shape[0]} were given; "
                "process the images with this model's config (llava.mm_utils.process_images)"
            )
        packed = pack_image_features(projected.split(tiles), sizes, anyres, newline)
        counts = torch.tensor([len(p) for p in packed], dtype=torch.long, device=projected.device)
        return torch.cat(packed), counts

    def _in_lockstep(self) -> bool:
        """Whether a batch without images must still run the vision modules: in training (every rank,
        and a single process alike, so the optimizer sees the same zero gradients), and whenever
        several processes run the model together (ZeRO-3 evaluation fetches parameters module by module)."""
        if self.training:
            return True
        import torch.distributed as dist

        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def _placeholder_image(self) -> torch.Tensor:
        return torch.zeros(1, *self.get_vision_tower().pixel_shape, device=self.device)

    def _feature_shape(self, image_features: torch.Tensor) -> tuple[int, int]:
        """(patches, hidden) of one image's cached tower output (an empty batch still carries them)."""
        if image_features.ndim == 3:
            return tuple(image_features.shape[1:])
        tower = self.get_vision_tower()
        return tower.num_patches, tower.hidden_size

    @staticmethod
    def _is_packed(input_ids, position_ids, attention_mask) -> bool:
        """Whether some row holds several samples: its position ids restart at 0 inside it."""
        if position_ids is None or position_ids.shape != input_ids.shape:
            return False  # e.g. a decoding step with a cache
        starts = position_ids == 0
        if attention_mask is not None and attention_mask.shape == input_ids.shape:
            starts &= attention_mask.bool()
        return bool((starts.sum(dim=1) > 1).any())

    def _merge(self, input_ids, is_image, attention_mask, labels, image_features, image_counts, past_key_values,
               packed_positions=None, padding_side=None):
        """`image_features` (positions of every image, hidden), in marker order, and `image_counts`
        (markers,): how many of those positions each marker's image fills; both None without images.
        `packed_positions`: the collator's per-sample positions of packed rows, else None."""
        batch, seq_len = input_ids.shape
        device = input_ids.device
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if (is_image & ~mask).any():
            raise ValueError("an <image> marker sits on a padding position (attention_mask == 0)")

        # Where every kept token lands in its sample once padding is dropped and images expanded.
        width = torch.ones_like(input_ids)
        if image_counts is not None:
            width[is_image] = image_counts.to(device)
        width = width * mask
        start = width.cumsum(dim=1) - width
        length = width.sum(dim=1)

        max_len = getattr(self.config, "tokenizer_model_max_length", None)
        if max_len is not None and bool((length > max_len).any()):
            cut = is_image & (start < max_len) & (start + width > max_len)
            if cut.any():
                sample, column = (int(i) for i in cut.nonzero()[0])
                raise ValueError(
                    f"sample {sample} is {int(length[sample])} tokens with its images expanded; cutting it to "
                    f"tokenizer_model_max_length={max_len} would split an image's {int(width[sample, column])} "
                    "tokens. Raise --model_max_length or shorten the text before the image."
                )
            length = length.clamp(max=max_len)
        out_len = int(length.max())

        left_pad = packed_positions is None and (padding_side == "left" if padding_side else self._pads_left(mask))
        offset = (out_len - length) if left_pad else torch.zeros_like(length)
        position = start + offset[:, None]
        kept = mask & (start < length[:, None])

        token_embeds = self.get_model().get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        embeds = token_embeds.new_zeros(batch, out_len, token_embeds.shape[-1])
        new_mask = torch.zeros(batch, out_len, dtype=torch.bool, device=device)
        new_labels = torch.full((batch, out_len), IGNORE_INDEX, dtype=torch.long, device=device)

        text = kept & ~is_image
        rows, cols = text.nonzero(as_tuple=True)
        text_pos = position[rows, cols]
        embeds[rows, text_pos] = token_embeds[rows, cols]
        new_mask[rows, text_pos] = True
        if labels is not None:
            new_labels[rows, text_pos] = labels[rows, cols]

        if image_features is not None:
            # Markers in row-major order match image_features' order; a marker past the cut is dropped.
            img_rows, img_cols = is_image.nonzero(as_tuple=True)
            counts = image_counts.to(device)
            keep = kept[img_rows, img_cols].repeat_interleave(counts)
            # A placeholder's features (a batch without markers) are sliced away here, inside the graph, so
            # their gradient is zero but still reaches the vision modules exactly as real images' does.
            image_features = image_features[: int(counts.sum())]
            first = counts.cumsum(0) - counts
            within = torch.arange(int(counts.sum()), device=device) - first.repeat_interleave(counts)
            feature_pos = position[img_rows, img_cols].repeat_interleave(counts) + within
            feature_rows = img_rows.repeat_interleave(counts)
            embeds[feature_rows[keep], feature_pos[keep]] = image_features[keep].to(embeds.dtype)
            new_mask[feature_rows[keep], feature_pos[keep]] = True

        out_labels = new_labels if labels is not None else None
        if packed_positions is not None:
            position_ids, out_labels = self._packed_positions(packed_positions, kept, position, length, out_len, out_labels)
            return position_ids, None, past_key_values, embeds, out_labels
        position_ids = (new_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        out_mask = new_mask if attention_mask is None else new_mask.to(attention_mask.dtype)
        return position_ids, out_mask, past_key_values, embeds, out_labels

    @staticmethod
    def _packed_positions(packed_positions, kept, position, length, out_len, labels):
        """Per-sample positions in the merged (image-expanded, right-padded) rows of a packed batch.

        A sample starts where the collator's position is 0; the padding after a row's last
        sample counts as one more sample, so with no attention mask it is kept apart too. The
        first token of every sample gets no label: the previous sample's last token must not
        learn to predict it.
        """
        batch = kept.shape[0]
        device = kept.device
        is_start = torch.zeros(batch, out_len, dtype=torch.bool, device=device)
        rows, cols = ((packed_positions == 0) & kept).nonzero(as_tuple=True)
        is_start[rows, position[rows, cols]] = True
        padded = length < out_len
        is_start[padded.nonzero(as_tuple=True)[0], length[padded]] = True
        index = torch.arange(out_len, device=device).expand(batch, -1)
        last_start = torch.where(is_start, index, 0).cummax(dim=1).values
        if labels is not None:
            labels = labels.masked_fill(is_start, IGNORE_INDEX)
        return index - last_start, labels

    def _pads_left(self, mask: torch.Tensor) -> bool:
        """Padding side as the batch shows it; the configured side when the batch has none."""
        if not mask.all():
            return bool((~mask[:, 0]).any())
        return getattr(self.config, "tokenizer_padding_side", "right") == "left"

    # -- HF entry points ---------------------------------------------------------------------
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        images=None,
        image_sizes=None,
        image_features=None,
        video_frames=None,
        logits_to_keep=0,
        **kwargs,
    ):
        # `logits_to_keep` is named (not left in **kwargs) because generate() looks for it in this
        # signature: with it, the prompt's forward computes vocabulary logits for the last position
        # only instead of every prompt position, the bulk of a small model's prefill.
        if kwargs.get(_CACHE) is not None:  # generate() passes the cache under the new name
            past_key_values = kwargs.pop(_CACHE)
        kwargs.pop(_CACHE, None)
        if inputs_embeds is None:
            if self._is_packed(input_ids, position_ids, attention_mask):
                # Backbones skip the per-sample mask when handed a cache, even an empty one.
                use_cache = False
            input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels = (
                self.prepare_inputs_labels_for_multimodal(
                    input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes,
                    image_features=image_features, video_frames=video_frames,
                )
            )
        if self._accepts_position_ids():
            kwargs["position_ids"] = position_ids
        if labels is not None and self.label_logits_only and not kwargs.get("output_hidden_states"):
            return self._loss_at_label_positions(
                inputs_embeds, attention_mask, past_key_values, labels, use_cache, **kwargs
            )
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            **{_CACHE: past_key_values},
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def _loss_at_label_positions(self, inputs_embeds, attention_mask, past_key_values, labels, use_cache, **kwargs):
        """The causal-LM loss with the LM head applied only where a label is predicted.

        Full-vocabulary logits at every position (51,200 x sequence for Phi) dominate a small
        model's step; answer tokens are a small share of a LLaVA sequence. Same loss (mean over
        predicted tokens, or sum / num_items_in_batch as the HF Trainer asks under gradient
        accumulation); `logits` is not returned.
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self.get_model()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            **{_CACHE: past_key_values},
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs[0]
        # Position t predicts token t + 1.
        targets = labels[:, 1:].to(hidden.device)
        picked = targets != IGNORE_INDEX
        logits = self.get_output_embeddings()(hidden[:, :-1][picked]).float()
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap:  # Gemma 2 squashes its logits before the loss; its own forward does the same
            logits = torch.tanh(logits / cap) * cap
        loss = nn.functional.cross_entropy(logits, targets[picked], reduction="sum")
        if num_items_in_batch is None:
            loss = loss / picked.sum().clamp(min=1)
        else:
            loss = loss / (num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch)
        return CausalLMOutputWithPast(loss=loss, **{_CACHE: getattr(outputs, _CACHE, None)})

    def _accepts_position_ids(self) -> bool:
        # MPT uses ALiBi and its forward takes no position_ids.
        base_forward = super(LlavaMetaForCausalLM, self).forward
        return "position_ids" in inspect.signature(base_forward).parameters

    @torch.no_grad()
    def generate(self, inputs=None, images=None, image_sizes=None, video_frames=None, **kwargs):
        """`generate(input_ids, images=..., max_new_tokens=...)`; returns only the new tokens, as official LLaVA."""
        if "inputs_embeds" in kwargs:
            raise ValueError("pass input_ids (with IMAGE_TOKEN_INDEX markers) and images, not inputs_embeds")
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        if input_ids is None:
            raise ValueError("generate() needs input_ids")
        attention_mask = kwargs.pop("attention_mask", None)
        kwargs.pop("position_ids", None)  # derived from the merged attention mask by generate()
        _, _, attention_mask, _, inputs_embeds, _ = self.prepare_inputs_labels_for_multimodal(
            input_ids, None, attention_mask, None, None, images, image_sizes, padding_side="left",
            video_frames=video_frames,
        )
        if inputs_embeds is None:
            inputs_embeds = self.get_model().get_input_embeddings()(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        return super().generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    # -- tokenizer ---------------------------------------------------------------------------
    def initialize_vision_tokenizer(self, tokenizer, mm_use_im_start_end=False, mm_use_im_patch_token=False):
        """Add LLaVA's optional image tokens to the tokenizer and grow the embeddings to match."""
        new_tokens = []
        if mm_use_im_patch_token:
            new_tokens.append(DEFAULT_IMAGE_PATCH_TOKEN)
        if mm_use_im_start_end:
            new_tokens += [DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN]
        self.config.mm_use_im_start_end = mm_use_im_start_end
        self.config.mm_use_im_patch_token = mm_use_im_patch_token
        if not new_tokens:
            return 0
        added = tokenizer.add_tokens(new_tokens, special_tokens=True)
        if len(tokenizer) > self.get_input_embeddings().num_embeddings:
            self.resize_embeddings(len(tokenizer))
        if added:
            self._init_rows_to_mean(torch.tensor(tokenizer.convert_tokens_to_ids(new_tokens)))
        return added

    def resize_embeddings(self, num_tokens: int) -> None:
        """Grow (or shrink) the vocabulary; new rows start at the mean of the old ones, deterministically."""
        old = self.get_input_embeddings().num_embeddings
        self.resize_token_embeddings(num_tokens, mean_resizing=False)
        if num_tokens > old:
            self._init_rows_to_mean(torch.arange(old, num_tokens))

    def _init_rows_to_mean(self, rows: torch.Tensor) -> None:
        # Mean rows keep new tokens from dominating early training.
        keep = torch.ones(self.get_input_embeddings().num_embeddings, dtype=torch.bool)
        keep[rows] = False
        for matrix in (self.get_input_embeddings().weight, self.get_output_embeddings().weight):
            with torch.no_grad():
                matrix[rows] = matrix[keep].mean(dim=0, keepdim=True)
