"""VQA accuracy (OK-VQA, VQAv2 or the demo data), identical question by question to a reference evaluator.

    python -m llava.eval.eval_okvqa --annotation-file eval_annotations.json \
        --question-file eval_questions.json --result-file answers.jsonl [--output-file scores.json] \
        [--normalization official|legacy|evalai]

`--normalization` picks whose answer normalisation is used (see llava/eval/vqa_normalize.py):
`official` (default) is GT-Vision-Lab/VQA's vqaEval.py as it is now; `legacy` is the copy from
before its 2021 fix that LAVIS (BLIP-2, InstructBLIP), MiniGPT-4 and Qwen-VL carry; `evalai` is
the EvalAI answer processor (TextVQA's evaluator, the VQAv2 server).

`--result-file` is `model_vqa`'s answers JSONL (the `text` field is the answer) or the official
results JSON (`[{"question_id": ..., "answer": ...}]`). Every annotated question must be answered.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from llava.eval.vqa_normalize import NORMALIZATIONS, question_accuracy


def _key(question_id) -> str:
    # JSONL writers may turn integer ids into strings (or back); compare ids as text.
    return str(question_id)


def load_annotations(path: str) -> list[dict]:
    with open(path) as f:
        data = json.load(f)
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise ValueError(f"{path} is not an official VQA annotation file (a JSON object with an 'annotations' list)")
    for i, ann in enumerate(annotations):
        missing = [k for k in ("question_id", "answers") if k not in ann]
        if missing or not ann.get("answers"):
            raise ValueError(f"{path}: annotation #{i} (question_id {ann.get('question_id')!r}) lacks {missing or ['answers']}")
    return annotations


def load_question_ids(path: str) -> set[str]:
    with open(path) as f:
        data = json.load(f)
    questions = data.get("questions") if isinstance(data, dict) else None
    if not isinstance(questions, list):
        raise ValueError(f"{path} is not an official VQA question file (a JSON object with a 'questions' list)")
    return {_key(q["question_id"]) for q in questions}


def load_results(path: str) -> dict[str, str]:
    """question id -> predicted answer, from model_vqa JSONL or official results JSON."""
    with open(path) as f:
        content = f.read()
    stripped = content.lstrip()
    if stripped.startswith("["):
        records = json.loads(content)
        field = "answer"
    else:
        records = []
        for line_no, line in enumerate(content.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{line_no} is not valid JSON ({exc}); is the file complete?") from None
        field = "text"
    results: dict[str, str] = {}
    for i, record in enumerate(records):
        answer = record.get(field, record.get("answer") if field == "text" else None)
        if "question_id" not in record or answer is None:
            raise ValueError(f"{path}: result #{i} needs 'question_id' and '{field}', got keys {sorted(record)}")
        key = _key(record["question_id"])
        if key in results:
            raise ValueError(f"{path}: question {record['question_id']!r} is answered twice")
        results[key] = answer
    return results


def evaluate(
    annotations: list[dict], results: dict[str, str], question_ids: set[str] | None = None, ndigits: int = 2,
    normalization: str = "official",
) -> dict:
    """Scores in percent: overall, perQuestionType, perAnswerType and per_question, plus the normalization used."""
    annotated = {_key(a["question_id"]) for a in annotations}
    if question_ids is not None and question_ids != annotated:
        odd = sorted(question_ids ^ annotated)[:5]
        raise ValueError(f"the question file and the annotation file cover different question ids (e.g. {odd})")
    unknown = sorted(set(results) - annotated)
    if unknown:
        raise ValueError(f"results answer {len(unknown)} question(s) that are not annotated, e.g. {unknown[:5]}")
    missing = [a["question_id"] for a in annotations if _key(a["question_id"]) not in results]
    if missing:
        raise ValueError(
            f"question {missing[0]!r} has no answer in the results ({len(missing)} unanswered); "
            "finish the model_vqa run (it resumes) before scoring"
        )

    per_question, by_qtype, by_atype = {}, defaultdict(list), defaultdict(list)
    for ann in annotations:
        accuracy = question_accuracy(results[_key(ann["question_id"])], ann["answers"], normalization)
        per_question[ann["question_id"]] = round(100 * accuracy, ndigits)
        by_qtype[ann.get("question_type", "none")].append(accuracy)
        by_atype[ann.get("answer_type", "other")].append(accuracy)

    def mean(values):
        return round(100 * sum(values) / len(values), ndigits)

    everything = [a for values in by_qtype.values() for a in values]
    return {
        "normalization": normalization,
        "overall": mean(everything),
        "perQuestionType": {k: mean(v) for k, v in by_qtype.items()},
        "perAnswerType": {k: mean(v) for k, v in by_atype.items()},
        "per_question": per_question,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotation-file", required=True, help="official VQA annotations JSON")
    parser.add_argument("--question-file", required=True, help="official VQA questions JSON")
    parser.add_argument("--result-file", required=True, help="model_vqa answers JSONL or official results JSON")
    parser.add_argument("--output-file", default=None, help="write the scores (incl. per question) as JSON here")
    parser.add_argument(
        "--normalization", choices=NORMALIZATIONS, default="official",
        help="answer normalisation: official (GT-Vision-Lab/VQA vqaEval.py now), legacy (its pre-2021 copy, as in "
             "LAVIS/MiniGPT-4/Qwen-VL) or evalai (EvalAI answer processor, as TextVQA and the VQAv2 server)",
    )
    args = parser.parse_args(argv)

    try:
        scores = evaluate(
            load_annotations(args.annotation_file), load_results(args.result_file), load_question_ids(args.question_file),
            normalization=args.normalization,
        )
    except (OSError, ValueError) as exc:  # bad input: a message, not a traceback
        raise SystemExit(f"eval_okvqa: {exc}") from None
    print(f"Accuracy: {scores['overall']:.2f}  ({len(scores['per_question'])} questions, "
          f"{args.normalization} answer normalization)")
    print("Per question type:")
    for name, value in sorted(scores["perQuestionType"].items()):
        print(f"  {name}: {value:.2f}")
    print("Per answer type:")
    for name, value in sorted(scores["perAnswerType"].items()):
        print(f"  {name}: {value:.2f}")
    if args.output_file:
        with open(args.output_file, "w") as f:
            json.dump(scores, f, indent=2)
        print(f"wrote {args.output_file}")
    return scores


if __name__ == "__main__":
    from llava.errors import run

    run(main)
