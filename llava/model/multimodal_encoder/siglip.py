"""SigLIP vision tower (LLaVA-OneVision's, prismatic's): no CLS token, no LayerNorm before the encoder.

Its vision model ends in a post-LayerNorm and an attention-pooling head that LLaVA never uses: LLaVA-NeXT
builds the tower with its last encoder layer and the head cut off and reads the last remaining hidden
state, and prismatic asks timm for the second-to-last block's patch tokens. Both are the output of the
second-to-last layer before any norm, so select layer -2 (official LLaVA's for CLIP) means the same here.

Fixed-resolution SigLIP2 checkpoints (e.g. google/siglip2-so400m-patch14-384) are SigLIP models
(`model_type` "siglip") and load here; the NaFlex ones refuse (see below).
"""

from __future__ import annotations

import torch
from transformers import SiglipVisionConfig, SiglipVisionModel

from llava.model.multimodal_encoder.base import image_processor_class, refuse_tower, register_tower
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

refuse_tower(
    "siglip2", "siglip2_vision_model",
    reason="SigLIP2 NaFlex towers take a variable number of patches per image (patch sequences with a mask and "
    "per-image shapes), not one fixed grid of square images; use a fixed-resolution SigLIP2 checkpoint "
    "(model_type 'siglip', e.g. google/siglip2-so400m-patch14-384) or SigLIP",
)


# "siglip": whole SigLIP checkpoints (google/siglip-so400m-patch14-384); their vision part is read from them.
@register_tower("siglip_vision_model", "siglip")
class SiglipVisionTower(CLIPVisionTower):
    """Laid out like CLIP's vision model (embeddings, encoder.layers), minus the CLS token and pre-LayerNorm."""

    config_class = SiglipVisionConfig
    model_class = SiglipVisionModel
    processor_class = "SiglipImageProcessor"
    prefix_tokens = 0

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._vision.embeddings(pixels)

    @staticmethod
    def tiny_config(image_size: int, patch_size: int, hidden_size: int, num_layers: int) -> SiglipVisionConfig:
        return SiglipVisionConfig(
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 4,
            num_hidden_layers=num_layers,
            num_attention_heads=max(1, hidden_size // 16),
            image_size=image_size,
            patch_size=patch_size,
        )

    @classmethod
    def tiny_image_processor(cls, image_size: int):
        """SigLIP's preprocessing: a plain resize to a square (no crop), mean and std 0.5."""
        return image_processor_class(cls.processor_class)(size={"height": image_size, "width": image_size})
