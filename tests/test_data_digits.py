"""The digits converter: files in the demo's layout, answers that follow from the label, a fixed split."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from llava.data import digits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    return out, digits.convert(str(out), "sklearn", num_train=40, num_eval=10, seed=3)


def test_writes_the_demo_layout(converted):
    out, paths = converted
    pretrain = json.load(open(paths["pretrain"]))
    finetune = json.load(open(paths["finetune"]))
    lines = [json.loads(line) for line in open(paths["eval_questions_jsonl"])]
    annotations = json.load(open(paths["eval_annotations"]))["annotations"]
    questions = json.load(open(paths["eval_questions"]))["questions"]
    assert len(pretrain) == 40 and len(finetune) == 120
    assert len(lines) == len(annotations) == len(questions) == 30
    assert {line["category"] for line in lines} == {"digit", "parity", "large"}
    for record in finetune:
        human, gpt = record["conversations"]
        assert human["value"].startswith("<image>\n") and os.path.exists(os.path.join(paths["image_folder"], record["image"]))
    assert [a["question_id"] for a in annotations] == [line["question_id"] for line in lines]
    assert all(len(a["answers"]) == 10 for a in annotations)


def test_answers_follow_from_the_label():
    assert digits.answers_for(7) == {"digit": "7", "parity": "no", "large": "yes"}
    assert digits.answers_for(4) == {"digit": "4", "parity": "yes", "large": "no"}
    assert digits.answers_for(0)["parity"] == "yes"


def test_each_record_answers_its_images_digit(converted):
    out, paths = converted
    captions = {r["image"]: r["conversations"][1]["value"] for r in json.load(open(paths["pretrain"]))}
    for record in json.load(open(paths["finetune"])):
        label = int(captions[record["image"]].split()[-1].rstrip("."))
        kind = digits.question_type(record["conversations"][0]["value"])
        assert record["conversations"][1]["value"] == digits.answers_for(label)[kind]


def test_images_upscale_without_blur(converted):
    out, paths = converted
    image = Image.open(os.path.join(paths["image_folder"], "train_00000.png"))
    assert image.mode == "L" and image.size == (32, 32)
    pixels = np.asarray(image)
    assert (pixels.reshape(8, 4, 8, 4) == pixels[::4, ::4][:, None, :, None]).all()  # 4x4 blocks: nearest neighbour
    padded = digits.to_image(np.full((28, 28), 200, np.uint8), 32)
    assert padded.size == (32, 32) and np.asarray(padded)[0].max() == 0 and np.asarray(padded)[2, 2] == 200


def test_split_is_deterministic_and_disjoint():
    train, held = digits.split_indices(100, 20, seed=5)
    again_train, again_held = digits.split_indices(100, 20, seed=5)
    assert (train == again_train).all() and (held == again_held).all()
    assert len(set(train) & set(held)) == 0 and len(train) + len(held) == 100
    assert not (digits.split_indices(100, 20, seed=6)[1] == held).all()


def test_majority_baseline(converted):
    out, paths = converted
    result = digits.majority_baseline(paths["finetune"], paths["eval_annotations"])
    assert set(result["per_type"]) == {"digit", "parity", "large"}
    assert result["answer"]["parity"] in ("yes", "no") and 0 <= result["overall"] <= 100


@pytest.mark.parametrize("argv, message", [
    (["--num-eval", "0"], "--num-eval 0"),
    (["--num-eval", "5000"], "--num-eval 5000"),
    (["--num-train", "0"], "--num-train 0"),
    (["--image-size", "4"], "--image-size 4"),
])
def test_bad_arguments_name_the_flag(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        digits.main(["--out", str(tmp_path), *argv])


def test_bad_argument_exits_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "convert_digits_to_llava.py"),
                             "--out", str(tmp_path), "--num-eval", "0"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 2
    assert "--num-eval 0" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_baseline_without_data_says_what_to_do(tmp_path):
    result = subprocess.run([sys.executable, "-m", "llava.data.digits", "--baseline", "--out", str(tmp_path)],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 2 and "write the data first (python -m llava.data.digits --out" in result.stderr



@pytest.mark.parametrize("dataset", ["sklearn", "shapes"])
def test_learning_benchmark_datasets_share_one_layout(tmp_path, dataset):
    """benchmarks.digits trains and scores each of its datasets through the same paths and baseline."""
    from benchmarks.digits import make_dataset

    paths, baseline = make_dataset(dataset, str(tmp_path), num_train=40, num_eval=10)
    for key in ("finetune", "eval_questions_jsonl", "eval_annotations", "image_folder"):
        assert os.path.exists(paths[key]), key
    with open(paths["eval_questions_jsonl"]) as f:
        questions = [json.loads(line) for line in f]
    assert len(questions) == 30  # three questions per held-out image
    assert all(os.path.exists(os.path.join(paths["image_folder"], q["image"])) for q in questions)
    assert 0 < baseline["overall"] < 100 and len(baseline["per_type"]) == 3
