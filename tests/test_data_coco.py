"""COCO captions -> LLaVA stage-1 JSON."""

import json
import os

import pytest

from llava.data import coco_captions
from llava.errors import DataError

IMAGES = [
    {"id": 391895, "file_name": "000000391895.jpg", "height": 360, "width": 640},
    {"id": 522418, "file_name": "000000522418.jpg", "height": 480, "width": 640},
    {"id": 184613, "file_name": "000000184613.jpg", "height": 336, "width": 500},  # no captions
]
ANNOTATIONS = [
    {"image_id": 391895, "id": 1, "caption": "A man with a red helmet on a small moped on a dirt road. "},
    {"image_id": 522418, "id": 2, "caption": "A woman wearing a net on her head cutting a cake. "},
    {"image_id": 391895, "id": 3, "caption": "Man riding a motor bike\non a dirt road on the countryside."},
    {"image_id": 391895, "id": 4, "caption": "A man riding on the back of a motorcycle."},
    {"image_id": 522418, "id": 5, "caption": "A woman cutting a large white sheet cake."},
]


@pytest.fixture()
def captions(tmp_path):
    path = tmp_path / "captions_train2017.json"
    path.write_text(json.dumps({"info": {"year": 2017}, "licenses": [], "images": IMAGES, "annotations": ANNOTATIONS}))
    return path


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_one_record_per_image_first_caption(captions, tmp_path):
    out = tmp_path / "stage1.json"
    result = coco_captions.convert(str(captions), str(out), image_prefix="train2017/")
    assert load(out) == [
        {
            "id": "391895",
            "image": "train2017/000000391895.jpg",
            "conversations": [
                {"from": "human", "value": "<image>"},
                {"from": "gpt", "value": "A man with a red helmet on a small moped on a dirt road."},
            ],
        },
        {
            "id": "522418",
            "image": "train2017/000000522418.jpg",
            "conversations": [
                {"from": "human", "value": "<image>"},
                {"from": "gpt", "value": "A woman wearing a net on her head cutting a cake."},
            ],
        },
    ]
    assert result["read"] == 5 and result["written"] == 2
    assert result["skips"].counts == {"image_without_caption": 1}


def test_random_caption_and_instruction_are_seeded(captions, tmp_path):
    def run(seed, name):
        coco_captions.convert(
            str(captions), str(tmp_path / name), caption_choice="random", instruction="random", seed=seed
        )
        return (tmp_path / name).read_bytes()

    assert run(0, "a.json") == run(0, "b.json")
    outputs = {run(seed, f"s{seed}.json") for seed in range(6)}
    assert len(outputs) > 1  # the seed matters
    for record in load(tmp_path / "a.json"):
        human = record["conversations"][0]["value"]
        assert human.startswith("<image>\n") and human[len("<image>\n") :] in coco_captions.CAPTION_PROMPTS
        image_id = int(record["id"])
        candidates = {" ".join(a["caption"].split()) for a in ANNOTATIONS if a["image_id"] == image_id}
        assert record["conversations"][1]["value"] in candidates
    assert len(coco_captions.CAPTION_PROMPTS) == 10


def test_one_record_per_caption(captions, tmp_path):
    out = tmp_path / "per_caption.json"
    coco_captions.main(["--captions-file", str(captions), "--output", str(out), "--per", "caption"])
    records = load(out)
    assert [r["id"] for r in records] == ["1", "2", "3", "4", "5"]
    assert records[2]["conversations"][1]["value"] == "Man riding a motor bike on a dirt road on the countryside."
    assert records[2]["image"] == "000000391895.jpg"


def test_missing_image_files_are_dropped_and_counted(captions, tmp_path):
    folder = tmp_path / "coco" / "train2017"
    folder.mkdir(parents=True)
    (folder / "000000391895.jpg").write_bytes(b"\xff\xd8")
    out = tmp_path / "o.json"
    result = coco_captions.convert(
        str(captions), str(out), image_prefix="train2017/", image_folder=str(tmp_path / "coco")
    )
    assert [r["id"] for r in load(out)] == ["391895"]
    assert result["skips"].counts == {"missing_image": 1, "image_without_caption": 1}


def test_bad_captions_error_or_skip(tmp_path, caplog):
    path = tmp_path / "captions_val2017.json"
    bad = ANNOTATIONS + [
        {"image_id": 999, "id": 6, "caption": "ghost"},
        {"id": 7, "caption": "no image id"},
        {"image_id": 522418, "id": 8, "caption": "   "},
    ]
    path.write_text(json.dumps({"images": IMAGES, "annotations": bad}))
    out = tmp_path / "o.json"
    with pytest.raises(
        DataError, match=r"captions_val2017.json: annotations record 5 \(id 6\): image_id 999 is not in"
    ):
        coco_captions.convert(str(path), str(out))
    assert not out.exists()
    caplog.set_level("INFO", logger="llava.data")
    assert coco_captions.main(["--captions-file", str(path), "--output", str(out), "--skip-invalid"]) == 0
    assert "read 8 captions of 3 images, wrote 2 records" in caplog.messages[-1]
    assert "empty_caption=1" in caplog.messages[-1] and "malformed_caption=1" in caplog.messages[-1]
    assert "unknown_image=1" in caplog.messages[-1]


def test_wrong_file_is_a_clear_error(tmp_path):
    path = tmp_path / "instances_train2017.json"
    path.write_text(json.dumps({"info": {}, "categories": []}))
    with pytest.raises(DataError, match='no "images" list in this file'):
        coco_captions.convert(str(path), str(tmp_path / "o.json"))
    path.write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    assert coco_captions.main(["--captions-file", str(path), "--output", str(tmp_path / "o.json")]) == 2
    assert not os.path.exists(tmp_path / "o.json")
