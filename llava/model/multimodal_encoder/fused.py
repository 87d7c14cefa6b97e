"""A fused vision tower: several towers' patch features for the same image, concatenated per patch.

prismatic-vlms found DINOv2 + SigLIP (both towers' patch features side by side) its best vision backbone.
A fused tower is a folder like any other tower's, written once from its parts' folders:

    python scripts/fuse_vision_towers.py --towers DINOV2_DIR SIGLIP_DIR --out checkpoints/dinov2-siglip

and then named as usual (`--vision_tower checkpoints/dinov2-siglip`, `VISION_TOWER=...`). Its config.json
(model_type "fused_vision_model") holds each part's config, model.safetensors each part's weights
(`towers.0.*`, `towers.1.*`) and preprocessor_config.json each part's image processor, so the folder, a
checkpoint's `vision_tower/` copy and its stored `mm_vision_config` each rebuild the whole tower.

The parts must be fed the same image size and cut it into the same patch grid. Each keeps its own
preprocessing (DINOv2's crop and ImageNet statistics, SigLIP's plain resize and 0.5): their pixels travel
stacked on the channel axis, (N, 3 * parts, H, W), through the data pipeline every tower uses.
"""

from __future__ import annotations

import json
import os
import tempfile

import torch
from torch import nn
from transformers import BatchFeature, PretrainedConfig, PreTrainedModel
from transformers.utils import cached_file

from llava.model.multimodal_encoder.base import (
    TOWERS,
    VisionTower,
    image_processor_class,
    load_vision_tower,
    register_tower,
    tower_class,
)

PROCESSOR_FILE = "preprocessor_config.json"
TINY_PARTS = ("dinov2", "siglip_vision_model")  # prismatic's best pair


class FusedVisionConfig(PretrainedConfig):
    model_type = "fused_vision_model"

    def __init__(self, towers=(), **kwargs):
        self.towers = [t.to_dict() if isinstance(t, PretrainedConfig) else dict(t) for t in towers]
        super().__init__(**kwargs)

    def part_configs(self) -> list[PretrainedConfig]:
        return [tower_class(t.get("model_type"), "a fused tower's part").config_class(**t) for t in self.towers]


class FusedVisionModel(PreTrainedModel):
    config_class = FusedVisionConfig
    base_model_prefix = "fused"

    def __init__(self, config: FusedVisionConfig):
        super().__init__(config)
        self.towers = nn.ModuleList(TOWERS[c.model_type].model_class(c) for c in config.part_configs())
        self.post_init()

    def _init_weights(self, module):
        pass  # each part is a model of its own and initialises its own weights


class FusedImageProcessor:
    """Each part's own image processor; their pixels stacked on the channel axis."""

    def __init__(self, processors):
        self.processors = list(processors)

    @property
    def image_mean(self):
        return self.processors[0].image_mean  # LLaVA's pad colour ('pad'): the first part's mean

    def __call__(self, images, return_tensors="pt", **kwargs) -> BatchFeature:
        pixels = [p(images=images, return_tensors="pt", **kwargs)["pixel_values"] for p in self.processors]
        return BatchFeature({"pixel_values": torch.cat(pixels, dim=1)}, tensor_type=return_tensors)

    def to_dict(self) -> dict:
        return {"image_processor_type": type(self).__name__,
                "processors": [json.loads(p.to_json_string()) for p in self.processors]}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, out_dir: str, **kwargs) -> None:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, PROCESSOR_FILE), "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def from_pretrained(cls, source: str) -> "FusedImageProcessor":
        with open(cached_file(source, PROCESSOR_FILE), encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("image_processor_type") != cls.__name__:
            raise ValueError(f"{source}: {PROCESSOR_FILE} is not a fused tower's image processor; "
                             "write the tower with scripts/fuse_vision_towers.py")
        return cls(image_processor_class(d["image_processor_type"]).from_dict(d) for d in saved["processors"])


@register_tower(FusedVisionConfig.model_type)
class FusedVisionTower(VisionTower):
    config_class = FusedVisionConfig
    model_class = FusedVisionModel
    prefix_tokens = 0  # each part drops its own
    export_refusal = "transformers' LlavaForConditionalGeneration runs one vision tower, and a fused tower is several"

    def __init__(self, name_or_path: str, select_layer: int = -2, select_feature: str = "patch", config=None,
                 model=None):
        super().__init__(name_or_path, select_layer, select_feature, config, model)
        shapes = {(p.image_size, p.num_patches_per_side) for p in self.parts}
        if len(shapes) != 1:
            described = ", ".join(f"{p.config.model_type}: {p.image_size} px -> {p.num_patches_per_side}^2 patches"
                                  for p in self.parts)
            raise ValueError(f"fused vision tower {name_or_path}: its parts must take the same image size and give "
                             f"the same patch grid ({described}); pick parts that match")

    def select(self, select_layer: int, select_feature: str) -> None:
        if select_feature != "patch":
            raise ValueError(f"mm_vision_select_feature {select_feature!r}: a fused tower concatenates its parts' patch "
                             "features (their CLS/register tokens differ); use 'patch'")
        # Views selecting from the parts' models; a plain list, so the weights stay registered once.
        self.parts = [TOWERS[m.config.model_type](self.vision_tower_name, select_layer, select_feature, model=m)
                      for m in self.vision_tower.towers]
        self.select_layer, self.select_feature = select_layer, select_feature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.split([p.pixel_shape[0] for p in self.parts], dim=1)
        return torch.cat([part(x) for part, x in zip(self.parts, pixels)], dim=-1)

    def load_image_processor(self, source: str | None = None):
        return FusedImageProcessor.from_pretrained(source or self.vision_tower_name)

    @property
    def hidden_size(self) -> int:
        return sum(p.hidden_size for p in self.parts)

    @property
    def image_size(self) -> int:
        return self.parts[0].image_size

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        return sum(p.pixel_shape[0] for p in self.parts), self.image_size, self.image_size

    @property
    def num_patches_per_side(self) -> int:
        return self.parts[0].num_patches_per_side

    @classmethod
    def save_tiny(cls, out_dir: str, image_size: int, patch_size: int, hidden_size: int, num_layers: int) -> str:
        with tempfile.TemporaryDirectory() as parts:
            sources = [TOWERS[t].save_tiny(os.path.join(parts, t), image_size, patch_size, hidden_size, num_layers)
                       for t in TINY_PARTS]
            return save_fused_tower(sources, out_dir)


def save_fused_tower(sources: list[str], out_dir: str) -> str:
    """Write a fused tower of the towers at `sources` (folders or cached hub names), in that order, to `out_dir`."""
    if len(sources) < 2:
        raise ValueError(f"--towers: a fused tower needs at least two towers, got {len(sources)}")
    parts = [load_vision_tower(source) for source in sources]
    config = FusedVisionConfig(towers=[p.config for p in parts])
    model = FusedVisionModel(config)
    for mine, part in zip(model.towers, parts):
        mine.load_state_dict(part.vision_tower.state_dict())
    FusedVisionTower(out_dir, config=config, model=model)  # refuses parts whose patch grids differ
    model.save_pretrained(out_dir)
    FusedImageProcessor(p.load_image_processor() for p in parts).save_pretrained(out_dir)
    return out_dir

