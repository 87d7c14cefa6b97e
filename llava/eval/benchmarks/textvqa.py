"""TextVQA val, scored locally.

Official files: `TextVQA_0.5.1_val.json` (`data`: question_id, image_id, question, answers,
ocr_tokens) and `train_images/<image_id>.jpg`. The prompt is official LLaVA-1.5's
`llava_textvqa_val_v051_ocr.jsonl`: question, "Reference OCR token: " + the OCR tokens joined by
", ", then the short-answer suffix. Accuracy is the m4c `TextVQAAccuracyEvaluator` official LLaVA
runs: prediction and the ten human answers through the EvalAI answer processor, then
min(1, matches / 3) averaged over the ten leave-one-out subsets.
"""

from __future__ import annotations

from llava.eval.benchmarks.common import SHORT_ANSWER, Answers, with_suffix
from llava.eval.benchmarks.registry import Benchmark, register
from llava.eval.vqa_normalize import question_accuracy
from llava.records import load_json


def load(path: str) -> list[dict]:
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path} is not a TextVQA annotation file (an object with a 'data' list)")
    return data["data"]


@register
class TextVQA(Benchmark):
    name = "textvqa"
    title = "TextVQA"
    folder = "textvqa"
    output = "local"
    normalization = "EvalAI answer processor on prediction and human answers; VQA min(1, n/3) accuracy"

    def add_convert_arguments(self, parser):
        parser.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json")

    def convert(self, args):
        return [
            {
                "question_id": q["question_id"],
                "image": f"{q['image_id']}.jpg",
                "text": with_suffix(q["question"], "Reference OCR token: " + ", ".join(q.get("ocr_tokens", [])), SHORT_ANSWER),
                "category": "default",
            }
            for q in load(args.annotation_file)
        ]

    def add_score_arguments(self, parser):
        parser.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json")

    def score(self, args, answers):
        questions = load(args.annotation_file)
        found = Answers(answers, [q["question_id"] for q in questions], args.allow_missing)
        per_question = {str(q["question_id"]): 100.0 * question_accuracy(found.text(q["question_id"]), q["answers"], normalization="evalai") for q in questions}
        return {
            "accuracy": sum(per_question.values()) / len(per_question),
            "questions": len(per_question),
            "missing": found.missing,
            "per_question": per_question,
        }
