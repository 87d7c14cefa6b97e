"""`python -m llava.eval.benchmarks list | convert NAME ... | score NAME ...`"""

from __future__ import annotations

import argparse

from llava.eval.benchmarks.common import load_answers
from llava.eval.benchmarks.registry import BENCHMARKS
from llava.records import describe, question_problems, write_json, write_jsonl


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llava.eval.benchmarks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the registered benchmarks, what is scored locally and what is submitted")

    convert = commands.add_parser("convert", help="official files -> model_vqa question JSONL")
    convert_names = convert.add_subparsers(dest="benchmark", required=True)
    score = commands.add_parser("score", help="model_vqa answers -> local scores and/or the submission file")
    score_names = score.add_subparsers(dest="benchmark", required=True)
    for name, benchmark in sorted(BENCHMARKS.items()):
        sub = convert_names.add_parser(name, help=benchmark.title)
        benchmark.add_convert_arguments(sub)
        sub.add_argument("--out", required=True, help="question JSONL to write (model_vqa --question-file)")

        sub = score_names.add_parser(name, help=benchmark.title)
        sub.add_argument("--result-file", required=True, help="model_vqa answers JSONL (chunks merged)")
        benchmark.add_score_arguments(sub)
        sub.add_argument("--output-file", default=None, help="also write the scores as JSON here")
        sub.add_argument(
            "--allow-missing", action="store_true", help="score unanswered questions as empty answers (counted)"
        )
    return parser


def _print_scores(prefix: str, value) -> None:
    """Nested scores as `pope/adversarial/f1: 85.10` lines."""
    if isinstance(value, dict):
        for key, sub in value.items():
            if key == "per_question":  # in --output-file only
                continue
            _print_scores(f"{prefix}/{key}", sub)
    else:
        print(f"{prefix}: {_fmt(value)}")


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main(argv=None) -> dict | list:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        for name, b in sorted(BENCHMARKS.items()):
            print(f"{name:<12} {b.title:<26} {b.output:<17} playground/data/eval/{b.folder}\n{'':<12} answers: {b.normalization}")
        return sorted(BENCHMARKS)
    benchmark = BENCHMARKS[args.benchmark]
    try:
        if args.command == "convert":
            questions = benchmark.convert(args)
            for index, question in enumerate(questions):  # model_vqa's check: what we write, it reads
                for problem in question_problems(question):
                    raise ValueError(f"question {describe(index, question, 'question_id')} {problem.message}")
            write_jsonl(args.out, questions)
            with_image = sum(1 for q in questions if q.get("image"))
            print(f"{benchmark.name}: wrote {len(questions)} question(s) ({with_image} with an image) to {args.out}")
            return questions
        scores = benchmark.score(args, load_answers(args.result_file))
    except KeyError as exc:  # an official file without a field its format has
        raise SystemExit(
            f"llava.eval.benchmarks {args.command} {benchmark.name}: a record lacks the field {exc}; "
            "is this the benchmark's official file?"
        ) from None
    except (OSError, ValueError) as exc:  # bad input: a message naming it, not a traceback
        raise SystemExit(f"llava.eval.benchmarks {args.command} {benchmark.name}: {exc}") from None
    _print_scores(benchmark.name, scores)
    if args.output_file:
        write_json(args.output_file, scores, indent=2)
        print(f"wrote {args.output_file}")
    return scores

