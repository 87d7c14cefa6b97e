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
    attn_implementation: str | None = None  # default when the user names none (None: transformers' default)
    pad_token: str | None = None  # padding for tokenizers that have none, when the vocabulary holds it
    # A special token only this family's tokenizers hold: it tells apart backbones that share a
    # model_type (Llama-3 and SmolLM2 checkpoints are plain `llama`, as LLaMA-2's are).
    tokenizer_marker: str | None = None

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
    attn_implementation: str | None = None,
    pad_token: str | None = None,
    tokenizer_marker: str | None = None,
):
    """Class decorator for a `Llava*ForCausalLM`; also registers it with the HF Auto classes."""

    def wrap(model_class: type) -> type:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        BACKBONES[name] = Backbone(
            name, config_class, model_class, tuple(base_model_types), conv_template, tiny_config, tiny_tokenizer,
            attn_implementation, pad_token, tokenizer_marker,
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


def backbones_for_model_type(model_type: str) -> list[Backbone]:
    """Every backbone that loads a checkpoint of `model_type`, LLaVA (`llava_phi`) or plain (`phi`)."""
    _load_all()
    return [b for b in BACKBONES.values() if model_type == b.model_type or model_type in b.base_model_types]


def backbone_for_model_type(model_type: str, vocab=()) -> Backbone:
    """The backbone for a checkpoint's `model_type`; `vocab` (its tokenizer's tokens) picks among families
    that share one, by each family's `tokenizer_marker` (the family without a marker when none is found)."""
    candidates = backbones_for_model_type(model_type)
    if not candidates:
        known = sorted({t for b in BACKBONES.values() for t in (b.model_type, *b.base_model_types)})
        raise ValueError(
            f"no registered backbone handles model_type {model_type!r}; supported model types: {', '.join(known)}. "
            "Add a backbone file under llava/model/language_model/ (docs/training.md, 'Adding a backbone')."
        )
    marked = [b for b in candidates if b.tokenizer_marker and b.tokenizer_marker in vocab]
    unmarked = [b for b in candidates if not b.tokenizer_marker]
    return (marked or unmarked or candidates)[0]


def backbone_for_config(config) -> Backbone:
    return backbone_for_model_type(config.model_type)


def trained_conv_template(config) -> str:
    """The template a checkpoint's prompts are rendered with by default: the one it was fine-tuned with
    (`conv_template`, written by training), else its backbone's."""
    return getattr(config, "conv_template", None) or backbone_for_config(config).conv_template


def check_backbone_matches(backbone: Backbone, model_type: str, argument: str = "--backbone") -> None:
    """An explicit backbone must be one that loads checkpoints of `model_type`: another family's class
    would silently drop weights it lacks (Qwen2's q/k/v biases under LLaMA) or misread the config."""
    if backbone in backbones_for_model_type(model_type):
        return
    fitting = ", ".join(b.name for b in backbones_for_model_type(model_type)) or "none is registered"
    raise ValueError(
        f"{argument} {backbone.name} loads model_type {', '.join(backbone.base_model_types)} checkpoints, but this "
        f"checkpoint's model_type is {model_type!r}; pass {argument} with one of: {fitting} (or leave it out)"
    )


def checkpoint_special_tokens(path: str) -> set[str]:
    """The added/special tokens a local tokenizer folder declares (read from its JSON files, no tokenizer built)."""
    import json
    import os

    tokens: set[str] = set()
    for name, key in (("tokenizer.json", "added_tokens"), ("tokenizer_config.json", "added_tokens_decoder")):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            with open(file, encoding="utf-8") as f:
                entries = json.load(f).get(key) or []
            entries = entries.values() if isinstance(entries, dict) else entries
            tokens.update(e["content"] for e in entries if isinstance(e, dict) and "content" in e)
    return tokens


def backbone_for_checkpoint(path: str, name: str | None = None, argument: str = "--backbone") -> Backbone:
    """The backbone for the LLM checkpoint at `path`: `name` if given (checked against the checkpoint's
    model_type), else the one its model_type and tokenizer point to."""
    model_type = AutoConfig.from_pretrained(path).model_type
    if name:
        backbone = get_backbone(name)
        check_backbone_matches(backbone, model_type, argument)
        return backbone
    return backbone_for_model_type(model_type, checkpoint_special_tokens(path))


def backbone_names() -> list[str]:
    _load_all()
    return sorted(BACKBONES)
