"""VizWiz-VQA test: answers submitted to the EvalAI server.

Official files: VizWiz's `test.json` (a list of `{"image", "question"}`) and the `test/` images.
Questions get official LLaVA's "respond with 'Unanswerable'" and short-answer instructions.
`score` writes the server's JSON, `[{"image", "answer"}]` in test.json's order with answers
through the EvalAI answer processor (official `convert_vizwiz_for_submission.py`).
"""

from __future__ import annotations

from llava.eval.benchmarks.common import SHORT_ANSWER, UNANSWERABLE, Answers, with_suffix
from llava.eval.benchmarks.registry import Benchmark, register
from llava.eval.vqa_normalize import evalai_normalize
from llava.records import load_json, write_json


def load(path: str) -> list[dict]:
    items = load_json(path)
    if not isinstance(items, list) or not all(isinstance(i, dict) and "image" in i and "question" in i for i in items):
        raise ValueError(f"{path} is not a VizWiz annotation file (a list of {{image, question}})")
    return items


@register
class VizWiz(Benchmark):
    name = "vizwiz"
    title = "VizWiz"
    folder = "vizwiz"
    output = "submission"
    normalization = "EvalAI answer processor (then the server's VQA accuracy)"

    def add_convert_arguments(self, parser):
        parser.add_argument("--annotation-file", required=True, help="VizWiz test.json")

    def convert(self, args):
        return [
            {"question_id": i, "image": item["image"], "text": with_suffix(item["question"], UNANSWERABLE, SHORT_ANSWER), "category": "default"}
            for i, item in enumerate(load(args.annotation_file))
        ]

    def add_score_arguments(self, parser):
        parser.add_argument("--annotation-file", required=True, help="the VizWiz JSON that was converted")
        parser.add_argument("--upload-file", required=True, help="the results JSON to write for EvalAI")

    def score(self, args, answers):
        items = load(args.annotation_file)
        found = Answers(answers, range(len(items)), args.allow_missing)
        results = [{"image": item["image"], "answer": evalai_normalize(found.text(i))} for i, item in enumerate(items)]
        write_json(args.upload_file, results)
        return {"upload_file": args.upload_file, "questions": len(results), "missing": found.missing}
