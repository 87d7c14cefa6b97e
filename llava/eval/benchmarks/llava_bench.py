"""LLaVA-Bench (In-the-Wild): free answers compared with GPT-4's by an LLM judge.

Official files (`liuhaotian/llava-bench-in-the-wild`): `questions.jsonl` (already model_vqa's
format), `context.jsonl` (image -> caption), `answers_gpt4.jsonl` (the reference answers), and the
judge's instructions, official LLaVA's `llava/eval/table/rule.json` (pass it with `--rule`; it is
not shipped here). `score` writes one judge request per question, built as official LLaVA's
`eval_gpt_review_bench.py` builds them (`system` + `content`; send them to GPT-4 or another
judge). Given `--reviews` (the judge's replies: JSONL with `question_id` and `content` whose first
line is "<reference score> <model score>", or official review files with `tuple`), it also
computes official `summarize_gpt_review.py`'s numbers per category: relative score (model /
reference, %), and both mean scores x 10.
"""

from __future__ import annotations

from collections import defaultdict

from llava.eval.benchmarks.common import Answers
from llava.eval.benchmarks.registry import Benchmark, register
from llava.records import load_json, read_records, write_jsonl

JUDGE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."


def judge_content(caption: str, question: str, reference: str, answer: str, role: str, prompt: str) -> str:
    return (
        f"[Context]\n{caption}\n\n[Question]\n{question}\n\n"
        f"[{role} 1]\n{reference}\n\n[End of {role} 1]\n\n"
        f"[{role} 2]\n{answer}\n\n[End of {role} 2]\n\n[System]\n{prompt}\n\n"
    )


def parse_scores(review: str) -> list[float]:
    """The judge's first line, "8 7" or "8, 7"; [-1, -1] when it is not two numbers (as official)."""
    fields = review.split("\n")[0].replace(",", " ").split(" ")
    try:
        return [float(fields[0]), float(fields[1])] if len(fields) == 2 else [-1.0, -1.0]
    except ValueError:
        return [-1.0, -1.0]


def summarize(reviews: list[dict]) -> dict:
    by_category = defaultdict(list)
    for review in reviews:
        pair = review.get("tuple") or parse_scores(review["content"])
        if "category" in review:
            by_category[review["category"]].append(pair)
        by_category["all"].append(pair)
    summary = {}
    for category, pairs in sorted(by_category.items()):
        reference = sum(p[0] for p in pairs) / len(pairs)
        model = sum(p[1] for p in pairs) / len(pairs)
        # Official rounds the means to 3 places before the ratio.
        reference, model = round(reference, 3), round(model, 3)
        summary[category] = {
            "relative_score": round(model / reference * 100, 1),
            "reference_score": round(reference * 10, 1),
            "model_score": round(model * 10, 1),
            "questions": len(pairs),
        }
    return summary


@register
class LLaVABench(Benchmark):
    name = "llava_bench"
    title = "LLaVA-Bench (In-the-Wild)"
    folder = "llava-bench-in-the-wild"
    output = "judge"
    normalization = "none: an LLM judge scores the free answer against GPT-4's"

    def add_convert_arguments(self, parser):
        parser.add_argument("--questions", required=True, help="llava-bench-in-the-wild/questions.jsonl")

    def convert(self, args):
        questions = read_records(args.questions)
        for i, q in enumerate(questions):
            missing = [k for k in ("question_id", "image", "text", "category") if k not in q]
            if missing:
                raise ValueError(f"{args.questions}: question #{i} lacks {missing}")
        return [{k: q[k] for k in ("question_id", "image", "text", "category")} for q in questions]

    def add_score_arguments(self, parser):
        parser.add_argument("--questions", required=True, help="questions.jsonl")
        parser.add_argument("--context", required=True, help="context.jsonl (image captions)")
        parser.add_argument("--reference-answers", required=True, help="answers_gpt4.jsonl")
        parser.add_argument("--rule", required=True, help="official LLaVA's llava/eval/table/rule.json")
        parser.add_argument("--judge-file", required=True, help="the judge requests JSONL to write")
        parser.add_argument("--reviews", default=None, help="the judge's replies JSONL, to summarise")

    def score(self, args, answers):
        questions = read_records(args.questions)
        found = Answers(answers, [q["question_id"] for q in questions], args.allow_missing)
        captions = {}
        for c in read_records(args.context):
            captions[c["image"]] = "\n".join(c["caption"]) if isinstance(c["caption"], list) else c["caption"]
        references = {str(a["question_id"]): a for a in read_records(args.reference_answers)}
        rules = load_json(args.rule)
        requests = []
        for i, q in enumerate(questions):
            category = f"llava_bench_{q['category']}"
            if category not in rules:
                raise ValueError(f"{args.rule} has no rule for category {category!r} (question {q['question_id']!r})")
            if str(q["question_id"]) not in references:
                raise ValueError(f"{args.reference_answers} has no answer to question {q['question_id']!r}")
            if q["image"] not in captions:
                raise ValueError(f"{args.context} has no caption for image {q['image']!r}")
            reference = references[str(q["question_id"])]
            content = judge_content(
                captions[q["image"]], q["text"], reference["text"], found.text(q["question_id"]),
                rules[category]["role"], rules[category]["prompt"],
            )
            requests.append({
                "id": i + 1, "question_id": q["question_id"], "category": category,
                "answer1_id": reference.get("answer_id", reference["question_id"]),
                "answer2_id": answers.get(str(q["question_id"]), {}).get("answer_id"),
                "system": JUDGE_SYSTEM, "content": content,
            })
        write_jsonl(args.judge_file, requests)
        result = {"judge_file": args.judge_file, "questions": len(questions), "missing": found.missing}
        if args.reviews:
            result["summary"] = summarize(read_records(args.reviews))
        return result
