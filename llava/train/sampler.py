"""Official LLaVA's `group_by_modality_length`: every global batch is all-image or all-text, similar lengths."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


def modality_grouped_indices(lengths: list[int], group_size: int, generator: torch.Generator) -> list[int]:
    """Indices ordered so each run of `group_size` is one modality, sorted by length inside.

    `lengths` are positive for image records and negative for text-only ones. Full groups
    come in random order; the at most two partial groups (one per modality) come last.
    """
    full, partial = [], []
    for sign in (1, -1):
        members = [i for i, n in enumerate(lengths) if (n > 0) == (sign > 0)]
        order = [members[j] for j in torch.randperm(len(members), generator=generator).tolist()]
        for start in range(0, len(order), group_size):
            group = sorted(order[start : start + group_size], key=lambda i: -abs(lengths[i]))
            (full if len(group) == group_size else partial).append(group)
    shuffled = [full[j] for j in torch.randperm(len(full), generator=generator).tolist()]
    return [i for group in shuffled + partial for i in group]


class ModalityLengthGroupedSampler(Sampler):
    def __init__(self, lengths: list[int], group_size: int, seed: int = 0):
        self.lengths = lengths
        self.group_size = group_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        # Same order for the same epoch, so a resumed run sees the batches it would have seen.
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(modality_grouped_indices(self.lengths, self.group_size, generator))
