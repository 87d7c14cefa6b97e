"""GQA (testdev-balanced in LLaVA-1.5).

Official files: GQA's `testdev_balanced_questions.json` (question id -> imageId, question, answer,
types, semantic program, groups, isBalanced); images `images/<imageId>.jpg`. Answers are
lower-cased with trailing periods removed (official LLaVA's `convert_gqa_for_eval.py`) and then
scored as GQA's own `eval.py` in the form official LLaVA runs it (validity, plausibility,
consistency and grounding need assets the v1.2 release lacks and are left out, as there): exact
match over balanced questions; binary/open; per structural and semantic type, reasoning steps and
question length; and the chi-square answer distribution (lower is better).
"""

from __future__ import annotations

from collections import defaultdict

from llava.eval.benchmarks.common import SHORT_ANSWER, Answers, with_suffix
from llava.eval.benchmarks.registry import Benchmark, register
from llava.records import load_json, write_json


def prediction(text: str) -> str:
    return text.rstrip(".").lower()


def steps(question: dict) -> int:
    """Reasoning steps, not counting the final query/exist/choose-name step (GQA's getStepsNum)."""
    trivial = ("exist", "query: name", "choose name")
    return len([s for s in question["semantic"] if not any(t in f"{s['operation']}: {s['argument']}" for t in trivial)])


def chi_square(gold: dict, predicted: dict) -> float:
    total_score = total = 0.0
    for group, counts in gold.items():
        score = sum((predicted[group].get(answer, 0) - expected) ** 2 / expected for answer, expected in counts.items())
        overall = sum(counts.values())
        total_score += score * overall
        total += overall
    return total_score / total if total else 0.0


def evaluate(questions: dict[str, dict], predictions: dict[str, str]) -> dict:
    scores = defaultdict(list)
    per_type = {key: defaultdict(list) for key in ("structural", "semantic", "steps", "length")}
    gold, predicted = defaultdict(lambda: defaultdict(int)), defaultdict(lambda: defaultdict(int))
    for qid, question in questions.items():
        if not question.get("isBalanced", True):
            continue
        answer, guess = question["answer"], predictions[qid]
        score = float(guess == answer)
        scores["accuracy"].append(score)
        scores["open" if question["types"]["structural"] == "query" else "binary"].append(score)
        per_type["structural"][question["types"]["structural"]].append(score)
        per_type["semantic"][question["types"]["semantic"]].append(score)
        per_type["steps"][steps(question)].append(score)
        per_type["length"][len(question["question"].split())].append(score)
        group = question.get("groups", {}).get("global")
        if group is not None:
            gold[group][answer] += 1
            predicted[group][guess] += 1

    def mean(values):
        return 100.0 * sum(values) / len(values) if values else 0.0

    result = {name: mean(scores[name]) for name in ("accuracy", "binary", "open")}
    result["distribution"] = chi_square(gold, predicted) / 100
    for key, groups in per_type.items():
        result[f"accuracy_per_{key}"] = {
            str(name): {"accuracy": mean(values), "questions": len(values)} for name, values in sorted(groups.items())
        }
    result["questions"] = len(scores["accuracy"])
    return result


@register
class GQA(Benchmark):
    name = "gqa"
    title = "GQA"
    folder = "gqa"
    output = "local"
    normalization = "trailing `.` stripped, lower-cased, exact match (convert_gqa_for_eval + GQA eval.py)"

    def add_convert_arguments(self, parser):
        parser.add_argument("--questions", required=True, help="GQA questions JSON, e.g. testdev_balanced_questions.json")

    def convert(self, args):
        return [
            {"question_id": qid, "image": f"{q['imageId']}.jpg", "text": with_suffix(q["question"], SHORT_ANSWER), "category": "default"}
            for qid, q in load_json(args.questions).items()
        ]

    def add_score_arguments(self, parser):
        parser.add_argument("--questions", required=True, help="the GQA questions JSON that was converted")
        parser.add_argument(
            "--predictions-file", default=None, help="also write GQA's predictions JSON ([{questionId, prediction}]) here"
        )

    def score(self, args, answers):
        questions = load_json(args.questions)
        found = Answers(answers, questions, args.allow_missing)
        predictions = {qid: prediction(found.text(qid)) for qid in questions}
        if args.predictions_file:
            write_json(args.predictions_file, [{"questionId": q, "prediction": p} for q, p in predictions.items()])
        result = evaluate(questions, predictions)
        result["missing"] = found.missing
        return result
