"""Check a LLaVA training JSON before training on it.

Every record gets the check training applies (llava.records, so a record passes here iff training
accepts it): well-formed JSON, turns alternating human/gpt (or user/assistant) starting with the
human, one "<image>" marker per image (one for a video) or none, non-empty answers, image and
video paths inside --image_folder, image files that exist and decode, videos that open and hold
frames and, given a tokenizer, the sample training would build (llava.preprocess) against
--model_max_length (each image counts as --image_tokens patches, a video as the frames training samples
from it: its frame count read from its header, at most --frames_upbound, exactly that with
--force_sample; --frames_upbound when files are not read, --check_images none; pooled as training's
defaults pool them). Ends with a table of problems with the first offending records; the exit status is 1
when any error was found.

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
from typing import Iterable, Iterator

from tqdm import tqdm

from llava.data.io import format_table, image_problem, run_cli
from llava.errors import DataError
from llava.mm_utils import ImageOutsideFolder, image_path_in_folder
from llava.preprocess import preprocess
from llava.records import InvalidRecord, UnreadableRecord, image_paths, iter_records, num_visuals, record_problems, video_path
from llava.video import VideoError, VideoSettings, frame_total

logger = logging.getLogger("llava.data")

# Errors break or silently spoil training; warnings are worth a look.
ERRORS = {
    "malformed_json": "not JSON (a JSON list stops parsing here: later records were not checked)",
    "not_utf8": "bytes that are not UTF-8",
    "malformed_record": "not {id, image?, conversations: [{from, value}, ...]}",
    "bad_roles": "turns must alternate human/gpt (or user/assistant), starting with the human, with an answer",
    "empty_answer": "a gpt turn is empty",
    "image_token_count": "<image> markers do not match the images (one per image, or none)",
    "image_outside_folder": "image path is absolute or climbs out of --image_folder",
    "missing_image": "image file not found under --image_folder",
    "corrupt_image": "image file does not decode",
    "missing_video": "video file not found under --image_folder",
    "corrupt_video": "video file does not open, or holds no frame",
    "answer_truncated_away": "cut to model_max_length no answer token is left, or the cut falls inside an image",
}
WARNINGS = {
    "truncated": "longer than model_max_length: the end is cut off in training",
    "image_token_position": "<image> is not at the start of the first human turn",
    "unanswered_turn": "the last human turn has no answer",
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
    allow_outside_image_folder: bool = False,
    frames_upbound: int = VideoSettings.frames_upbound,
    force_sample: bool = False,
) -> ValidationReport:
    """Check LLaVA records; see the module docstring. Never raises for bad data: it reports it.

    check_images: "decode" (open and decode each image once), "exists" or "none".
    An `UnreadableRecord` among `records` (see `validate_file`) is reported as its kind; a parse
    error from a streaming reader (`DataError`) ends the check as `malformed_json`.
    """
    report = ValidationReport(max_examples=max_examples)
    if tokenizer is not None:
        from llava.conversation import get_conv_template

        get_conv_template(version)  # fail early on an unknown template name
        model_max_length = model_max_length or 2048
        report.length_checked = True
    image_status: dict[str, str | None] = {}  # path -> problem (None: fine)
    pending: list[tuple[str, str]] = []  # (record ref, path) waiting for a batched check
    seen_ids: set = set()
    videos: set = set()  # paths of videos among those checked
    probe = image_problem if check_images == "decode" else (lambda p: None if os.path.isfile(p) else "file not found")
    video = VideoSettings(frames_upbound, force_sample, side=max(1, int(image_tokens**0.5)))
    frame_totals: dict[str, int | VideoError] = {}  # video path -> its frame count, or why it has none

    def counted_frames(path: str) -> int:
        # Each video's header is read once, by whichever of its file check and its length check comes first.
        if path not in frame_totals:
            try:
                frame_totals[path] = frame_total(path)
            except VideoError as exc:
                frame_totals[path] = exc
        if isinstance(frame_totals[path], VideoError):
            raise frame_totals[path]
        return frame_totals[path]

    def frames_of(path: str) -> int:
        # The frames training samples from the video; one that cannot be read counts as the most frames it
        # could give (its file check reports it).
        if check_images == "none" or not image_folder:
            return frames_upbound
        try:
            return video.num_frames(counted_frames(path))
        except (VideoError, OSError):
            return frames_upbound

    def flush(pool) -> None:
        new = list(dict.fromkeys(p for _, p in pending if p not in image_status))
        for path, problem in zip(new, pool.map(lambda p: video_problem(p, counted_frames) if p in videos else probe(p), new)):
            image_status[path] = problem
        report.images_checked += len(new)
        for ref, path in pending:
            problem = image_status[path]
            if problem:
                kind = "missing_" if problem == "file not found" else "corrupt_"
                report.add(kind + ("video" if path in videos else "image"), ref, f"{path}: {problem}")
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
            if isinstance(record, UnreadableRecord):
                report.add(record.kind, ref, str(record))
                continue
            problems = record_problems(record)
            for problem in problems:
                report.add(problem.kind, ref, problem.message)
            if any(not problem.warning for problem in problems):
                continue  # training refuses it: its images and length do not matter
            if record.get("id") is not None:
                key = str(record["id"])
                if key in seen_ids:
                    report.add("duplicate_id", ref)
                seen_ids.add(key)
            paths = image_paths(record) + ([video_path(record)] if video_path(record) is not None else [])
            try:
                files = [image_path_in_folder(image_folder, p, "--allow_outside_image_folder",
                                              allow_outside=allow_outside_image_folder) for p in paths]
            except ImageOutsideFolder as exc:
                report.add("image_outside_folder", ref, str(exc))
                continue
            if video_path(record) is not None:
                videos.add(files[-1])
            if image_folder and check_images != "none":
                pending.extend((ref, path) for path in files)
                if len(pending) >= 256:
                    flush(pool)
            if tokenizer is not None:
                tokens = [video.tokens(frames_of(files[-1]))] if video_path(record) is not None else image_tokens
                _check_length(report, ref, record, num_visuals(record), tokenizer, version, model_max_length, tokens)
        flush(pool)
    return report


def _check_length(report, ref, record, num_images, tokenizer, version, max_length, image_tokens) -> None:
    """The sample training would build from the record (same code), against max_length."""
    try:
        sample = preprocess(record["conversations"], tokenizer, version, record_id=record.get("id"),
                            num_images=num_images, max_length=max_length, image_tokens=image_tokens)
    except InvalidRecord as exc:
        report.add("answer_truncated_away", ref, exc.reason)
        return
    report.max_length = max(report.max_length, sample.length)
    if sample.truncated:
        report.add("truncated", ref, f"{sample.length} > {max_length} tokens")


def video_problem(path: str, count_frames=frame_total) -> str | None:
    """None when the video at `path` opens and holds a frame (from its header), else a short reason;
    `count_frames(path)` reads the frame count (`frame_total`, or a memo of it)."""
    if not os.path.isfile(path):
        return "file not found"
    try:
        if count_frames(path) == 0:
            return "no frames"
    except VideoError as exc:
        return str(exc)
    return None


def validate_file(data_path: str, **kwargs) -> ValidationReport:
    """`validate_records` over a JSON/JSONL file, streamed, with a progress bar."""
    if not os.path.isfile(data_path):
        raise DataError(f"{data_path}: file not found")
    with tqdm(total=os.path.getsize(data_path), unit="B", unit_scale=True, desc="validate", dynamic_ncols=True) as bar:
        return validate_records(_records_and_errors(data_path, bar.update), progress=bar, **kwargs)


def _records_and_errors(path: str, on_bytes) -> Iterator:
    """The file's records in order, a record the file garbles as its UnreadableRecord (reported, not fatal)."""
    unreadable: list = []
    for record in iter_records(path, on_bytes=on_bytes, on_error=unreadable.append):
        yield from unreadable
        unreadable.clear()
        yield record
    yield from unreadable


def load_tokenizer(path: str):
    from llava.env import load_tokenizer

    try:
        return load_tokenizer(path)
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
    parser.add_argument("--frames_upbound", "--frames-upbound", type=int, default=VideoSettings.frames_upbound,
                        help="the most frames training samples from a video (training's --frames_upbound); "
                        "the length check counts each video's own frames up to it")
    parser.add_argument("--force_sample", "--force-sample", action="store_true",
                        help="training's --force_sample: every video counts as exactly --frames_upbound frames")
    parser.add_argument(
        "--check_images",
        "--check-images",
        choices=("decode", "exists", "none"),
        default="decode",
        help="how hard to check image files (default: decode each once)",
    )
    parser.add_argument(
        "--allow_outside_image_folder",
        "--allow-outside-image-folder",
        action="store_true",
        help="accept image paths that are absolute or climb out of --image_folder (as training's flag does)",
    )
    parser.add_argument("--num_workers", "--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument(
        "--max_examples", "--max-examples", type=int, default=5, help="offending records listed per problem"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
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
        allow_outside_image_folder=args.allow_outside_image_folder,
        frames_upbound=args.frames_upbound,
        force_sample=args.force_sample,
    )
    print(report.table())
    sys.stdout.flush()
    return 0 if report.ok else 1


if __name__ == "__main__":
    from llava.errors import run

    run(main)
