"""Instruct-150K / mix665k converter: normalisation, splitting, buckets, sorting, bad input."""

import json
import os

import pytest
from PIL import Image

from llava.data import instruct
from llava.errors import DataError


def human(text):
    return {"from": "human", "value": text}


def gpt(text):
    return {"from": "gpt", "value": text}


def slice_records():
    """A mix665k-style slice: sub-folder image paths, multi-turn, text-only, dirty <image> placement."""
    return [
        {  # clean multi-turn
            "id": "000000033471",
            "image": "coco/train2017/000000033471.jpg",
            "conversations": [
                human("<image>\nWhat are the colors of the bus in the image?"),
                gpt("The bus in the image is white and red."),
                human("What feature can be seen on the back of the bus?"),
                gpt("The back of the bus features an advertisement."),
            ],
        },
        {  # marker after the question, and a stray one in a later turn
            "id": "gqa-1",
            "image": "gqa/images/2354786.jpg",
            "conversations": [
                human("Is the sky dark?\n<image>"),
                gpt("Yes"),
                human("<image>\nWhat is on the table?"),
                gpt("A white plate with two forks"),
            ],
        },
        {  # text-only (ShareGPT in mix665k) with a stray marker
            "id": "sharegpt-7",
            "conversations": [human("Write a haiku about <image> rain."), gpt("Soft rain on the roof\nwhispers")],
        },
        {  # image record without any marker
            "id": "ocr-3",
            "image": "ocr_vqa/images/3.jpg",
            "conversations": [human("Who wrote this book?"), gpt("Jane Austen")],
        },
        {  # image is missing on disk
            "id": "vg-9",
            "image": "vg/VG_100K/9.jpg",
            "conversations": [human("<image>\nWhat is this?"), gpt("a dog")],
        },
    ]


@pytest.fixture()
def dataset(tmp_path):
    images = tmp_path / "data"
    for rel in ("coco/train2017/000000033471.jpg", "gqa/images/2354786.jpg", "ocr_vqa/images/3.jpg"):
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), "red").save(images / rel)
    path = tmp_path / "llava_v1_5_mix665k.json"
    path.write_text(json.dumps(slice_records(), indent=2))
    return path, images


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_normalise_image_token_moves_and_removes_markers():
    turns = [human("Q1\n<image>"), gpt("A1"), human("<image> Q2"), gpt("A2")]
    fixed, changed = instruct.normalise_image_token(turns, has_image=True)
    assert changed
    assert [t["value"] for t in fixed] == ["<image>\nQ1", "A1", "Q2", "A2"]
    clean = [human("<image>\nQ"), gpt("A")]
    assert instruct.normalise_image_token(clean, has_image=True) == (clean, False)
    text_only, changed = instruct.normalise_image_token([human("a <image> b"), gpt("c")], has_image=False)
    assert changed and text_only[0]["value"] == "a  b"


def test_multi_turn_conversion(dataset, tmp_path):
    path, images = dataset
    out = tmp_path / "out.json"
    result = instruct.convert([str(path)], str(out), image_folder=str(images))
    records = load(out)
    assert [r["id"] for r in records] == ["000000033471", "gqa-1", "sharegpt-7", "ocr-3"]
    assert result["read"] == 5 and result["written"] == 4
    assert result["skips"].counts == {"missing_image": 1}
    assert result["normalised"] == 3  # gqa-1, sharegpt-7, ocr-3
    assert records[0] == slice_records()[0]  # clean records pass through unchanged
    gqa = records[1]["conversations"]
    assert gqa[0]["value"] == "<image>\nIs the sky dark?" and gqa[2]["value"] == "What is on the table?"
    assert "image" not in records[2] and "<image>" not in records[2]["conversations"][0]["value"]
    assert records[3]["conversations"][0]["value"] == "<image>\nWho wrote this book?"
    for record in records:
        markers = sum(t["value"].count("<image>") for t in record["conversations"])
        assert markers == (1 if "image" in record else 0)


def test_split_turns_keeps_image_in_every_pair(dataset, tmp_path):
    path, images = dataset
    out = tmp_path / "pairs.json"
    instruct.convert([str(path)], str(out), image_folder=str(images), split_turns=True)
    records = load(out)
    assert [r["id"] for r in records] == [
        "000000033471_0",
        "000000033471_1",
        "gqa-1_0",
        "gqa-1_1",
        "sharegpt-7_0",
        "ocr-3_0",
    ]
    second = records[1]
    assert second["image"] == "coco/train2017/000000033471.jpg"
    assert second["conversations"] == [
        human("<image>\nWhat feature can be seen on the back of the bus?"),
        gpt("The back of the bus features an advertisement."),
    ]
    assert "image" not in records[4] and records[4]["conversations"][0]["value"].startswith("Write")


def test_buckets_by_word_count_with_table(dataset, tmp_path, caplog):
    path, _ = dataset
    out = tmp_path / "b.json"
    result = instruct.convert([str(path)], str(out), split_turns=True, bucket_edges=(1, 4))
    assert result["unit"] == "words"
    labels = instruct.bucket_labels((1, 4))
    assert labels == ["0-1", "2-4", "5-inf"]
    files = [tmp_path / f"b.len{label}.json" for label in labels]
    assert [str(f) for f in files] == result["paths"] and not out.exists()
    short, middle, long = (load(f) for f in files)
    assert [r["id"] for r in short] == ["gqa-1_0"]  # "Yes"
    assert [r["id"] for r in middle] == ["ocr-3_0", "vg-9_0"]  # "Jane Austen", "a dog"
    assert len(long) == 4
    assert result["bucket_counts"] == [1, 2, 4]
    table = instruct.length_table(result["bucket_counts"], labels, "words")
    assert "answer words" in table and "5-inf" in table and "57.1%" in table


def test_sort_by_length_is_stable(dataset, tmp_path):
    path, images = dataset
    asc, desc = tmp_path / "asc.json", tmp_path / "desc.json"
    instruct.convert([str(path)], str(asc), image_folder=str(images), split_turns=True, sort_by_length="asc")
    instruct.convert([str(path)], str(desc), image_folder=str(images), split_turns=True, sort_by_length="desc")
    # answer words: gqa-1_0 1, ocr-3_0 2, gqa-1_1 6, sharegpt-7_0 6, 33471_1 8, 33471_0 9
    assert [r["id"] for r in load(asc)] == [
        "gqa-1_0",
        "ocr-3_0",
        "gqa-1_1",
        "sharegpt-7_0",
        "000000033471_1",
        "000000033471_0",
    ]
    # equal lengths (gqa-1_1, sharegpt-7_0) keep input order in both directions
    assert [r["id"] for r in load(desc)] == [
        "000000033471_0",
        "000000033471_1",
        "gqa-1_1",
        "sharegpt-7_0",
        "ocr-3_0",
        "gqa-1_0",
    ]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary files left


def test_token_lengths_with_tokenizer(dataset, tmp_path, gpt2_tokenizer_dir):
    path, images = dataset
    out = tmp_path / "t.json"
    result = instruct.convert(
        [str(path)],
        str(out),
        image_folder=str(images),
        split_turns=True,
        bucket_edges=(2,),
        tokenizer_path=gpt2_tokenizer_dir,
    )
    assert result["unit"] == "tokens"
    # "Yes" is 1 GPT-2 token; "Jane Austen" is 2 words but 3 tokens
    assert [r["id"] for r in load(tmp_path / "t.len0-2.json")] == ["gqa-1_0"]
    instruct.convert([str(path)], str(out), image_folder=str(images), split_turns=True, bucket_edges=(2,))
    assert [r["id"] for r in load(tmp_path / "t.len0-2.json")] == ["gqa-1_0", "ocr-3_0"]


def test_bad_tokenizer_path_is_a_clear_error(dataset, tmp_path):
    path, _ = dataset
    with pytest.raises(DataError, match="cannot load a tokenizer from"):
        instruct.convert(
            [str(path)], str(tmp_path / "x.json"), sort_by_length="asc", tokenizer_path=str(tmp_path / "nope")
        )


def test_invalid_record_names_file_and_record(tmp_path, caplog):
    records = slice_records()[:1] + [
        {"id": "bad-roles", "conversations": [gpt("hi"), human("there")]},
        {"id": "empty", "conversations": [human("q"), gpt("   ")]},
        {"id": "odd", "conversations": [human("q")]},
        ["not", "a", "record"],
    ]
    path = tmp_path / "in.json"
    path.write_text(json.dumps(records))
    out = tmp_path / "out.json"
    with pytest.raises(DataError) as info:
        instruct.convert([str(path)], str(out))
    message = str(info.value)
    assert str(path) in message and "record 1 (id 'bad-roles')" in message and "--skip-invalid" in message
    assert not out.exists()
    result = instruct.convert([str(path)], str(out), skip_invalid=True)
    assert result["written"] == 1
    assert result["skips"].counts == {"bad_roles": 2, "empty_answer": 1, "malformed_record": 1}
    assert "bad_roles=2" in result["skips"].summary()


def test_user_assistant_roles_are_accepted_and_written_human_gpt(tmp_path):
    path, out = tmp_path / "in.json", tmp_path / "out.json"
    turns = [{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello"}]
    unanswered = [human("q"), gpt("a"), human("q2")]
    path.write_text(json.dumps([{"id": "u", "conversations": turns}, {"id": "open", "conversations": unanswered}]))
    result = instruct.convert([str(path)], str(out), skip_invalid=True)
    assert load(out) == [{"id": "u", "conversations": [human("Hi"), gpt("Hello")]}]
    assert result["skips"].counts == {"unanswered_turn": 1}  # split pairs need every question answered


def test_malformed_json_error_names_record(tmp_path):
    path = tmp_path / "broken.json"
    text = json.dumps(slice_records(), indent=1)
    assert '"Yes"' in text
    path.write_text(text.replace('"Yes"', "Yes"))
    assert instruct.main(["--input", str(path), "--output", str(tmp_path / "o.json")]) == 2
    with pytest.raises(DataError, match=r"broken.json: malformed JSON in record 1 at line \d+ column \d+"):
        instruct.convert([str(path)], str(tmp_path / "o.json"))
    assert not (tmp_path / "o.json").exists()


def test_missing_input_file(tmp_path):
    with pytest.raises(DataError, match="nope.json: input file not found"):
        instruct.convert([str(tmp_path / "nope.json")], str(tmp_path / "o.json"))


def test_rerun_is_byte_identical_and_interrupt_leaves_nothing(dataset, tmp_path, monkeypatch):
    path, images = dataset
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for out in (a, b):
        instruct.convert([str(path)], str(out), image_folder=str(images), split_turns=True, sort_by_length="desc")
    assert a.read_bytes() == b.read_bytes()

    original = instruct.split_into_pairs
    calls = []

    def interrupted(record):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(record)

    monkeypatch.setattr(instruct, "split_into_pairs", interrupted)
    before = a.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        instruct.convert([str(path)], str(a), split_turns=True)
    assert a.read_bytes() == before  # the old output is untouched
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_several_inputs_jsonl_and_image_prefix(tmp_path):
    first = tmp_path / "detail_23k.json"
    first.write_text(
        json.dumps(
            [{"id": "1", "image": "000000000001.jpg", "conversations": [human("<image>\nDescribe."), gpt("A cat.")]}]
        )
    )
    second = tmp_path / "extra.jsonl"
    second.write_text(
        json.dumps({"image": "coco/train2017/000000000002.jpg", "conversations": [human("Q"), gpt("A")]}) + "\n"
    )
    out = tmp_path / "o.json"
    instruct.main(["--input", str(first), str(second), "--output", str(out), "--image-prefix", "coco/train2017/"])
    records = load(out)
    assert [r["image"] for r in records] == ["coco/train2017/000000000001.jpg", "coco/train2017/000000000002.jpg"]
    assert records[1]["id"] == "0"  # no id in the input: the record's index


def test_cli_summary_line(dataset, tmp_path, caplog):
    path, images = dataset
    caplog.set_level("INFO", logger="llava.data")
    code = instruct.main(
        [
            "--input",
            str(path),
            "--output",
            str(tmp_path / "o.json"),
            "--image-folder",
            str(images),
            "--bucket-edges",
            "3",
        ]
    )
    assert code == 0
    summary = caplog.messages[-1]
    assert "read 5 records, wrote 4" in summary and "missing_image=1" in summary
    assert any("whitespace-separated words" in m for m in caplog.messages)
