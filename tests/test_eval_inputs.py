"""Hostile model_vqa inputs (issue 16, part 3): images outside --image-folder, oversized images, non-UTF-8
question files and unknown templates are one-line errors naming the question, before the model loads where
they can be."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from helpers import cached_checkpoint, read_jsonl, write_questions
from llava.eval import model_vqa


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_llm, tiny_clip):
    return cached_checkpoint(tmp_path_factory, tiny_llm, tiny_clip, "phi")


@pytest.fixture
def folder(demo_data, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    image = sorted(os.listdir(demo_data["image_folder"]))[0]
    shutil.copy(os.path.join(demo_data["image_folder"], image), images / image)
    shutil.copy(os.path.join(demo_data["image_folder"], image), tmp_path / "outside.png")
    return images, image


def run(model_path, questions, folder, answers, *extra):
    return model_vqa.main(["--model-path", model_path, "--question-file", str(questions), "--image-folder", str(folder),
                           "--answers-file", str(answers), "--max_new_tokens", "2", *extra])


def no_model(monkeypatch):
    monkeypatch.setattr("llava.model.builder.load_pretrained_model", lambda *a, **k: pytest.fail("the model loaded"))


@pytest.mark.parametrize("kind", ["absolute", "parent"])
def test_images_outside_the_folder_are_refused_before_loading_unless_allowed(
        checkpoint, folder, tmp_path, monkeypatch, kind):
    images, image = folder
    outside = str(tmp_path / "outside.png") if kind == "absolute" else "../outside.png"
    questions = write_questions(str(tmp_path / "q.jsonl"), [{"question_id": 1, "image": image, "text": "Colour?"},
                                                             {"question_id": 2, "image": outside, "text": "Colour?"}])
    with monkeypatch.context() as patch:
        no_model(patch)
        with pytest.raises(SystemExit, match=rf"model_vqa: question 2: image path '{outside}' .*"
                                             r"--allow-outside-image-folder to allow it"):
            run(checkpoint, questions, images, tmp_path / "a.jsonl")
    summary = run(checkpoint, questions, images, tmp_path / "a.jsonl", "--allow-outside-image-folder")
    assert summary["answered"] == 2 and len(read_jsonl(str(tmp_path / "a.jsonl"))) == 2


def test_oversized_image_names_the_question(checkpoint, folder, tmp_path):
    images, image = folder
    questions = write_questions(str(tmp_path / "q.jsonl"), [{"question_id": "big", "image": image, "text": "Colour?"}])
    with pytest.raises(SystemExit, match=r"question 'big': image .* = 1,024 pixels, over the limit of 100"):
        run(checkpoint, questions, images, tmp_path / "a.jsonl", "--max-image-pixels", "100")


def test_non_utf8_question_file_and_unknown_template_fail_before_loading(checkpoint, folder, tmp_path, monkeypatch):
    images, image = folder
    questions = tmp_path / "q.jsonl"
    questions.write_bytes(json.dumps({"question_id": 1, "image": image, "text": "ok"}).encode() + b"\n"
                          + json.dumps({"question_id": 2, "image": image, "text": "caf\u00e9"}).encode("latin-1")
                          .replace(b"\\u00e9", b"\xe9") + b"\n")
    no_model(monkeypatch)
    with pytest.raises(SystemExit, match=r"model_vqa: .*q\.jsonl line 2: byte 0xe9 at column \d+ is not UTF-8"):
        run(checkpoint, questions, images, tmp_path / "a.jsonl")
    good = write_questions(str(tmp_path / "good.jsonl"), [{"question_id": 1, "image": image, "text": "ok"}])
    with pytest.raises(SystemExit, match="model_vqa: unknown conversation template 'vicuna_v9'"):
        run(checkpoint, good, images, tmp_path / "a.jsonl", "--conv-mode", "vicuna_v9")
