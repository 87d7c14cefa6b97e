"""CLIP vision tower (official LLaVA's): one CLS token before the patches, a LayerNorm before the encoder."""

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

    def encode_to_layer(self, pixels: torch.Tensor, depth: int) -> torch.Tensor:
        # The encoder layers run by hand, only up to the selected one (the later ones never reach the
        # LLM), rather than asking CLIP for output_hidden_states: transformers collects those with
        # hooks, and the LLM around this tower installs CLIP's hooks a second time on its own first
        # output_hidden_states call, after which CLIP's list holds every layer twice.
        vision = getattr(self.vision_tower, "vision_model", self.vision_tower)  # flattened in transformers 5
        hidden = vision.pre_layrnorm(vision.embeddings(pixels))
        for layer in vision.encoder.layers[:depth]:
            hidden = layer(hidden, attention_mask=None)
        return hidden

    def export_weight_name(self, name: str) -> str:
        # transformers 5 writes the CLIP tower flattened (its CLIPVisionModel has no `vision_model` level
        # any more); llava-hf checkpoints, transformers 4 and vLLM's CLIPVisionModel spell `vision_model.*`.
        return name if name.startswith("vision_model.") else "vision_model." + name

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
