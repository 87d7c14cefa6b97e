"""SEED-Bench (v1): four-option multiple choice over images and video.

Official files: `SEED-Bench.json` (`question_type` name -> id, `questions` with question_id,
data_id, data_type, question_type_id, question, choice_a..d, answer); images under
`SEED-Bench-image/<data_id>`; for video questions, the middle frame extracted as official LLaVA's
`extract_video_frames.py` names it: `SEED-Bench-video-image/<question_type_id>_<question_id>.png`.
Prompt: question, `A. ..` to `D. ..` and the option-letter instruction. Scoring is official
LLaVA's `convert_seed_for_submission.py`: the answer must equal the letter exactly; accuracy per
question type, overall, image-only and video-only; it also writes the leaderboard's JSONL.
"""

from __future__ import annotations

from llava.eval.benchmarks.common import OPTION_LETTER, Answers, format_options, percent, with_suffix
from llava.eval.benchmarks.registry import Benchmark, register
from llava.records import load_json, write_jsonl


def load(annotation_file: str) -> tuple[list[dict], dict[int, str]]:
    data = load_json(annotation_file)
    if not isinstance(data, dict) or "questions" not in data or "question_type" not in data:
        raise ValueError(f"{annotation_file} is not SEED-Bench.json (an object with 'question_type' and 'questions')")
    return data["questions"], {type_id: name for name, type_id in data["question_type"].items()}


def image_path(question: dict) -> str:
    if question["data_type"] == "image":
        return f"SEED-Bench-image/{question['data_id']}"
    return f"SEED-Bench-video-image/{question['question_type_id']}_{question['question_id']}.png"


def accuracy(questions: list[dict], found: Answers, type_names: dict[int, str]) -> dict:
    by_type: dict[int, list[bool]] = {}
    for q in questions:
        by_type.setdefault(q["question_type_id"], []).append(found.text(q["question_id"]) == q["answer"])
    rights = [r for values in by_type.values() for r in values]
    return {
        "accuracy": percent(sum(rights), len(rights)),
        "questions": len(rights),
        "per_type": {type_names.get(t, str(t)): percent(sum(v), len(v)) for t, v in sorted(by_type.items())},
    }


@register
class SEEDBench(Benchmark):
    name = "seed_bench"
    title = "SEED-Bench"
    folder = "seed_bench"
    output = "local+submission"
    normalization = "none: the answer must be the option letter exactly (convert_seed_for_submission)"

    def add_convert_arguments(self, parser):
        parser.add_argument("--annotation-file", required=True, help="SEED-Bench.json")
        parser.add_argument("--image-only", action="store_true", help="leave out the video questions")

    def convert(self, args):
        questions, type_names = load(args.annotation_file)
        return [
            {
                # Numeric ids as ints: official's scorer looks answers up by int(question_id).
                "question_id": int(q["question_id"]) if str(q["question_id"]).isdigit() else q["question_id"],
                "image": image_path(q),
                "text": with_suffix(q["question"], format_options([q[f"choice_{c}"] for c in "abcd"]), OPTION_LETTER),
                "category": type_names.get(q["question_type_id"], str(q["question_type_id"])),
            }
            for q in questions
            if not (args.image_only and q["data_type"] != "image")
        ]

    def add_score_arguments(self, parser):
        parser.add_argument("--annotation-file", required=True, help="SEED-Bench.json")
        parser.add_argument("--upload-file", default=None, help="write the leaderboard JSONL ({question_id, prediction}) here")

    def score(self, args, answers):
        questions, type_names = load(args.annotation_file)
        answered_types = {q["data_type"] for q in questions if str(q["question_id"]) in answers}
        if answered_types == {"image"}:  # an --image-only run: score the image questions
            questions = [q for q in questions if q["data_type"] == "image"]
        found = Answers(answers, [q["question_id"] for q in questions], args.allow_missing)
        result = accuracy(questions, found, type_names)
        for data_type in ("image", "video"):
            subset = [q for q in questions if q["data_type"] == data_type]
            if subset:
                result[f"{data_type}_accuracy"] = accuracy(subset, found, type_names)["accuracy"]
        result["missing"] = found.missing
        if args.upload_file:
            write_jsonl(args.upload_file, [{"question_id": q["question_id"], "prediction": found.text(q["question_id"])} for q in questions])
            result["upload_file"] = args.upload_file
        return result
