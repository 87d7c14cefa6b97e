"""Command-line arguments, with official LLaVA's flag names plus every HF `TrainingArguments` flag."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import transformers

from llava.mm_utils import MAX_IMAGE_PIXELS
from llava.train.feature_cache import NEEDS_FROZEN_TOWER
from llava.video import DEFAULT_FRAMES_UPBOUND, DEFAULT_POOL_MODE, DEFAULT_POOL_STRIDE

TRAIN_MODULES = ("projector", "lora", "llm", "vision_tower", "lm_head")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "plain LLM checkpoint (or a LLaVA checkpoint) to start from"})
    backbone: str | None = field(
        default=None, metadata={"help": "phi, llama, opt or mpt; default: read from the checkpoint's config"}
    )
    version: str | None = field(
        default=None, metadata={"help": "conversation template (plain for stage 1; chat_template: the tokenizer's own "
                                         "Jinja chat template); default: the backbone's"}
    )
    vision_tower: str = field(default=None, metadata={"help": "vision tower directory or cached name (CLIP, SigLIP, DINOv2, or a fused tower's folder)"})
    mm_projector_type: str = field(default="linear", metadata={"help": "linear, mlp2x_gelu, simple_resblock, identity"})
    mm_vision_select_layer: int = field(default=-2)
    mm_vision_select_feature: str = field(default="patch", metadata={"help": "patch or cls_patch"})
    pretrain_mm_mlp_adapter: str | None = field(default=None, metadata={"help": "stage-1 mm_projector.bin"})
    mm_patch_merge_type: str = field(
        default="flat",
        metadata={"help": "AnyRes only: how an image's tiles reach the LLM. flat (every tile's patches in turn), "
                  "spatial (the base tile, then the grid as one feature map) or spatial_unpad (LLaVA-NeXT's: that map "
                  "without its padding, a learned image_newline after each row)"},
    )
    mm_spatial_pool_stride: int = field(
        default=DEFAULT_POOL_STRIDE,
        metadata={"help": "videos: each frame's patch grid is pooled by this stride (2: a quarter of the patches; "
                  "1: no pooling), as LLaVA-OneVision does"},
    )
    mm_spatial_pool_mode: str = field(
        default=DEFAULT_POOL_MODE, metadata={"help": "videos: average, max or bilinear (OneVision's) frame pooling"}
    )
    mm_use_im_start_end: bool = field(default=False)
    mm_use_im_patch_token: bool = field(default=False)
    mm_monitors: bool = field(
        default=True,
        metadata={"help": "log image/text feature RMS, their ratio, the image spread and per-group gradient norms "
                  "every --logging_steps (llava/train/monitors.py; docs/training.md, Reading the monitors)"},
    )
    tune_mm_mlp_adapter: bool = field(default=False, metadata={"help": "stage 1: train the projector only"})
    freeze_backbone: bool = field(default=False, metadata={"help": "keep the LLM frozen (drops 'llm')"})
    train_modules: str | None = field(
        default=None,
        metadata={"help": f"comma list among {', '.join(TRAIN_MODULES)}; default from the official flags"},
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "sdpa, eager, flash_attention_2"})


@dataclass
class DataArguments:
    data_path: str = field(default=None, metadata={"help": "LLaVA JSON (or JSONL) training records"})
    eval_data_path: str | None = field(default=None, metadata={"help": "records for eval_loss during training"})
    image_folder: str | None = field(default=None, metadata={"help": "root that record 'image' paths are relative to"})
    image_aspect_ratio: str = field(
        default="square",
        metadata={"help": "pad (LLaVA-1.5), square, anyres or anyres_max_N (LLaVA-NeXT: tiles on the best of "
                  "--image_grid_pinpoints; anyres_max_N shrinks an image's feature map to about N tiles' worth)"},
    )
    image_grid_pinpoints: str | None = field(
        default=None,
        metadata={"help": "AnyRes canvases (width, height) in pixels, e.g. '[(336, 672), (672, 336), (672, 672)]', "
                  "or in tiles of the tower's input, e.g. '(1x1),...,(3x3)'"},
    )
    frames_upbound: int = field(
        default=DEFAULT_FRAMES_UPBOUND,
        metadata={"help": "videos: at most this many frames, evenly spaced (all of a shorter video's)"},
    )
    force_sample: bool = field(
        default=False, metadata={"help": "videos: always exactly --frames_upbound frames (a short video repeats frames)"}
    )
    lazy_preprocess: bool = field(
        default=True, metadata={"help": "tokenise and load images per step; False tokenises every record upfront"}
    )
    skip_invalid: bool = field(
        default=False, metadata={"help": "drop bad records (counted and logged) instead of stopping with an error"}
    )
    max_image_pixels: int = field(
        default=MAX_IMAGE_PIXELS,
        metadata={"help": "refuse images with more pixels (width x height) than this, from their header and before "
                  "decoding (a record error, or a counted skip with --skip_invalid); 0: no limit"},
    )
    allow_outside_image_folder: bool = field(
        default=False,
        metadata={"help": "accept image paths that are absolute or climb out of --image_folder with '..' "
                  "(refused by default)"},
    )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    model_max_length: int = field(default=2048, metadata={"help": "longest sequence, image patches included"})
    group_by_modality_length: bool = field(
        default=False,
        metadata={"help": "official LLaVA's grouping: each global batch is all-image or all-text, sorted by "
                  "approximate (word-count) length inside; leaves most of the padding of random batches"},
    )
    # HF's own flag, kept by name; its 'group_by_length' here is LLaVA-aware (see llava/train/sampler.py).
    train_sampling_strategy: str = field(
        default="random",
        metadata={
            "help": "random (default), sequential, group_by_length or batch_rebalance. group_by_length: every "
                    "per-device batch holds records of near-equal exact token length (image patches included), "
                    "one modality each, batches in random order per seed and epoch; about 1-3 %% padding",
            "choices": ["random", "sequential", "group_by_length", "batch_rebalance"],
        },
    )
    packing: bool = field(
        default=False,
        metadata={"help": "pack each batch's samples into as few rows of at most --model_max_length positions "
                  "as fit (image patches counted); samples never attend to each other. Same loss and "
                  "gradients as unpacked; phi and llama backbones"},
    )
    mm_projector_lr: float | None = field(default=None, metadata={"help": "projector learning rate (default: --learning_rate)"})
    mm_vision_tower_lr: float | None = field(
        default=None,
        metadata={"help": "vision tower learning rate when it trains (default: --learning_rate); a random-init "
                  "tower trained at the LLM's rate collapses its images onto one feature (docs/training.md)"},
    )
    label_logits_only: bool = field(
        default=True,
        metadata={"help": "apply the LM head only where an answer token is predicted (same loss, far less "
                  "compute over a large vocabulary); False computes full logits as the backbone does"},
    )
    vision_feature_cache: str | None = field(
        default=None,
        metadata={"help": "folder caching the frozen vision tower's outputs: computed once (or reused when tower, "
                  "select layer/feature and image processing match), then training skips image decode and the tower"},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "start over even if --output_dir holds checkpoint-N folders of an earlier run (they are "
                  "deleted); by default a run continues from the newest complete one"},
    )
    allow_changed_inputs: bool = field(
        default=False,
        metadata={"help": "continue the run in --output_dir although its data files, model or key flags differ from "
                  "those it started with (recorded in run_config.json; refused by default)"},
    )
    lora_enable: bool = field(default=False)
    lora_r: int = field(default=64)
    lora_alpha: int = field(default=16)
    lora_dropout: float = field(default=0.05)
    lora_bias: str = field(default="none", metadata={"help": "none, all or lora_only"})
    bits: int = field(default=16, metadata={"help": "4 or 8 loads the LLM quantized (QLoRA); 16/32 does not"})
    double_quant: bool = field(default=True, metadata={"help": "4-bit: quantize the quantization constants too"})
    quant_type: str = field(default="nf4", metadata={"help": "4-bit: nf4 or fp4"})
    # Defaults that differ from HF's, because LLaVA batches carry `images` and eval only needs the loss.
    remove_unused_columns: bool = field(default=False)
    prediction_loss_only: bool = field(default=True)
    # Without a GPU, train on the CPU (DeepSpeed included, over gloo) instead of failing to find CUDA.
    use_cpu: bool | None = field(default=None, metadata={"help": "default: True when no GPU is visible"})

    def __post_init__(self):
        if self.use_cpu is None:
            self.use_cpu = not torch.cuda.is_available()
        if self.use_cpu and self.ddp_backend is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            self.ddp_backend = "gloo"
        if self.group_by_modality_length and self.train_sampling_strategy == "group_by_length":
            raise ValueError(
                "--group_by_modality_length and --train_sampling_strategy group_by_length are two ways of "
                "grouping by length; pass one"
            )
        for flag in ("mm_projector_lr", "mm_vision_tower_lr"):
            value = getattr(self, flag)
            if value is not None and value < 0:
                raise ValueError(f"--{flag} {value}: give a learning rate >= 0")
        if self.use_cpu and self.fp16:
            raise ValueError("--fp16 is not supported on the CPU; use --bf16 True or full precision")
        super().__post_init__()


def parse_args(args=None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=args)
    missing = [name for name, value in (("--model_name_or_path", model_args.model_name_or_path),
                                        ("--vision_tower", model_args.vision_tower),
                                        ("--data_path", data_args.data_path)) if not value]
    if missing:
        parser.error(f"required: {', '.join(missing)}")
    return model_args, data_args, training_args


def check_inputs(model_args: ModelArguments, data_args: DataArguments) -> None:
    """Paths and names that would otherwise fail deep inside a loader, checked before anything loads.

    Model and tower paths become the folders (or hub names) `resolve_pretrained` found.
    """
    from llava.conversation import get_conv_template
    from llava.model.paths import resolve_pretrained

    if model_args.version:
        try:
            get_conv_template(model_args.version)
        except ValueError as e:
            raise ValueError(f"--version: {e}") from None
    model_args.model_name_or_path = resolve_pretrained(model_args.model_name_or_path, "--model_name_or_path")
    model_args.vision_tower = resolve_pretrained(model_args.vision_tower, "--vision_tower")
    adapter = model_args.pretrain_mm_mlp_adapter
    if adapter and not os.path.isfile(adapter):
        where = "is a folder; give the mm_projector.bin inside it" if os.path.isdir(adapter) else "does not exist"
        raise FileNotFoundError(f"--pretrain_mm_mlp_adapter {adapter} {where}")
    if data_args.image_folder and not os.path.isdir(data_args.image_folder):
        raise NotADirectoryError(f"--image_folder {data_args.image_folder} is not a folder; check the path")
    check_image_layout(model_args, data_args)
    if data_args.max_image_pixels < 0:
        raise ValueError(f"--max_image_pixels {data_args.max_image_pixels}: give a pixel count, or 0 for no limit")


def check_image_layout(model_args: ModelArguments, data_args: DataArguments) -> None:
    """AnyRes flags that cannot work together, named before anything loads (the tile size, which the
    pinpoints are checked against, is known once the tower is)."""
    from llava.mm_utils import MERGE_TYPES, anyres_max_tiles, is_anyres

    aspect, merge = data_args.image_aspect_ratio, model_args.mm_patch_merge_type
    if aspect not in ("square", "pad") and not is_anyres(aspect):
        raise ValueError(f"--image_aspect_ratio {aspect!r}: choose square, pad, anyres or anyres_max_N (e.g. anyres_max_9)")
    if merge not in MERGE_TYPES:
        raise ValueError(f"--mm_patch_merge_type {merge!r}: choose one of {', '.join(MERGE_TYPES)}")
    if not is_anyres(aspect):
        if merge != "flat":
            raise ValueError(f"--mm_patch_merge_type {merge} lays out AnyRes tiles; pass --image_aspect_ratio anyres "
                             "(or anyres_max_N), or leave --mm_patch_merge_type at flat")
        if data_args.image_grid_pinpoints:
            raise ValueError("--image_grid_pinpoints is for --image_aspect_ratio anyres / anyres_max_N")
        return
    if not data_args.image_grid_pinpoints:
        raise ValueError(f"--image_aspect_ratio {aspect} needs --image_grid_pinpoints, e.g. '(1x1),...,(3x3)'")
    if anyres_max_tiles(aspect) is not None and merge != "spatial_unpad":
        raise ValueError(f"--image_aspect_ratio {aspect} shrinks the unpadded feature map, which only "
                         "--mm_patch_merge_type spatial_unpad builds")


def resolve_train_modules(model_args: ModelArguments, training_args: TrainingArguments) -> frozenset[str]:
    """What trains: --train_modules if given, else the official flags' meaning."""
    if model_args.train_modules:
        modules = {m.strip() for m in model_args.train_modules.split(",") if m.strip()}
        unknown = modules - set(TRAIN_MODULES)
        if unknown:
            raise ValueError(f"--train_modules: unknown {sorted(unknown)}; choose among {', '.join(TRAIN_MODULES)}")
    elif model_args.tune_mm_mlp_adapter:
        modules = {"projector"}
    elif training_args.lora_enable:
        modules = {"projector", "lora"}
    else:
        modules = {"projector", "llm"}
    if model_args.freeze_backbone:
        modules.discard("llm")
    if "lora" in modules and "llm" in modules:
        raise ValueError("--train_modules: 'lora' and 'llm' exclude each other (LoRA adapts a frozen LLM)")
    if training_args.bits in (4, 8) and "llm" in modules:
        raise ValueError(f"--bits {training_args.bits} quantizes the LLM, which then cannot train fully; add --lora_enable True")
    if not modules:
        raise ValueError("nothing to train: --train_modules is empty")
    if training_args.vision_feature_cache and "vision_tower" in modules:
        raise ValueError(NEEDS_FROZEN_TOWER)
    return frozenset(modules)
