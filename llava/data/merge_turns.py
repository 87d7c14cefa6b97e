"""Merge the records of one image into one multi-turn conversation, as LLaVA-1.5's mix665k holds VQA data.

VQA-style converters write one record per question; official LLaVA-1.5 trains on the questions of an
image as the turns of one conversation. One forward pass of the image then trains every answer, and a
question can be answered from an earlier turn as well as from the image, in an order that varies
between images with `--order shuffle`.

Records are grouped by their image (the same path, or the same list of paths for multi-image
records), in the order each image first appears; records without an image, and video records, are
written unchanged. The first turn of a merged record keeps its `<image>` marker(s); the markers of
later records' turns are dropped, so each image still has exactly one marker. A merged record takes
the first record's id plus `+N` (N more merged into it); `--max-turns` caps the questions per record
(an image with more gets several records).

  python -m llava.data.merge_turns --data_path finetune.json --out finetune_merged.json [--order shuffle --seed 0]
"""

from __future__ import annotations

import argparse
import logging
import random
from collections import defaultdict

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.data.io import run_cli
from llava.errors import DataError
from llava.records import JsonArrayWriter, image_paths, iter_records, video_path

logger = logging.getLogger("llava.data")


def image_key(record: dict) -> tuple | None:
    """What groups records: their image path(s), or None for a record that is not merged."""
    if video_path(record) is not None or not image_paths(record):
        return None
    return tuple(image_paths(record))


def without_markers(turn: dict) -> dict:
    """A copy of `turn` with its `<image>` markers (and the newline after each) removed."""
    value = turn["value"].replace(DEFAULT_IMAGE_TOKEN + "\n", "").replace(DEFAULT_IMAGE_TOKEN, "")
    return {**turn, "value": value.strip()}


def merge(records: list[dict]) -> dict:
    """One conversation of `records`' turns in their order; only the first record's image markers stay."""
    turns = list(records[0]["conversations"])
    for record in records[1:]:
        turns += [without_markers(turn) if turn["from"] in ("human", "user") else turn
                  for turn in record["conversations"]]
    merged = {key: value for key, value in records[0].items() if key != "conversations"}
    merged["id"] = f"{records[0].get('id', '')}+{len(records) - 1}" if len(records) > 1 else records[0].get("id")
    merged["conversations"] = turns
    return merged


def merge_records(records, order: str = "file", seed: int = 0, max_turns: int | None = None) -> list[dict]:
    """Records grouped by image and merged (see the module docstring); `order`: "file" or "shuffle"."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    out: list = []  # merged records and group keys, in first-appearance order
    for record in records:
        key = image_key(record)
        if key is None:
            out.append(record)
            continue
        if key not in groups:
            out.append(key)
        groups[key].append(record)
    rng = random.Random(seed)
    merged = []
    for item in out:
        if not isinstance(item, tuple):
            merged.append(item)
            continue
        group = groups[item]
        if order == "shuffle":
            rng.shuffle(group)
        step = max_turns or len(group)
        merged.extend(merge(group[i : i + step]) for i in range(0, len(group), step))
    return merged


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", "--data-path", required=True, help="LLaVA records (JSON or JSONL)")
    parser.add_argument("--out", required=True, help="the merged records (a JSON list)")
    parser.add_argument("--order", choices=("file", "shuffle"), default="file",
                        help="turn order within an image: as in the file, or shuffled per image (seeded)")
    parser.add_argument("--seed", type=int, default=0, help="--order shuffle's seed")
    parser.add_argument("--max-turns", "--max_turns", type=int, default=None,
                        help="most questions merged into one record (default: all of an image's)")
    args = parser.parse_args(argv)
    if args.max_turns is not None and args.max_turns < 1:
        raise DataError(f"--max-turns {args.max_turns}: give 1 or more questions per record")
    records = list(iter_records(args.data_path))
    merged = merge_records(records, args.order, args.seed, args.max_turns)
    with JsonArrayWriter(args.out) as writer:
        for record in merged:
            writer.write(record)
    logger.info("%d records -> %d in %s (%d images merged)", len(records), len(merged), args.out,
                sum(1 for r in merged if image_key(r) is not None))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
