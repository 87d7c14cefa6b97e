"""Backbone registry: one decorator per LLM family, lookups by name or by checkpoint config.

A backbone file declares its config and model classes and registers them here; nothing
else in the codebase names a backbone, so adding one is one file plus one test.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from transformers import AutoConfig, AutoModelForCausalLM


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str  # short name used on the command line: "phi", "llama", ...
    config_class: type
    model_class: type
    base_model_types: tuple[str, ...]  # HF model_type(s) of the plain LLM checkpoints
    conv_template: str  # default conversation template for chat fine-tuning
    tiny_config: Callable[..., Any] | None = None  # (hidden_size, num_layers) -> plain HF LLM config
    tiny_tokenizer: Callable[[], Any] | None = None  # offline tokenizer of the backbone's family

    @property
    def model_type(self) -> str:
        return self.config_class.model_type


BACKBONES: dict[str, Backbone] = {}


def register_backbone(
    name: str,
    *,
    config_class: type,
    base_model_types: tuple[str, ...],
    conv_template: str,
    tiny_config: Callable[..., Any] | None = None,
    tiny_tokenizer: Callable[[], Any] | None = None,
):
    """Class decorator for a `Llava*ForCausalLM`; also registers it with the HF Auto classes."""

    def wrap(model_class: type) -> type:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        BACKBONES[name] = Backbone(
            name, config_class, model_class, tuple(base_model_types), conv_template, tiny_config, tiny_tokenizer
        )
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)
        return model_class

    return wrap


def _load_all() -> None:
    import llava.model.language_model  # noqa: F401  (importing registers every backbone)


def get_backbone(name: str) -> Backbone:
    _load_all()
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(BACKBONES))}") from None


def backbone_for_model_type(model_type: str) -> Backbone:
    """The backbone for a checkpoint's `model_type`, LLaVA (`llava_phi`) or plain (`phi`)."""
    _load_all()
    for backbone in BACKBONES.values():
        if model_type == backbone.model_type or model_type in backbone.base_model_types:
            return backbone
    known = sorted({t for b in BACKBONES.values() for t in (b.model_type, *b.base_model_types)})
    raise ValueError(
        f"no registered backbone handles model_type {model_type!r}; supported model types: {', '.join(known)}. "
        "Pass --backbone explicitly or add a backbone file under llava/model/language_model/."
    )


def backbone_for_config(config) -> Backbone:
    return backbone_for_model_type(config.model_type)


def backbone_names() -> list[str]:
    _load_all()
    return sorted(BACKBONES)
