"""Official LLaVA-1.5 benchmarks: converters write official prompts, scorers equal the benchmarks' own
evaluation code (golden outputs from tests/golden/benchmarks/generate.py), and every benchmark runs end to end
(convert -> model_vqa -> score / submission file) on its fixture with a tiny checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from PIL import Image

from helpers import cached_checkpoint, read_jsonl
from llava.eval import model_vqa
from llava.eval.benchmarks import BENCHMARKS, cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "benchmarks")
GOLDEN = os.path.join(REPO, "tests", "golden", "benchmarks")
SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."


def fx(name, *parts):
    return os.path.join(FIXTURES, name, *parts)


def golden(name):
    with open(os.path.join(GOLDEN, f"{name}.json")) as f:
        return json.load(f)["official"]


# name -> (convert arguments, score arguments); `{out}` is the test's folder.
CASES = {
    "vqav2": (
        ["--questions", fx("vqav2", "v2_OpenEnded_mscoco_test-dev2015_questions.json")],
        ["--questions", fx("vqav2", "v2_OpenEnded_mscoco_test-dev2015_questions.json"),
         "--test-questions", fx("vqav2", "v2_OpenEnded_mscoco_test2015_questions.json"), "--upload-file", "{out}/upload.json"],
    ),
    "gqa": (
        ["--questions", fx("gqa", "testdev_balanced_questions.json")],
        ["--questions", fx("gqa", "testdev_balanced_questions.json"), "--predictions-file", "{out}/predictions.json"],
    ),
    "vizwiz": (["--annotation-file", fx("vizwiz", "test.json")], ["--annotation-file", fx("vizwiz", "test.json"), "--upload-file", "{out}/upload.json"]),
    "scienceqa": (["--base-dir", fx("scienceqa")], ["--base-dir", fx("scienceqa")]),
    "textvqa": (["--annotation-file", fx("textvqa", "TextVQA_0.5.1_val.json")], ["--annotation-file", fx("textvqa", "TextVQA_0.5.1_val.json")]),
    "pope": (["--annotation-dir", fx("pope", "coco")], ["--annotation-dir", fx("pope", "coco")]),
    "mme": (["--data-dir", fx("mme", "MME_Benchmark_release_version")], ["--data-dir", fx("mme", "MME_Benchmark_release_version")]),
    "mmbench": (
        ["--annotation-file", fx("mmbench", "mmbench_dev_20230712.tsv"), "--image-dir", "{out}/images"],
        ["--annotation-file", fx("mmbench", "mmbench_dev_20230712.tsv"), "--upload-file", "{out}/upload.xlsx"],
    ),
    "mmbench_cn": (
        ["--annotation-file", fx("mmbench_cn", "mmbench_dev_cn_20231003.tsv"), "--image-dir", "{out}/images"],
        ["--annotation-file", fx("mmbench_cn", "mmbench_dev_cn_20231003.tsv"), "--upload-file", "{out}/upload.xlsx"],
    ),
    "seed_bench": (
        ["--annotation-file", fx("seed_bench", "SEED-Bench.json")],
        ["--annotation-file", fx("seed_bench", "SEED-Bench.json"), "--upload-file", "{out}/upload.jsonl"],
    ),
    "llava_bench": (
        ["--questions", fx("llava_bench", "questions.jsonl")],
        ["--questions", fx("llava_bench", "questions.jsonl"), "--context", fx("llava_bench", "context.jsonl"),
         "--reference-answers", fx("llava_bench", "answers_gpt4.jsonl"), "--rule", fx("llava_bench", "rule.json"),
         "--judge-file", "{out}/requests.jsonl", "--reviews", fx("llava_bench", "reviews.jsonl")],
    ),
    "mmvet": (["--annotation-file", fx("mmvet", "mm-vet.json")], ["--annotation-file", fx("mmvet", "mm-vet.json"), "--upload-file", "{out}/upload.json"]),
    "qbench": (["--annotation-file", fx("qbench", "llvisionqa_dev.json")], ["--annotation-file", fx("qbench", "llvisionqa_dev.json"), "--upload-file", "{out}/upload.jsonl"]),
}


def _args(template, out):
    return [a.replace("{out}", str(out)) for a in template]


def convert(name, out):
    return cli.main(["convert", name, *_args(CASES[name][0], out), "--out", str(out / "questions.jsonl")])


def score(name, out, result_file, *extra):
    return cli.main(["score", name, *_args(CASES[name][1], out), "--result-file", str(result_file), *extra])


def test_every_registered_benchmark_has_a_case_and_a_launcher():
    assert set(CASES) == set(BENCHMARKS)
    launchers = {"seed_bench": "seed", "llava_bench": "llavabench", "scienceqa": "sqa"}
    for name in BENCHMARKS:
        assert os.access(os.path.join(REPO, "scripts", "eval", f"{launchers.get(name, name)}.sh"), os.X_OK), name


# ---------------------------------------------------------------- scorers == the benchmarks' own code

def _close(ours, official, places=2):
    assert round(ours, places) == pytest.approx(official, abs=10 ** -places / 2 + 1e-9), (ours, official)


def check_pope(scores, out):
    for split, official in golden("pope").items():
        ours = scores[split]
        assert [ours[k] for k in ("TP", "FP", "TN", "FN")] == [official[k] for k in ("TP", "FP", "TN", "FN")]
        for key, theirs in (("accuracy", "Accuracy"), ("precision", "Precision"), ("recall", "Recall"), ("f1", "F1 score"), ("yes_ratio", "Yes ratio")):
            assert ours[key] == pytest.approx(100 * official[theirs])


def check_scienceqa(scores, out):
    official = golden("scienceqa")
    assert scores["accuracy"] == pytest.approx(official["acc"])
    assert (scores["correct"], scores["count"]) == (official["correct"], official["count"])
    assert scores["per_question"] == official["results"]
    _close(scores["img_accuracy"], official["IMG-Accuracy"])


def check_gqa(scores, out):
    official = golden("gqa")
    for key in ("accuracy", "binary", "open", "distribution"):
        _close(scores[key], official[key])
    for ours_key, theirs_key in (("structural", "structural"), ("semantic", "semantic"), ("steps", "steps"), ("length", "words")):
        theirs = official[f"per_{theirs_key}"]
        ours = scores[f"accuracy_per_{ours_key}"]
        assert set(ours) == set(theirs)
        for name, (accuracy, count) in theirs.items():
            _close(ours[name]["accuracy"], accuracy)
            assert ours[name]["questions"] == count
    predictions = json.load(open(out / "predictions.json"))  # what GQA's eval.py reads
    assert {p["questionId"]: p["prediction"] for p in predictions}["201307251"] == "no"


def check_mme(scores, out):
    official = golden("mme")
    assert scores["perception"] == pytest.approx(official["perception"])
    assert scores["cognition"] == pytest.approx(official["cognition"])
    assert {t: s["score"] for t, s in scores["tasks"].items()} == pytest.approx(official["tasks"])


def check_seed_bench(scores, out):
    official = golden("seed_bench")
    for key in ("accuracy", "image_accuracy", "video_accuracy"):
        _close(scores[key], official[key])
    assert scores["per_type"] == pytest.approx(official["per_type"])
    assert read_jsonl(out / "upload.jsonl") == official["upload"]


def _check_mmbench(name):
    def check(scores, out):
        import pandas as pd

        official = golden(name)
        table = pd.read_excel(out / "upload.xlsx")
        assert list(table.columns) == official["columns"]
        assert json.loads(table.to_json(orient="records", force_ascii=False)) == official["rows"]
    return check


def check_mmvet(scores, out):
    assert json.load(open(out / "upload.json")) == golden("mmvet")


def check_vqav2(scores, out):
    assert json.load(open(out / "upload.json")) == golden("vqav2")


def check_vizwiz(scores, out):
    assert json.load(open(out / "upload.json")) == golden("vizwiz")


def check_textvqa(scores, out):
    official = golden("textvqa")
    _close(scores["accuracy"], official["accuracy"])
    assert scores["per_question"] == pytest.approx(official["per_question"])


def check_llava_bench(scores, out):
    official = golden("llava_bench")
    for category, (relative, reference, model) in official["summary"].items():
        ours = scores["summary"][category]
        assert (ours["relative_score"], ours["reference_score"], ours["model_score"]) == (relative, reference, model)
    requests = read_jsonl(out / "requests.jsonl")
    assert [{"system": r["system"], "content": r["content"]} for r in requests] == official["requests"]


def check_qbench(scores, out):  # no public scorer: the authors grade; the file is the items + responses
    records = read_jsonl(out / "upload.jsonl")
    items = json.load(open(fx("qbench", "llvisionqa_dev.json")))
    assert [{k: v for k, v in r.items() if k != "response"} for r in records] == items
    assert [r["response"] for r in records] == ["B. No", "Blur"]


CHECKS = {
    "pope": check_pope, "scienceqa": check_scienceqa, "gqa": check_gqa, "mme": check_mme,
    "seed_bench": check_seed_bench, "mmbench": _check_mmbench("mmbench"), "mmbench_cn": _check_mmbench("mmbench_cn"),
    "mmvet": check_mmvet, "vqav2": check_vqav2, "vizwiz": check_vizwiz, "textvqa": check_textvqa,
    "llava_bench": check_llava_bench, "qbench": check_qbench,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_scores_equal_the_benchmarks_own_evaluation_code(name, tmp_path):
    scores = score(name, tmp_path, fx(name, "answers.jsonl"))
    assert scores["missing"] == 0
    CHECKS[name](scores, tmp_path)


# ---------------------------------------------------------------- converters write official prompts

def test_converters_write_official_llava_prompts(tmp_path):
    by_name = {}
    for name in CASES:
        out = tmp_path / name
        out.mkdir()
        by_name[name] = {str(q["question_id"]): q for q in convert(name, out)}

    # Layouts as in official LLaVA-1.5's eval question files (eval.zip).
    assert by_name["pope"]["10000003"] == {"question_id": 10000003, "image": "COCO_val2014_000000429109.jpg",
                                           "text": "Is there a bench in the image?" + SHORT, "category": "random"}
    assert set(by_name["pope"]) >= {"1", "4", "10000001", "20000003"}
    assert by_name["gqa"]["201307251"]["text"] == "Is it overcast?" + SHORT and by_name["gqa"]["201307251"]["image"] == "n161313.jpg"
    assert by_name["vqav2"]["262144000"]["image"] == "COCO_test2015_000000262144.jpg"
    assert by_name["vizwiz"]["1"]["text"] == "What is this?\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT
    assert by_name["textvqa"]["34602"]["text"] == (
        "what is the brand of this camera?\nReference OCR token: DAKOTA, DIGITAL, Single-Use, Camera" + SHORT)
    assert by_name["textvqa"]["34603"]["text"] == "how many items are there?\nReference OCR token: " + SHORT
    mme = by_name["mme"]
    assert mme["artwork/images/0001.jpg#1"]["text"] == "Is there no thing number 0001 in the image?" + SHORT  # two-space variant
    assert mme["count/0001.png#0"]["image"] == "count/0001.png" and len(mme) == 32
    sqa = by_name["scienceqa"]
    assert sqa["5"]["text"] == (
        "Context: People can use the engineering-design process.\nFigure: a spacecraft's parachute.\n"
        "Which of the following could Gordon's test show?\nA. if the spacecraft was damaged\nB. how steady a parachute was\n"
        "C. whether it would swing" + LETTER)
    assert sqa["5"]["image"] == "5/image.png" and "image" not in sqa["4"] and "1" not in sqa  # test split only
    assert sqa["4"]["text"].startswith("Which figure of speech is used in this text?\nSing, O goddess")
    assert by_name["seed_bench"]["1547"]["image"] == "SEED-Bench-video-image/10_1547.png"
    assert by_name["seed_bench"]["101669"] == {"question_id": 101669, "image": "SEED-Bench-image/1454426_2591111986.jpg", "category": "Scene Understanding",
                                               "text": "What is the setting of the image?\nA. A beach\nB. A forest\nC. A city\nD. A desert" + LETTER}
    mmb = by_name["mmbench"]
    assert mmb["241"]["text"] == (
        "Madelyn applied wax to her snowboard.\nFigure: snowboarding.\nIdentify the question that the experiment can best answer.\n"
        "A. Does wax make it faster?\nB. Does a thick layer matter?" + LETTER)
    assert mmb["253"]["text"] == "How many sides does a triangle have?\nA. 3\nB. 4\nC. 5" + LETTER  # "nan" hint dropped
    assert Image.open(tmp_path / "mmbench" / "images" / mmb["252"]["image"]).getpixel((0, 0)) == (30, 200, 30)
    assert by_name["mmbench_cn"]["1001"]["text"] == "请看图片。\n哪个是红色的？\nA. 苹果\nB. 香蕉\nC. 葡萄\n请直接回答选项字母。"
    assert by_name["qbench"]["1"]["text"] == (
        "What is the most severe distortion?\nChoose between one of the options as follows:\nA. Noise\nB. Blur\nC. Overexposure\nD. Compression\n")
    assert by_name["mmvet"]["2"] == {"question_id": 2, "image": "v1_1.png", "text": "Describe the image.", "category": "conv"}
    assert by_name["llava_bench"]["2"]["text"] == "Why might this dish be popular?"


def test_scores_refuse_incomplete_or_foreign_answers(tmp_path):
    answers = read_jsonl(fx("pope", "answers.jsonl"))
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(json.dumps(a) + "\n" for a in answers[:-1]))
    with pytest.raises(SystemExit, match="question '20000003' has no answer .1 of 10 unanswered"):
        score("pope", tmp_path, partial)
    scores = score("pope", tmp_path, partial, "--allow-missing")
    assert scores["missing"] == 1 and scores["popular"]["questions"] == 3
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(json.dumps({"question_id": 999, "text": "yes"}) + "\n")
    with pytest.raises(SystemExit, match="questions this benchmark does not have"):
        score("pope", tmp_path, foreign, "--allow-missing")
    twice = tmp_path / "twice.jsonl"
    twice.write_text("".join(json.dumps(a) + "\n" for a in answers + answers[:1]))
    with pytest.raises(SystemExit, match="answered twice"):
        score("pope", tmp_path, twice)


def test_bad_official_files_are_named(tmp_path):
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "coco_pope_random.json").write_text('{"question_id": 1, "image": "x.jpg", "text": "Is there a cat?"}\n')
    with pytest.raises(SystemExit, match=r"coco_pope_random.json: record #0 lacks \['label'\]"):
        cli.main(["convert", "pope", "--annotation-dir", str(tmp_path / "coco"), "--out", str(tmp_path / "q.jsonl")])
    (tmp_path / "gqa.json").write_text(json.dumps({"1": {"question": "Is it red?"}}))
    with pytest.raises(SystemExit, match="a record lacks the field 'imageId'"):
        cli.main(["convert", "gqa", "--questions", str(tmp_path / "gqa.json"), "--out", str(tmp_path / "q.jsonl")])
    with pytest.raises(SystemExit, match="is not SEED-Bench.json"):
        cli.main(["convert", "seed_bench", "--annotation-file", fx("gqa", "testdev_balanced_questions.json"), "--out", str(tmp_path / "q.jsonl")])


# ---------------------------------------------------------------- end to end with a tiny checkpoint

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_llm, tiny_clip):
    return cached_checkpoint(tmp_path_factory, tiny_llm, tiny_clip, "phi")


def _images_for(questions, folder):
    """Tiny stand-ins for the benchmark's images where the fixture does not ship them."""
    for i, q in enumerate(questions):
        if q.get("image"):
            path = os.path.join(folder, q["image"])
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                Image.new("RGB", (20, 16), ((40 * i) % 256, 90, 200 - (30 * i) % 200)).save(path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_convert_model_vqa_score_end_to_end(name, checkpoint, tmp_path):
    questions = convert(name, tmp_path)
    image_folder = {"mme": fx("mme", "MME_Benchmark_release_version"), "mmbench": tmp_path / "images",
                    "mmbench_cn": tmp_path / "images"}.get(name, tmp_path / "images")
    if name not in ("mme",):
        _images_for(questions, image_folder)
    answers = tmp_path / "answers.jsonl"
    summary = model_vqa.main(["--model-path", checkpoint, "--question-file", str(tmp_path / "questions.jsonl"),
                              "--image-folder", str(image_folder), "--answers-file", str(answers),
                              "--max_new_tokens", "3", "--batch-size", "16"])
    assert summary["answered"] == len(questions)
    scores = score(name, tmp_path, answers)
    assert scores["missing"] == 0
    output = BENCHMARKS[name].output
    if "local" in output:
        headline = {"pope": "mean_f1", "mme": "perception"}.get(name, "accuracy")
        assert 0 <= scores[headline] <= (2000 if name == "mme" else 100)
    if "submission" in output or output == "judge":
        written = next(v for k, v in scores.items() if k in ("upload_file", "judge_file"))
        assert os.path.getsize(written) > 0


@pytest.mark.slow
def test_launcher_runs_official_layout_in_two_chunks_and_merges(checkpoint, tmp_path):
    """scripts/eval/pope.sh: convert once, two model_vqa chunks, merged in order, scored."""
    pope = tmp_path / "pope"
    shutil.copytree(fx("pope", "coco"), pope / "coco")
    for split in os.listdir(pope / "coco"):
        _images_for(read_jsonl(pope / "coco" / split), pope / "val2014")
    env = dict(os.environ, EVAL_DIR=str(tmp_path), MODEL_PATH=checkpoint, CKPT="tiny", NUM_CHUNKS="2", MAX_NEW_TOKENS="3")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run(["bash", os.path.join(REPO, "scripts", "eval", "pope.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    questions = read_jsonl(pope / "llava_pope_test.jsonl")
    chunks = [read_jsonl(pope / "answers" / "tiny-chunks" / f"2_{i}.jsonl") for i in range(2)]
    assert [len(c) for c in chunks] == [5, 5]
    merged = read_jsonl(pope / "answers" / "tiny.jsonl")
    assert [a["question_id"] for a in merged] == [q["question_id"] for q in questions]
    scores = json.load(open(pope / "answers" / "tiny_scores.json"))
    assert scores["missing"] == 0 and set(scores) >= {"adversarial", "random", "popular", "mean_f1"}
    assert "merged 2 chunk(s)" in done.stdout
