"""Train-step throughput and peak memory: our LLaVA model vs transformers' LlavaForConditionalGeneration.

Both models hold the same weights (HF's is made from ours by our exporter, llava/export/hf.py) and
see the same batch: ours with one IMAGE_TOKEN_INDEX marker per image, HF with the marker expanded
to one image token per patch plus pixel_values, and the same labels. Before timing, the losses
must agree within 1e-4 or nothing is reported. One step = forward + backward + AdamW step on the
same trainable set (LLM + projector; vision tower frozen; Phi's zero lm_head bias frozen, since
HF Llava's lm_head has none).

Cases: `ours` (label_logits_only=True, the training default: LM head only at label positions),
`ours_full_logits` (label_logits_only=False: logits at every position, as HF does) and `hf`.
Steps of the three are interleaved within each repeat (machines are noisy) and the ratios
ours/HF are taken per repeat, then the median. Memory: each case trains in its own fresh process
(benchmarks.common.measure_in_child); see `memory_case` for the two figures.

    python -m benchmarks.train_step --repeats 3
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

import torch

from benchmarks.common import (
    ModelSizes,
    benchmark_main,
    build_tiny_llava,
    make_row,
    make_step,
    measure_in_child,
    save_checkpoint,
    seconds_per_call,
    tokenizer_for,
)
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

NAME = "train_step"
LOSS_TOLERANCE = 1e-4
# Big enough that the matrix work, not Python overhead, decides a CPU step.
DEFAULT_SIZES = ModelSizes(
    backbone="phi", llm_hidden=512, llm_layers=4, vision_hidden=256, vision_layers=2, image_size=128, patch_size=16
)


@dataclasses.dataclass
class BatchSpec:
    """Synthetic LLaVA samples: a short prefix, one image, text; the last `answer_fraction` of the text is labelled."""

    batch_size: int = 2
    text_tokens: int = 128  # longest sample's text; each next sample is `length_step` shorter (padding)
    length_step: int = 8
    answer_fraction: float = 0.3
    prefix_tokens: int = 6  # text before the <image> marker (system prompt, role)
    seed: int = 0


def make_batches(spec: BatchSpec, sizes: ModelSizes, image_token_id: int, pad_id: int, vocab_limit: int = 50000):
    """(ours, hf) batches of identical content; `image_token_id` is HF Llava's token for one patch."""
    gen = torch.Generator().manual_seed(spec.seed)
    n_patches = sizes.image_tokens
    ours_ids, ours_labels, hf_ids, hf_labels = [], [], [], []
    for i in range(spec.batch_size):
        length = max(spec.prefix_tokens + 4, spec.text_tokens - i * spec.length_step)
        ids = torch.randint(0, vocab_limit, (length,), generator=gen)
        labels = torch.full((length,), IGNORE_INDEX)
        answer = max(1, int(length * spec.answer_fraction))
        labels[-answer:] = ids[-answer:]
        p = spec.prefix_tokens
        ours_ids.append(torch.cat([ids[:p], torch.tensor([IMAGE_TOKEN_INDEX]), ids[p:]]))
        ours_labels.append(torch.cat([labels[:p], torch.tensor([IGNORE_INDEX]), labels[p:]]))
        hf_ids.append(torch.cat([ids[:p], torch.full((n_patches,), image_token_id), ids[p:]]))
        hf_labels.append(torch.cat([labels[:p], torch.full((n_patches,), IGNORE_INDEX), labels[p:]]))
    pixels = torch.randn(spec.batch_size, 3, sizes.image_size, sizes.image_size, generator=gen)

    def pad(rows, value):
        width = max(len(r) for r in rows)
        return torch.stack([torch.cat([r, torch.full((width - len(r),), value)]) for r in rows])

    def mask(rows):
        width = max(len(r) for r in rows)
        return torch.stack([(torch.arange(width) < len(r)).long() for r in rows])

    ours = dict(input_ids=pad(ours_ids, pad_id), attention_mask=mask(ours_ids), labels=pad(ours_labels, IGNORE_INDEX),
                images=pixels)
    hf = dict(input_ids=pad(hf_ids, pad_id), attention_mask=mask(hf_ids), labels=pad(hf_labels, IGNORE_INDEX),
              pixel_values=pixels)
    return ours, hf


# -- the two models ------------------------------------------------------------------------------------
def freeze_like_hf(ours) -> None:
    """Trainable set of a stage-2 full fine-tune: LLM + projector; the tower (and Phi's lm_head bias) frozen."""
    ours.requires_grad_(True)
    ours.get_vision_tower().requires_grad_(False)
    bias = getattr(ours.get_output_embeddings(), "bias", None)
    if bias is not None:
        bias.requires_grad_(False)


def load_ours(path: str):
    from transformers import AutoModelForCausalLM

    import llava.model  # noqa: F401  (registers the llava_* model types)

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    freeze_like_hf(model)
    return model.train()


def load_hf(path: str):
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    model.requires_grad_(True)
    model.model.vision_tower.requires_grad_(False)
    return model.train()


def write_pair(sizes: ModelSizes, workdir: str, seed: int = 0) -> tuple[str, str]:
    """Our random-init checkpoint and its HF Llava export (by llava.export.hf) under `workdir`."""
    from llava.export.hf import export

    ours_dir, hf_dir = os.path.join(workdir, "ours"), os.path.join(workdir, "hf")
    save_checkpoint(build_tiny_llava(sizes, seed), tokenizer_for(sizes.backbone), ours_dir)
    export(ours_dir, hf_dir)
    return ours_dir, hf_dir


def trainable_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def loss_of(model, batch, label_logits_only: bool | None = None) -> float:
    if label_logits_only is not None:
        model.label_logits_only = label_logits_only
    with torch.no_grad():
        return float(model(**batch).loss)


def check_losses(ours, hf, ours_batch, hf_batch) -> dict:
    """Losses of both models (ours both ways) on the batch; raises if any differs from HF's by > LOSS_TOLERANCE."""
    losses = {
        "hf": loss_of(hf, hf_batch),
        "ours": loss_of(ours, ours_batch, True),
        "ours_full_logits": loss_of(ours, ours_batch, False),
    }
    worst = max(abs(losses[k] - losses["hf"]) for k in ("ours", "ours_full_logits"))
    if worst > LOSS_TOLERANCE:
        raise RuntimeError(
            f"train_step refuses to report: losses differ by {worst:.3g} > {LOSS_TOLERANCE} ({losses}); "
            "the two models do not compute the same thing, so their speeds are not comparable"
        )
    return {**losses, "max_abs_diff": worst}


def memory_case(case: str, path: str, sizes: dict, spec: dict, image_token_id: int, pad_id: int) -> dict:
    """Child-process body: load one model, train, report resident memory (MiB; see measure_in_child).

    After a warm-up step (AdamW state allocated) the high-water mark is reset, so the child's
    `peak_rss_mib` is that of one steady-state step, the whole process included.
    `fwd_bwd_over_resident_mib`: how far its forward + backward rises above what was resident before
    (activations, logits, gradients), the part where the two implementations differ.
    """
    from benchmarks.common import peak_rss_mib, reset_peak_rss, rss_mib

    sizes, spec = ModelSizes(**sizes), BatchSpec(**spec)
    model = load_hf(path) if case == "hf" else load_ours(path)
    ours_batch, hf_batch = make_batches(spec, sizes, image_token_id, pad_id)
    batch = hf_batch if case == "hf" else ours_batch
    if case != "hf":
        model.label_logits_only = case == "ours"
    loaded = rss_mib()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    make_step(model, batch, optimizer)()
    optimizer.zero_grad(set_to_none=True)
    if not reset_peak_rss():
        raise RuntimeError("cannot reset the resident high-water mark (/proc/self/clear_refs); Linux only")
    before = rss_mib()
    model(**batch).loss.backward()
    fwd_bwd = peak_rss_mib() - before
    optimizer.step()
    return {"rss_loaded_mib": loaded, "fwd_bwd_over_resident_mib": fwd_bwd}


def run(
    suite: str = "cpu",
    repeats: int = 3,
    sizes: ModelSizes | None = None,
    spec: BatchSpec | None = None,
    steps_per_repeat: int = 2,
    measure_memory: bool = True,
    workdir: str | None = None,
) -> list[dict]:
    sizes, spec = sizes or DEFAULT_SIZES, spec or BatchSpec()
    own_dir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="bench-train-step-")
    try:
        ours_dir, hf_dir = write_pair(sizes, workdir)
        ours, hf = load_ours(ours_dir), load_hf(hf_dir)
        if trainable_count(ours) != trainable_count(hf):
            raise RuntimeError(f"trainable sets differ: ours {trainable_count(ours):,} vs HF {trainable_count(hf):,}")
        pad_id = tokenizer_for(sizes.backbone).pad_token_id
        image_token_id = hf.config.image_token_id
        ours_batch, hf_batch = make_batches(spec, sizes, image_token_id, pad_id)
        losses = check_losses(ours, hf, ours_batch, hf_batch)

        tokens = int(hf_batch["attention_mask"].sum())  # real tokens per step, image patches included
        config = {
            **sizes.as_config(),
            **dataclasses.asdict(spec),
            "tokens_per_step": tokens,
            "label_tokens_per_step": int((hf_batch["labels"] != IGNORE_INDEX).sum()),
            "trainable_params": trainable_count(ours),
            "steps_per_repeat": steps_per_repeat,
            "dtype": "float32",
            "attn_implementation": "sdpa",
            "optimizer": "torch.optim.AdamW",
            "threads": torch.get_num_threads(),
        }
        ours_opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-5)
        hf_opt = torch.optim.AdamW([p for p in hf.parameters() if p.requires_grad], lr=1e-5)
        steps = {
            "ours": make_step(ours, ours_batch, ours_opt, True),
            "ours_full_logits": make_step(ours, ours_batch, ours_opt, False),
            "hf": make_step(hf, hf_batch, hf_opt),
        }
        for step in steps.values():  # warm-up: optimizer state, allocator, first-call work
            step()
        seconds = {name: [] for name in steps}
        order = list(steps)
        for r in range(repeats):
            for name in order[r % 3 :] + order[: r % 3]:  # rotate who goes first
                seconds[name].append(seconds_per_call(steps[name], steps_per_repeat))
        ours.label_logits_only = True

        rows = [make_row(NAME, "loss_check", "max_abs_loss_diff", [losses["max_abs_diff"]], "abs",
                         {**config, **{f"loss_{k}": v for k, v in losses.items()}}, target=f"<= {LOSS_TOLERANCE}")]
        for name, values in seconds.items():
            rows.append(make_row(NAME, name, "tokens_per_s", [tokens / s for s in values], "tok/s", config))
            rows.append(make_row(NAME, name, "samples_per_s", [spec.batch_size / s for s in values], "samples/s", config))
        for name in ("ours", "ours_full_logits"):
            ratios = [h / o for o, h in zip(seconds[name], seconds["hf"])]
            rows.append(make_row(NAME, f"{name}_vs_hf", "ratio", ratios, "x (tok/s)", config, target=">= 1.0"))

        if measure_memory:
            del ours, hf, ours_opt, hf_opt, steps
            extra = {}
            for name in ("hf", "ours", "ours_full_logits"):
                result = measure_in_child(
                    "benchmarks.train_step:memory_case",
                    dict(case=name, path=hf_dir if name == "hf" else ours_dir, sizes=dataclasses.asdict(sizes),
                         spec=dataclasses.asdict(spec), image_token_id=image_token_id, pad_id=pad_id),
                )
                extra[name] = result["fwd_bwd_over_resident_mib"]
                memory_config = {**config, "rss_after_load_mib": result["rss_loaded_mib"]}
                rows.append(make_row(NAME, name, "step_peak_rss", [result["peak_rss_mib"]], "MiB", memory_config))
                rows.append(make_row(NAME, name, "fwd_bwd_rss_over_resident", [extra[name]], "MiB", memory_config))
            for name in ("ours", "ours_full_logits"):
                # Resident-set figures move by a few MiB from run to run: "not more than HF" is read within 1 %.
                rows.append(make_row(NAME, f"{name}_vs_hf_memory", "ratio", [extra[name] / extra["hf"]],
                                     "x (fwd+bwd RSS)", config, target="<= 1.01"))
        return rows
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    benchmark_main(NAME, run)
