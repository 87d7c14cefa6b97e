"""How a training step's cost grows: step time and memory vs text length, images per sample, batch size.

Our model only (label_logits_only, the training default), a small LLaVA-Phi (hidden 256, 2 layers;
CLIP 64 px / patch 16 -> 16 tokens per image), one axis varied at a time from a base point
(batch 2, 128 text tokens, 1 image). A step is forward + backward + AdamW. Step time: median over
repeats in this process. Memory: all grid points run again in one fresh child process; for each,
the resident high-water mark is reset (benchmarks.common.reset_peak_rss) and the figure is how far
its forward + backward rises above what was resident before: activations and temporaries (weights,
gradient buffers and AdamW state are resident already and do not change along these axes; AdamW's
update is left out, its temporaries scale with the parameters only).

    python -m benchmarks.scaling --repeats 3
"""

from __future__ import annotations

import dataclasses

import torch

from benchmarks.common import (
    ModelSizes,
    benchmark_main,
    build_tiny_llava,
    make_row,
    measure_in_child,
    seconds_per_call,
)
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

NAME = "scaling"
DEFAULT_SIZES = ModelSizes(
    backbone="phi", llm_hidden=256, llm_layers=2, vision_hidden=128, vision_layers=2, image_size=64, patch_size=16
)
BASE = {"batch_size": 2, "text_tokens": 128, "images": 1}
AXES = {"text_tokens": (64, 128, 256, 512), "images": (1, 2, 4), "batch_size": (1, 2, 4, 8)}


def grid(axes: dict = AXES, base: dict = BASE) -> list[tuple[str, dict]]:
    """(axis, point) pairs, the base point once per axis so each axis reads on its own."""
    return [(axis, {**base, axis: value}) for axis, values in axes.items() for value in values]


def make_batch(point: dict, sizes: ModelSizes, answer_fraction: float = 0.3, seed: int = 0) -> dict:
    """`images` markers spread through `text_tokens` tokens per sample; the last 30 % of the text is labelled."""
    gen = torch.Generator().manual_seed(seed)
    n, length, images = point["batch_size"], point["text_tokens"], point["images"]
    ids = torch.randint(0, 50000, (n, length), generator=gen)
    labels = torch.full_like(ids, IGNORE_INDEX)
    answer = max(1, int(length * answer_fraction))
    labels[:, -answer:] = ids[:, -answer:]
    marker_at = [int(k * (length - answer) / images) for k in range(images)]  # all before the answer
    ids[:, marker_at] = IMAGE_TOKEN_INDEX
    labels[:, marker_at] = IGNORE_INDEX
    pixels = torch.randn(n * images, 3, sizes.image_size, sizes.image_size, generator=gen)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, images=pixels)


class Trainer:
    """Our model with AdamW; `step` is a whole training step, `forward_backward` the part before the update."""

    def __init__(self, sizes: ModelSizes):
        self.model = build_tiny_llava(sizes, max_length=8192).train()
        self.model.label_logits_only = True
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-5)

    def forward_backward(self, batch: dict, keep_grads: bool = False) -> None:
        self.optimizer.zero_grad(set_to_none=not keep_grads)
        self.model(**batch).loss.backward()

    def step(self, batch: dict, keep_grads: bool = False) -> None:
        self.forward_backward(batch, keep_grads)
        self.optimizer.step()


def memory_grid(sizes: dict, points: list) -> dict:
    """Child-process body: step memory above the resident set, per grid point."""
    from benchmarks.common import peak_rss_mib, reset_peak_rss, rss_mib

    sizes = ModelSizes(**sizes)
    trainer = Trainer(sizes)
    trainer.step(make_batch(points[0][1], sizes), keep_grads=True)  # AdamW state and gradient buffers exist
    extra = []
    for _, point in points:
        batch = make_batch(point, sizes)
        if not reset_peak_rss():
            raise RuntimeError("cannot reset the resident high-water mark (/proc/self/clear_refs); Linux only")
        before = rss_mib()
        trainer.forward_backward(batch, keep_grads=True)
        extra.append(peak_rss_mib() - before)
    return {"fwd_bwd_rss_mib": extra}


def run(
    suite: str = "cpu",
    repeats: int = 3,
    sizes: ModelSizes | None = None,
    axes: dict | None = None,
    measure_memory: bool = True,
) -> list[dict]:
    sizes = sizes or DEFAULT_SIZES
    points = grid(axes or AXES)
    trainer = Trainer(sizes)
    batches = [make_batch(point, sizes) for _, point in points]
    for batch in batches:  # warm-up every shape once
        trainer.step(batch)
    seconds = [[] for _ in points]
    for _ in range(repeats):
        for i, batch in enumerate(batches):
            seconds[i].append(seconds_per_call(lambda batch=batch: trainer.step(batch)))

    memory = None
    if measure_memory:
        memory = measure_in_child("benchmarks.scaling:memory_grid",
                                  dict(sizes=dataclasses.asdict(sizes), points=points))["fwd_bwd_rss_mib"]
    rows = []
    for i, (axis, point) in enumerate(points):
        case = f"{axis}={point[axis]}"
        tokens = point["batch_size"] * (point["text_tokens"] + point["images"] * (sizes.image_tokens - 1))
        config = {**sizes.as_config(), **point, "axis": axis, "tokens_per_step": tokens,
                  "threads": torch.get_num_threads()}
        rows.append(make_row(NAME, case, "step_time", [s * 1000 for s in seconds[i]], "ms", config))
        rows.append(make_row(NAME, case, "tokens_per_s", [tokens / s for s in seconds[i]], "tok/s", config))
        if memory is not None:
            rows.append(make_row(NAME, case, "fwd_bwd_rss_over_resident", [memory[i]], "MiB", config))
    return rows


if __name__ == "__main__":
    benchmark_main(NAME, run)
