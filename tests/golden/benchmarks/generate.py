"""DEV TOOL (not imported by the package or the tests): run each benchmark's OWN evaluation code on
the fixtures in tests/fixtures/benchmarks/ and store what it outputs in tests/golden/benchmarks/.

The official code is not part of this repository; point the tool at copies of it:

    python tests/golden/benchmarks/generate.py --python /work/venvs/official/bin/python \
        --llava /work/ref/LLaVA-18 \
        --llava-shim /work/ref/official-shim \
        --mme-convert .../playground/data/eval/MME/convert_answer_to_mme.py \
        --mme-calculation .../MME/eval_tool/calculation.py \
        --gqa-eval .../gqa/data/eval/eval.py \
        --fake-openai /work/ref/official-shim/fake_openai

- `--llava`: an official haotian-liu/LLaVA checkout (its scripts/ and llava/eval/ are run).
- `--llava-shim`: a folder with an empty `llava/__init__.py`, `llava/eval/__init__.py` and official's
  `llava/eval/m4c_evaluator.py`, so official scripts that import the EvalAI processor run without
  importing official LLaVA's model code.
- `--mme-convert`: official LLaVA's `playground/data/eval/MME/convert_answer_to_mme.py` (eval.zip);
  `--mme-calculation`: MME's `eval_tool/calculation.py`; `--gqa-eval`: GQA's `eval.py` as modified by
  official LLaVA's gist (missing v1.2 assets tolerated).
- `--fake-openai`: a folder whose `openai.py` records each judge request to $JUDGE_LOG (official's
  LLaVA-Bench review script calls GPT-4; only the requests it builds are needed here).

Our question files come from `python -m llava.eval.benchmarks convert` on the same fixtures; where
official code keys answers differently (TextVQA: image id; MME: image path; ScienceQA: '<image>' in the
prompt), the answers are rewritten the way official's own generation scripts would have written them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "benchmarks")
GOLDEN = os.path.join(REPO, "tests", "golden", "benchmarks")


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


class Runner:
    def __init__(self, args, work):
        self.args, self.work = args, work

    def official(self, script, *argv, cwd=None, env=None, pythonpath=None):
        """stdout of an official script run with the side venv's python."""
        full_env = dict(os.environ, **(env or {}))
        full_env["PYTHONPATH"] = pythonpath or self.args.llava_shim
        out = subprocess.run([self.args.python, script, *argv], cwd=cwd, env=full_env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{script} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def ours_convert(self, name, *argv):
        out = os.path.join(self.work, f"{name}-questions.jsonl")
        env = dict(os.environ, PYTHONPATH=REPO)
        subprocess.run([sys.executable, "-m", "llava.eval.benchmarks", "convert", name, *argv, "--out", out], check=True, env=env, capture_output=True)
        return read_jsonl(out), out

    def script(self, relative):
        return os.path.join(self.args.llava, relative)


def fixture(name, *parts):
    return os.path.join(FIXTURES, name, *parts)


def golden_pope(run):
    _, questions = run.ours_convert("pope", "--annotation-dir", fixture("pope", "coco"))
    text = run.official(run.script("llava/eval/eval_pope.py"), "--annotation-dir", fixture("pope", "coco"),
                        "--question-file", questions, "--result-file", fixture("pope", "answers.jsonl"))
    result = {}
    for block in text.split("Category: ")[1:]:
        split = block.split(",")[0]
        tp, fp, tn, fn = (int(x) for x in block.splitlines()[2].split("\t"))
        values = {k: float(re.search(rf"{k}: ([0-9.]+)", block).group(1)) for k in ("Accuracy", "Precision", "Recall", "F1 score", "Yes ratio")}
        result[split] = {"TP": tp, "FP": fp, "TN": tn, "FN": fn, **values}
    return result


def golden_scienceqa(run):
    questions, _ = run.ours_convert("scienceqa", "--base-dir", fixture("scienceqa"))
    with_image = {q["question_id"] for q in questions if q.get("image")}
    answers = read_jsonl(fixture("scienceqa", "answers.jsonl"))
    prompts = {q["question_id"]: q["text"] for q in questions}
    for a in answers:  # model_vqa_science records '<image>\n' + question as the prompt
        a["prompt"] = ("<image>\n" if a["question_id"] in with_image else "") + prompts[a["question_id"]]
    result_file = os.path.join(run.work, "sqa-answers.jsonl")
    write_jsonl(result_file, answers)
    out_file, out_result = os.path.join(run.work, "sqa-out.json"), os.path.join(run.work, "sqa-result.json")
    text = run.official(run.script("llava/eval/eval_science_qa.py"), "--base-dir", fixture("scienceqa"),
                        "--result-file", result_file, "--output-file", out_file, "--output-result", out_result)
    with open(out_result) as f:
        result = json.load(f)
    result["IMG-Accuracy"] = float(re.search(r"IMG-Accuracy: ([0-9.]+)%", text).group(1))
    del result["outputs"]
    return result


def golden_gqa(run):
    tier = os.path.join(run.work, "gqa")
    os.makedirs(tier, exist_ok=True)
    run.official(run.script("scripts/convert_gqa_for_eval.py"), "--src", fixture("gqa", "answers.jsonl"),
                 "--dst", os.path.join(tier, "testdev_balanced_predictions.json"))
    shutil.copy(fixture("gqa", "testdev_balanced_questions.json"), tier)
    text = run.official(run.args.gqa_eval, "--tier", "testdev_balanced", cwd=tier)
    result = {}
    for name in ("Binary", "Open", "Accuracy", "Distribution"):
        result[name.lower()] = float(re.search(rf"^{name}: ([0-9.]+)", text, re.M).group(1))
    section = None
    for line in text.splitlines():
        if line.startswith("Accuracy / "):
            section = line.split(" / ")[1].rstrip(":").split()[0]  # structural | semantic | steps | words
            result[f"per_{section}"] = {}
        elif section and line.startswith("  "):
            name, score, count = re.match(r"  (.+): ([0-9.]+)% \((\d+) questions\)", line).groups()
            result[f"per_{section}"][name] = [float(score), int(count)]
    return result


def golden_mme(run):
    questions, _ = run.ours_convert("mme", "--data-dir", fixture("mme", "MME_Benchmark_release_version"))
    mme = os.path.join(run.work, "MME")
    shutil.copytree(fixture("mme", "MME_Benchmark_release_version"), os.path.join(mme, "MME_Benchmark_release_version"))
    prompts = {q["question_id"]: q["text"] for q in questions}
    answers = [{"question_id": a["question_id"].split("#")[0], "prompt": prompts[a["question_id"]], "text": a["text"]}
               for a in read_jsonl(fixture("mme", "answers.jsonl"))]  # official ids: the image path
    write_jsonl(os.path.join(mme, "answers", "fixture.jsonl"), answers)
    run.official(run.args.mme_convert, "--experiment", "fixture", cwd=mme)
    text = run.official(run.args.mme_calculation, "--results_dir", "answers/fixture", cwd=os.path.join(mme, "eval_tool"))
    result = {"tasks": {}}
    for block in text.split("=========== ")[1:]:
        kind = block.split(" ")[0].lower()
        result[kind] = float(re.search(r"total score: ([0-9.]+)", block).group(1))
        for task, score in re.findall(r"\t (\S+)  score: ([0-9.]+)", block):
            result["tasks"][task] = float(score)
    return result


def golden_seed_bench(run):
    upload = os.path.join(run.work, "seed-upload.jsonl")
    text = run.official(run.script("scripts/convert_seed_for_submission.py"), "--annotation-file", fixture("seed_bench", "SEED-Bench.json"),
                        "--result-file", fixture("seed_bench", "answers.jsonl"), "--result-upload-file", upload)
    per_type = dict(re.findall(r"^(?!Total|image|video)(.+): ([0-9.]+)%$", text, re.M))
    return {
        "per_type": {k: float(v) for k, v in per_type.items()},
        "accuracy": float(re.search(r"Total accuracy: ([0-9.]+)%", text).group(1)),
        "image_accuracy": float(re.search(r"image accuracy: ([0-9.]+)%", text).group(1)),
        "video_accuracy": float(re.search(r"video accuracy: ([0-9.]+)%", text).group(1)),
        "upload": read_jsonl(upload),
    }


def _golden_mmbench(run, name, tsv):
    import pandas as pd

    result_dir = os.path.join(run.work, name, "answers")
    os.makedirs(result_dir, exist_ok=True)
    shutil.copy(fixture(name, "answers.jsonl"), os.path.join(result_dir, "fixture.jsonl"))
    upload_dir = os.path.join(run.work, name, "upload")
    os.makedirs(upload_dir, exist_ok=True)
    run.official(run.script("scripts/convert_mmbench_for_submission.py"), "--annotation-file", fixture(name, tsv),
                 "--result-dir", result_dir, "--upload-dir", upload_dir, "--experiment", "fixture")
    table = pd.read_excel(os.path.join(upload_dir, "fixture.xlsx"))
    return {"columns": list(table.columns), "rows": json.loads(table.to_json(orient="records", force_ascii=False))}


def golden_mmbench(run):
    return _golden_mmbench(run, "mmbench", "mmbench_dev_20230712.tsv")


def golden_mmbench_cn(run):
    return _golden_mmbench(run, "mmbench_cn", "mmbench_dev_cn_20231003.tsv")


def golden_mmvet(run):
    dst = os.path.join(run.work, "mmvet.json")
    run.official(run.script("scripts/convert_mmvet_for_eval.py"), "--src", fixture("mmvet", "answers.jsonl"), "--dst", dst)
    with open(dst) as f:
        return json.load(f)


def golden_vqav2(run):
    split, ckpt = "llava_vqav2_mscoco_test-dev2015", "fixture"
    base = os.path.join(run.work, "vqav2")
    _, test_questions = run.ours_convert("vqav2", "--questions", fixture("vqav2", "v2_OpenEnded_mscoco_test2015_questions.json"))
    os.makedirs(os.path.join(base, "answers", split, ckpt))
    shutil.copy(test_questions, os.path.join(base, "llava_vqav2_mscoco_test2015.jsonl"))
    shutil.copy(fixture("vqav2", "answers.jsonl"), os.path.join(base, "answers", split, ckpt, "merge.jsonl"))
    run.official(run.script("scripts/convert_vqav2_for_submission.py"), "--dir", base, "--ckpt", ckpt, "--split", split,
                 pythonpath=f"{run.args.llava_shim}")
    with open(os.path.join(base, "answers_upload", split, f"{ckpt}.json")) as f:
        return json.load(f)


def golden_vizwiz(run):
    _, questions = run.ours_convert("vizwiz", "--annotation-file", fixture("vizwiz", "test.json"))
    upload = os.path.join(run.work, "vizwiz", "upload.json")
    run.official(run.script("scripts/convert_vizwiz_for_submission.py"), "--annotation-file", questions,
                 "--result-file", fixture("vizwiz", "answers.jsonl"), "--result-upload-file", upload)
    with open(upload) as f:
        return json.load(f)


def golden_textvqa(run):
    questions, _ = run.ours_convert("textvqa", "--annotation-file", fixture("textvqa", "TextVQA_0.5.1_val.json"))
    with open(fixture("textvqa", "TextVQA_0.5.1_val.json")) as f:
        image_of = {q["question_id"]: q["image_id"] for q in json.load(f)["data"]}
    prompts = {q["question_id"]: q["text"] for q in questions}
    answers = read_jsonl(fixture("textvqa", "answers.jsonl"))
    for a in answers:  # official llava_textvqa_val_v051_ocr.jsonl uses the image id as question id
        a["prompt"] = prompts[a["question_id"]]
        a["question_id"] = image_of[a["question_id"]]
    result_file = os.path.join(run.work, "textvqa-answers.jsonl")
    write_jsonl(result_file, answers)
    text = run.official(run.script("llava/eval/eval_textvqa.py"), "--annotation-file", fixture("textvqa", "TextVQA_0.5.1_val.json"),
                        "--result-file", result_file, pythonpath=f"{run.args.llava_shim}{os.pathsep}{run.args.llava}")
    # Per question too: official's evaluator on one prediction at a time.
    per_question = run.official("-c", PER_QUESTION_TEXTVQA, fixture("textvqa", "TextVQA_0.5.1_val.json"),
                                fixture("textvqa", "answers.jsonl"), cwd=run.work)
    return {"accuracy": float(re.search(r"Accuracy: ([0-9.]+)%", text).group(1)), "per_question": json.loads(per_question)}


PER_QUESTION_TEXTVQA = """
import json, sys
from llava.eval.m4c_evaluator import TextVQAAccuracyEvaluator
gt = {q["question_id"]: q["answers"] for q in json.load(open(sys.argv[1]))["data"]}
evaluator = TextVQAAccuracyEvaluator()
scores = {}
for line in open(sys.argv[2]):
    a = json.loads(line)
    scores[str(a["question_id"])] = 100 * evaluator.eval_pred_list([{"pred_answer": a["text"], "gt_answers": gt[a["question_id"]]}])
print(json.dumps(scores))
"""


def golden_llava_bench(run):
    summary = run.official(run.script("llava/eval/summarize_gpt_review.py"), "-f", fixture("llava_bench", "reviews.jsonl"))
    lines = {}
    for line in summary.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] != "=":
            lines[parts[0]] = [float(x) for x in parts[1:]]
    log = os.path.join(run.work, "judge-log.jsonl")
    run.official(run.script("llava/eval/eval_gpt_review_bench.py"), "--question", fixture("llava_bench", "questions.jsonl"),
                 "--context", fixture("llava_bench", "context.jsonl"), "--rule", fixture("llava_bench", "rule.json"),
                 "--answer-list", fixture("llava_bench", "answers_gpt4.jsonl"), fixture("llava_bench", "answers.jsonl"),
                 "--output", os.path.join(run.work, "reviews.jsonl"),
                 env={"JUDGE_LOG": log}, pythonpath=run.args.fake_openai)
    return {"summary": lines, "requests": read_jsonl(log)}


GOLDEN_BUILDERS = {
    "pope": golden_pope, "scienceqa": golden_scienceqa, "gqa": golden_gqa, "mme": golden_mme,
    "seed_bench": golden_seed_bench, "mmbench": golden_mmbench, "mmbench_cn": golden_mmbench_cn,
    "mmvet": golden_mmvet, "vqav2": golden_vqav2, "vizwiz": golden_vizwiz, "textvqa": golden_textvqa,
    "llava_bench": golden_llava_bench,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", required=True, help="side venv python that runs the official code")
    parser.add_argument("--llava", required=True)
    parser.add_argument("--llava-shim", required=True)
    parser.add_argument("--mme-convert", required=True)
    parser.add_argument("--mme-calculation", required=True)
    parser.add_argument("--gqa-eval", required=True)
    parser.add_argument("--fake-openai", required=True)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    os.makedirs(GOLDEN, exist_ok=True)
    for name, build in GOLDEN_BUILDERS.items():
        if args.only and name not in args.only:
            continue
        with tempfile.TemporaryDirectory() as work:
            result = build(Runner(args, work))
        with open(os.path.join(GOLDEN, f"{name}.json"), "w") as f:
            json.dump({"produced_by": f"tests/golden/benchmarks/generate.py ({name}: official evaluation code)", "official": result},
                      f, indent=1, ensure_ascii=False)
        print(f"{name}: written")


if __name__ == "__main__":
    main()
