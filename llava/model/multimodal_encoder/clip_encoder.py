"""CLIP vision tower (official LLaVA's): one CLS token before the patches, a LayerNorm before the encoder.

Official LLaVA feeds the projector the second-to-last layer's patch tokens (select layer -2, CLS dropped).
"""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from llava.model.multimodal_encoder.base import VisionTower, image_processor_class, register_tower

# CLIP's normalisation constants (what openai/clip-* image processors use).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# "clip": official LLaVA names whole CLIP checkpoints (openai/clip-vit-large-patch14-336); their
# vision part is read from them.
@register_tower("clip_vision_model", "clip")
class CLIPVisionTower(VisionTower):
    config_class = CLIPVisionConfig
    model_class = CLIPVisionModel
    processor_class = "CLIPImageProcessor"
    prefix_tokens = 1  # CLS
    export_prefix = "vision_model."

    @property
    def _vision(self):
        return getattr(self.vision_tower, "vision_model", self.vision_tower)  # flattened in transformers 5

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._vision.pre_layrnorm(self._vision.embeddings(pixels))

    @property
    def encoder_layers(self):
        return self._vision.encoder.layers

    @staticmethod
    def tiny_config(image_size: int, patch_size: int, hidden_size: int, num_layers: int) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 4,
            num_hidden_layers=num_layers,
            num_attention_heads=max(1, hidden_size // 16),
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=hidden_size,
        )

    @classmethod
    def tiny_image_processor(cls, image_size: int):
        """CLIP's preprocessing (resize, centre crop, CLIP mean/std) at `image_size` pixels."""
        return image_processor_class(cls.processor_class)(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
        )
