"""OK-VQA -> LLaVA training JSON (+ the evaluation files for the val split).

Sources:
- official files: OpenEnded_mscoco_{split}2014_questions.json + mscoco_{split}2014_annotations.json
  and a COCO image folder (COCO_{split}2014_{image_id:012d}.jpg, or COCO-2017 names);
- a Hugging Face copy saved locally as parquet or arrow files (columns differ between copies;
  see `HF_COLUMNS`).

Output folder:
  llava_okvqa_{split}.json       one record per question, image paths relative to images/
  images/                        each image once, named COCO_{split}2014_{image_id:012d}.jpg
  questions.jsonl                (val) model_vqa questions {question_id, image, text, category}
  OpenEnded_mscoco_val2014_questions.json, mscoco_val2014_annotations.json
                                 (val) the official-format files the OK-VQA scorer reads,
                                 holding exactly the questions that were written

The training answer is the one most annotators gave (the "answer" field, which the VQA
scorer matches against); ties go to the answer given first, so results are deterministic.

  python -m llava.data.okvqa --questions-file Q --annotations-file A --image-folder COCO --output-dir OUT
  python -m llava.data.okvqa --hf-dataset PATH --split val --output-dir OUT
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import logging
import os
import re
from collections import Counter
from contextlib import ExitStack
from typing import Iterator

from tqdm import tqdm

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.data.io import ImageStore, SkipLog, run_cli
from llava.errors import DataError
from llava.records import JsonArrayWriter, JsonLinesWriter, iter_records

logger = logging.getLogger("llava.data")

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
SPLIT_ALIASES = {"train": ("train", "train2014"), "val": ("val", "validation", "val2014")}
# Column names seen in different Hugging Face copies of OK-VQA, in order of preference.
HF_COLUMNS = {
    "image": ("image",),
    "image_id": ("image_id", "id_image"),
    "question_id": ("question_id",),
    "question": ("question",),
    "answers": ("answers", "answers_original"),
}


@dataclasses.dataclass
class Sample:
    """One question with everything the outputs need, whatever the source."""

    question_id: int | str
    image_id: int | str
    question: str
    answers: list[dict]  # official form: {answer, raw_answer, answer_confidence, answer_id}
    image_path: str | None = None  # a file on disk ...
    image_bytes: bytes | None = None  # ... or encoded bytes
    question_type: str = "none"
    answer_type: str = "other"
    confidence: int | None = None


class InvalidSample(Exception):
    """A record that cannot be converted: `reason` is a short key for the skip counts."""

    def __init__(self, reason: str, message: str, where: str):
        super().__init__(message)
        self.reason = reason
        self.where = where


def choose_answer(answers: list[str]) -> str | None:
    """The answer given by most annotators; ties go to the one given first. None if all empty."""
    cleaned = [a.strip() for a in answers if isinstance(a, str) and a.strip()]
    if not cleaned:
        return None
    votes = Counter(cleaned)
    best = max(votes.values())
    return next(a for a in cleaned if votes[a] == best)


def normalise_split(split: str) -> str:
    for canonical, aliases in SPLIT_ALIASES.items():
        if split.lower() in aliases:
            return canonical
    raise DataError(f"unknown split {split!r}; use one of: {', '.join(SPLIT_ALIASES)}")


# -- official files --------------------------------------------------------------------------
def coco_image_candidates(image_folder: str, split: str, image_id: int) -> list[str]:
    """Where a COCO image may live: 2014 names (flat or in {split}2014/) or 2017 names."""
    name_2014 = f"COCO_{split}2014_{image_id:012d}.jpg"
    name_2017 = f"{image_id:012d}.jpg"
    return [
        os.path.join(image_folder, name_2014),
        os.path.join(image_folder, f"{split}2014", name_2014),
        os.path.join(image_folder, name_2017),
        os.path.join(image_folder, "train2017", name_2017),
        os.path.join(image_folder, "val2017", name_2017),
    ]


def infer_split(*paths: str) -> str | None:
    for path in paths:
        match = re.search(r"(train|val)2014", os.path.basename(path or ""))
        if match:
            return match.group(1)
    return None


def _require(record, keys: tuple, path: str, index: int, hint: str) -> None:
    if not isinstance(record, dict):
        raise DataError(f"{path}: record {index} is a {type(record).__name__}, not an object; {hint}")
    missing = [k for k in keys if k not in record]
    if missing:
        ident = f" (question_id {record['question_id']})" if "question_id" in record else ""
        raise DataError(f"{path}: record {index}{ident} lacks {', '.join(map(repr, missing))}; {hint}")


def load_annotations(path: str) -> dict:
    """question_id -> annotation (OK-VQA annotation files are a few MB)."""
    hint = "is this an OK-VQA/VQA annotations file (mscoco_*2014_annotations.json)?"
    annotations = {}
    for index, ann in enumerate(iter_records(path, key="annotations")):
        _require(ann, ("question_id", "answers"), path, index, hint)
        if not isinstance(ann["answers"], list):
            raise DataError(f"{path}: record {index} (question_id {ann['question_id']}): 'answers' is not a list")
        annotations[ann["question_id"]] = ann
    return annotations


def iter_official(questions_file: str, annotations_file: str, image_folder: str, split: str) -> Iterator:
    """Samples from the official files; yields InvalidSample for questions that cannot be used."""
    annotations = load_annotations(annotations_file)
    hint = "is this an OK-VQA/VQA questions file (OpenEnded_mscoco_*2014_questions.json)?"
    for index, q in enumerate(iter_records(questions_file, key="questions")):
        _require(q, ("question_id", "image_id", "question"), questions_file, index, hint)
        qid = q["question_id"]
        try:
            image_id = int(q["image_id"])
        except (TypeError, ValueError):
            raise DataError(
                f"{questions_file}: record {index} (question_id {qid}): image_id {q['image_id']!r} is not a COCO id"
            ) from None
        ann = annotations.pop(qid, None)
        if ann is None:
            yield InvalidSample(
                "no_annotation",
                f"{questions_file}: question_id {qid} has no annotation in {annotations_file}; "
                "use the annotation file of the same split",
                f"question_id {qid}",
            )
            continue
        candidates = coco_image_candidates(image_folder, split, image_id)
        image_path = next((p for p in candidates if os.path.isfile(p)), None)
        if image_path is None:
            yield InvalidSample(
                "missing_image",
                f"question_id {qid}: image {image_id} not found in {image_folder} "
                f"(looked for {os.path.basename(candidates[0])} and {os.path.basename(candidates[2])}, "
                f"also under {split}2014/, train2017/, val2017/); point --image-folder at the COCO images",
                f"question_id {qid}",
            )
            continue
        answers = [
            {
                "answer": a.get("answer", ""),
                "raw_answer": a.get("raw_answer", a.get("answer", "")),
                "answer_confidence": a.get("answer_confidence", "yes"),
                "answer_id": a.get("answer_id", i + 1),
            }
            for i, a in enumerate(ann["answers"])
            if isinstance(a, dict)
        ]
        yield Sample(
            question_id=qid,
            image_id=image_id,
            question=q["question"],
            answers=answers,
            image_path=image_path,
            question_type=ann.get("question_type", "none"),
            answer_type=ann.get("answer_type", "other"),
            confidence=ann.get("confidence"),
        )
    if annotations:
        logger.info("%d annotations have no question in %s (ignored)", len(annotations), questions_file)


# -- Hugging Face copies ---------------------------------------------------------------------
def find_hf_files(path: str, split: str) -> list[str]:
    """The parquet/arrow files of `split` under `path` (a file, a save_to_disk folder or a hub snapshot)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DataError(f"{path}: --hf-dataset not found; give a parquet/arrow file or the folder holding them")
    files = sorted(
        f
        for pattern in ("*.parquet", "*.arrow")
        for f in glob.glob(os.path.join(path, "**", pattern), recursive=True)
        if not os.path.basename(f).startswith("cache-")  # datasets' map() caches, not data
    )
    if not files:
        raise DataError(f"{path}: no .parquet or .arrow files found")
    aliases = SPLIT_ALIASES[split]

    def split_of(file: str) -> bool:
        parts = re.split(r"[/\\_.\-]", os.path.relpath(file, path).lower())
        return any(part in aliases for part in parts)

    chosen = [f for f in files if split_of(f)]
    if not chosen:
        if len(files) == 1:
            return files  # a single unnamed file: take it as the requested split
        names = ", ".join(os.path.relpath(f, path) for f in files[:6])
        raise DataError(
            f"{path}: no files for split {split!r} (names containing {'/'.join(aliases)}); found: {names}. "
            "Pass the file itself as --hf-dataset"
        )
    return chosen


def _open_table_batches(file: str):
    """(row count, iterator of record batches) for a parquet or arrow (IPC stream/file) file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if file.endswith(".parquet"):
            pf = pq.ParquetFile(file)
            return pf.metadata.num_rows, pf.schema_arrow.names, pf.iter_batches(batch_size=64)
        try:  # datasets' save_to_disk writes the IPC stream format
            reader = pa.ipc.open_stream(pa.memory_map(file))
            table = reader.read_all()
        except pa.ArrowInvalid:
            table = pa.ipc.open_file(pa.memory_map(file)).read_all()
        return table.num_rows, table.schema.names, table.to_batches(max_chunksize=64)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{file}: cannot read as parquet/arrow ({exc}); is the file complete?") from None


def _pick_column(names: list[str], role: str, file: str, required: bool = True) -> str | None:
    for candidate in HF_COLUMNS[role]:
        if candidate in names:
            return candidate
    if required:
        raise DataError(
            f"{file}: no {role} column (looked for {', '.join(HF_COLUMNS[role])}; found {', '.join(names)})"
        )
    return None


def _hf_answers(value) -> list[dict]:
    """Answers as official dicts, from a list of strings or a list of dicts."""
    answers = []
    for i, item in enumerate(value or []):
        if isinstance(item, dict):
            text = item.get("answer") or ""
            answers.append(
                {
                    "answer": text,
                    "raw_answer": item.get("raw_answer") or text,
                    "answer_confidence": item.get("answer_confidence") or "yes",
                    "answer_id": item.get("answer_id") or i + 1,
                }
            )
        elif isinstance(item, str):
            answers.append({"answer": item, "raw_answer": item, "answer_confidence": "yes", "answer_id": i + 1})
    return answers


def _hf_image(value, file: str, image_folder: str | None):
    """(bytes, path) from an image cell: bytes, {"bytes", "path"} struct, or a path string."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data, path = bytes(value), None
    else:
        data, path = None, value
    if data:
        return bytes(data), None
    if path:
        for base in (image_folder, os.path.dirname(file)):
            if base and os.path.isfile(os.path.join(base, path)):
                return None, os.path.join(base, path)
        if os.path.isfile(path):
            return None, path
        return None, os.path.join(image_folder or os.path.dirname(file), path)
    return None, None


def iter_hf(files: list[str], image_folder: str | None, progress: tqdm) -> Iterator:
    for file in files:
        total, names, batches = _open_table_batches(file)
        progress.total = (progress.total or 0) + total
        progress.refresh()
        columns = {role: _pick_column(names, role, file, role != "image_id") for role in HF_COLUMNS}
        optional = {k: k if k in names else None for k in ("question_type", "answer_type", "confidence")}
        row = -1
        for batch in batches:
            for record in batch.to_pylist():
                row += 1
                where = f"{file}: row {row}"
                qid = record[columns["question_id"]]
                if qid is None or not record[columns["question"]]:
                    yield InvalidSample("missing_fields", f"{where}: question_id or question is empty", where)
                    continue
                where += f" (question_id {qid})"
                data, path = _hf_image(record[columns["image"]], file, image_folder)
                if data is None and path is None:
                    yield InvalidSample("missing_image", f"{where}: the image cell is empty", where)
                    continue
                image_id = record[columns["image_id"]] if columns["image_id"] else None
                if image_id is None:  # no id column: name the image by its content
                    image_id = hashlib.sha1(data or os.fsencode(path)).hexdigest()[:16]
                yield Sample(
                    question_id=qid,
                    image_id=image_id,
                    question=record[columns["question"]],
                    answers=_hf_answers(record[columns["answers"]]),
                    image_path=path,
                    image_bytes=data,
                    question_type=(record[optional["question_type"]] if optional["question_type"] else None) or "none",
                    answer_type=(record[optional["answer_type"]] if optional["answer_type"] else None) or "other",
                    confidence=record[optional["confidence"]] if optional["confidence"] else None,
                )


# -- conversion ------------------------------------------------------------------------------
def image_stem(split: str, image_id) -> str:
    if isinstance(image_id, int) or (isinstance(image_id, str) and image_id.isdigit()):
        return f"COCO_{split}2014_{int(image_id):012d}"
    return f"{split}_{image_id}"


def question_text(question: str, short_answer_prompt: bool) -> str:
    question = question.strip()
    return f"{question}\n{SHORT_ANSWER_PROMPT}" if short_answer_prompt else question


def to_llava_record(sample: Sample, image: str, answer: str, short_answer_prompt: bool) -> dict:
    return {
        "id": str(sample.question_id),
        "image": image,
        "conversations": [
            {"from": "human", "value": f"{DEFAULT_IMAGE_TOKEN}\n{question_text(sample.question, short_answer_prompt)}"},
            {"from": "gpt", "value": answer},
        ],
    }


def convert(
    output_dir: str,
    split: str,
    questions_file: str | None = None,
    annotations_file: str | None = None,
    image_folder: str | None = None,
    hf_dataset: str | None = None,
    short_answer_prompt: bool = False,
    skip_invalid: bool = False,
    link: str = "copy",
    write_eval: bool | None = None,
) -> dict:
    """Convert one split; returns the counts and output paths. Raises DataError on bad input."""
    if hf_dataset:
        split = normalise_split(split or "val")
        files = find_hf_files(hf_dataset, split)
    else:
        if not (questions_file and annotations_file and image_folder):
            raise DataError("give --questions-file, --annotations-file and --image-folder, or --hf-dataset")
        for path in (questions_file, annotations_file):
            if not os.path.isfile(path):
                raise DataError(f"{path}: file not found")
        if not os.path.isdir(image_folder):
            raise DataError(f"{image_folder}: --image-folder is not a folder")
        split = normalise_split(split) if split else infer_split(questions_file, annotations_file)
        if split is None:
            raise DataError(f"cannot tell the split from {questions_file}; pass --split train or --split val")
    write_eval = (split == "val") if write_eval is None else write_eval

    os.makedirs(output_dir, exist_ok=True)
    paths = {"train_json": os.path.join(output_dir, f"llava_okvqa_{split}.json")}
    if write_eval:
        paths.update(
            questions_jsonl=os.path.join(output_dir, "questions.jsonl"),
            questions_json=os.path.join(output_dir, f"OpenEnded_mscoco_{split}2014_questions.json"),
            annotations_json=os.path.join(output_dir, f"mscoco_{split}2014_annotations.json"),
        )
    images = ImageStore(os.path.join(output_dir, "images"), link=link)
    skips = SkipLog()
    seen_questions: set = set()
    read = 0
    header = {
        "info": {"description": f"OK-VQA {split} written by llava.data.okvqa"},
        "license": {},
        "data_type": "mscoco",
        "data_subtype": f"{split}2014",
    }

    progress = tqdm(desc=f"OK-VQA {split}", unit="q", dynamic_ncols=True)
    with ExitStack() as stack:
        stack.callback(progress.close)
        train_out = stack.enter_context(JsonArrayWriter(paths["train_json"]))
        if write_eval:
            jsonl_out = stack.enter_context(JsonLinesWriter(paths["questions_jsonl"]))
            q_out = stack.enter_context(
                JsonArrayWriter(paths["questions_json"], {**header, "task_type": "Open-Ended"}, "questions")
            )
            a_out = stack.enter_context(JsonArrayWriter(paths["annotations_json"], header, "annotations"))
        source = (
            iter_hf(files, image_folder, progress)
            if hf_dataset
            else iter_official(questions_file, annotations_file, image_folder, split)
        )

        def reject(reason: str, message: str, where: str):
            if not skip_invalid:
                raise DataError(f"{message}. Fix the input, or pass --skip-invalid to skip and count such questions")
            skips.add(reason, where, message)

        for sample in source:
            read += 1
            progress.update()
            if isinstance(sample, InvalidSample):
                reject(sample.reason, str(sample), sample.where)
                continue
            where = f"question_id {sample.question_id}"
            if sample.question_id in seen_questions:
                reject("duplicate_question", f"{where} appears twice", where)
                continue
            answer = choose_answer([a["answer"] for a in sample.answers])
            if answer is None:
                reject("no_answer", f"{where} has no non-empty answer", where)
                continue
            try:
                stem = image_stem(split, sample.image_id)
                if sample.image_bytes is not None:
                    image = images.add_bytes(sample.image_id, sample.image_bytes, stem)
                else:
                    image = images.add_file(sample.image_id, sample.image_path, stem + ".jpg")
            except ValueError as exc:
                reject("bad_image", f"{where}: image {sample.image_id} is unusable: {exc}", where)
                continue
            seen_questions.add(sample.question_id)
            train_out.write(to_llava_record(sample, image, answer, short_answer_prompt))
            if write_eval:
                jsonl_out.write(
                    {
                        "question_id": sample.question_id,
                        "image": image,
                        "text": question_text(sample.question, short_answer_prompt),
                        "category": sample.question_type,
                    }
                )
                q_out.write(
                    {"image_id": sample.image_id, "question": sample.question, "question_id": sample.question_id}
                )
                a_out.write(
                    {
                        "image_id": sample.image_id,
                        "question_type": sample.question_type,
                        "answer_type": sample.answer_type,
                        "confidence": sample.confidence,
                        "question_id": sample.question_id,
                        "answers": sample.answers,
                    }
                )
        written = train_out.count
    return {"read": read, "written": written, "images": images.count, "skips": skips, "paths": paths, "split": split}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert_okvqa_to_llava",
        description="Convert OK-VQA (official JSON + COCO images, or a local Hugging Face parquet/arrow copy) "
        "to LLaVA training JSON, plus model_vqa questions and scorer files for the val split.",
    )
    official = parser.add_argument_group("official files")
    official.add_argument("--questions-file", help="OpenEnded_mscoco_{train,val}2014_questions.json")
    official.add_argument("--annotations-file", help="mscoco_{train,val}2014_annotations.json")
    official.add_argument(
        "--image-folder",
        help="COCO images (COCO_val2014_*.jpg, or val2014/, train2017/ inside); for --hf-dataset copies that "
        "store image paths, the folder those paths are relative to",
    )
    hf = parser.add_argument_group("Hugging Face copy")
    hf.add_argument("--hf-dataset", help="a parquet/arrow file, or a folder of them (save_to_disk or hub snapshot)")
    parser.add_argument("--split", help="train or val (default: from the file names; 'val' for --hf-dataset)")
    parser.add_argument("--output-dir", required=True, help="receives the JSON, images/ and evaluation files")
    parser.add_argument(
        "--short-answer-prompt",
        action="store_true",
        help=f'append "{SHORT_ANSWER_PROMPT}" to each question (LLaVA-1.5 style)',
    )
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip and count unusable questions (missing/corrupt image, no annotation) instead of stopping",
    )
    parser.add_argument(
        "--link",
        choices=("copy", "symlink", "hardlink"),
        default="copy",
        help="how COCO image files reach OUT/images (default copy)",
    )
    return parser


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = convert(
        output_dir=args.output_dir,
        split=args.split,
        questions_file=args.questions_file,
        annotations_file=args.annotations_file,
        image_folder=args.image_folder,
        hf_dataset=args.hf_dataset,
        short_answer_prompt=args.short_answer_prompt,
        skip_invalid=args.skip_invalid,
        link=args.link,
    )
    paths = result["paths"]
    logger.info("training JSON: %s (--image_folder %s)", paths["train_json"], os.path.join(args.output_dir, "images"))
    if "questions_jsonl" in paths:
        logger.info(
            "evaluation: python -m llava.eval.eval_okvqa --annotation-file %s --question-file %s "
            "--result-file ANSWERS.jsonl  (model_vqa questions: %s)",
            paths["annotations_json"],
            paths["questions_json"],
            paths["questions_jsonl"],
        )
    logger.info(
        "OK-VQA %s: read %d questions, wrote %d records, %d images, %s",
        result["split"],
        result["read"],
        result["written"],
        result["images"],
        result["skips"].summary(),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    from llava.errors import run

    run(main)
