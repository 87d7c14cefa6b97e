"""DINOv2 vision towers (prismatic's): a CLS token, and in `dinov2_with_registers` register tokens, before the patches.

select_feature="patch" drops all of them. Select layer -2 (the second-to-last block's output, before the final
LayerNorm) is what prismatic reads from DINOv2 too.

Hub DINOv2 configs give the pretraining resolution (image_size 518, which sizes the position embeddings),
while their image processors crop 224 px: the model interpolates its position embeddings to what it is fed.
The side the processor produces is therefore read once, with the config, and recorded in it as `input_size`,
so a checkpoint's stored tower config rebuilds the same patch grid.
"""

from __future__ import annotations

import torch
from transformers import AutoImageProcessor, Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from llava.model.multimodal_encoder.base import VisionTower, image_processor_class, register_tower

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@register_tower("dinov2")
class Dinov2VisionTower(VisionTower):
    config_class = Dinov2Config
    model_class = Dinov2Model
    processor_class = "BitImageProcessor"

    @property
    def prefix_tokens(self) -> int:
        return 1 + getattr(self.config, "num_register_tokens", 0)  # CLS, then the registers

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision_tower.embeddings(pixels)

    @property
    def encoder_layers(self):
        return self.vision_tower.encoder.layer

    @classmethod
    def read_config(cls, source: str):
        config = super().read_config(source)
        try:
            processor = AutoImageProcessor.from_pretrained(source)
        except OSError:  # no preprocessor_config.json: the tower is fed its config's image_size
            return config
        size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
        side = size.get("height") or size.get("shortest_edge")
        if side and side != config.image_size:
            config.input_size = side
        return config

    @property
    def image_size(self) -> int:
        return getattr(self.config, "input_size", None) or self.config.image_size

    @classmethod
    def tiny_config(cls, image_size: int, patch_size: int, hidden_size: int, num_layers: int):
        # Pretrained at twice the size it is fed, as hub DINOv2 checkpoints are (518 vs 224).
        return cls.config_class(
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=max(1, hidden_size // 16),
            image_size=image_size * 2,
            patch_size=patch_size,
        )

    @classmethod
    def tiny_image_processor(cls, image_size: int):
        """DINOv2's preprocessing: resize the short side, centre crop, ImageNet mean/std."""
        return image_processor_class(cls.processor_class)(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            do_center_crop=True,
            image_mean=IMAGENET_MEAN,
            image_std=IMAGENET_STD,
        )


@register_tower("dinov2_with_registers")
class Dinov2WithRegistersVisionTower(Dinov2VisionTower):
    config_class = Dinov2WithRegistersConfig
    model_class = Dinov2WithRegistersModel

    @classmethod
    def tiny_config(cls, image_size: int, patch_size: int, hidden_size: int, num_layers: int):
        config = super().tiny_config(image_size, patch_size, hidden_size, num_layers)
        config.num_register_tokens = 4  # as facebook/dinov2-with-registers-*
        return config
