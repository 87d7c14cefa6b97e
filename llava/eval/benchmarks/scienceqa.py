"""ScienceQA (LLaVA-1.5 reports ScienceQA-IMG: the test questions that have an image).

Official files (the ScienceQA repository's data/scienceqa): `problems.json` (id -> question,
choices, answer index, hint, image, ...) and `pid_splits.json` (split -> ids); images under
`images/<split>/<id>/image.png`. The prompt is official LLaVA-1.5's `llava_test_CQM-A.json`
layout (inferred from that file: `Context: <hint>` when there is a hint, the question, then
`A. <choice>` lines) plus the single-prediction instruction of `model_vqa_science
--single-pred-prompt`. Scoring is official LLaVA's `eval_science_qa.py`: a bare letter, a
"B. ..." answer or exactly one "The answer is B." counts, anything else fails.
"""

from __future__ import annotations

import os
import re

from llava.eval.benchmarks.common import OPTION_LETTER, Answers, format_options, percent, with_suffix
from llava.eval.benchmarks.registry import Benchmark, register
from llava.records import load_json

OPTIONS = ["A", "B", "C", "D", "E"]
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def load_split(base_dir: str, split: str) -> dict[str, dict]:
    splits = load_json(os.path.join(base_dir, "pid_splits.json"))
    if split not in splits:
        raise ValueError(f"pid_splits.json has no split {split!r}; it has {sorted(splits)}")
    problems = load_json(os.path.join(base_dir, "problems.json"))
    absent = [pid for pid in splits[split] if pid not in problems]
    if absent:
        raise ValueError(f"pid_splits.json lists {len(absent)} id(s) absent from problems.json, e.g. {absent[0]!r}")
    return {pid: problems[pid] for pid in splits[split]}


def prompt(problem: dict) -> str:
    parts = [f"Context: {problem['hint']}"] if problem.get("hint", "").strip() else []
    parts += [problem["question"], format_options(problem["choices"], OPTIONS)]
    return "\n".join(parts)


def parse_letter(text: str) -> str:
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


@register
class ScienceQA(Benchmark):
    name = "scienceqa"
    title = "ScienceQA-IMG"
    folder = "scienceqa"
    output = "local"
    normalization = "option letter: bare, `B. ...`, or one `The answer is B.` (official eval_science_qa)"

    def add_convert_arguments(self, parser):
        parser.add_argument("--base-dir", required=True, help="folder with problems.json and pid_splits.json")
        parser.add_argument("--split", default="test")

    def convert(self, args):
        questions = []
        for pid, problem in load_split(args.base_dir, args.split).items():
            record = {"question_id": pid, "text": with_suffix(prompt(problem), OPTION_LETTER), "category": problem.get("subject", "default")}
            if problem.get("image"):
                record["image"] = f"{pid}/{problem['image']}"
            questions.append(record)
        return questions

    def add_score_arguments(self, parser):
        parser.add_argument("--base-dir", required=True, help="folder with problems.json and pid_splits.json")
        parser.add_argument("--split", default="test")

    def score(self, args, answers):
        problems = load_split(args.base_dir, args.split)
        found = Answers(answers, problems, args.allow_missing)
        correct = img_correct = img_count = 0
        per_question = {}
        for pid, problem in problems.items():
            letter = parse_letter(found.text(pid))
            index = OPTIONS.index(letter) if letter in OPTIONS[: len(problem["choices"])] else -1
            per_question[pid] = index
            right = index == problem["answer"]
            correct += right
            if problem.get("image"):
                img_count += 1
                img_correct += right
        return {
            "accuracy": percent(correct, len(problems)),
            "img_accuracy": percent(img_correct, img_count),
            "correct": correct,
            "count": len(problems),
            "img_correct": img_correct,
            "img_count": img_count,
            "missing": found.missing,
            "per_question": per_question,  # official "results": id -> predicted option index (-1: none)
        }
