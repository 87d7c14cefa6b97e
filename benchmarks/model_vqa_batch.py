"""Questions per second of `python -m llava.eval.model_vqa` at batch size 1 vs 8 vs 16, answers unchanged.

A tiny random-init LLaVA-Phi checkpoint (the test suite's sizes; projector weights scaled up so
answers differ from image to image) answers the demo data's held-out questions
(llava/data/demo.py) through `model_vqa.main`, the command-line entry point itself; the figure is
the q/s that model_vqa reports, which counts prompt building, image loading and processing,
generation and writing answers, not model loading. Batch sizes take turns within each repeat.
The answers must be identical at every batch size, or nothing is reported.

A random-init model never says EOS, so every answer runs to --max_new_tokens: two cases cover
what real checkpoints do. `short` (2 new tokens) is what the demo questions ask for ("Answer the
question using a single word or phrase") and what the demo-trained checkpoint (scripts/demo.sh)
generates for them: one word and EOS, i.e. the prompt's forward and one decoding step per
question. The >= 4x target at batch 8 is set on it. `long` (32 new tokens, a sentence) is reported without a target: there
decoding dominates, and each decoding step of this tiny model is mostly its 64 x 51,200 LM head,
work that grows with the batch however it is batched.

    python -m benchmarks.model_vqa_batch --repeats 3
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile

import torch

from benchmarks.common import ModelSizes, benchmark_main, build_tiny_llava, make_row, save_checkpoint, tokenizer_for

NAME = "model_vqa_batch"
BATCH_SIZES = (1, 8, 16)
ANSWER_LENGTHS = {"short": 2, "long": 32}
TARGET = ">= 4.0"  # batch 8 vs batch 1, on the `short` case
TARGET_CASE = "short"


def write_checkpoint(out_dir: str, sizes: ModelSizes, projector_scale: float = 8.0, seed: int = 0) -> str:
    model = build_tiny_llava(sizes, seed, max_length=512)
    with torch.no_grad():  # image features dominate the tiny LLM: answers vary per image
        for param in model.get_model().mm_projector.parameters():
            param.mul_(projector_scale)
    return save_checkpoint(model, tokenizer_for(sizes.backbone), out_dir)


def write_questions(out_dir: str, num_questions: int, image_size: int) -> tuple[str, str]:
    """The demo data's eval questions (3 per image), the first `num_questions` of them."""
    from llava.data.demo import generate

    paths = generate(out_dir, num_train=1, num_eval=-(-num_questions // 3), image_size=image_size)
    with open(paths["eval_questions_jsonl"]) as f:
        lines = f.readlines()[:num_questions]
    questions = os.path.join(out_dir, "questions.jsonl")
    with open(questions, "w") as f:
        f.writelines(lines)
    return questions, paths["image_folder"]


def answer_all(checkpoint: str, questions: str, images: str, answers: str, batch_size: int, max_new_tokens: int):
    """One model_vqa run; returns (questions per second, answers in question order)."""
    from llava.eval import model_vqa

    if os.path.exists(answers):
        os.remove(answers)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        summary = model_vqa.main([
            "--model-path", checkpoint, "--question-file", questions, "--image-folder", images,
            "--answers-file", answers, "--batch-size", str(batch_size), "--max_new_tokens", str(max_new_tokens),
        ])
    with open(answers) as f:
        texts = [json.loads(line)["text"] for line in f]
    return summary["answered"] / summary["seconds"], texts


def run(
    suite: str = "cpu",
    repeats: int = 3,
    sizes: ModelSizes | None = None,
    num_questions: int = 96,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    answer_lengths: dict | None = None,
    workdir: str | None = None,
) -> list[dict]:
    sizes = sizes or ModelSizes()
    answer_lengths = answer_lengths or ANSWER_LENGTHS
    if 1 not in batch_sizes:
        raise ValueError("batch_sizes must include 1 (the baseline the ratios are taken against)")
    own_dir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="bench-model-vqa-")
    rows = []
    try:
        checkpoint = write_checkpoint(os.path.join(workdir, "llava-tiny"), sizes)
        questions, images = write_questions(os.path.join(workdir, "demo"), num_questions, sizes.image_size)
        answers = os.path.join(workdir, "answers.jsonl")
        for case, max_new_tokens in answer_lengths.items():
            config = {**sizes.as_config(), "questions": num_questions, "max_new_tokens": max_new_tokens,
                      "threads": torch.get_num_threads()}
            speed = {b: [] for b in batch_sizes}
            reference = None
            for r in range(repeats):
                order = list(batch_sizes)[r % len(batch_sizes) :] + list(batch_sizes)[: r % len(batch_sizes)]
                for b in order:
                    qps, texts = answer_all(checkpoint, questions, images, answers, b, max_new_tokens)
                    reference = reference or (b, texts)
                    if texts != reference[1]:
                        changed = sum(x != y for x, y in zip(texts, reference[1]))
                        raise RuntimeError(
                            f"model_vqa_batch refuses to report: {changed} of {len(texts)} answers at batch size {b} "
                            f"differ from batch size {reference[0]} ({case} answers)"
                        )
                    speed[b].append(qps)
            distinct = len(set(reference[1]))
            for b in batch_sizes:
                rows.append(make_row(NAME, f"{case}_batch{b}", "questions_per_s", speed[b], "q/s",
                                     {**config, "batch_size": b, "distinct_answers": distinct}))
            for b in batch_sizes:
                if b == 1:
                    continue
                ratios = [x / y for x, y in zip(speed[b], speed[1])]
                targeted = b == 8 and case == TARGET_CASE
                # Contract: metric "ratio" carries a target; the other speed-ups are reported as "speedup".
                rows.append(make_row(NAME, f"{case}_batch{b}_vs_batch1", "ratio" if targeted else "speedup", ratios,
                                     "x (q/s)", {**config, "batch_size": b}, target=TARGET if targeted else None))
        return rows
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    benchmark_main(NAME, run)
