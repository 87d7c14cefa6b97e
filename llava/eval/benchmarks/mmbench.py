"""MMBench and MMBench-CN: multiple choice, submitted to the OpenCompass server (CircularEval there).

Official files: the TSV (`mmbench_dev_20230712.tsv`, `mmbench_dev_cn_20231003.tsv`, ...) with
`index, question, hint, A..D, answer, category, source, l2-category, comment, split` and the image
as base64 (or, in later releases, the index of the row holding the same image). `convert` writes
the images to `--image-dir` and questions laid out as official LLaVA's `model_vqa_mmbench
--single-pred-prompt [--lang cn]`: hint, question, `A. ..` lines, then the option-letter
instruction. `score` writes the Excel file official LLaVA's `convert_mmbench_for_submission.py`
uploads: the TSV without hint/category/source/image/comment/l2-category, a `prediction` column
after the options. Needs pandas and openpyxl (`pip install -e ".[eval]"`).
"""

from __future__ import annotations

import base64
import io
import os

from llava.eval.benchmarks.common import OPTION_LETTER, OPTION_LETTER_CN, Answers, is_missing, with_suffix
from llava.eval.benchmarks.registry import Benchmark, register

OPTIONS = ["A", "B", "C", "D"]
DROPPED_COLUMNS = ["hint", "category", "source", "image", "comment", "l2-category"]


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError("MMBench needs pandas and openpyxl: pip install -e \".[eval]\"") from None
    return pandas


def read_tsv(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found")
    table = _pandas().read_table(path)  # as official: pandas' type inference decides how cells read
    absent = [c for c in ["index", "question", "hint", "image", *OPTIONS[:2]] if c not in table.columns]
    if absent:
        raise ValueError(f"{path} lacks the MMBench column(s) {absent}")
    return table


def options_of(row) -> list[str]:
    options = []
    for letter in OPTIONS:
        if letter not in row or is_missing(row[letter]):
            break
        options.append(str(row[letter]))
    return options


def question_text(row, lang: str) -> str:
    text = row["question"] if is_missing(row["hint"]) else f"{row['hint']}\n{row['question']}"
    for letter, option in zip(OPTIONS, options_of(row)):
        text += f"\n{letter}. {option}"
    return with_suffix(text, OPTION_LETTER_CN if lang == "cn" else OPTION_LETTER)


def save_image(encoded: str, folder: str, index) -> str:
    from PIL import Image

    data = base64.b64decode(encoded)
    kind = (Image.open(io.BytesIO(data)).format or "png").lower()
    name = f"{index}.{'jpg' if kind == 'jpeg' else kind}"
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)
    return name


class _MMBench(Benchmark):
    output = "submission"
    normalization = "none here: the server extracts the option (CircularEval)"
    lang = "en"

    def add_convert_arguments(self, parser):
        parser.add_argument("--annotation-file", required=True, help="the MMBench TSV")
        parser.add_argument("--image-dir", required=True, help="where to write the TSV's images (model_vqa --image-folder)")

    def convert(self, args):
        table = read_tsv(args.annotation_file)
        os.makedirs(args.image_dir, exist_ok=True)
        by_index = {str(i): image for i, image in zip(table["index"], table["image"])}
        questions = []
        for _, row in table.iterrows():
            image = row["image"]
            if isinstance(image, (int, float)) or (isinstance(image, str) and len(image) < 64 and image.isdigit()):
                image = by_index[str(int(image))]  # a later release's "same image as row N"
            questions.append({
                "question_id": int(row["index"]),
                "image": save_image(image, args.image_dir, row["index"]),
                "text": question_text(row, self.lang),
                "category": str(row.get("category", "default")),
            })
        return questions

    def add_score_arguments(self, parser):
        parser.add_argument("--annotation-file", required=True, help="the MMBench TSV")
        parser.add_argument("--upload-file", required=True, help="the .xlsx to write for the evaluation server")

    def score(self, args, answers):
        table = read_tsv(args.annotation_file)
        found = Answers(answers, [int(i) for i in table["index"]], args.allow_missing)
        upload = table.drop(columns=[c for c in DROPPED_COLUMNS if c in table.columns])
        upload.insert(6, "prediction", [found.text(int(i)) if int(i) in found else None for i in table["index"]])
        os.makedirs(os.path.dirname(os.path.abspath(args.upload_file)), exist_ok=True)
        upload.to_excel(args.upload_file, index=False, engine="openpyxl")
        return {"upload_file": args.upload_file, "questions": len(table), "missing": found.missing}


@register
class MMBench(_MMBench):
    name = "mmbench"
    title = "MMBench"
    folder = "mmbench"


@register
class MMBenchCN(_MMBench):
    name = "mmbench_cn"
    title = "MMBench-CN"
    folder = "mmbench_cn"
    lang = "cn"
