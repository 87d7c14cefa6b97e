"""Image ablation: model_vqa --image-ablation blank|shuffle, and the real/blank/shuffled table of llava.eval.image_ablation."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from helpers import cached_checkpoint, read_jsonl, shapes_video, solid_image, write_questions
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
    shown = model_vqa.shuffled_media(records, seed=0).images
    images = sorted({r["image"] for r in records})
    assert sorted(shown) == images and sorted(shown.values()) == images  # a permutation
    assert all(shown[image] != image for image in images)  # no question keeps its own image
    assert model_vqa.shuffled_media(list(reversed(records)), seed=0).images == shown  # fixed by the set and the seed
    assert model_vqa.shuffled_media(records, seed=1).images != shown
    two = model_vqa.shuffled_media(records[:6], seed=5).images
    assert two == {"img0.png": "img1.png", "img1.png": "img0.png"}


MIXED = [
    {"question_id": "single", "image": "a.png", "text": "<image>\nWhat colour?"},
    {"question_id": "pair", "image": ["b.png", "c.png"], "text": "Is <image> like <image>?"},
    {"question_id": "three", "image": ["c.png", "d.png", "e.png"], "text": "<image> <image> <image>\nName them."},
    {"question_id": "clip-1", "video": "clips/1.mp4", "text": "What moves?"},
    {"question_id": "clip-2", "video": "clips/2.mp4", "text": "What moves?"},
    {"question_id": "clip-3", "video": "clips/3.mp4", "text": "What moves?"},
    {"question_id": "text", "text": "Say hi."},
]


def test_shuffle_deranges_all_images_and_apart_all_videos():
    shuffled = model_vqa.shuffled_media(MIXED, seed=0)
    images = ["a.png", "b.png", "c.png", "d.png", "e.png"]  # the single image and those only in lists alike
    videos = ["clips/1.mp4", "clips/2.mp4", "clips/3.mp4"]
    for derangement, paths in ((shuffled.images, images), (shuffled.videos, videos)):
        assert sorted(derangement) == paths and sorted(derangement.values()) == paths  # a permutation of its kind
        assert all(derangement[path] != path for path in paths)
    assert model_vqa.shuffled_media(list(reversed(MIXED)), seed=0) == shuffled  # the same map for any chunk order
    assert model_vqa.shuffled_media(MIXED, seed=3) != shuffled

    pair, three, clip, text = (model_vqa.shown_question(MIXED[i], shuffled) for i in (1, 2, 3, 6))
    assert pair["image"] == [shuffled.images["b.png"], shuffled.images["c.png"]]  # as many images, each swapped
    assert three["image"] == [shuffled.images[name] for name in MIXED[2]["image"]]
    assert three["text"] == MIXED[2]["text"] and MIXED[2]["image"] == ["c.png", "d.png", "e.png"]  # a copy
    assert clip["video"] == shuffled.videos["clips/1.mp4"] and "image" not in clip
    assert text == MIXED[6]
    assert model_vqa.shown_metadata(pair) == {"image_shown": pair["image"]}
    assert model_vqa.shown_metadata(model_vqa.shown_question(MIXED[0], shuffled)) == {
        "image_shown": shuffled.images["a.png"]}
    assert model_vqa.shown_metadata(clip) == {"video_shown": clip["video"]} and model_vqa.shown_metadata(text) == {}
    assert model_vqa.shuffled_media(MIXED[3:5]) == ({}, {"clips/1.mp4": "clips/2.mp4", "clips/2.mp4": "clips/1.mp4"})


def test_shuffle_needs_two_distinct_files_of_each_kind_shown():
    one_video = MIXED[:3] + [MIXED[3], {**MIXED[4], "video": MIXED[3]["video"]}]
    with pytest.raises(ValueError, match=r"shuffle needs questions with at least 2 distinct videos to swap between "
                                         r"\(a video is replaced only by another video\); the question file has 1"):
        model_vqa.shuffled_media(one_video)
    one_image = [{**MIXED[1], "image": ["b.png", "b.png"]}] + MIXED[3:5]  # a list repeating one image
    with pytest.raises(ValueError, match="at least 2 distinct images to swap between; the question file has 1"):
        model_vqa.shuffled_media(one_image)
    with pytest.raises(ValueError, match="at least 2 distinct images to swap between; the question file has 0"):
        model_vqa.shuffled_media([MIXED[6]])


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


def test_a_single_distinct_video_stops_both_tools_before_the_model_loads(tmp_path):
    one_video = write_questions(str(tmp_path / "one-video.jsonl"), MIXED[:4])
    with pytest.raises(SystemExit, match=r"--image-ablation shuffle needs questions with at least 2 distinct videos"
                                         r".*has 1 \(add questions showing other videos"):
        model_vqa.main(["--model-path", "unused", "--question-file", one_video, "--answers-file",
                        str(tmp_path / "a.jsonl"), "--image-ablation", "shuffle"])
    with pytest.raises(SystemExit, match="one-video.jsonl: the shuffled-image condition needs questions with at "
                                         "least 2 distinct videos"):
        image_ablation.main(["--model-path", "unused", "--question-file", one_video, "--annotation-file", "a.json",
                             "--out-dir", str(tmp_path / "out")])
    # Multi-image and video questions that can be shuffled pass the check (the missing annotations stop it next).
    mixed = write_questions(str(tmp_path / "mixed.jsonl"), MIXED)
    with pytest.raises(SystemExit, match="missing.json"):
        image_ablation.main(["--model-path", "unused", "--question-file", mixed, "--annotation-file",
                             str(tmp_path / "missing.json"), "--out-dir", str(tmp_path / "out")])


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Three colour images and two videos, with single-image, multi-image, video and text-only questions."""
    folder = tmp_path_factory.mktemp("media")
    (folder / "clips").mkdir()
    for name, rgb in COLOURS.items():
        solid_image(str(folder / f"{name}.png"), rgb)
    for name in ("red", "blue"):
        shapes_video(str(folder / "clips" / f"{name}.mp4"), frames=4, color=COLOURS[name])
    questions = [
        {"question_id": "single", "image": "red.png", "text": "<image>\nWhat colour is it?"},
        {"question_id": "pair", "image": ["red.png", "green.png"], "text": "Is <image> like <image>?"},
        {"question_id": "clip-red", "video": "clips/red.mp4", "text": "What colour moves?"},
        {"question_id": "three", "image": ["blue.png", "red.png", "green.png"], "text": "<image> <image> <image>\nQ"},
        {"question_id": "clip-blue", "video": "clips/blue.mp4", "text": "What colour moves?"},
        {"question_id": "text", "text": "Say hi."},
    ]
    return {"folder": str(folder), "questions": questions}


def test_multi_image_and_video_questions_are_answered_with_the_swapped_media(checkpoint, media, tmp_path):
    questions = write_questions(str(tmp_path / "q.jsonl"), media["questions"])

    def run(question_file, answers, *extra):
        model_vqa.main(["--model-path", checkpoint, "--question-file", question_file, "--image-folder",
                        media["folder"], "--answers-file", str(answers), "--max_new_tokens", "4",
                        "--batch-size", "3", *extra])
        return read_jsonl(str(answers))

    shuffled = run(questions, tmp_path / "shuffle.jsonl", "--image-ablation", "shuffle")
    assert [r["question_id"] for r in shuffled] == [q["question_id"] for q in media["questions"]]  # one line each
    shown = {r["question_id"]: r["metadata"] for r in shuffled}
    assert not any("error" in metadata for metadata in shown.values())
    assert isinstance(shown["single"]["image_shown"], str) and shown["single"]["image_shown"] != "red.png"
    for qid, own in (("pair", ["red.png", "green.png"]), ("three", ["blue.png", "red.png", "green.png"])):
        assert len(shown[qid]["image_shown"]) == len(own)
        assert all(swapped != image for swapped, image in zip(shown[qid]["image_shown"], own))
    assert shown["clip-red"]["video_shown"] == "clips/blue.mp4" and shown["clip-blue"]["video_shown"] == "clips/red.mp4"
    assert "image_shown" not in shown["clip-red"] and "video_shown" not in shown["pair"]
    assert shown["text"] == {"image_ablation": "shuffle", "model_path": os.path.abspath(checkpoint)}

    # Each answer is the one the model gives when really shown those images and that video.
    swapped = [{**q, **({"image": shown[q["question_id"]]["image_shown"]} if "image" in q else {}),
                **({"video": shown[q["question_id"]]["video_shown"]} if "video" in q else {})}
               for q in media["questions"]]
    real = run(write_questions(str(tmp_path / "swapped.jsonl"), swapped), tmp_path / "real.jsonl")
    assert [r["text"] for r in shuffled] == [r["text"] for r in real]


def test_the_shuffle_checks_the_images_and_videos_it_shows(checkpoint, media, tmp_path):
    """An unreadable image or video fails the question it is shown to, found from headers before generation."""
    folder = tmp_path / "media"
    shutil.copytree(media["folder"], folder)
    (folder / "junk.png").write_bytes(b"not an image")
    (folder / "clips" / "junk.mp4").write_bytes(b"not a video")
    questions = [{"question_id": "pair", "image": ["red.png", "green.png"], "text": "Is <image> like <image>?"},
                 {"question_id": "junk-image", "image": "junk.png", "text": "What colour?"},
                 {"question_id": "clip", "video": "clips/red.mp4", "text": "What moves?"},
                 {"question_id": "junk-clip", "video": "clips/junk.mp4", "text": "What moves?"}]
    # Any cycle through the 3 images shows junk.png in one of the pair's places and a good image to
    # junk-image's question; the 2 videos swap. The header probe must look at these, not at each question's own.
    question_file = write_questions(str(tmp_path / "q.jsonl"), questions)
    args = ["--model-path", checkpoint, "--question-file", question_file, "--image-folder", str(folder),
            "--answers-file", str(tmp_path / "a.jsonl"), "--image-ablation", "shuffle", "--max_new_tokens", "3"]
    with pytest.raises(SystemExit, match=r"2 question\(s\) have an image that cannot be read, e.g. question 'pair'"):
        model_vqa.main(args)
    assert not (tmp_path / "a.jsonl").exists()  # refused before the model loaded
    model_vqa.main([*args, "--skip-bad-images"])
    answers = {r["question_id"]: r["metadata"] for r in read_jsonl(str(tmp_path / "a.jsonl"))}
    assert "junk.png" in answers["pair"]["error"] and "junk.mp4" in answers["clip"]["error"]
    assert "error" not in answers["junk-image"] and "error" not in answers["junk-clip"]


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
