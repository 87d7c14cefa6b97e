"""The small-object generator: the demo's layout, small shapes anywhere, answers that follow from the drawn object."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from llava.data import small_objects


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("small")
    return out, small_objects.generate(str(out), num_train=60, num_eval=20, seed=3)


def test_writes_the_demo_layout(generated):
    out, paths = generated
    finetune = json.load(open(paths["finetune"]))
    lines = [json.loads(line) for line in open(paths["eval_questions_jsonl"])]
    annotations = json.load(open(paths["eval_annotations"]))["annotations"]
    assert len(json.load(open(paths["pretrain"]))) == 60 and len(finetune) == 240
    assert len(lines) == len(annotations) == 60
    assert {line["category"] for line in lines} == {"color", "shape", "presence"}
    assert [a["question_id"] for a in annotations] == [line["question_id"] for line in lines]
    for record in finetune:
        assert record["conversations"][0]["value"].startswith("<image>\n")
        assert os.path.exists(os.path.join(paths["image_folder"], record["image"]))


def test_objects_are_small_and_anywhere(generated):
    out, paths = generated
    objects = json.load(open(paths["objects"]))
    assert len(objects) == 80
    extents = np.array([o["box"][2] - o["box"][0] for o in objects]) / 64
    assert extents.min() >= 0.15 and extents.max() <= 0.35
    centres = np.array([[(o["box"][0] + o["box"][2]) / 2, (o["box"][1] + o["box"][3]) / 2] for o in objects])
    assert centres.min() < 20 and centres.max() > 44  # not all near the middle, as the demo's are
    # the drawn pixels are where the box says, in the stated colour
    for o in objects[:10]:
        pixels = np.asarray(Image.open(os.path.join(paths["image_folder"], o["image"])).convert("RGB")).astype(int)
        assert pixels.shape == (64, 64, 3)
        ink = np.abs(pixels - np.array(small_objects.COLORS[o["color"]])).sum(-1) < 10
        ys, xs = np.nonzero(ink)
        x0, y0, x1, y1 = o["box"]
        assert xs.min() >= x0 - 1 and xs.max() <= x1 + 1 and ys.min() >= y0 - 1 and ys.max() <= y1 + 1


def test_answers_follow_from_the_object(generated):
    out, paths = generated
    objects = {o["image"]: o for o in json.load(open(paths["objects"]))}
    answers = {"yes": 0, "no": 0}
    for record in json.load(open(paths["finetune"])):
        question, answer = (turn["value"] for turn in record["conversations"])
        o = objects[record["image"]]
        kind = small_objects.question_type(question)
        if kind == "color":
            assert answer == o["color"]
        elif kind == "shape":
            assert answer == o["shape"]
        else:
            assert kind == "presence" and answer == ("yes" if f"a {o['shape']} " in question else "no")
            answers[answer] += 1
    assert answers["yes"] == answers["no"] == 60  # the question alone says nothing in training


def test_same_arguments_same_bytes(tmp_path):
    a = small_objects.generate(str(tmp_path / "a"), num_train=5, num_eval=3, seed=1)
    b = small_objects.generate(str(tmp_path / "b"), num_train=5, num_eval=3, seed=1)
    for key in ("finetune", "eval_annotations", "objects"):
        assert open(a[key]).read() == open(b[key]).read()
    assert open(os.path.join(a["image_folder"], "eval_00002.png"), "rb").read() == \
        open(os.path.join(b["image_folder"], "eval_00002.png"), "rb").read()


def test_bad_extents_are_refused(tmp_path):
    with pytest.raises(ValueError, match="min-extent"):
        small_objects.generate(str(tmp_path), num_train=2, num_eval=2, min_extent=0.5, max_extent=0.2)
