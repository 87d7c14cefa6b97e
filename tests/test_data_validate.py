"""Validator: each problem kind is found, named by record, summarised; exit status follows errors."""

import json
import re

import pytest
from PIL import Image

from llava.data import coco_captions
from llava.data.validate import main, validate_file, validate_records


def human(text):
    return {"from": "human", "value": text}


def gpt(text):
    return {"from": "gpt", "value": text}


@pytest.fixture()
def image_folder(tmp_path):
    folder = tmp_path / "images"
    (folder / "coco").mkdir(parents=True)
    Image.new("RGB", (8, 8), "blue").save(folder / "coco" / "good.jpg")
    Image.new("RGB", (8, 8), "blue").save(folder / "coco" / "good2.png")
    (folder / "coco" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return folder


def clean_records():
    return [
        {"id": "a", "image": "coco/good.jpg", "conversations": [human("<image>\nWhat colour?"), gpt("Blue.")]},
        {"id": "b", "conversations": [human("Hi"), gpt("Hello!"), human("Bye"), gpt("Bye!")]},
        {"id": "c", "image": "coco/good2.png", "conversations": [human("<image>\nShape?"), gpt("Square.")]},
    ]


def test_clean_records_pass(image_folder):
    report = validate_records(clean_records(), image_folder=str(image_folder))
    assert report.ok and report.records == 3 and not report.counts
    assert report.images_checked == 2
    assert report.table().endswith("OK (0 warnings)")


def test_every_problem_kind_is_reported(image_folder):
    records = clean_records() + [
        {"id": "roles", "conversations": [gpt("I start"), human("wrong")]},
        {"id": "dangling", "conversations": [human("question without answer")]},
        {"id": "empty", "conversations": [human("Q"), gpt("  ")]},
        {"id": "two-markers", "image": "coco/good.jpg", "conversations": [human("<image>\n<image> Q"), gpt("A")]},
        {"id": "no-marker", "image": "coco/good.jpg", "conversations": [human("Q"), gpt("A")]},  # fine: placed first
        {"id": "text-marker", "conversations": [human("<image>\nQ"), gpt("A")]},
        {"id": "late-marker", "image": "coco/good.jpg", "conversations": [human("Q <image>"), gpt("A")]},
        {"id": "missing", "image": "coco/nope.jpg", "conversations": [human("<image>\nQ"), gpt("A")]},
        {"id": "corrupt", "image": "coco/broken.jpg", "conversations": [human("<image>\nQ"), gpt("A")]},
        {"id": "corrupt-again", "image": "coco/broken.jpg", "conversations": [human("<image>\nQ"), gpt("A")]},
        {"id": "turns", "conversations": [{"from": "human"}, gpt("A")]},
        {"id": "a", "conversations": [human("Q"), gpt("A")]},
        {"conversations": [human("Q"), gpt("A")]},
        "just a string",
    ]
    report = validate_records(records, image_folder=str(image_folder))
    assert dict(report.counts) == {
        "bad_roles": 2,
        "empty_answer": 1,
        "image_token_count": 2,
        "image_token_position": 1,
        "missing_image": 1,
        "corrupt_image": 2,
        "malformed_record": 2,
        "duplicate_id": 1,
        "missing_id": 1,
    }
    assert report.examples["bad_roles"] == ["#3 (id 'roles')", "#4 (id 'dangling')"]
    assert report.examples["corrupt_image"] == ["#11 (id 'corrupt')", "#12 (id 'corrupt-again')"]
    assert report.examples["malformed_record"] == ["#13 (id 'turns')", "#16"]
    assert report.images_checked == 4  # each distinct file checked once
    assert not report.ok and report.errors == 10
    table = report.table()
    assert "FAILED: 10 errors (3 warnings)" in table
    assert "missing_image" in table and "coco/nope.jpg: file not found" in table


def test_malformed_json_stops_with_record_index(tmp_path, capsys):
    path = tmp_path / "train.json"
    text = json.dumps(clean_records(), indent=2)
    path.write_text(text.replace('"Hello!"', '"Hello!" oops'))
    assert main(["--data_path", str(path)]) == 1
    out = capsys.readouterr().out
    assert "malformed_json" in out and "#1" in out and "malformed JSON in record 1" in out
    assert "records checked: 1" in out


def test_missing_data_file_exit_2(tmp_path, capsys):
    assert main(["--data_path", str(tmp_path / "nope.json")]) == 2


def test_token_lengths_against_model_max_length(tmp_path, image_folder, gpt2_tokenizer_dir, capsys):
    records = clean_records() + [
        {"id": "long-answer", "conversations": [human("Tell me a story."), gpt("word " * 150)]},
        {
            "id": "long-question",
            "image": "coco/good.jpg",
            "conversations": [human("<image>\n" + "why " * 150), gpt("ok")],
        },
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    args = [
        "--data_path",
        str(path),
        "--image_folder",
        str(image_folder),
        "--model_name_or_path",
        gpt2_tokenizer_dir,
        "--version",
        "v1",
        "--model_max_length",
        "120",
        "--image_tokens",
        "4",
    ]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert re.search(r"answer_truncated_away\s+error\s+1\s+#4 \(id 'long-question'\)", out)
    assert re.search(r"truncated\s+warning\s+1\s+#3 \(id 'long-answer'\)", out)
    assert "longest rendered sample:" in out

    # image patches count towards the length: with 576 of them the two image records leave no
    # room for their answers in 600 tokens, while the text-only record fits
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)
    report = validate_records(
        clean_records(), tokenizer=tokenizer, version="v1", model_max_length=600, image_tokens=576
    )
    assert report.counts == {"answer_truncated_away": 2} and report.examples["answer_truncated_away"] == [
        "#0 (id 'a')",
        "#2 (id 'c')",
    ]
    assert validate_records(clean_records(), tokenizer=tokenizer, model_max_length=600, image_tokens=1).counts == {}


def test_unknown_template_is_a_clear_error(tmp_path, gpt2_tokenizer_dir, capsys):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(clean_records()))
    assert main(["--data_path", str(path), "--model_name_or_path", gpt2_tokenizer_dir, "--version", "nope"]) == 2
    assert "error: --version: unknown conversation template 'nope'" in capsys.readouterr().err


def test_converter_output_validates(tmp_path, image_folder):
    captions = tmp_path / "captions_val2017.json"
    captions.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "good.jpg"}, {"id": 2, "file_name": "good2.png"}],
                "annotations": [
                    {"image_id": 1, "id": 1, "caption": "A blue square."},
                    {"image_id": 2, "id": 2, "caption": "Blue."},
                ],
            }
        )
    )
    out = tmp_path / "stage1.json"
    coco_captions.convert(str(captions), str(out), image_prefix="coco/", instruction="random")
    report = validate_file(str(out), image_folder=str(image_folder))
    assert report.ok and report.records == 2 and not report.counts


def test_a_video_counts_as_the_frames_training_samples_from_it(tmp_path, gpt2_tokenizer_dir):
    """A 3-frame clip fills 3 frames' positions, not --frames_upbound's (training samples at most the
    frames it has); --force_sample (every video exactly frames_upbound frames) and --check_images none
    (no file is read) count the upper bound."""
    from helpers import shapes_video
    from transformers import AutoTokenizer

    from llava.video import VideoSettings

    folder = tmp_path / "images"
    folder.mkdir()
    shapes_video(str(folder / "clip.mp4"), frames=3)
    records = [{"id": "clip", "video": "clip.mp4", "conversations": [human("<image>\nWhat moves?"), gpt("A square.")]}]
    tokenizer = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)
    frame_tokens = VideoSettings(32, side=4).frame_tokens
    assert 3 * frame_tokens + 30 < 80 < 32 * frame_tokens  # 3 frames fit in 80 positions, 32 do not

    def counts(**kwargs):
        return validate_records(records, image_folder=str(folder), tokenizer=tokenizer, version="v1",
                                model_max_length=80, image_tokens=16, frames_upbound=32, **kwargs).counts

    assert counts() == {}
    assert counts(force_sample=True) == {"answer_truncated_away": 1}
    assert counts(check_images="none") == {"answer_truncated_away": 1}
