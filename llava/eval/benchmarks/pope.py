"""POPE (object hallucination): yes/no questions on COCO val2014, three splits.

Official files: `coco/coco_pope_{adversarial,popular,random}.json` from the POPE repository, each a
JSON-lines file of `{"question_id", "image", "text", "label"}` with ids restarting at 1 per split.
Questions get official LLaVA's short-answer suffix and the ids of its `llava_pope_test.jsonl`
(the split's offset + the POPE id), so they are unique across splits. Scores per split are
official LLaVA's `eval_pope.py`: the answer's first sentence is "no" when it contains the word
`no`, `No` or `not`, otherwise "yes"; then accuracy, precision, recall, F1 and the yes ratio.
"""

from __future__ import annotations

import os

from llava.eval.benchmarks.common import SHORT_ANSWER, Answers, percent, with_suffix
from llava.eval.benchmarks.registry import Benchmark, register
from llava.records import read_records

# Official llava_pope_test.jsonl numbers adversarial 1.., random 10000001.., popular 20000001..
SPLIT_OFFSETS = {"adversarial": 0, "random": 10_000_000, "popular": 20_000_000}
PREFIX, SUFFIX = "coco_pope_", ".json"


def load_splits(annotation_dir: str) -> dict[str, list[dict]]:
    """split -> its POPE records, each with `llava_id` (the unique question id)."""
    if not os.path.isdir(annotation_dir):
        raise FileNotFoundError(f"--annotation-dir {annotation_dir} is not a directory (POPE's output/coco)")
    splits = {}
    for name in sorted(os.listdir(annotation_dir)):
        if not (name.startswith(PREFIX) and name.endswith(SUFFIX)):
            continue
        split = name[len(PREFIX) : -len(SUFFIX)]
        if split not in SPLIT_OFFSETS:
            raise ValueError(f"{name}: unknown POPE split {split!r}; expected one of {sorted(SPLIT_OFFSETS)}")
        records = read_records(os.path.join(annotation_dir, name))
        for i, record in enumerate(records):
            missing = [k for k in ("question_id", "image", "text", "label") if k not in record]
            if missing:
                raise ValueError(f"{name}: record #{i} lacks {missing}")
            if record["label"] not in ("yes", "no"):
                raise ValueError(f"{name}: question {record['question_id']} has label {record['label']!r}, not yes/no")
            record["llava_id"] = SPLIT_OFFSETS[split] + int(record["question_id"])
        splits[split] = records
    if not splits:
        raise FileNotFoundError(f"no {PREFIX}<split>{SUFFIX} files in {annotation_dir}")
    return dict(sorted(splits.items(), key=lambda item: SPLIT_OFFSETS[item[0]]))


def parse_yes_no(text: str) -> str:
    """Official LLaVA's reading of a free answer as yes/no."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def binary_metrics(predictions: list[str], labels: list[str]) -> dict:
    tp = sum(p == "yes" and l == "yes" for p, l in zip(predictions, labels))
    fp = sum(p == "yes" and l == "no" for p, l in zip(predictions, labels))
    tn = sum(p == "no" and l == "no" for p, l in zip(predictions, labels))
    fn = sum(p == "no" and l == "yes" for p, l in zip(predictions, labels))
    # Official divides by zero when the model never says yes (or no question is positive); 0 here.
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": percent(tp + tn, len(labels)),
        "precision": 100 * precision,
        "recall": 100 * recall,
        "f1": 100 * f1,
        "yes_ratio": percent(predictions.count("yes"), len(predictions)),
        "TP": tp, "FP": fp, "TN": tn, "FN": fn,
        "questions": len(labels),
    }


@register
class POPE(Benchmark):
    name = "pope"
    title = "POPE"
    folder = "pope"
    output = "local"
    normalization = "first sentence; `no`/`No`/`not` as a word -> no, else yes (official eval_pope)"

    def add_convert_arguments(self, parser):
        parser.add_argument("--annotation-dir", required=True, help="POPE's coco/ folder (coco_pope_<split>.json)")

    def convert(self, args):
        return [
            {"question_id": r["llava_id"], "image": r["image"], "text": with_suffix(r["text"], SHORT_ANSWER), "category": split}
            for split, records in load_splits(args.annotation_dir).items()
            for r in records
        ]

    def add_score_arguments(self, parser):
        parser.add_argument("--annotation-dir", required=True, help="POPE's coco/ folder (the labels)")

    def score(self, args, answers):
        splits = load_splits(args.annotation_dir)
        found = Answers(answers, [r["llava_id"] for records in splits.values() for r in records], args.allow_missing)
        scores = {}
        for split, records in splits.items():
            predictions = [parse_yes_no(found.text(r["llava_id"])) for r in records]
            scores[split] = binary_metrics(predictions, [r["label"] for r in records])
        per_split = list(scores.values())
        for metric in ("accuracy", "f1"):  # papers' single POPE number averages the splits
            scores[f"mean_{metric}"] = sum(s[metric] for s in per_split) / len(per_split)
        scores["missing"] = found.missing
        return scores
