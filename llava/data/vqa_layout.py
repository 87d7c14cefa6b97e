"""The layout the generated datasets write (llava.data.demo, llava.data.digits), and its baseline.

OUT/pretrain.json and OUT/finetune.json (LLaVA training records for stage 1 and stage 2),
OUT/eval_questions.jsonl (`llava.eval.model_vqa` questions), OUT/eval_questions.json and
OUT/eval_annotations.json (the official VQA files `llava.eval.eval_okvqa` scores against), with the
images in OUT/images/.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Callable

from llava.records import read_records, write_json, write_jsonl


def human_answers(answer: str) -> list[dict]:
    """The official annotation's ten human answers, all `answer` (generated data has one right answer)."""
    return [{"answer": answer, "raw_answer": answer, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]


def write_dataset(out_dir: str, image_dir: str, pretrain: list, finetune: list, eval_lines: list,
                  vqa_questions: list, annotations: list) -> dict:
    """Write every file of the layout (each atomically); returns their paths."""
    paths = {
        "image_folder": image_dir,
        "pretrain": os.path.join(out_dir, "pretrain.json"),
        "finetune": os.path.join(out_dir, "finetune.json"),
        "eval_questions_jsonl": os.path.join(out_dir, "eval_questions.jsonl"),
        "eval_questions": os.path.join(out_dir, "eval_questions.json"),
        "eval_annotations": os.path.join(out_dir, "eval_annotations.json"),
    }
    write_json(paths["pretrain"], pretrain, indent=1)
    write_json(paths["finetune"], finetune, indent=1)
    write_json(paths["eval_questions"], {"questions": vqa_questions}, indent=1)
    write_json(paths["eval_annotations"], {"annotations": annotations}, indent=1)
    write_jsonl(paths["eval_questions_jsonl"], eval_lines)
    return paths


def majority_baseline(finetune_path: str, annotations_path: str, question_type: Callable[[str], str | None]) -> dict:
    """Held-out accuracy of always giving the training data's most common answer per question type.

    `question_type` names a training question's type (None: not one the held-out set asks). A tie goes
    to the answer seen first. Returns {"overall": %, "per_type": {type: %}, "answer": {type: majority answer}}.
    """
    records = read_records(finetune_path)
    counts: dict[str, Counter] = {}
    for record in records:
        turns = record["conversations"]
        for human, gpt in zip(turns[::2], turns[1::2]):
            kind = question_type(human["value"])
            if kind:
                counts.setdefault(kind, Counter())[gpt["value"]] += 1
    majority = {kind: counter.most_common(1)[0][0] for kind, counter in counts.items()}
    annotations = read_records(annotations_path, key="annotations")
    hits: dict[str, list[bool]] = {}
    for ann in annotations:
        kind = ann["question_type"]
        if kind not in majority:
            raise ValueError(f"question type {kind!r} of question {ann['question_id']} never occurs in {finetune_path}")
        hits.setdefault(kind, []).append(majority[kind] == ann["answers"][0]["answer"])
    if not hits:
        raise ValueError(f"{annotations_path} holds no annotations")
    every = [h for kind_hits in hits.values() for h in kind_hits]
    return {
        "overall": 100.0 * sum(every) / len(every),
        "per_type": {kind: 100.0 * sum(h) / len(h) for kind, h in sorted(hits.items())},
        "answer": majority,
    }


def print_baseline(out_dir: str, baseline: Callable[[str, str], dict], make_command: str) -> None:
    """`--baseline` of the generators: print the majority baseline of the data in `out_dir`, or exit naming the
    file that is missing and `make_command`, which writes it."""
    finetune, annotations = (os.path.join(out_dir, n) for n in ("finetune.json", "eval_annotations.json"))
    for path in (finetune, annotations):
        if not os.path.exists(path):
            raise SystemExit(f"--baseline: {path} not found; write the data first ({make_command})")
    result = baseline(finetune, annotations)
    per_type = ", ".join(f"{k} {v:.2f} ('{result['answer'][k]}')" for k, v in result["per_type"].items())
    print(f"Majority baseline: {result['overall']:.2f}  (most common training answer per question type: {per_type})")
