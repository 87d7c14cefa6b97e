"""Check a LLaVA training JSON before training on it.

Every record is checked: well-formed JSON, turns alternating human/gpt starting with human,
one "<image>" marker per image, image files that exist and decode, non-empty answers and,
given a tokenizer, the rendered length against --model_max_length (image markers count as
--image_tokens patches each). Ends with a table of problems with the first offending records;
the exit status is 1 when any error was found.

  python -m llava.data.validate --data_path train.json --image_folder DATA \\
      [--model_name_or_path M --version v1 --model_max_length 2048]

From Python: `validate_records(records, image_folder=..., tokenizer=...)` returns a
`ValidationReport` (`.ok`, `.counts`, `.examples`, `.table()`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from tqdm import tqdm

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.data.io import DataError, format_table, image_problem, iter_json_records, setup_logging

logger = logging.getLogger("llava.data")

# Errors break or silently spoil training; warnings are worth a look.
ERRORS = {
    "malformed_json": "the file stops parsing here; later records were not checked",
    "malformed_record": "not {id, image?, conversations: [{from, value}, ...]}",
    "bad_roles": "turns must alternate human/gpt, starting with human and ending with gpt",
    "empty_answer": "a gpt turn is empty",
    "image_token_count": "number of <image> markers differs from the number of images",
    "missing_image": "image file not found under --image_folder",
    "corrupt_image": "image file does not decode",
    "answer_truncated_away": "the prompt before the first answer already exceeds model_max_length: nothing to learn",
}
WARNINGS = {
    "truncated": "longer than model_max_length: the end is cut off in training",
    "image_token_position": "<image> is not at the start of the first human turn",
    "duplicate_id": "id used by an earlier record",
    "missing_id": "record has no id",
}


@dataclasses.dataclass
class ValidationReport:
    records: int = 0
    counts: Counter = dataclasses.field(default_factory=Counter)
    examples: dict = dataclasses.field(default_factory=dict)  # kind -> [record refs]
    details: dict = dataclasses.field(default_factory=dict)  # kind -> first detail message
    images_checked: int = 0
    max_length: int = 0
    length_checked: bool = False
    max_examples: int = 5

    def add(self, kind: str, ref: str, detail: str = "") -> None:
        self.counts[kind] += 1
        refs = self.examples.setdefault(kind, [])
        if len(refs) < self.max_examples:
            refs.append(ref)
        if detail and kind not in self.details:
            self.details[kind] = f"{ref}: {detail}"

    @property
    def errors(self) -> int:
        return sum(n for kind, n in self.counts.items() if kind in ERRORS)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def table(self) -> str:
        kinds = sorted(self.counts, key=lambda k: (k not in ERRORS, k))
        rows = [
            [kind, "error" if kind in ERRORS else "warning", self.counts[kind], ", ".join(self.examples[kind])]
            for kind in kinds
        ]
        lines = [f"records checked: {self.records}, image files checked: {self.images_checked}"]
        if self.length_checked:
            lines.append(f"longest rendered sample: {self.max_length} tokens (images counted as patches)")
        if rows:
            lines.append(format_table(["problem", "severity", "records", "first offending records"], rows))
            lines.extend(
                f"  {kind}: {ERRORS.get(kind) or WARNINGS.get(kind)}; e.g. {self.details[kind]}"
                for kind in kinds
                if kind in self.details
            )
        verdict = "OK" if self.ok else f"FAILED: {self.errors} errors"
        warnings = sum(self.counts.values()) - self.errors
        lines.append(f"{verdict} ({warnings} warnings)")
        return "\n".join(lines)


def record_ref(index: int, record) -> str:
    if isinstance(record, dict) and record.get("id") is not None:
        return f"#{index} (id {record['id']!r})"
    return f"#{index}"


def image_list(record: dict) -> list | None:
    """The record's image paths ([] for text-only); None when the field is unusable."""
    image = record.get("image", None)
    if image is None and "image" not in record:
        return []
    if isinstance(image, str) and image:
        return [image]
    if isinstance(image, list) and image and all(isinstance(p, str) and p for p in image):
        return image
    return None


def structure_problems(record) -> list[tuple[str, str]]:
    """(kind, detail) for everything wrong with a record's shape and text."""
    if not isinstance(record, dict):
        return [("malformed_record", f"a {type(record).__name__}, not an object")]
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        return [("malformed_record", "no 'conversations' list")]
    for i, turn in enumerate(turns):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("value"), str)
            or not isinstance(turn.get("from"), str)
        ):
            return [("malformed_record", f"turn {i} is not {{'from': str, 'value': str}}")]
    images = image_list(record)
    if images is None:
        return [("malformed_record", f"'image' is {record.get('image')!r}; expected a relative path")]
    problems = []
    for i, turn in enumerate(turns):
        expected = "human" if i % 2 == 0 else "gpt"
        if turn["from"] != expected:
            problems.append(("bad_roles", f"turn {i} is from {turn['from']!r}, expected {expected!r}"))
            break
    else:
        if len(turns) % 2:
            problems.append(("bad_roles", "the last human turn has no answer"))
    empty = [i for i, t in enumerate(turns) if i % 2 == 1 and not t["value"].strip()]
    if empty:
        problems.append(("empty_answer", f"turn {empty[0]} is empty"))
    markers = sum(t["value"].count(DEFAULT_IMAGE_TOKEN) for t in turns)
    if markers != len(images):
        problems.append(("image_token_count", f"{markers} <image> markers for {len(images)} images"))
    elif images and not turns[0]["value"].startswith(DEFAULT_IMAGE_TOKEN):
        problems.append(("image_token_position", f"first human turn is {turns[0]['value'][:60]!r}"))
    if record.get("id") is None:
        problems.append(("missing_id", ""))
    return problems


class LengthChecker:
    """Renders records with a conversation template and counts tokens like training does."""

    def __init__(self, tokenizer, version: str, model_max_length: int, image_tokens: int):
        from llava.conversation import get_conv_template
        from llava.mm_utils import tokenizer_image_token

        get_conv_template(version)  # fail early on an unknown template name
        self._template = lambda: get_conv_template(version)
        self._tokenize = tokenizer_image_token
        self.tokenizer = tokenizer
        self.model_max_length = model_max_length
        self.image_tokens = image_tokens

    def _length(self, text: str) -> int:
        ids = self._tokenize(text, self.tokenizer)
        images = sum(1 for i in ids if i == IMAGE_TOKEN_INDEX)
        return len(ids) + images * (self.image_tokens - 1)

    def check(self, turns: list[dict]) -> tuple[int, bool]:
        """(rendered length, whether even the first answer starts beyond model_max_length)."""
        conv = self._template()
        conv.messages = []  # a template's example exchange (v0) is not trained on
        for i, turn in enumerate(turns):
            conv.append_message(conv.roles[i % 2], turn["value"])
        prompt, spans = conv.get_prompt_and_targets()
        length = self._length(prompt)
        if length <= self.model_max_length or not spans:
            return length, False
        return length, self._length(prompt[: spans[0][0]]) >= self.model_max_length


def validate_records(
    records: Iterable,
    image_folder: str | None = None,
    tokenizer=None,
    version: str = "v1",
    model_max_length: int | None = None,
    image_tokens: int = 576,
    check_images: str = "decode",
    num_workers: int = 4,
    max_examples: int = 5,
    progress: tqdm | None = None,
) -> ValidationReport:
    """Check LLaVA records; see the module docstring. Never raises for bad data: it reports it.

    check_images: "decode" (open and decode each image once), "exists" or "none".
    A parse error from a streaming reader (`DataError`) ends the check as `malformed_json`.
    """
    report = ValidationReport(max_examples=max_examples)
    length_checker = None
    if tokenizer is not None:
        length_checker = LengthChecker(tokenizer, version, model_max_length or 2048, image_tokens)
        report.length_checked = True
    image_status: dict[str, str | None] = {}  # path -> problem (None: fine)
    pending: list[tuple[str, str]] = []  # (record ref, path) waiting for a batched check
    seen_ids: set = set()
    probe = image_problem if check_images == "decode" else (lambda p: None if os.path.isfile(p) else "file not found")

    def flush(pool) -> None:
        new = list(dict.fromkeys(p for _, p in pending if p not in image_status))
        for path, problem in zip(new, pool.map(probe, new)):
            image_status[path] = problem
        report.images_checked += len(new)
        for ref, path in pending:
            problem = image_status[path]
            if problem:
                kind = "missing_image" if problem == "file not found" else "corrupt_image"
                report.add(kind, ref, f"{path}: {problem}")
        pending.clear()

    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        index = -1
        iterator = iter(records)
        while True:
            try:
                record = next(iterator)
            except StopIteration:
                break
            except DataError as exc:  # the file itself is broken from here on
                report.add("malformed_json", f"#{index + 1}", str(exc))
                break
            index += 1
            report.records += 1
            if progress is not None:
                progress.set_postfix(records=report.records, refresh=False)
            ref = record_ref(index, record)
            problems = structure_problems(record)
            for kind, detail in problems:
                report.add(kind, ref, detail)
            if any(kind == "malformed_record" for kind, _ in problems):
                continue
            if record.get("id") is not None:
                key = str(record["id"])
                if key in seen_ids:
                    report.add("duplicate_id", ref)
                seen_ids.add(key)
            if image_folder and check_images != "none":
                pending.extend((ref, os.path.join(image_folder, p)) for p in image_list(record))
                if len(pending) >= 256:
                    flush(pool)
            if length_checker is not None:
                length, hopeless = length_checker.check(record["conversations"])
                report.max_length = max(report.max_length, length)
                if hopeless:
                    report.add("answer_truncated_away", ref, f"{length} tokens")
                elif length > length_checker.model_max_length:
                    report.add("truncated", ref, f"{length} > {length_checker.model_max_length} tokens")
        flush(pool)
    return report


def validate_file(data_path: str, **kwargs) -> ValidationReport:
    """`validate_records` over a JSON/JSONL file, streamed, with a progress bar."""
    if not os.path.isfile(data_path):
        raise DataError(f"{data_path}: file not found")
    with tqdm(total=os.path.getsize(data_path), unit="B", unit_scale=True, desc="validate", dynamic_ncols=True) as bar:
        return validate_records(iter_json_records(data_path, on_bytes=bar.update), progress=bar, **kwargs)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # many exception types; the user needs the path and the reason
        raise DataError(f"cannot load a tokenizer from {path}: {type(exc).__name__}: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llava.data.validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_path", "--data-path", required=True, help="LLaVA training JSON (or JSONL)")
    parser.add_argument("--image_folder", "--image-folder", help="folder the image paths are relative to")
    parser.add_argument("--model_name_or_path", "--model-name-or-path", help="local model/tokenizer folder for lengths")
    parser.add_argument(
        "--version", default="v1", help="conversation template (plain, v1, llava_llama_2, mpt, phi, opt)"
    )
    parser.add_argument(
        "--model_max_length",
        "--model-max-length",
        type=int,
        help="training max length (default: the tokenizer's, else 2048)",
    )
    parser.add_argument(
        "--image_tokens", "--image-tokens", type=int, default=576, help="tokens per image (576 = CLIP-L/336 patches)"
    )
    parser.add_argument(
        "--check_images",
        "--check-images",
        choices=("decode", "exists", "none"),
        default="decode",
        help="how hard to check image files (default: decode each once)",
    )
    parser.add_argument("--num_workers", "--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument(
        "--max_examples", "--max-examples", type=int, default=5, help="offending records listed per problem"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        tokenizer, max_length = None, args.model_max_length
        if args.model_name_or_path:
            tokenizer = load_tokenizer(args.model_name_or_path)
            if max_length is None:
                declared = getattr(tokenizer, "model_max_length", None)
                max_length = declared if isinstance(declared, int) and declared < 1_000_000 else 2048
            from llava.conversation import get_conv_template

            try:
                get_conv_template(args.version)
            except ValueError as exc:
                raise DataError(f"--version: {exc}") from None
        elif args.model_max_length:
            logger.info("--model_max_length needs --model_name_or_path (a tokenizer); lengths are not checked")
        if args.image_folder and not os.path.isdir(args.image_folder):
            raise DataError(f"{args.image_folder}: --image_folder is not a folder")
        if not args.image_folder:
            logger.info("no --image_folder: image files are not checked")
        report = validate_file(
            args.data_path,
            image_folder=args.image_folder,
            tokenizer=tokenizer,
            version=args.version,
            model_max_length=max_length,
            image_tokens=args.image_tokens,
            check_images=args.check_images,
            num_workers=args.num_workers,
            max_examples=args.max_examples,
        )
    except DataError as exc:
        logger.error("%s", exc)
        return 2
    except OSError as exc:
        logger.error("%s: %s", exc.filename or "I/O error", exc.strerror or exc)
        return 2
    print(report.table())
    sys.stdout.flush()
    return 0 if report.ok else 1


if __name__ == "__main__":
    from llava.errors import run

    run(main)
