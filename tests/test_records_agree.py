"""Training, the validator and model_vqa accept and refuse the same records and the same files."""

import json

import pytest
from PIL import Image

from llava.data.validate import validate_file
from llava.errors import DataError
from llava.eval.model_vqa import read_questions
from llava.records import iter_records
from llava.train.dataset import LazySupervisedDataset
from llava.video import VideoSettings
from helpers import shapes_video


def human(text, role="human"):
    return {"from": role, "value": text}


def gpt(text, role="gpt"):
    return {"from": role, "value": text}


def rec(turns, image=None, **extra):
    record = {"id": extra.pop("id", "r"), "conversations": turns, **extra}
    return record if image is None else {**record, "image": image}


# name -> (records, accepted)
RECORDS = {
    "human/gpt with image": ([rec([human("<image>\nQ?"), gpt("A")], "a.png")], True),
    "user/assistant roles": ([rec([human("<image>\nQ?", "user"), gpt("A", "assistant")], "a.png")], True),
    "text only, several turns": ([rec([human("Q"), gpt("A"), human("Q2"), gpt("A2")])], True),
    "image without a marker": ([rec([human("Q?"), gpt("A")], "a.png")], True),
    "marker later in the first turn": ([rec([human("Q <image>"), gpt("A")], "a.png")], True),
    "two images, two markers": ([rec([human("<image> and <image>: same?"), gpt("no")], ["a.png", "b.png"])], True),
    "two images, no marker": ([rec([human("Same?"), gpt("no")], ["a.png", "b.png"])], True),
    "empty image list": ([rec([human("Q"), gpt("A")], [])], True),
    "last question unanswered": ([rec([human("Q"), gpt("A"), human("Q2")])], True),
    "duplicate and missing ids": ([rec([human("Q"), gpt("A")]), rec([human("Q"), gpt("A")]),
                                   {"conversations": [human("Q"), gpt("A")]}], True),
    # a leading system message replaces the template's system prompt
    "system turn first": ([rec([{"from": "system", "value": "Be brief."}, human("Q"), gpt("A")])], True),
    "system turn only": ([rec([{"from": "system", "value": "Be brief."}])], False),
    "answer first": ([rec([gpt("A"), human("Q")])], False),
    "unknown role": ([rec([human("Q", "person"), gpt("A")])], False),
    "missing answer": ([rec([human("Q")])], False),
    "empty answer": ([rec([human("Q"), gpt("  ")])], False),
    "empty conversations": ([rec([])], False),
    "no conversations": ([{"id": "r", "image": "a.png"}], False),
    "marker without image": ([rec([human("<image>\nQ"), gpt("A")])], False),
    "two markers, one image": ([rec([human("<image>\n<image>\nQ"), gpt("A")], "a.png")], False),
    "two images, one marker": ([rec([human("<image>\nQ"), gpt("A")], ["a.png", "b.png"])], False),
    "marker in a later turn": ([rec([human("Q"), gpt("A"), human("<image>\nQ2"), gpt("A2")], "a.png")], False),
    "marker in an answer": ([rec([human("Q"), gpt("<image>")], "a.png")], False),
    "value not a string": ([rec([human(5), gpt("A")])], False),
    "turn not an object": ([rec(["Q", gpt("A")])], False),
    "role missing": ([rec([{"value": "Q"}, gpt("A")])], False),
    "record not an object": (["just text"], False),
    "image not a path": ([rec([human("Q"), gpt("A")], 5)], False),
    "empty image path": ([rec([human("Q"), gpt("A")], "")], False),
    "image file missing": ([rec([human("<image>\nQ"), gpt("A")], "nope.png")], False),
    "image outside the folder": ([rec([human("<image>\nQ"), gpt("A")], "../a.png")], False),
    "interleaved images, markers in later turns": ([rec([human("<image> first?"), gpt("A"), human("and <image>?"),
                                                        gpt("B")], ["a.png", "b.png"])], True),
    "three markers, two images": ([rec([human("<image><image>"), gpt("A"), human("<image>"), gpt("B")],
                                       ["a.png", "b.png"])], False),
    "video with its marker": ([rec([human("<image>\nWhat moves?"), gpt("A")], video="v.mp4")], True),
    "video without a marker": ([rec([human("What moves?"), gpt("A")], video="v.mp4")], True),
    "video with two markers": ([rec([human("<image>\n<image>\nQ"), gpt("A")], video="v.mp4")], False),
    "video and image in one record": ([rec([human("<image>\nQ"), gpt("A")], "a.png", video="v.mp4")], False),
    "video not a path": ([rec([human("<image>\nQ"), gpt("A")], video=["v.mp4"])], False),
    "video file missing": ([rec([human("<image>\nQ"), gpt("A")], video="nope.mp4")], False),
    "video outside the folder": ([rec([human("<image>\nQ"), gpt("A")], video="../v.mp4")], False),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("agree")
    images = root / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8), "red").save(images / name)
    shapes_video(str(images / "v.mp4"), frames=3)
    shapes_video(str(root / "v.mp4"), frames=3)
    Image.new("RGB", (8, 8), "red").save(root / "a.png")  # what "../a.png" reaches
    return images


def training_accepts(path, folder) -> bool:
    try:
        # The upfront checks need no tokenizer; any image processor stands for a vision tower.
        LazySupervisedDataset(str(path), None, "phi", image_folder=str(folder), image_processor=object(),
                              video=VideoSettings())
    except (ValueError, FileNotFoundError):  # InvalidRecord, UnreadableRecord, DataError
        return False
    return True


def validator_accepts(path, folder) -> bool:
    return validate_file(str(path), image_folder=str(folder), num_workers=1).ok


def model_vqa_accepts(path) -> bool:
    try:
        read_questions(str(path))
    except ValueError:
        return False
    return True


def write(path, records, jsonl=False) -> str:
    text = "".join(json.dumps(r) + "\n" for r in records) if jsonl else json.dumps(records, indent=1)
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", list(RECORDS))
def test_training_and_validator_agree_on_each_record(name, folder, tmp_path):
    records, accepted = RECORDS[name]
    for path in (write(tmp_path / "list.json", records), write(tmp_path / "lines.jsonl", records, jsonl=True)):
        assert (training_accepts(path, folder), validator_accepts(path, folder)) == (accepted, accepted), path


QUESTIONS = {
    "question with image": ({"question_id": 1, "image": "a.png", "text": "Q?"}, True),
    "question without image": ({"question_id": "q1", "text": "Q?", "category": "conv"}, True),
    "question lacking text": ({"question_id": 1, "image": "a.png"}, False),
    "question lacking id": ({"image": "a.png", "text": "Q?"}, False),
    "text not a string": ({"question_id": 1, "text": ["Q?"]}, False),
    "image not a path": ({"question_id": 1, "image": 3, "text": "Q?"}, False),
    "question with two images at its markers": ({"question_id": 1, "image": ["a.png", "b.png"],
                                                 "text": "Is <image> the same as <image>?"}, True),
    "question with two images, no marker": ({"question_id": 1, "image": ["a.png", "b.png"], "text": "Same?"}, True),
    "question with two images, one marker": ({"question_id": 1, "image": ["a.png", "b.png"], "text": "<image> Q"},
                                             False),
    "question with a video": ({"question_id": 1, "video": "v.mp4", "text": "What moves?"}, True),
    "question with a video and an image": ({"question_id": 1, "video": "v.mp4", "image": "a.png", "text": "Q"}, False),
    "question not an object": ([1, "Q?"], False),
}


@pytest.mark.parametrize("name", list(QUESTIONS))
def test_model_vqa_question_records(name, tmp_path):
    question, accepted = QUESTIONS[name]
    assert model_vqa_accepts(write(tmp_path / "q.jsonl", [question], jsonl=True)) == accepted


GOOD = rec([human("<image>\nQ?"), gpt("A")], "a.png")
QUESTION = {"question_id": 1, "image": "a.png", "text": "Q?"}

# name -> (file bytes for training/validator, file bytes for model_vqa, accepted)
FILES = {
    "JSON Lines named .json": ((json.dumps(GOOD) + "\n") * 2, json.dumps(QUESTION) + "\n", True),
    "one record on a single line": (json.dumps(GOOD), json.dumps(QUESTION), True),
    "a list named .json, blank lines and BOM": ("\ufeff\n\n" + json.dumps([GOOD]), "\ufeff" + json.dumps([QUESTION]),
                                               True),
    "a malformed line": (json.dumps(GOOD) + "\n{oops\n", json.dumps(QUESTION) + "\n{oops\n", False),
    "a list cut short": (json.dumps([GOOD, GOOD])[:-5], json.dumps([QUESTION, QUESTION])[:-5], False),
    "a pretty-printed object, not a list": (json.dumps(GOOD, indent=1), json.dumps(QUESTION, indent=1), False),
    "not JSON at all": ("id,image\n1,a.png\n", "question_id,text\n1,Q\n", False),
}


@pytest.mark.parametrize("name", list(FILES))
def test_all_three_agree_on_each_file(name, folder, tmp_path):
    training_text, question_text, accepted = FILES[name]
    path, questions = tmp_path / "data.json", tmp_path / "questions.json"
    path.write_text(training_text, encoding="utf-8")
    questions.write_text(question_text, encoding="utf-8")
    verdicts = (training_accepts(path, folder), validator_accepts(path, folder), model_vqa_accepts(questions))
    assert verdicts == (accepted,) * 3


def test_bytes_that_are_not_utf8_are_refused_by_all_three(folder, tmp_path):
    good, bad = json.dumps(GOOD).encode(), json.dumps({**GOOD, "id": "caf\xe9"}, ensure_ascii=False).encode("latin-1")
    question = json.dumps({**QUESTION, "text": "caf\xe9"}, ensure_ascii=False).encode("latin-1")
    for layout in ("lines", "list"):
        path, questions = tmp_path / f"{layout}.json", tmp_path / f"q-{layout}.json"
        if layout == "lines":
            path.write_bytes(good + b"\n" + bad + b"\n")
            questions.write_bytes(question + b"\n")
        else:
            path.write_bytes(b"[" + good + b",\n" + bad + b"]")
            questions.write_bytes(b"[" + question + b"]")
        verdicts = (training_accepts(path, folder), validator_accepts(path, folder), model_vqa_accepts(questions))
        assert verdicts == (False, False, False), layout


def test_errors_name_file_line_and_record(tmp_path):
    path = tmp_path / "data.json"
    text = json.dumps([GOOD, GOOD], indent=1).replace('"A"', '"A" oops', 2)
    path.write_text(text)
    before = text[: text.index("oops")]
    line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
    with pytest.raises(DataError, match=rf"data\.json: malformed JSON in record 0 at line {line} column {column} "):
        list(iter_records(str(path)))
    lines = tmp_path / "data.jsonl"
    lines.write_text(json.dumps(GOOD) + "\n\n" + "{oops\n")
    with pytest.raises(DataError, match=r"data\.jsonl line 3 is not valid JSON"):
        list(iter_records(str(lines)))
