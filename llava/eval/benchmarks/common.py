"""What the benchmark modules share: the prompt suffixes official LLaVA-1.5 appends and the lookup of
answers by question id (files are read and written by llava.records)."""

from __future__ import annotations

import math

from llava.records import read_records

# Official LLaVA-1.5's instructions after the question (docs/Evaluation.md and its eval question files).
SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
OPTION_LETTER_CN = "请直接回答选项字母。"
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."
LETTERS = "ABCDEFGHIJ"


def with_suffix(text: str, *suffixes: str) -> str:
    return "\n".join([text, *suffixes])


def format_options(options: list[str], letters: str = LETTERS) -> str:
    """"A. first\\nB. second" (official's multiple-choice layout)."""
    return "\n".join(f"{letter}. {option}" for letter, option in zip(letters, options))


def is_missing(value) -> bool:
    """An empty TSV/JSON cell as official LLaVA reads it (None, NaN, "nan", "none")."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("nan", "none")


def load_answers(path: str) -> dict[str, dict]:
    """model_vqa's answers JSONL keyed by str(question_id); a question answered twice is an error."""
    answers: dict[str, dict] = {}
    for i, record in enumerate(read_records(path)):
        if "question_id" not in record or "text" not in record:
            raise ValueError(f"{path}: answer #{i} needs 'question_id' and 'text', got keys {sorted(record)}")
        key = str(record["question_id"])
        if key in answers:
            raise ValueError(f"{path}: question {record['question_id']!r} is answered twice (merged a chunk twice?)")
        answers[key] = record
    return answers


class Answers:
    """Answer texts for the benchmark's questions, in the benchmark's order.

    A question without an answer is an error naming it, unless `allow_missing` (then it is scored
    as the empty answer, as official's converters do, and counted in `missing`). Answers to
    questions the benchmark does not have are an error too: they come from another file.
    """

    def __init__(self, answers: dict[str, dict], question_ids, allow_missing: bool = False):
        ids = [str(q) for q in question_ids]
        unknown = sorted(set(answers) - set(ids))
        if unknown:
            raise ValueError(
                f"{len(unknown)} answer(s) are for questions this benchmark does not have (e.g. {unknown[:3]}); "
                "is --result-file for this benchmark and split?"
            )
        absent = [q for q in ids if q not in answers]
        if absent and not allow_missing:
            raise ValueError(
                f"question {absent[0]!r} has no answer ({len(absent)} of {len(ids)} unanswered); finish the "
                "model_vqa run (it resumes), or pass --allow-missing to score them as empty answers"
            )
        self.missing = len(absent)
        self._answers = answers

    def text(self, question_id) -> str:
        record = self._answers.get(str(question_id))
        return record["text"] if record is not None else ""

    def __contains__(self, question_id) -> bool:
        return str(question_id) in self._answers


def percent(numerator: float, denominator: float) -> float:
    return 100.0 * numerator / denominator if denominator else 0.0
