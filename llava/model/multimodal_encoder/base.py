"""What a vision tower is to the rest of the code, and the registry that picks one by config `model_type`.

A tower family (CLIP, SigLIP, DINOv2, the fused DINOv2 + SigLIP) is one file: a `VisionTower`
subclass naming its transformers config and model classes, how many tokens precede the patches (CLS,
registers), how its embeddings and encoder layers are reached, and the `@register_tower(...)` model
types it reads. Everything else - building from a config, loading weights, the image processor, the
layer/feature selection, the copy written into partial checkpoints, the feature-cache key, the names an
export needs - is here, written once; a family overrides a piece only where it differs.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
from torch import nn
from transformers import AutoImageProcessor, PretrainedConfig

from llava.model.zero3 import outside_zero3

SELECT_FEATURES = ("patch", "cls_patch")
# Config fields that do not change the tower's output (the weights hash covers its identity).
_CONFIG_NOISE = ("_name_or_path", "dtype", "torch_dtype", "transformers_version")

TOWERS: dict[str, type["VisionTower"]] = {}
# Model types a family knows but cannot run through this interface, with what to use instead.
REFUSED: dict[str, str] = {}


def register_tower(*model_types: str):
    """Class decorator: the tower family reading configs of these `model_type`s."""

    def add(cls):
        for model_type in model_types:
            if model_type in TOWERS:
                raise ValueError(f"tower model_type {model_type!r} is registered twice")
            TOWERS[model_type] = cls
        cls.model_types = model_types
        return cls

    return add


def refuse_tower(*model_types: str, reason: str) -> None:
    """Name model types that are refused with `reason` rather than as unknown."""
    for model_type in model_types:
        REFUSED[model_type] = reason


def tower_class(model_type: str | None, source: str = "the vision tower") -> type["VisionTower"]:
    if model_type in REFUSED:
        raise ValueError(f"{source}: config model_type {model_type!r} is not supported: {REFUSED[model_type]}")
    if model_type not in TOWERS:
        raise ValueError(
            f"{source}: config model_type {model_type!r} is not a supported vision tower; "
            f"supported: {', '.join(sorted(TOWERS))}"
        )
    return TOWERS[model_type]


def source_model_type(source: str) -> str | None:
    """The `model_type` in a tower folder's (or cached hub name's) config.json."""
    config_dict, _ = PretrainedConfig.get_config_dict(source)
    return config_dict.get("model_type")


def read_tower_config(source: str) -> PretrainedConfig:
    """The vision config of the tower at `source` (a full CLIP or SigLIP folder gives its vision part)."""
    return tower_class(source_model_type(source), source).read_config(source)


def load_vision_tower(source: str, select_layer: int = -2, select_feature: str = "patch") -> "VisionTower":
    """A tower built from `source`'s config with `source`'s pretrained weights."""
    cls = tower_class(source_model_type(source), source)
    tower = cls(source, select_layer, select_feature)
    tower.load_model()
    return tower


def build_vision_tower(config) -> "VisionTower":
    """The tower a LLaVA config describes (`mm_vision_tower`, select layer/feature, stored tower config).

    Weights are not loaded: they come with the checkpoint's own weights, or from `load_model`.
    """
    name = getattr(config, "mm_vision_tower", None) or getattr(config, "vision_tower", None)
    if not name:
        raise ValueError("config has no mm_vision_tower; pass --vision_tower with a vision tower directory")
    stored = getattr(config, "mm_vision_config", None)
    if isinstance(stored, PretrainedConfig):
        stored = stored.to_dict()
    model_type = stored.get("model_type") if stored else source_model_type(name)
    return tower_class(model_type, f"mm_vision_tower {name}")(
        name,
        select_layer=getattr(config, "mm_vision_select_layer", -2),
        select_feature=getattr(config, "mm_vision_select_feature", "patch"),
        config=stored,
    )


def image_processor_class(name: str):
    """transformers' image processor `name`, or its PIL twin when torchvision is absent.

    Both save the same `image_processor_type`; naming the PIL one directly avoids the fallback
    notice transformers logs when `name` is asked for without torchvision.
    """
    import transformers
    from transformers.utils import is_torchvision_available

    return getattr(transformers, name if is_torchvision_available() else f"{name}Pil")


class VisionTower(nn.Module):
    """A frozen-by-default vision encoder giving one hidden layer's features per image.

    Kept under the attribute name official LLaVA checkpoints use (`vision_tower.vision_tower.*`).
    Built from a config (stored in the LLaVA checkpoint, or read from the tower's folder), so a
    checkpoint that carries the tower's weights loads without the original folder.
    """

    # Filled by each family.
    model_types: tuple[str, ...] = ()
    config_class: type[PretrainedConfig]
    model_class: type[nn.Module]
    processor_class: str = "CLIPImageProcessor"
    prefix_tokens = 1  # tokens before the patches (CLS, registers), dropped by select_feature="patch"
    # Where the hub's checkpoints of this family (and vLLM) put the tower's weights, e.g. "vision_model.".
    export_prefix = ""
    # Why transformers' LlavaForConditionalGeneration cannot reproduce this tower; None where it can.
    export_refusal: str | None = None

    def __init__(self, name_or_path: str, select_layer: int = -2, select_feature: str = "patch", config=None,
                 model: nn.Module | None = None):
        """`model`: an already built model of this family to select features from (a part of a fused tower)."""
        super().__init__()
        self.vision_tower_name = name_or_path
        if model is None:
            if config is None:
                config = self.read_config(name_or_path)
            elif isinstance(config, dict):
                config = self.config_class(**config)
            model = self.model_class(config)
            model.requires_grad_(False)
        self.vision_tower = model
        self.select(select_layer, select_feature)

    # -- what a family implements ------------------------------------------------------------
    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) pixels -> (N, prefix + patches, hidden): what the first encoder layer takes."""
        raise NotImplementedError

    @property
    def encoder_layers(self) -> nn.ModuleList:
        raise NotImplementedError

    @classmethod
    def read_config(cls, source: str) -> PretrainedConfig:
        """The tower config at `source` (a folder or cached hub name)."""
        return cls.config_class.from_pretrained(source)

    # -- running it ----------------------------------------------------------------------------
    def encode_to_layer(self, pixels: torch.Tensor, depth: int) -> torch.Tensor:
        """(N, C, H, W) pixels -> (N, prefix + patches, hidden): the output of the first `depth` layers."""
        # The encoder layers run by hand, only up to the selected one (the later ones, and any final norm
        # or pooling head, never reach the LLM), rather than asking for output_hidden_states: transformers
        # collects those with hooks, and the LLM around this tower installs the tower's hooks a second
        # time on its own first output_hidden_states call, after which the list holds every layer twice.
        hidden = self.embed(pixels)
        for layer in self.encoder_layers[:depth]:
            hidden = layer(hidden, attention_mask=None)
        return hidden

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    # -- selection -----------------------------------------------------------------------------
    def select(self, select_layer: int, select_feature: str) -> None:
        """Choose which hidden layer feeds the projector and whether the prefix tokens are kept."""
        if select_feature not in SELECT_FEATURES:
            raise ValueError(
                f"unknown mm_vision_select_feature {select_feature!r}; choose one of: {', '.join(SELECT_FEATURES)}"
            )
        if not -(self.num_layers + 1) <= select_layer <= self.num_layers:
            raise ValueError(f"mm_vision_select_layer {select_layer} is out of range for a {self.num_layers}-layer tower")
        self.select_layer, self.select_feature = select_layer, select_feature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) pixels -> (N, num_patches, hidden) at `select_layer`."""
        # hidden_states[i] is the output of the first i layers (index 0: the embeddings).
        depth = self.select_layer % (self.num_layers + 1)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.is_trainable):
            hidden = self.encode_to_layer(images.to(device=self.device, dtype=self.dtype), depth)
        return hidden[:, self.prefix_tokens:] if self.select_feature == "patch" else hidden

    # -- weights and processor -------------------------------------------------------------------
    def load_model(self, source: str | None = None) -> None:
        """Copy pretrained weights from `source` (default `vision_tower_name`: a local directory or cached hub name)."""
        pretrained = self.model_class.from_pretrained(source or self.vision_tower_name, dtype=self.dtype)
        self.vision_tower.load_state_dict(pretrained.state_dict())

    def load_image_processor(self, source: str | None = None):
        # AutoImageProcessor picks the PIL backend by itself when torchvision is absent; naming the
        # class would log transformers' fallback notice each run.
        return AutoImageProcessor.from_pretrained(source or self.vision_tower_name)

    def save_copy(self, out_dir: str) -> str | None:
        """Write this tower's source weights (in the training dtype) to `out_dir`; None for a hub-named tower.

        A frozen tower holds exactly its source's weights, so they are read from the source rather
        than gathered from (possibly partitioned) parameters; this runs on the saving rank alone.
        """
        if not os.path.isdir(self.vision_tower_name):
            return None
        # Under ZeRO-3 a DeepSpeed-aware from_pretrained would wait for the other ranks, which do not save.
        with outside_zero3():
            self.model_class.from_pretrained(self.vision_tower_name, dtype=self.dtype).save_pretrained(out_dir)
        return out_dir

    @classmethod
    def save_tiny(cls, out_dir: str, image_size: int, patch_size: int, hidden_size: int, num_layers: int) -> str:
        """Write a random-init tower of this family (its `tiny_config`) and its `tiny_image_processor` to `out_dir`."""
        cls.model_class(cls.tiny_config(image_size, patch_size, hidden_size, num_layers)).save_pretrained(out_dir)
        cls.tiny_image_processor(image_size).save_pretrained(out_dir)
        return out_dir

    # -- what other parts read -----------------------------------------------------------------
    def feature_key(self) -> dict:
        """Everything of the tower that decides its cached outputs (see llava.train.feature_cache)."""
        config = {k: v for k, v in self.config.to_dict().items() if k not in _CONFIG_NOISE}
        digest = hashlib.blake2b(digest_size=16)
        for name, tensor in sorted(self.vision_tower.state_dict().items()):
            tensor = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return {
            "tower_weights": digest.hexdigest(),
            "tower_config": json.dumps(config, sort_keys=True),
            "select_layer": self.select_layer,
            "select_feature": self.select_feature,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def export_config(self) -> PretrainedConfig:
        """The vision config an exported transformers model carries."""
        values = {k: v for k, v in self.config.to_dict().items() if k not in ("_name_or_path", "name_or_path")}
        return self.config_class(**values)

    def export_weight_name(self, name: str) -> str:
        """`name` (relative to the tower model) as the hub's checkpoints of this family spell it."""
        # transformers 5 writes CLIP and SigLIP flattened (no `vision_model` level); llava-hf checkpoints,
        # transformers 4 and vLLM spell `vision_model.*`.
        return name if name.startswith(self.export_prefix) else self.export_prefix + name

    @property
    def is_trainable(self) -> bool:
        return any(p.requires_grad for p in self.vision_tower.parameters())

    @property
    def config(self) -> PretrainedConfig:
        return self.vision_tower.config

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vision_tower.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.vision_tower.parameters()).device

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def image_size(self) -> int:
        """The side of the square images the tower is fed (what its image processor produces)."""
        return self.config.image_size

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image's pixels."""
        return self.config.num_channels, self.image_size, self.image_size

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2 + (self.prefix_tokens if self.select_feature == "cls_patch" else 0)
