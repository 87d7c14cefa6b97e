"""MM-Vet: open-ended answers graded by GPT-4 (MM-Vet's notebook or its online grader).

Official files: `mm-vet/mm-vet.json` (`v1_<n>` -> imagename, question, answer, capability) and
`mm-vet/images/`. Questions are asked as they are (no suffix, as official LLaVA). `score` writes
the results JSON the grader takes, `{"v1_<n>": answer}` (official `convert_mmvet_for_eval.py`).
"""

from __future__ import annotations

from llava.eval.benchmarks.common import Answers
from llava.eval.benchmarks.registry import Benchmark, register
from llava.records import load_json, write_json


def load(path: str) -> dict[str, dict]:
    data = load_json(path)
    bad = [key for key in data if not key.startswith("v1_") or not key[3:].isdigit()]
    if bad:
        raise ValueError(f"{path}: keys must be v1_<number>, got {bad[0]!r}")
    return data


@register
class MMVet(Benchmark):
    name = "mmvet"
    title = "MM-Vet"
    folder = "mm-vet"
    output = "submission"
    normalization = "none: GPT-4 grades the free answer"

    def add_convert_arguments(self, parser):
        parser.add_argument("--annotation-file", required=True, help="mm-vet.json")

    def convert(self, args):
        return [
            {"question_id": int(key[3:]), "image": item["imagename"], "text": item["question"], "category": "conv"}
            for key, item in load(args.annotation_file).items()
        ]

    def add_score_arguments(self, parser):
        parser.add_argument("--annotation-file", required=True, help="mm-vet.json")
        parser.add_argument("--upload-file", required=True, help="the results JSON to write for the grader")

    def score(self, args, answers):
        keys = list(load(args.annotation_file))
        found = Answers(answers, [int(k[3:]) for k in keys], args.allow_missing)
        write_json(args.upload_file, {k: found.text(int(k[3:])) for k in keys if int(k[3:]) in found}, indent=2)
        return {"upload_file": args.upload_file, "questions": len(keys), "missing": found.missing}
