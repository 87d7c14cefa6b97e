"""Projectors from vision features (mm_hidden_size) to the LLM's embedding width (hidden_size).

Each projector is one small builder in a registry; state-dict keys match official LLaVA
(`mm_projector.0.weight`, ...), so its `mm_projector.bin` files load unchanged.
"""

from __future__ import annotations

import re
from typing import Callable

from torch import nn

PROJECTORS: dict[str, Callable[[int, int], nn.Module]] = {}
_MLP_GELU = re.compile(r"^mlp(\d+)x_gelu$")


def register_projector(name: str):
    def wrap(builder):
        PROJECTORS[name] = builder
        return builder

    return wrap


@register_projector("linear")
def _linear(mm_hidden_size: int, hidden_size: int) -> nn.Module:
    return nn.Linear(mm_hidden_size, hidden_size)


@register_projector("identity")
def _identity(mm_hidden_size: int, hidden_size: int) -> nn.Module:
    if mm_hidden_size != hidden_size:
        raise ValueError(
            f"identity projector needs mm_hidden_size == hidden_size, got {mm_hidden_size} and {hidden_size}"
        )
    return nn.Identity()


class SimpleResBlock(nn.Module):
    """LayerNorm followed by a two-layer MLP, added back to its input."""

    def __init__(self, channels: int):
        super().__init__()
        self.pre_norm = nn.LayerNorm(channels)
        self.proj = nn.Sequential(nn.Linear(channels, channels), nn.GELU(), nn.Linear(channels, channels))

    def forward(self, x):
        x = self.pre_norm(x)
        return x + self.proj(x)


@register_projector("simple_resblock")
def _simple_resblock(mm_hidden_size: int, hidden_size: int) -> nn.Module:
    return nn.Sequential(nn.Linear(mm_hidden_size, hidden_size), SimpleResBlock(hidden_size))


def _mlp_gelu(depth: int, mm_hidden_size: int, hidden_size: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(mm_hidden_size, hidden_size)]
    for _ in range(1, depth):
        layers += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
    return nn.Sequential(*layers)


def build_vision_projector(config, hidden_size: int | None = None) -> nn.Module:
    """`hidden_size` overrides `config.hidden_size` where the LLM's embeddings are narrower (OPT-350m)."""
    projector_type = getattr(config, "mm_projector_type", "linear")
    mm_hidden_size, hidden_size = config.mm_hidden_size, hidden_size or config.hidden_size
    if projector_type in PROJECTORS:
        return PROJECTORS[projector_type](mm_hidden_size, hidden_size)
    match = _MLP_GELU.match(projector_type)
    if match and int(match.group(1)) >= 1:
        return _mlp_gelu(int(match.group(1)), mm_hidden_size, hidden_size)
    raise ValueError(
        f"unknown mm_projector_type {projector_type!r}; choose one of: "
        f"{', '.join(sorted(PROJECTORS))}, or mlp<N>x_gelu (e.g. mlp2x_gelu)"
    )
