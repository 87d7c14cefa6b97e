"""LLaVA-Instruct-150K and its siblings (conversation_58k, detail_23k, complex_reasoning_77k,
llava_v1_5_mix665k) -> clean LLaVA training JSON.

Each record gets training's check (llava.records: turns alternate human/gpt or user/assistant
starting with the human, answers non-empty; here also no unanswered last question) and is
normalised: roles are written human/gpt; an image record gets exactly one "<image>" marker, at
the start of its first human turn followed by "\\n"; markers anywhere else, and in text-only
records, are removed. Records whose image file is missing under --image-folder are dropped and
counted. Output records hold "id" (the input index when the input has none), "image" (when
present) and "conversations".

Options: split multi-turn conversations into single question-answer records (ids "{id}_{k}",
image kept); sort by answer length; write one file per answer-length bucket. Answer length is
counted in tokens of --tokenizer, or in whitespace-separated words without one; for a
multi-turn record it is the total over its answers.

The input is streamed and records are written as they come, so memory stays small whatever the
file size; sorting spills records to a temporary file and keeps only (length, offset) in memory.

  python -m llava.data.instruct --input llava_v1_5_mix665k.json --image-folder DATA --output clean.json
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from array import array
from bisect import bisect_left
from contextlib import ExitStack

from tqdm import tqdm

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.data.io import SkipLog, format_table, run_cli
from llava.errors import DataError
from llava.records import JsonArrayWriter, describe, dumps, iter_records, record_problems

logger = logging.getLogger("llava.data")

HUMAN, GPT = "human", "gpt"
DEFAULT_EDGES = (16, 32, 64, 128, 256, 512, 1024)


class InvalidRecord(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# -- per-record logic ------------------------------------------------------------------------
# The converter places <image> itself, so marker problems are not the record's.
_FIXED_HERE = ("image_token_count", "image_token_position")


def check_record(record) -> None:
    """Raise InvalidRecord unless training accepts `record` (llava.records' check; the markers aside), with
    one image at most and only whole question-answer pairs."""
    for problem in record_problems(record):
        if problem.kind not in _FIXED_HERE and (not problem.warning or problem.kind == "unanswered_turn"):
            raise InvalidRecord(problem.kind, problem.message)
    if isinstance(record.get("image"), list):
        raise InvalidRecord("unsupported_image", "'image' is a list; only one image path is supported")


def normalise_image_token(turns: list[dict], has_image: bool) -> tuple[list[dict], bool]:
    """Turns with one "<image>\\n" leading the first human turn (image records) or none at all.

    Returns the new turns and whether anything changed. Turns without a marker keep their
    exact text; turns that had one lose it and surrounding whitespace (as official LLaVA does).
    Roles are written human/gpt (user/assistant input included).
    """
    result = []
    for i, turn in enumerate(turns):
        value = turn["value"]
        if DEFAULT_IMAGE_TOKEN in value:
            value = value.replace(DEFAULT_IMAGE_TOKEN, "").strip()
        result.append({"from": HUMAN if i % 2 == 0 else GPT, "value": value})  # user/assistant too
    if has_image:
        result[0]["value"] = f"{DEFAULT_IMAGE_TOKEN}\n{result[0]['value']}"
    changed = any(new["value"] != old["value"] or new["from"] != old["from"] for new, old in zip(result, turns))
    return result, changed


def split_into_pairs(record: dict) -> list[dict]:
    """One record per question-answer pair, each keeping the image (and its marker)."""
    turns, image = record["conversations"], record.get("image")
    pairs = []
    for k in range(0, len(turns), 2):
        question = turns[k]["value"]
        if image and not question.startswith(DEFAULT_IMAGE_TOKEN):
            question = f"{DEFAULT_IMAGE_TOKEN}\n{question}"
        pair = {"id": f"{record['id']}_{k // 2}"}
        if image:
            pair["image"] = image
        pair["conversations"] = [{"from": HUMAN, "value": question}, dict(turns[k + 1])]
        pairs.append(pair)
    return pairs


class AnswerLength:
    """Counts answer length in tokens of a local tokenizer, or in whitespace words without one."""

    def __init__(self, tokenizer_path: str | None = None):
        self.tokenizer = None
        self.unit = "words"
        if tokenizer_path:
            from llava.env import load_tokenizer

            try:
                self.tokenizer = load_tokenizer(tokenizer_path)
            except Exception as exc:  # transformers raises many kinds; the user needs the path and reason
                raise DataError(f"cannot load a tokenizer from {tokenizer_path}: {type(exc).__name__}: {exc}") from None
            self.unit = "tokens"

    def __call__(self, record: dict) -> int:
        answers = [t["value"] for t in record["conversations"] if t["from"] == GPT]
        if self.tokenizer is None:
            return sum(len(a.split()) for a in answers)
        encoded = self.tokenizer(answers, add_special_tokens=False)["input_ids"]
        return sum(len(ids) for ids in encoded)


# -- buckets ---------------------------------------------------------------------------------
def parse_edges(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        edges = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise DataError(f"--bucket-edges {text!r}: give increasing integers like 32,128,512") from None
    if any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 1:
        raise DataError(f"--bucket-edges {text!r}: edges must be positive and increasing")
    return edges


def bucket_labels(edges: tuple[int, ...]) -> list[str]:
    """Bucket k holds lengths in (edges[k-1], edges[k]]; the last is open-ended."""
    lows = [0] + [e + 1 for e in edges]
    highs = [str(e) for e in edges] + ["inf"]
    return [f"{lo}-{hi}" for lo, hi in zip(lows, highs)]


def bucket_of(length: int, edges: tuple[int, ...]) -> int:
    return bisect_left(edges, length)


def bucket_path(output: str, label: str) -> str:
    stem, ext = os.path.splitext(output)
    return f"{stem}.len{label}{ext or '.json'}"


def length_table(lengths_per_bucket: list[int], labels: list[str], unit: str) -> str:
    total = sum(lengths_per_bucket) or 1
    rows = [[label, count, f"{100 * count / total:.1f}%"] for label, count in zip(labels, lengths_per_bucket)]
    return format_table([f"answer {unit}", "records", "share"], rows)


# -- conversion ------------------------------------------------------------------------------
class _Where:
    """'file: record 12 (id ...)', formatted only when a message needs it (saves time per record)."""

    __slots__ = ("path", "index", "record")

    def __init__(self, path: str, index: int, record):
        self.path, self.index, self.record = path, index, record

    def __str__(self) -> str:
        return f"{self.path}: {describe(self.index, self.record)}"


class _Spill:
    """Records serialised to a temporary file with (length, offset, size) kept in memory, for sorting."""

    def __init__(self, folder: str):
        self.file = tempfile.TemporaryFile(dir=folder, prefix=".instruct-sort-")
        self.lengths, self.offsets, self.sizes = array("q"), array("q"), array("q")
        self.end = 0

    def add(self, text: str, length: int) -> None:
        data = text.encode("utf-8")
        self.offsets.append(self.end)
        self.sizes.append(len(data))
        self.lengths.append(length)
        self.file.write(data)
        self.end += len(data)

    def replay(self, descending: bool):
        """(text, length) in length order; ties keep input order (Python's sort is stable)."""
        order = sorted(range(len(self.lengths)), key=self.lengths.__getitem__, reverse=descending)
        self.file.flush()
        for i in order:
            self.file.seek(self.offsets[i])
            yield self.file.read(self.sizes[i]).decode("utf-8"), self.lengths[i]

    def close(self) -> None:
        self.file.close()


def convert(
    inputs: list[str],
    output: str,
    image_folder: str | None = None,
    image_prefix: str = "",
    split_turns: bool = False,
    sort_by_length: str | None = None,
    bucket_edges: tuple[int, ...] | None = None,
    tokenizer_path: str | None = None,
    skip_invalid: bool = False,
) -> dict:
    """Convert `inputs` into `output` (or one file per bucket); returns counts and paths."""
    for path in inputs:
        if not os.path.isfile(path):
            raise DataError(f"{path}: input file not found")
    if image_folder and not os.path.isdir(image_folder):
        raise DataError(f"{image_folder}: --image-folder is not a folder")
    if sort_by_length not in (None, "asc", "desc"):
        raise DataError(f"--sort-by-length {sort_by_length!r}: use asc or desc")
    measure_lengths = bool(sort_by_length or bucket_edges)
    meter = AnswerLength(tokenizer_path) if measure_lengths else None
    if meter is not None and meter.tokenizer is None:
        logger.info("answer length is counted in whitespace-separated words (no --tokenizer given)")
    table_edges = bucket_edges or DEFAULT_EDGES
    labels = bucket_labels(table_edges)
    per_bucket = [0] * len(labels)
    output_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(output_dir, exist_ok=True)

    skips = SkipLog()
    image_exists: dict[str, bool] = {}
    counts = {"read": 0, "written": 0, "normalised": 0}
    paths = [bucket_path(output, label) for label in labels] if bucket_edges else [output]

    with ExitStack() as stack:
        writers = [stack.enter_context(JsonArrayWriter(p)) for p in paths]
        spill = _Spill(output_dir) if sort_by_length else None
        if spill is not None:
            stack.callback(spill.close)

        def emit(text: str, length: int | None) -> None:
            if length is not None:
                per_bucket[bucket_of(length, table_edges)] += 1
            writer = writers[bucket_of(length, bucket_edges)] if bucket_edges else writers[0]
            writer.write_serialised(text)

        progress = stack.enter_context(
            tqdm(
                total=sum(os.path.getsize(p) for p in inputs),
                unit="B",
                unit_scale=True,
                desc="Instruct",
                dynamic_ncols=True,
            )
        )
        for path in inputs:
            for index, record in enumerate(iter_records(path, on_bytes=progress.update)):
                counts["read"] += 1
                where = _Where(path, index, record)
                try:
                    check_record(record)
                    turns, changed = normalise_image_token(record["conversations"], bool(record.get("image")))
                    if any(not t["value"].strip() for t in turns[1::2]):
                        raise InvalidRecord("empty_answer", "has an empty gpt answer")
                except InvalidRecord as exc:
                    if not skip_invalid:
                        raise DataError(
                            f"{where} {exc}. Fix the record, or pass --skip-invalid to skip and count such records"
                        ) from None
                    skips.add(exc.reason, str(where), str(exc))
                    continue
                clean = {"id": str(record["id"]) if record.get("id") is not None else str(index)}
                image = record.get("image")
                if image:
                    if image_prefix and not image.startswith(image_prefix):
                        image = image_prefix + image
                    if image_folder:
                        exists = image_exists.get(image)
                        if exists is None:
                            exists = image_exists[image] = os.path.isfile(os.path.join(image_folder, image))
                        if not exists:
                            skips.add("missing_image", str(where), os.path.join(image_folder, image))
                            continue
                    clean["image"] = image
                clean["conversations"] = turns
                counts["normalised"] += changed
                for out in split_into_pairs(clean) if split_turns else [clean]:
                    length = meter(out) if meter is not None else None
                    if spill is not None:
                        spill.add(dumps(out), length)
                    else:
                        emit(dumps(out), length)
        if spill is not None:
            for text, length in tqdm(
                spill.replay(sort_by_length == "desc"), total=len(spill.lengths), desc="sorted write", unit="rec"
            ):
                emit(text, length)
        counts["written"] = sum(w.count for w in writers)
    return {
        **counts,
        "skips": skips,
        "paths": paths,
        "bucket_counts": per_bucket if measure_lengths else None,
        "bucket_labels": labels,
        "unit": meter.unit if meter else None,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert_instruct_to_llava",
        description="Check, normalise, split and bucket LLaVA-Instruct-150K / mix665k style JSON.",
    )
    parser.add_argument(
        "--input", nargs="+", required=True, help="one or more LLaVA JSON (or JSONL) files, concatenated"
    )
    parser.add_argument(
        "--output", required=True, help="output JSON (with --bucket-edges: OUTPUT.len{lo}-{hi}.json files)"
    )
    parser.add_argument("--image-folder", help="drop (and count) records whose image is not in this folder")
    parser.add_argument(
        "--image-prefix",
        default="",
        help="prepend to image paths lacking it, e.g. coco/train2017/ for instruct_150k next to mix665k",
    )
    parser.add_argument(
        "--split-turns", action="store_true", help="one record per question-answer pair (ids {id}_{k}, image kept)"
    )
    parser.add_argument("--sort-by-length", choices=("asc", "desc"), help="order records by answer length")
    parser.add_argument(
        "--bucket-edges",
        help="write one file per answer-length bucket, e.g. 32,128,512 -> 0-32, 33-128, 129-512, 513-inf",
    )
    parser.add_argument(
        "--tokenizer", help="local tokenizer folder for answer lengths (AutoTokenizer); default: whitespace words"
    )
    parser.add_argument(
        "--skip-invalid", action="store_true", help="skip and count malformed records instead of stopping"
    )
    return parser


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = convert(
        inputs=args.input,
        output=args.output,
        image_folder=args.image_folder,
        image_prefix=args.image_prefix,
        split_turns=args.split_turns,
        sort_by_length=args.sort_by_length,
        bucket_edges=parse_edges(args.bucket_edges),
        tokenizer_path=args.tokenizer,
        skip_invalid=args.skip_invalid,
    )
    if result["bucket_counts"] is not None:
        print(length_table(result["bucket_counts"], result["bucket_labels"], result["unit"]))
    for path in result["paths"]:
        logger.info("wrote %s", path)
    logger.info(
        "Instruct: read %d records, wrote %d%s, %s; moved/removed <image> markers in %d records",
        result["read"],
        result["written"],
        " question-answer records" if args.split_turns else "",
        result["skips"].summary(),
        result["normalised"],
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    from llava.errors import run

    run(main)
