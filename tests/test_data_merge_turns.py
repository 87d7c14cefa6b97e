"""llava.data.merge_turns: the questions of one image become the turns of one conversation."""

import json

from llava.data.merge_turns import main, merge_records
from llava.records import record_problems


def qa(record_id, image, question, answer, **extra):
    return {"id": record_id, "image": image, **extra, "conversations": [
        {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]}


RECORDS = [
    qa("a-colour", "a.png", "What color?", "red"),
    qa("b-colour", "b.png", "What color?", "blue"),
    {"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    qa("a-shape", "a.png", "What shape?", "circle"),
    qa("clip", None, "What moves?", "a square", video="v.mp4"),
    qa("a-yes", "a.png", "Is there a circle?", "yes"),
    qa("pair", ["a.png", "b.png"], "Same colour?", "no"),
]
RECORDS[4].pop("image")
RECORDS[6]["conversations"][0]["value"] = "<image>\n<image>\nSame colour?"


def questions(record):
    return [turn["value"] for turn in record["conversations"] if turn["from"] == "human"]


def test_an_images_records_become_one_conversation_with_one_marker_in_file_order():
    merged = merge_records(RECORDS)
    assert [r["id"] for r in merged] == ["a-colour+2", "b-colour", "text", "clip", "pair"]
    first = merged[0]
    assert first["image"] == "a.png"
    assert questions(first) == ["<image>\nWhat color?", "What shape?", "Is there a circle?"]
    assert [t["value"] for t in first["conversations"] if t["from"] == "gpt"] == ["red", "circle", "yes"]
    assert merged[2] == RECORDS[2] and merged[3] == RECORDS[4] and merged[4] == RECORDS[6]  # left as they were
    assert all(not record_problems(r) for r in merged)  # training accepts every one (markers match images)


def test_shuffled_order_is_a_seeded_permutation_per_image():
    orders = {tuple(questions(merge_records(RECORDS, "shuffle", seed)[0])) for seed in range(20)}
    assert len(orders) > 1  # the order varies with the seed
    for order in orders:
        assert sorted(q.replace("<image>\n", "") for q in order) == ["Is there a circle?", "What color?", "What shape?"]
        assert order[0].startswith("<image>\n") and not any("<image>" in q for q in order[1:])
    assert merge_records(RECORDS, "shuffle", 3) == merge_records(RECORDS, "shuffle", 3)


def test_max_turns_splits_an_image_into_several_records():
    merged = [r for r in merge_records(RECORDS, max_turns=2) if r.get("image") == "a.png"]
    assert [len(questions(r)) for r in merged] == [2, 1]
    assert all(questions(r)[0].startswith("<image>\n") for r in merged)


def test_command_line_writes_the_merged_file_and_refuses_zero_turns(tmp_path, capsys):
    source, out = tmp_path / "in.json", tmp_path / "out.json"
    source.write_text(json.dumps(RECORDS))
    assert main(["--data_path", str(source), "--out", str(out), "--order", "shuffle"]) == 0
    assert len(json.loads(out.read_text())) == 5
    assert main(["--data_path", str(source), "--out", str(tmp_path / "x.json"), "--max-turns", "0"]) == 2
    assert "--max-turns 0" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
