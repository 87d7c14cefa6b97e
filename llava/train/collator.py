"""Batches: right-padded ids, IGNORE_INDEX-padded labels, one image per <image> marker; optionally packed.

Each image comes as pixels ("images") or, with a vision feature cache, as the tower's cached
output ("image_features", (n, patches, hidden)). With AnyRes an image is several tiles (rows of
those tensors) and samples also carry each image's (width, height) ("image_sizes", which the model
lays the tiles out by) and its positions in the LLM ("image_tokens", which packing counts).
A video is its sampled frames (rows of the same tensors) behind one marker; its sample carries
"video_frames" (per marker) and the batch then says, for every marker, how many frames it is
(0: an image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX


def balanced_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Split samples (by length) into the fewest rows of at most `capacity` positions, rows near-equal.

    Every row is padded to the longest, so even rows, not tightly filled ones, are what save
    padding: longest sample first into the currently shortest row, and one more row whenever
    that overflows. Returns the sample indices of each row, in batch order.
    """
    if max(lengths) > capacity:
        raise ValueError(
            f"a sample fills {max(lengths)} positions (image patches included), more than a packed row's "
            f"{capacity}; build the dataset with max_length={capacity} (--model_max_length) so samples are cut to fit"
        )
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    num_rows = math.ceil(sum(lengths) / capacity)
    while True:
        rows, loads = [[] for _ in range(num_rows)], [0] * num_rows
        for i in order:
            shortest = min(range(num_rows), key=loads.__getitem__)
            rows[shortest].append(i)
            loads[shortest] += lengths[i]
        if max(loads) <= capacity:
            return [sorted(row) for row in rows]
        num_rows += 1


@dataclass
class DataCollatorForSupervisedDataset:
    tokenizer: object
    image_shape: tuple[int, int, int] | None = None  # (C, H, W); text-only batches get an empty (0, C, H, W)
    feature_shape: tuple[int, int] | None = None  # (patches, hidden): set when features come from a cache
    # --packing: several samples per row, up to `max_length` positions with each image as `image_tokens`.
    packing: bool = False
    max_length: int | None = None
    image_tokens: int = 1

    def __call__(self, instances: list[dict]) -> dict:
        rows = self._pack(instances) if self.packing else [[x] for x in instances]
        sequences = [torch.cat([x["input_ids"] for x in row]) for row in rows]
        targets = [torch.cat([self._own_labels(x) for x in row]) for row in rows]
        lengths = torch.tensor([len(ids) for ids in sequences])
        width = int(lengths.max())
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for r, (ids, labs) in enumerate(zip(sequences, targets)):
            input_ids[r, : len(ids)] = ids
            labels[r, : len(labs)] = labs
        # The mask comes from the lengths, never from `input_ids != pad_id`: Phi-2's pad is its eos.
        batch = {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": torch.arange(width)[None, :] < lengths[:, None],
        }
        if self.packing:
            # Positions restart at 0 where each sample starts: the model keeps samples apart by them.
            batch["position_ids"] = torch.zeros_like(input_ids)
            for r, row in enumerate(rows):
                positions = torch.cat([torch.arange(len(x["input_ids"])) for x in row])
                batch["position_ids"][r, : len(positions)] = positions
        ordered = [x for row in rows for x in row]  # row-major, as the markers
        sizes = [size for x in ordered for size in x.get("image_sizes", ())]
        if sizes:
            batch["image_sizes"] = torch.tensor(sizes, dtype=torch.long)
        if any("video_frames" in x for x in ordered):
            frames = [n for x in ordered for n in x.get("video_frames", [0] * self._markers(x))]
            batch["video_frames"] = torch.tensor(frames, dtype=torch.long)
        # Text-only batches still get an empty tensor, so the model runs its vision modules first (on a
        # placeholder) on every rank and ZeRO-2/3 ranks stay in lockstep (LlavaMetaForCausalLM._in_lockstep).
        if self.feature_shape is not None:
            features = [x["image_features"] for x in ordered if "image_features" in x]
            batch["image_features"] = torch.cat(features) if features else torch.zeros(0, *self.feature_shape)
            return batch
        images = [x["images"] for x in ordered if "images" in x]
        if images:
            batch["images"] = torch.cat(images)
        elif self.image_shape is not None:
            batch["images"] = torch.zeros(0, *self.image_shape)
        return batch

    def _own_labels(self, instance: dict) -> torch.Tensor:
        """A sample's labels; packed, its first token is never a target (nothing of its own precedes it).

        Unpacked, position 0 is never predicted either, so the HF Trainer's count of predicted
        tokens (`num_items_in_batch`) is the same packed or not.
        """
        labels = instance["labels"]
        if self.packing and labels[0] != IGNORE_INDEX:
            labels = labels.clone()
            labels[0] = IGNORE_INDEX
        return labels

    def _pack(self, instances: list[dict]) -> list[list[dict]]:
        if self.max_length is None:
            raise ValueError("packing needs max_length (--model_max_length), the longest row it may build")
        return [[instances[i] for i in row] for row in balanced_rows([self.positions(x) for x in instances], self.max_length)]

    @staticmethod
    def _markers(instance: dict) -> int:
        return int((instance["input_ids"] == IMAGE_TOKEN_INDEX).sum())

    def positions(self, instance: dict) -> int:
        """Positions the sample fills in the LLM: its tokens, each image marker expanded to its image's tokens."""
        markers = self._markers(instance)
        tokens = instance.get("image_tokens")
        expanded = sum(tokens) if tokens is not None else markers * self.image_tokens
        return len(instance["input_ids"]) - markers + expanded
