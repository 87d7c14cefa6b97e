"""Batches: right-padded ids, IGNORE_INDEX-padded labels, and one image per <image> marker.

Each image comes as pixels ("images") or, with a vision feature cache, as the tower's cached
output ("image_features", (n, patches, hidden)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.constants import IGNORE_INDEX


@dataclass
class DataCollatorForSupervisedDataset:
    tokenizer: object
    image_shape: tuple[int, int, int] | None = None  # (C, H, W); text-only batches get an empty (0, C, H, W)
    feature_shape: tuple[int, int] | None = None  # (patches, hidden): set when features come from a cache

    def __call__(self, instances: list[dict]) -> dict:
        lengths = torch.tensor([len(x["input_ids"]) for x in instances])
        width = int(lengths.max())
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(instances), width), pad_id, dtype=torch.long)
        labels = torch.full((len(instances), width), IGNORE_INDEX, dtype=torch.long)
        for row, x in enumerate(instances):
            input_ids[row, : len(x["input_ids"])] = x["input_ids"]
            labels[row, : len(x["labels"])] = x["labels"]
        # The mask comes from the lengths, never from `input_ids != pad_id`: Phi-2's pad is its eos.
        batch = {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": torch.arange(width)[None, :] < lengths[:, None],
        }
        # Text-only batches still get an empty tensor, so the model runs its vision modules (on a
        # placeholder) on every rank and ZeRO-3 ranks stay in lockstep.
        if self.feature_shape is not None:
            features = [x["image_features"] for x in instances if "image_features" in x]
            batch["image_features"] = torch.cat(features) if features else torch.zeros(0, *self.feature_shape)
            return batch
        images = [x["images"] for x in instances if "images" in x]
        if images:
            batch["images"] = torch.cat(images)
        elif self.image_shape is not None:
            batch["images"] = torch.zeros(0, *self.image_shape)
        return batch
