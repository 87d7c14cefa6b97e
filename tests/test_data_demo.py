"""The generated shapes data (llava.data.demo): what each training image is asked, held-out layout, baseline."""

from __future__ import annotations

import json
import re
from collections import Counter

from llava.data.demo import (
    ABSENT_SHAPES,
    SHAPE_PROPERTIES,
    SHAPES,
    SHORT_ANSWER_PROMPT,
    generate,
    majority_baseline,
    question_type,
)


def _load(path):
    with open(path) as f:
        return json.load(f)


def _caption_of(pretrain):
    """image file -> (colour, shape) read back from its stage-1 caption "A <colour> <shape>."."""
    out = {}
    for record in pretrain:
        color, shape = re.fullmatch(r"A (\w+) (\w+)\.", record["conversations"][1]["value"]).groups()
        out[record["image"]] = (color, shape)
    return out


def test_each_training_image_gets_balanced_presence_questions_and_a_description(tmp_path):
    paths = generate(str(tmp_path), num_train=40, num_eval=5)
    truth = _caption_of(_load(paths["pretrain"]))
    by_image: dict[str, list[list[dict]]] = {}
    text_only = 0
    for record in _load(paths["finetune"]):
        if "image" not in record:
            text_only += 1
            continue
        by_image.setdefault(record["image"], []).append(record["conversations"])
    assert set(by_image) == set(truth) and text_only > 0

    presence_answers = Counter()
    absent_asked, properties_asked = set(), set()
    for image, conversations in by_image.items():
        color, shape = truth[image]
        presence = [c for c in conversations if question_type(c[0]["value"]) == "presence"]
        describe = [c for c in conversations if question_type(c[0]["value"]) != "presence"]
        # Six presence conversations of one turn each, three "yes" and three "no": its own shape and
        # another drawn one, "a shape" and a never-drawn one, a property the shape has and one it lacks.
        assert len(presence) == 6 and all(len(c) == 2 for c in presence)
        asked = {re.search(r"Is there (.+) in the image\?", c[0]["value"]).group(1): c[1]["value"] for c in presence}
        assert len(asked) == 6 and asked[f"a {shape}"] == "yes" and asked["a shape"] == "yes"
        (other,) = set(asked) & {f"a {s}" for s in SHAPES if s != shape}
        (absent,) = set(asked) & {f"a {s}" for s in ABSENT_SHAPES}
        assert asked[other] == "no" and asked[absent] == "no"
        properties = {prop: answer for prop, answer in asked.items() if prop in SHAPE_PROPERTIES}
        assert sorted(properties.values()) == ["no", "yes"]
        for prop, answer in properties.items():
            assert answer == ("yes" if shape in SHAPE_PROPERTIES[prop] else "no"), (shape, prop)
        absent_asked.add(absent)
        properties_asked.update(properties)
        presence_answers.update(asked.values())
        # One conversation asks colour and shape (either order), image marker in the first turn only.
        (turns,) = describe
        answers = {question_type(h["value"]): g["value"] for h, g in zip(turns[::2], turns[1::2])}
        assert answers == {"color": color, "shape": shape}
        assert turns[0]["value"].startswith("<image>\n") and "<image>" not in turns[2]["value"]
        assert all(h["value"].endswith(SHORT_ANSWER_PROMPT) for c in conversations for h in c[::2])
    assert presence_answers == {"yes": 120, "no": 120}
    assert len(absent_asked) > 1 and properties_asked == set(SHAPE_PROPERTIES)  # drawn at random, not fixed


def test_held_out_questions_one_per_type_per_image_with_ten_identical_answers(tmp_path):
    paths = generate(str(tmp_path), num_train=10, num_eval=6)
    lines = [json.loads(line) for line in open(paths["eval_questions_jsonl"])]
    annotations = {a["question_id"]: a for a in _load(paths["eval_annotations"])["annotations"]}
    assert len(lines) == 18 and set(annotations) == {line["question_id"] for line in lines}
    per_image = Counter((line["image"], line["category"]) for line in lines)
    assert set(per_image.values()) == {1} and len(per_image) == 18
    for line in lines:
        ann = annotations[line["question_id"]]
        assert ann["question_type"] == line["category"] == question_type(line["text"])
        assert len({a["answer"] for a in ann["answers"]}) == 1 and len(ann["answers"]) == 10
        assert ann["answer_type"] == ("yes/no" if line["category"] == "presence" else "other")


def test_same_arguments_same_bytes(tmp_path):
    first = generate(str(tmp_path / "a"), num_train=12, num_eval=3)
    second = generate(str(tmp_path / "b"), num_train=12, num_eval=3)
    for key in ("pretrain", "finetune", "eval_questions_jsonl", "eval_annotations"):
        assert open(first[key], "rb").read() == open(second[key], "rb").read(), key


def test_majority_baseline_answers_the_most_common_training_answer_per_type(tmp_path):
    paths = generate(str(tmp_path), num_train=30, num_eval=10)
    result = majority_baseline(paths["finetune"], paths["eval_annotations"])
    annotations = _load(paths["eval_annotations"])["annotations"]
    for kind, answer in result["answer"].items():
        expected = [a["answers"][0]["answer"] == answer for a in annotations if a["question_type"] == kind]
        assert abs(result["per_type"][kind] - 100.0 * sum(expected) / len(expected)) < 1e-9
    # Presence is balanced in training, so its "majority" is a tie, broken by first occurrence: image 0's own shape.
    assert result["answer"]["presence"] == "yes"
    every = [a["answers"][0]["answer"] == result["answer"][a["question_type"]] for a in annotations]
    assert abs(result["overall"] - 100.0 * sum(every) / len(every)) < 1e-9
