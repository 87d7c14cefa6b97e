"""CLIP vision tower: frozen by default, returns one hidden layer's patch features."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoImageProcessor, CLIPVisionConfig, CLIPVisionModel

SELECT_FEATURES = ("patch", "cls_patch")


class CLIPVisionTower(nn.Module):
    """Wraps `CLIPVisionModel` under the attribute name official LLaVA checkpoints use.

    The module is built from a config (stored in the LLaVA checkpoint, or read from the
    tower's directory), so a checkpoint that carries the tower's weights loads without the
    original CLIP directory; `load_model()` fills the weights from that directory.
    """

    def __init__(self, name_or_path: str, select_layer: int = -2, select_feature: str = "patch", config=None):
        super().__init__()
        self.vision_tower_name = name_or_path
        if config is None:
            config = CLIPVisionConfig.from_pretrained(name_or_path)
        elif isinstance(config, dict):
            config = CLIPVisionConfig(**config)
        self.vision_tower = CLIPVisionModel(config)
        self.vision_tower.requires_grad_(False)
        self.select(select_layer, select_feature)

    def select(self, select_layer: int, select_feature: str) -> None:
        """Choose which hidden layer feeds the projector and whether CLS is kept."""
        if select_feature not in SELECT_FEATURES:
            raise ValueError(
                f"unknown mm_vision_select_feature {select_feature!r}; choose one of: {', '.join(SELECT_FEATURES)}"
            )
        n_layers = self.config.num_hidden_layers
        if not -(n_layers + 1) <= select_layer <= n_layers:
            raise ValueError(f"mm_vision_select_layer {select_layer} is out of range for a {n_layers}-layer tower")
        self.select_layer, self.select_feature = select_layer, select_feature

    def load_model(self, source: str | None = None) -> None:
        """Copy pretrained weights from `source` (default `vision_tower_name`: a local directory or cached hub name)."""
        pretrained = CLIPVisionModel.from_pretrained(source or self.vision_tower_name, dtype=self.dtype)
        self.vision_tower.load_state_dict(pretrained.state_dict())

    def load_image_processor(self, source: str | None = None):
        # AutoImageProcessor picks the PIL backend by itself when torchvision is absent; naming
        # CLIPImageProcessor would log transformers' fallback notice each run.
        return AutoImageProcessor.from_pretrained(source or self.vision_tower_name)

    @property
    def is_trainable(self) -> bool:
        return any(p.requires_grad for p in self.vision_tower.parameters())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) pixels -> (N, patches[+1], hidden): CLIP's hidden state at `select_layer`.

        Runs the encoder layers by hand, only up to the selected one (the later ones never reach
        the LLM), rather than asking CLIP for output_hidden_states: transformers collects those
        with hooks, and the LLM around this tower installs CLIP's hooks a second time on its own
        first output_hidden_states call, after which CLIP's list holds every layer twice.
        """
        vision = getattr(self.vision_tower, "vision_model", self.vision_tower)  # flattened in transformers 5
        layers = vision.encoder.layers
        # hidden_states[i] is the output of the first i layers (index 0: the embeddings).
        depth = self.select_layer % (len(layers) + 1)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.is_trainable):
            hidden = vision.pre_layrnorm(vision.embeddings(images.to(device=self.device, dtype=self.dtype)))
            for layer in layers[:depth]:
                hidden = layer(hidden, attention_mask=None)
            return hidden[:, 1:] if self.select_feature == "patch" else hidden

    @property
    def config(self) -> CLIPVisionConfig:
        return self.vision_tower.config

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.embeddings.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.embeddings.patch_embedding.weight.device

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2 + (1 if self.select_feature == "cls_patch" else 0)


def image_processor_class(name: str = "CLIPImageProcessor"):
    """transformers' image processor `name`, or its PIL twin when torchvision is absent.

    Both save the same `image_processor_type`; naming the PIL one directly avoids the fallback
    notice transformers logs when `name` is asked for without torchvision.
    """
    import transformers
    from transformers.utils import is_torchvision_available

    return getattr(transformers, name if is_torchvision_available() else f"{name}Pil")


def build_vision_tower(config) -> CLIPVisionTower:
    """The tower a LLaVA config describes (`mm_vision_tower`, select layer/feature, stored tower config)."""
    name = getattr(config, "mm_vision_tower", None) or getattr(config, "vision_tower", None)
    if not name:
        raise ValueError("config has no mm_vision_tower; pass --vision_tower with a CLIP directory")
    return CLIPVisionTower(
        name,
        select_layer=getattr(config, "mm_vision_select_layer", -2),
        select_feature=getattr(config, "mm_vision_select_feature", "patch"),
        config=getattr(config, "mm_vision_config", None),
    )
