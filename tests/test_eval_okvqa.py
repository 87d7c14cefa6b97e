"""eval_okvqa: VQA accuracy on hand-made annotations (expected scores worked out by hand) and on edge cases
scored by the reference evaluators themselves (tests/golden/vqa_normalization.json)."""

from __future__ import annotations

import json
import os

import pytest

from llava.eval import eval_okvqa
from llava.eval.vqa_normalize import NORMALIZATIONS, normalize_answer, process_punctuation, question_accuracy

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "vqa_normalization.json")


def annotation(qid, answers, qtype, atype):
    return {
        "question_id": qid, "image_id": qid, "question_type": qtype, "answer_type": atype,
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
    }


# (question id, human answers, question type, answer type, model answer, expected accuracy in %), as the
# legacy evaluator (vqaEval.py before its 2021 fix) scores them.
CASES = [
    # number word -> digit on the model side; human answers all identical.
    (1, ["2"] * 10, "how many", "number", "two", 100.0),
    # Human answers differ, so they get punctuation handling only: "two" is NOT turned into "2".
    # Leaving out a "2" (2 ways): 1 match -> 1/3; leaving out a "two" (8 ways): 2 matches -> 2/3. Mean 0.6.
    (2, ["2"] * 2 + ["two"] * 8, "how many", "number", "two", 60.0),
    # Article dropped: "the dog" -> "dog". Leave out a dog (3): 2/3; leave out a cat (7): 1. Mean 0.9.
    (3, ["dog"] * 3 + ["cat"] * 7, "what is", "other", "the dog", 90.0),
    # "-" between letters becomes a space on both sides; the final period is stripped.
    (4, ["hot dog"] * 4 + ["hot-dog"] * 6, "what is", "other", "Hot-dog.", 100.0),
    # Contraction map: "dont" -> "don't".
    (5, ["don't"] * 10, "is this", "yes/no", "dont", 100.0),
    # All-identical human answers are compared raw: "Yes!" never equals the normalised "yes".
    (6, ["Yes!"] * 10, "is this", "yes/no", "Yes!", 0.0),
    # A digit,digit comma makes every punctuation mark vanish: "1,000" -> "1000" on both sides.
    (7, ["1,000"] * 3 + ["1000"] * 7, "how many", "number", "1,000", 100.0),
    # One of ten humans agrees: 9 of the 10 subsets still hold it once -> 9 * (1/3) / 10.
    (8, ["red"] + ["blue"] * 9, "what is", "other", "red", 30.0),
]


@pytest.fixture
def files(tmp_path):
    annotations = [annotation(qid, answers, qt, at) for qid, answers, qt, at, _, _ in CASES]
    questions = [{"question_id": qid, "image_id": qid, "question": "?"} for qid, *_ in CASES]
    (tmp_path / "ann.json").write_text(json.dumps({"annotations": annotations}))
    (tmp_path / "q.json").write_text(json.dumps({"questions": questions}))
    with open(tmp_path / "answers.jsonl", "w") as f:
        for qid, *_, prediction, _ in CASES:
            f.write(json.dumps({"question_id": qid, "prompt": "?", "text": prediction, "answer_id": "x",
                                "model_id": "m", "metadata": {}}) + "\n")
    return tmp_path


def test_per_question_overall_and_per_type_scores_match_hand_computed_values(files, capsys):
    out = files / "scores.json"
    scores = eval_okvqa.main([
        "--annotation-file", str(files / "ann.json"), "--question-file", str(files / "q.json"),
        "--result-file", str(files / "answers.jsonl"), "--output-file", str(out), "--normalization", "legacy",
    ])
    assert scores["per_question"] == {qid: expected for qid, *_, expected in CASES}
    assert scores["overall"] == 72.5  # (100 + 60 + 90 + 100 + 100 + 0 + 100 + 30) / 8
    assert scores["perQuestionType"] == {"how many": 86.67, "what is": 73.33, "is this": 50.0}
    assert scores["perAnswerType"] == {"number": 86.67, "other": 73.33, "yes/no": 50.0}
    written = json.loads(out.read_text())
    assert written["overall"] == 72.5 and written["per_question"]["2"] == 60.0
    assert written["normalization"] == "legacy"
    assert "Accuracy: 72.50  (8 questions, legacy answer normalization)" in capsys.readouterr().out


def test_default_is_the_current_official_evaluator(files, capsys):
    scores = eval_okvqa.main([
        "--annotation-file", str(files / "ann.json"), "--question-file", str(files / "q.json"),
        "--result-file", str(files / "answers.jsonl"),
    ])
    # Where the human answers are all identical, it compares raw strings: "two" vs ten "2" scores 0 (legacy:
    # 100) and "Yes!" vs ten "Yes!" scores 100 (legacy: 0); where they differ, both sides are normalised,
    # so "two" among the human answers becomes "2" too (question 2: 100, legacy 60).
    assert scores["per_question"] == {1: 0.0, 2: 100.0, 3: 90.0, 4: 100.0, 5: 0.0, 6: 100.0, 7: 100.0, 8: 30.0}
    assert scores["normalization"] == "official"
    assert "official answer normalization" in capsys.readouterr().out


def _golden_cases():
    with open(GOLDEN) as f:
        return json.load(f)["cases"]


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_every_edge_case_scores_as_the_reference_evaluator(normalization):
    """42 cases (articles alone, parentheses, slashes, contractions, number words, digit,digit commas,
    periods in numbers, identical answers, trailing punctuation, newlines/tabs), scored by running
    GT-Vision-Lab's vqaEval.py (now and before its fix) and official LLaVA's m4c evaluator."""
    mismatches = []
    for case in _golden_cases():
        humans = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(case["human_answers"])]
        ours = round(100 * question_accuracy(case["prediction"], humans, normalization), 2)
        if ours != case[normalization]:
            mismatches.append((case["name"], ours, case[normalization]))
    assert not mismatches


def test_the_three_evaluators_really_disagree_on_the_issue_examples():
    by_name = {case["name"]: case for case in _golden_cases()}
    for name, expected in [
        ("number word, humans identical", (100.0, 0.0, 100.0)),  # "two" vs 10 x "two"
        ("contraction, unspaced humans", (60.0, 0.0, 60.0)),  # "don't know" vs 2 x "dont know" + 8 x "no"
        ("slash, humans split", (100.0, 0.0, 100.0)),  # "a/c" vs 5 x "a/c" + 5 x "ac"
        ("all identical, capitalised humans", (0.0, 0.0, 100.0)),  # "yes" vs 10 x "Yes"
    ]:
        assert tuple(by_name[name][n] for n in NORMALIZATIONS) == expected


def test_plain_string_answers_and_unknown_normalization():
    assert question_accuracy("two", ["2"] * 10, "evalai") == 1.0
    with pytest.raises(ValueError, match="unknown VQA normalization 'vqa2'; choose one of official, legacy, evalai"):
        question_accuracy("two", ["2"] * 10, "vqa2")


def test_official_results_json_is_accepted(files):
    results = [{"question_id": qid, "answer": prediction} for qid, *_, prediction, _ in CASES]
    (files / "results.json").write_text(json.dumps(results))
    scores = eval_okvqa.main([
        "--annotation-file", str(files / "ann.json"), "--question-file", str(files / "q.json"),
        "--result-file", str(files / "results.json"), "--normalization", "legacy",
    ])
    assert scores["overall"] == 72.5


def test_unanswered_question_is_an_error_naming_it(files):
    lines = (files / "answers.jsonl").read_text().splitlines()
    (files / "partial.jsonl").write_text("\n".join(l for l in lines if json.loads(l)["question_id"] != 5) + "\n")
    with pytest.raises(SystemExit, match="question 5 has no answer"):
        eval_okvqa.main([
            "--annotation-file", str(files / "ann.json"), "--question-file", str(files / "q.json"),
            "--result-file", str(files / "partial.jsonl"),
        ])


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two dogs.", "2 dogs"),
        ("none", "0"),
        ("An apple", "apple"),
        ("ten\tthousand", "10 thousand"),
        ("yes, sir", "yes sir"),  # ", " -> comma deleted
        ("a/b", "b"),  # "/" between letters -> space, then the article "a" goes
        ("3.5", "3.5"),  # a period before a digit stays
        ("it's", "it's"),  # the apostrophe is not in the official punctuation list
    ],
)
def test_normalisation_edge_cases(raw, expected):
    assert normalize_answer(raw) == expected


def test_punctuation_next_to_a_space_is_deleted_otherwise_spaced():
    assert process_punctuation("yes!") == "yes "
    assert process_punctuation("wait !") == "wait "
    assert process_punctuation("1,000 (approx)") == "1000 approx"


def test_demo_files_score_100_for_the_human_answer_and_0_for_a_wrong_one(demo_data, tmp_path):
    annotations = json.load(open(demo_data["eval_annotations"]))["annotations"]
    answers = {
        "exact": lambda a: a["answers"][0]["answer"],
        "restyled": lambda a: a["answers"][0]["answer"].capitalize() + ".",
        "wrong": lambda a: "zebra",
    }
    # Demo questions have ten identical human answers: the current official evaluator then compares raw
    # strings, so only the exact answer counts; legacy and EvalAI normalise "Red." to "red".
    expected = {
        "official": {"exact": 100.0, "restyled": 0.0, "wrong": 0.0},
        "legacy": {"exact": 100.0, "restyled": 100.0, "wrong": 0.0},
        "evalai": {"exact": 100.0, "restyled": 100.0, "wrong": 0.0},
    }
    for name, answer_of in answers.items():
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for a in annotations:
                f.write(json.dumps({"question_id": a["question_id"], "text": answer_of(a)}) + "\n")
        for normalization in NORMALIZATIONS:
            scores = eval_okvqa.main([
                "--annotation-file", demo_data["eval_annotations"], "--question-file", demo_data["eval_questions"],
                "--result-file", str(tmp_path / f"{name}.jsonl"), "--normalization", normalization,
            ])
            assert scores["overall"] == expected[normalization][name], (name, normalization)
            assert set(scores["perQuestionType"]) == {"color", "shape", "presence"}
