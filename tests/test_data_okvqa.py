"""OK-VQA converter: official JSON + COCO images, Hugging Face parquet/arrow copies, bad input."""

import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from llava.data import okvqa
from llava.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jpeg_bytes(color):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def answers(*words):
    return [
        {"answer": w, "raw_answer": w.title(), "answer_confidence": "yes", "answer_id": i + 1}
        for i, w in enumerate(words)
    ]


QUESTIONS = [
    {"image_id": 42, "question": "What sport can you use this for?", "question_id": 420},
    {"image_id": 42, "question": "Which country is this vehicle from? ", "question_id": 421},
    {"image_id": 7, "question": "What animal eats this food?", "question_id": 70},
]
ANNOTATIONS = [
    # blue and red tie 4:4; blue was given first
    {
        "image_id": 42,
        "question_type": "four",
        "answer_type": "other",
        "confidence": 3,
        "question_id": 420,
        "answers": answers("blue", "red", "red", "blue", "green", "red", "blue", "red", "blue", "green"),
    },
    {
        "image_id": 42,
        "question_type": "one",
        "answer_type": "other",
        "confidence": 2,
        "question_id": 421,
        "answers": answers("usa", "japan", "japan", "japan", "usa", "japan", "", "germany", "japan", "japan"),
    },
    {
        "image_id": 7,
        "question_type": "eight",
        "answer_type": "other",
        "confidence": 3,
        "question_id": 70,
        "answers": answers("horse", "horse", "cow", "cow", "cow", "horse", "cow", "horse", "goat", "goat"),
    },
]


def write_official(root, questions=QUESTIONS, annotations=ANNOTATIONS, split="val"):
    coco = root / "coco"
    coco.mkdir(exist_ok=True)
    for image_id, color in ((42, "red"), (7, "green")):
        (coco / f"COCO_{split}2014_{image_id:012d}.jpg").write_bytes(jpeg_bytes(color))
    q = root / f"OpenEnded_mscoco_{split}2014_questions.json"
    a = root / f"mscoco_{split}2014_annotations.json"
    q.write_text(
        json.dumps({"info": {}, "task_type": "Open-Ended", "data_subtype": f"{split}2014", "questions": questions})
    )
    a.write_text(json.dumps({"info": {}, "data_subtype": f"{split}2014", "annotations": annotations}))
    return q, a, coco


def official_args(q, a, coco, out, *extra):
    return [
        "--questions-file",
        str(q),
        "--annotations-file",
        str(a),
        "--image-folder",
        str(coco),
        "--output-dir",
        str(out),
        *extra,
    ]


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_choose_answer_majority_and_tie_break():
    assert okvqa.choose_answer(["a", "b", "b"]) == "b"
    assert okvqa.choose_answer(["b", "a", "a", "b"]) == "b"  # tie: first given wins
    assert okvqa.choose_answer(["", "  ", "x "]) == "x"
    assert okvqa.choose_answer(["", " "]) is None


def test_official_conversion(tmp_path):
    q, a, coco = write_official(tmp_path)
    out = tmp_path / "out"
    assert okvqa.main(official_args(q, a, coco, out)) == 0
    records = load(out / "llava_okvqa_val.json")
    assert records == [
        {
            "id": "420",
            "image": "COCO_val2014_000000000042.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat sport can you use this for?"},
                {"from": "gpt", "value": "blue"},
            ],
        },
        {
            "id": "421",
            "image": "COCO_val2014_000000000042.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhich country is this vehicle from?"},
                {"from": "gpt", "value": "japan"},
            ],
        },
        {
            "id": "70",
            "image": "COCO_val2014_000000000007.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat animal eats this food?"},
                {"from": "gpt", "value": "horse"},
            ],
        },
    ]
    assert sorted(os.listdir(out / "images")) == ["COCO_val2014_000000000007.jpg", "COCO_val2014_000000000042.jpg"]
    assert (out / "images" / "COCO_val2014_000000000042.jpg").read_bytes() == (
        coco / "COCO_val2014_000000000042.jpg"
    ).read_bytes()

    lines = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    assert lines[0] == {
        "question_id": 420,
        "image": "COCO_val2014_000000000042.jpg",
        "text": "What sport can you use this for?",
        "category": "four",
    }
    scored = load(out / "mscoco_val2014_annotations.json")
    assert scored["data_subtype"] == "val2014"
    assert [ann["question_id"] for ann in scored["annotations"]] == [420, 421, 70]
    assert scored["annotations"][0]["answers"] == ANNOTATIONS[0]["answers"]
    assert scored["annotations"][0]["question_type"] == "four"
    asked = load(out / "OpenEnded_mscoco_val2014_questions.json")
    assert asked["questions"][2] == QUESTIONS[2]


def test_short_answer_prompt_and_train_split_has_no_eval_files(tmp_path):
    q, a, coco = write_official(tmp_path, split="train")
    out = tmp_path / "out"
    assert okvqa.main(official_args(q, a, coco, out, "--short-answer-prompt")) == 0
    record = load(out / "llava_okvqa_train.json")[0]
    assert record["conversations"][0]["value"] == (
        "<image>\nWhat sport can you use this for?\nAnswer the question using a single word or phrase."
    )
    assert sorted(os.listdir(out)) == ["images", "llava_okvqa_train.json"]


def test_rerun_is_byte_identical(tmp_path):
    q, a, coco = write_official(tmp_path)
    outputs = []
    for name in ("one", "two"):
        okvqa.main(official_args(q, a, coco, tmp_path / name))
        outputs.append(
            {f: (tmp_path / name / f).read_bytes() for f in sorted(os.listdir(tmp_path / name)) if f != "images"}
        )
    assert outputs[0] == outputs[1] and len(outputs[0]) == 4
    okvqa.main(official_args(q, a, coco, tmp_path / "one"))  # rerun into the same folder
    assert not [f for f in os.listdir(tmp_path / "one") if f.endswith(".tmp")]


def test_coco_2017_image_names_are_found(tmp_path):
    q, a, coco = write_official(tmp_path)
    (coco / "val2017").mkdir()
    for name in os.listdir(coco):
        if name.endswith(".jpg"):
            os.rename(coco / name, coco / "val2017" / name.split("_")[-1])
    assert okvqa.main(official_args(q, a, coco, tmp_path / "out")) == 0
    assert len(os.listdir(tmp_path / "out" / "images")) == 2


def test_missing_image_is_an_error_or_a_counted_skip(tmp_path, caplog):
    q, a, coco = write_official(tmp_path)
    os.remove(coco / "COCO_val2014_000000000007.jpg")
    with pytest.raises(DataError) as info:
        okvqa.convert(str(tmp_path / "out"), None, str(q), str(a), str(coco))
    message = str(info.value)
    assert "question_id 70" in message and "image 7 not found" in message and "--skip-invalid" in message
    assert not (tmp_path / "out" / "llava_okvqa_val.json").exists()

    caplog.set_level("INFO", logger="llava.data")
    assert okvqa.main(official_args(q, a, coco, tmp_path / "out", "--skip-invalid")) == 0
    assert [r["id"] for r in load(tmp_path / "out" / "llava_okvqa_val.json")] == ["420", "421"]
    assert len(load(tmp_path / "out" / "mscoco_val2014_annotations.json")["annotations"]) == 2
    assert "read 3 questions, wrote 2 records, 1 images, skipped 1 (missing_image=1)" in caplog.messages[-1]


def test_corrupt_image_is_named(tmp_path):
    q, a, coco = write_official(tmp_path)
    (coco / "COCO_val2014_000000000042.jpg").write_bytes(jpeg_bytes("red")[:200])  # truncated JPEG
    with pytest.raises(
        DataError, match=r"question_id 420: image 42 is unusable: .*COCO_val2014_000000000042.jpg: cannot decode"
    ):
        okvqa.convert(str(tmp_path / "out"), None, str(q), str(a), str(coco))
    result = okvqa.convert(str(tmp_path / "out"), None, str(q), str(a), str(coco), skip_invalid=True)
    assert result["written"] == 1 and result["skips"].counts == {"bad_image": 2}  # both questions on image 42


def test_question_without_annotation(tmp_path):
    q, a, coco = write_official(tmp_path, annotations=ANNOTATIONS[:2])
    with pytest.raises(DataError, match=r"question_id 70 has no annotation in .*mscoco_val2014_annotations.json"):
        okvqa.convert(str(tmp_path / "out"), None, str(q), str(a), str(coco))


def test_record_missing_keys_and_malformed_json(tmp_path):
    bad = [dict(QUESTIONS[0]), {"question": "no ids"}]
    q, a, coco = write_official(tmp_path, questions=bad)
    with pytest.raises(DataError, match=r"questions.json: record 1 lacks 'question_id', 'image_id'"):
        okvqa.convert(str(tmp_path / "out"), None, str(q), str(a), str(coco))
    q.write_text(q.read_text()[:-3])  # cut off inside record 1
    with pytest.raises(DataError, match=r"questions.json: .*record 1"):
        okvqa.convert(str(tmp_path / "out"), None, str(q), str(a), str(coco))
    with pytest.raises(DataError, match="nope.json: file not found"):
        okvqa.convert(str(tmp_path / "out"), None, str(tmp_path / "nope.json"), str(a), str(coco))


def test_split_must_be_known(tmp_path):
    q, a, coco = write_official(tmp_path)
    renamed = tmp_path / "questions.json"
    os.rename(q, renamed)
    os.rename(a, tmp_path / "answers.json")
    with pytest.raises(DataError, match="pass --split"):
        okvqa.convert(str(tmp_path / "out"), None, str(renamed), str(tmp_path / "answers.json"), str(coco))


# -- Hugging Face copies ---------------------------------------------------------------------
def hf_table(image_column, answer_lists, id_column="id_image"):
    import pyarrow as pa

    return pa.table(
        {
            "image": image_column,
            "question_id": [420, 421, 70],
            "question": [q["question"] for q in QUESTIONS],
            "answers": answer_lists,
            id_column: [42, 42, 7],
        }
    )


def test_hf_parquet_with_image_structs_and_string_answers(tmp_path):
    import pyarrow.parquet as pq

    images = [
        {"bytes": jpeg_bytes("red"), "path": None},
        {"bytes": jpeg_bytes("red"), "path": None},
        {"bytes": jpeg_bytes("green"), "path": None},
    ]
    answer_lists = [[x["answer"] for x in ann["answers"]] for ann in ANNOTATIONS]
    data = tmp_path / "okvqa" / "data"
    data.mkdir(parents=True)
    pq.write_table(hf_table(images, answer_lists), data / "val2014-00000-of-00001.parquet")
    pq.write_table(hf_table(images, answer_lists).slice(0, 1), data / "train-00000-of-00001.parquet")

    out = tmp_path / "out"
    assert okvqa.main(["--hf-dataset", str(tmp_path / "okvqa"), "--split", "val", "--output-dir", str(out)]) == 0
    records = load(out / "llava_okvqa_val.json")
    assert [r["conversations"][1]["value"] for r in records] == ["blue", "japan", "horse"]
    assert sorted(os.listdir(out / "images")) == ["COCO_val2014_000000000007.jpg", "COCO_val2014_000000000042.jpg"]
    assert (out / "images" / "COCO_val2014_000000000007.jpg").read_bytes() == images[2]["bytes"]
    scored = load(out / "mscoco_val2014_annotations.json")["annotations"][1]
    assert scored["question_type"] == "none" and scored["answer_type"] == "other"
    assert scored["answers"][1] == {
        "answer": "japan",
        "raw_answer": "japan",
        "answer_confidence": "yes",
        "answer_id": 2,
    }
    assert len((out / "questions.jsonl").read_text().splitlines()) == 3


def test_hf_arrow_with_binary_images_dict_answers_and_bad_bytes(tmp_path):
    import pyarrow as pa

    table = hf_table(
        [jpeg_bytes("red"), jpeg_bytes("red"), b"not an image"],
        [ann["answers"] for ann in ANNOTATIONS],
        id_column="image_id",
    )
    folder = tmp_path / "saved" / "validation"  # datasets.save_to_disk layout
    folder.mkdir(parents=True)
    with (
        pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as writer,
    ):
        writer.write_table(table)

    with pytest.raises(DataError, match=r"question_id 70: image 7 is unusable: cannot decode"):
        okvqa.convert(str(tmp_path / "out"), "val", hf_dataset=str(tmp_path / "saved"))
    result = okvqa.convert(str(tmp_path / "out"), "validation", hf_dataset=str(tmp_path / "saved"), skip_invalid=True)
    assert result["written"] == 2 and result["skips"].counts == {"bad_image": 1}
    scored = load(tmp_path / "out" / "mscoco_val2014_annotations.json")["annotations"]
    assert scored[0]["answers"][0]["raw_answer"] == "Blue"


def test_hf_missing_split_lists_files(tmp_path):
    import pyarrow.parquet as pq

    (tmp_path / "d").mkdir()
    for name in ("train-0.parquet", "test-0.parquet"):
        pq.write_table(hf_table([jpeg_bytes("red")] * 3, [["a"]] * 3), tmp_path / "d" / name)
    with pytest.raises(DataError, match=r"no files for split 'val'.*train-0.parquet"):
        okvqa.convert(str(tmp_path / "out"), "val", hf_dataset=str(tmp_path / "d"))


def test_script_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "convert_okvqa_to_llava.py"),
            "--hf-dataset",
            str(tmp_path / "missing"),
            "--output-dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "--hf-dataset not found" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_files_score_with_the_okvqa_scorer(tmp_path, capsys):
    """The val outputs feed `llava.eval.eval_okvqa`; skipped questions leave every eval file alike."""
    from llava.eval import eval_okvqa

    q, a, coco = write_official(tmp_path)
    os.remove(coco / "COCO_val2014_000000000007.jpg")
    out = tmp_path / "out"
    assert okvqa.main(official_args(q, a, coco, out, "--skip-invalid", "--short-answer-prompt")) == 0
    questions = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    training = {r["id"]: r["conversations"][1]["value"] for r in load(out / "llava_okvqa_val.json")}
    answers = tmp_path / "answers.jsonl"
    answers.write_text(
        "".join(
            json.dumps({"question_id": x["question_id"], "text": training[str(x["question_id"])]}) + "\n"
            for x in questions
        )
    )
    scores = eval_okvqa.main(
        [
            "--annotation-file",
            str(out / "mscoco_val2014_annotations.json"),
            "--question-file",
            str(out / "OpenEnded_mscoco_val2014_questions.json"),
            "--result-file",
            str(answers),
        ]
    )
    assert scores["overall"] == 100.0 and len(scores["per_question"]) == 2
