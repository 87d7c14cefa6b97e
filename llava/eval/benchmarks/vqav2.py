"""VQAv2 test-dev: answers submitted to the EvalAI server.

Official files: VQA's question JSON (`v2_OpenEnded_mscoco_test-dev2015_questions.json`; test-dev
images are in `test2015/COCO_test2015_<image_id:012d>.jpg`). Questions get the short-answer
suffix. `score` writes the server's results JSON, `[{"question_id", "answer"}]` with answers
through the EvalAI answer processor, for every question of `--test-questions` (the full test2015
question file: the server wants all of them; those not in test-dev get "", as official LLaVA's
`convert_vqav2_for_submission.py`). Local VQA accuracy on val: `llava.eval.eval_okvqa`.
"""

from __future__ import annotations

from llava.eval.benchmarks.common import SHORT_ANSWER, Answers, with_suffix
from llava.eval.benchmarks.registry import Benchmark, register
from llava.eval.vqa_normalize import evalai_normalize
from llava.records import load_json, write_json


def load_questions(path: str) -> tuple[list[dict], str]:
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise ValueError(f"{path} is not an official VQA question file (an object with a 'questions' list)")
    # test-dev questions are asked about test2015 images.
    return data["questions"], data.get("data_subtype", "test2015").replace("test-dev", "test")


@register
class VQAv2(Benchmark):
    name = "vqav2"
    title = "VQAv2 (test-dev)"
    folder = "vqav2"
    output = "submission"
    normalization = "EvalAI answer processor (then the server's VQA accuracy)"

    def add_convert_arguments(self, parser):
        parser.add_argument("--questions", required=True, help="VQA questions JSON, e.g. v2_OpenEnded_mscoco_test-dev2015_questions.json")

    def convert(self, args):
        questions, images = load_questions(args.questions)
        return [
            {"question_id": q["question_id"], "image": f"COCO_{images}_{q['image_id']:012d}.jpg", "text": with_suffix(q["question"], SHORT_ANSWER), "category": "default"}
            for q in questions
        ]

    def add_score_arguments(self, parser):
        parser.add_argument("--questions", required=True, help="the VQA questions JSON that was converted (test-dev)")
        parser.add_argument("--test-questions", default=None, help="the full test2015 questions JSON (default: --questions)")
        parser.add_argument("--upload-file", required=True, help="the results JSON to write for EvalAI")

    def score(self, args, answers):
        asked, _ = load_questions(args.questions)
        found = Answers(answers, [q["question_id"] for q in asked], args.allow_missing)
        everything = load_questions(args.test_questions)[0] if args.test_questions else asked
        results = [
            {"question_id": q["question_id"], "answer": evalai_normalize(found.text(q["question_id"])) if q["question_id"] in found else ""}
            for q in everything
        ]
        write_json(args.upload_file, results)
        return {"upload_file": args.upload_file, "questions": len(results), "answered": len(asked) - found.missing, "missing": found.missing}
