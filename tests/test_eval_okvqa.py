"""eval_okvqa: official VQA accuracy on hand-made annotations whose expected scores were worked out by hand."""

from __future__ import annotations

import json

import pytest

from llava.eval import eval_okvqa
from llava.eval.vqa_normalize import normalize_answer, process_punctuation


def annotation(qid, answers, qtype, atype):
    return {
        "question_id": qid, "image_id": qid, "question_type": qtype, "answer_type": atype,
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
    }


# (question id, human answers, question type, answer type, model answer, expected accuracy in %)
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
        "--result-file", str(files / "answers.jsonl"), "--output-file", str(out),
    ])
    assert scores["per_question"] == {qid: expected for qid, *_, expected in CASES}
    assert scores["overall"] == 72.5  # (100 + 60 + 90 + 100 + 100 + 0 + 100 + 30) / 8
    assert scores["perQuestionType"] == {"how many": 86.67, "what is": 73.33, "is this": 50.0}
    assert scores["perAnswerType"] == {"number": 86.67, "other": 73.33, "yes/no": 50.0}
    written = json.loads(out.read_text())
    assert written["overall"] == 72.5 and written["per_question"]["2"] == 60.0
    assert "Accuracy: 72.50" in capsys.readouterr().out


def test_official_results_json_is_accepted(files):
    results = [{"question_id": qid, "answer": prediction} for qid, *_, prediction, _ in CASES]
    (files / "results.json").write_text(json.dumps(results))
    scores = eval_okvqa.main([
        "--annotation-file", str(files / "ann.json"), "--question-file", str(files / "q.json"),
        "--result-file", str(files / "results.json"),
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
    for name, answer_of in (("right", lambda a: a["answers"][0]["answer"].capitalize() + "."), ("wrong", lambda a: "zebra")):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for a in annotations:
                f.write(json.dumps({"question_id": a["question_id"], "text": answer_of(a)}) + "\n")
        scores = eval_okvqa.main([
            "--annotation-file", demo_data["eval_annotations"], "--question-file", demo_data["eval_questions"],
            "--result-file", str(tmp_path / f"{name}.jsonl"),
        ])
        assert scores["overall"] == (100.0 if name == "right" else 0.0)
        assert set(scores["perQuestionType"]) == {"color", "shape", "presence"}
