"""Q-Bench (LLVisionQA): low-level visual perception, multiple choice, submitted to its authors.

Official files: `llvisionqa_dev.json` / `llvisionqa_test.json` (a list of `img_path, question,
candidates, [correct_ans,] type, concern`) and the images folder. The prompt is official LLaVA's
`model_vqa_qbench`: the question, "Choose between one of the options as follows:" and `A. ..`
lines (`--lang zh`: its Chinese instruction, kept byte for byte, stray backslash included).
`score` writes each item with the model's `response` added, one JSON object per line (official
appends the objects without newlines; Q-Bench reads either).
"""

from __future__ import annotations

from llava.eval.benchmarks.common import Answers
from llava.eval.benchmarks.registry import Benchmark, register
from llava.records import load_json, write_jsonl

INSTRUCTION = {"en": "\nChoose between one of the options as follows:\n", "zh": "\\在下列选项中选择一个:\n"}


def load(path: str) -> list[dict]:
    items = load_json(path)
    if not isinstance(items, list) or not all(isinstance(i, dict) and "img_path" in i and "candidates" in i for i in items):
        raise ValueError(f"{path} is not an LLVisionQA file (a list of items with img_path, question, candidates)")
    return items


def question_text(item: dict, lang: str) -> str:
    text = item["question"] + INSTRUCTION[lang]
    for letter, candidate in zip(["A.", "B.", "C.", "D."], item["candidates"]):
        text += f"{letter} {candidate}\n"
    return text


@register
class QBench(Benchmark):
    name = "qbench"
    title = "Q-Bench"
    folder = "qbench"
    output = "submission"
    normalization = "none here: Q-Bench's authors score the responses"

    def add_convert_arguments(self, parser):
        parser.add_argument("--annotation-file", required=True, help="llvisionqa_dev.json or llvisionqa_test.json")
        parser.add_argument("--lang", choices=sorted(INSTRUCTION), default="en")

    def convert(self, args):
        return [
            {"question_id": i, "image": item["img_path"], "text": question_text(item, args.lang), "category": item.get("type", "default")}
            for i, item in enumerate(load(args.annotation_file))
        ]

    def add_score_arguments(self, parser):
        parser.add_argument("--annotation-file", required=True, help="the LLVisionQA file that was converted")
        parser.add_argument("--upload-file", required=True, help="the answers JSONL to write")

    def score(self, args, answers):
        items = load(args.annotation_file)
        found = Answers(answers, range(len(items)), args.allow_missing)
        write_jsonl(args.upload_file, [{**item, "response": found.text(i)} for i, item in enumerate(items) if i in found])
        return {"upload_file": args.upload_file, "questions": len(items), "missing": found.missing}
