"""Image ablation: model_vqa --image-ablation blank|shuffle, and the real/blank/shuffled table of llava.eval.image_ablation."""

from __future__ import annotations

import json
import os

import pytest
import torch

from helpers import cached_checkpoint, read_jsonl, write_questions
from llava.eval import image_ablation, model_vqa


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_llm, tiny_clip):
    return cached_checkpoint(tmp_path_factory, tiny_llm, tiny_clip, "phi")


@pytest.fixture(scope="module")
def questions(demo_data, tmp_path_factory):
    """12 demo questions: 4 images, 3 categories each."""
    records = read_jsonl(demo_data["eval_questions_jsonl"])[:12]
    return write_questions(str(tmp_path_factory.mktemp("q") / "questions.jsonl"), records)


def answer(checkpoint, questions, demo_data, path, *extra):
    return model_vqa.main(["--model-path", checkpoint, "--question-file", questions, "--image-folder",
                           demo_data["image_folder"], "--answers-file", str(path), "--max_new_tokens", "3", *extra])


def test_blank_images_reach_the_model_as_uniform_mean_grey_pixels(checkpoint, questions, demo_data):
    from llava.inference import InferenceEngine

    engine = InferenceEngine.from_pretrained(checkpoint)
    batch = read_jsonl(questions)[:4]
    real = model_vqa.prepare_batch(engine, batch, demo_data["image_folder"])
    blank = model_vqa.prepare_batch(engine, batch, demo_data["image_folder"], ablation="blank")
    for r, b in zip(real, blank):
        assert b.image.shape == r.image.shape and torch.equal(b.input_ids, r.input_ids)
        flat = b.image.flatten(1)
        assert torch.equal(flat, flat[:, :1].expand_as(flat))  # one value per channel: no content
        assert flat.abs().max() < 0.02  # the processor's mean colour normalises to ~0
        assert r.image.flatten(1).std(dim=1).max() > 0.1  # while the real image has content


def test_shuffle_is_a_seeded_derangement_of_the_distinct_images():
    records = [{"question_id": i, "image": f"img{i // 3}.png", "text": "q"} for i in range(30)]
    shown = model_vqa.shuffled_images(records, seed=0)
    images = sorted({r["image"] for r in records})
    assert sorted(shown) == images and sorted(shown.values()) == images  # a permutation
    assert all(shown[image] != image for image in images)  # no question keeps its own image
    assert model_vqa.shuffled_images(list(reversed(records)), seed=0) == shown  # fixed by the set and the seed
    assert model_vqa.shuffled_images(records, seed=1) != shown
    two = model_vqa.shuffled_images(records[:6], seed=5)
    assert two == {"img0.png": "img1.png", "img1.png": "img0.png"}


def test_shuffled_chunks_agree_with_the_unchunked_run_and_record_the_ablation(checkpoint, questions, demo_data, tmp_path):
    whole = tmp_path / "whole.jsonl"
    summary = answer(checkpoint, questions, demo_data, whole, "--image-ablation", "shuffle", "--batch-size", "4")
    assert summary["answered"] == 12 and summary["image_ablation"] == "shuffle"
    chunks = [tmp_path / f"chunk{k}.jsonl" for k in range(3)]
    for k, path in enumerate(chunks):
        answer(checkpoint, questions, demo_data, path, "--image-ablation", "shuffle", "--num-chunks", "3",
               "--chunk-idx", str(k))
    merged = [r for path in chunks for r in read_jsonl(str(path))]
    by_id = {q["question_id"]: q for q in read_jsonl(questions)}
    assert [r["question_id"] for r in merged] == [r["question_id"] for r in read_jsonl(str(whole))]
    for one, split in zip(read_jsonl(str(whole)), merged):
        assert one["metadata"]["image_ablation"] == "shuffle"
        assert one["metadata"] == split["metadata"] and one["text"] == split["text"]
        assert one["metadata"]["image_shown"] != by_id[one["question_id"]]["image"]

    real = tmp_path / "real.jsonl"
    answer(checkpoint, questions, demo_data, real)
    assert all(r["metadata"] == {"image_ablation": "none", "model_path": os.path.abspath(checkpoint)}
               for r in read_jsonl(str(real)))
    # A file answered under one condition is not resumed under another.
    with pytest.raises(SystemExit, match=r"real\.jsonl:1 was answered with --image-ablation none, this run uses blank"):
        answer(checkpoint, questions, demo_data, real, "--image-ablation", "blank")


def test_bad_ablation_inputs_are_one_line_errors(checkpoint, questions, demo_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        answer(checkpoint, questions, demo_data, tmp_path / "a.jsonl", "--image-ablation", "mirror")
    assert exc.value.code == 2 and "invalid choice: 'mirror'" in capsys.readouterr().err
    one_image = write_questions(str(tmp_path / "one.jsonl"),
                                [r for r in read_jsonl(questions) if r["image"] == read_jsonl(questions)[0]["image"]])
    with pytest.raises(SystemExit, match="shuffle needs questions with at least 2 distinct images.*has 1"):
        answer(checkpoint, one_image, demo_data, tmp_path / "a.jsonl", "--image-ablation", "shuffle")
    with pytest.raises(SystemExit, match="one.jsonl: the shuffled-image condition needs questions with at least 2"):
        image_ablation.main(["--model-path", checkpoint, "--question-file", one_image, "--annotation-file", "a.json",
                             "--out-dir", str(tmp_path / "out")])


def annotations_from(answers_file: str, path) -> str:
    """Annotations whose ten human answers are the given answers: a model scores 100 on its own real run."""
    records = read_jsonl(answers_file)
    path.write_text(json.dumps({"annotations": [
        {"question_id": r["question_id"], "question_type": "x",
         "answers": [{"answer": r["text"], "answer_id": k} for k in range(10)]} for r in records]}))
    return str(path)


def ablate(checkpoint, questions, demo_data, annotations, out_dir):
    return image_ablation.main(["--model-path", checkpoint, "--question-file", questions, "--image-folder",
                                demo_data["image_folder"], "--annotation-file", annotations, "--out-dir", str(out_dir),
                                "--max_new_tokens", "3", "--batch-size", "6"])


def test_the_table_shows_real_blank_and_shuffled_accuracy_per_category(checkpoint, questions, demo_data, tmp_path, capsys):
    answer(checkpoint, questions, demo_data, tmp_path / "reference.jsonl")
    annotations = annotations_from(str(tmp_path / "reference.jsonl"), tmp_path / "ann.json")
    result = ablate(checkpoint, questions, demo_data, annotations, tmp_path / "out")
    printed = capsys.readouterr().out

    saved = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert saved["conditions"] == result["conditions"] and saved["verdict"] == result["verdict"]
    real, blank, shuffled = (result["conditions"][c]["overall"] for c in ("real", "blank", "shuffled"))
    assert real == 100.0 and blank < 95 and shuffled < 95  # this model's answers follow its images
    assert set(result["conditions"]["real"]["per_category"]) == {"color", "shape", "presence"}
    assert result["reads_image"] and printed.count("the model reads the image") == 1
    row = next(line for line in printed.splitlines() if line.strip().startswith("overall"))
    assert row.split()[1:4] == [f"{real:.2f}", f"{blank:.2f}", f"{shuffled:.2f}"]
    assert 0 < result["majority_baseline"]["overall"] <= 100
    for name in ("real", "blank", "shuffle"):
        records = read_jsonl(str(tmp_path / "out" / f"answers-{name}.jsonl"))
        expected = "none" if name == "real" else name
        assert len(records) == 12 and {r["metadata"]["image_ablation"] for r in records} == {expected}


def test_a_model_that_ignores_the_image_gets_the_warning(tmp_path_factory, tiny_llm, tiny_clip, questions, demo_data,
                                                          tmp_path, capsys):
    # A zero projector maps every image to the same (zero) features: the collapse the verdict is for.
    blind = cached_checkpoint(tmp_path_factory, tiny_llm, tiny_clip, "phi", projector_scale=0.0)
    answer(blind, questions, demo_data, tmp_path / "reference.jsonl")
    annotations = annotations_from(str(tmp_path / "reference.jsonl"), tmp_path / "ann.json")
    result = ablate(blind, questions, demo_data, annotations, tmp_path / "out")
    conditions = result["conditions"]
    assert conditions["real"]["overall"] == conditions["blank"]["overall"] == conditions["shuffled"]["overall"] == 100
    assert not result["reads_image"]
    assert "WARNING: accuracy with blank images is within 5 points of real images" in capsys.readouterr().out
