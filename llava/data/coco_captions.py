"""COCO captions (captions_{train,val}2017.json) -> LLaVA stage-1 (pretraining) JSON.

Records follow the `plain` template layout: a human turn that is the image (optionally with a
captioning instruction) and a gpt turn that is the caption:

  {"id": "391895", "image": "train2017/000000391895.jpg",
   "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A man ..."}]}

--per image: one record per image (its first caption, or a seeded random one), in the order of
the file's "images" list. --per caption: one record per caption, in annotation order.
Random choices hash (seed, record) so they do not depend on which other records are present.

  python -m llava.data.coco_captions --captions-file captions_train2017.json --image-prefix train2017/ \\
      --output coco_captions_stage1.json
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os

from tqdm import tqdm

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.data.io import SkipLog, run_cli
from llava.errors import DataError
from llava.records import JsonArrayWriter, describe, iter_records

logger = logging.getLogger("llava.data")

CAPTION_PROMPTS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Write a short caption for this picture.",
    "Summarize what you see in the image in one sentence.",
    "Give a concise description of the photo.",
    "What does this image show? Answer briefly.",
    "Write a one-sentence summary of the scene.",
    "Caption the image.",
    "Briefly describe the contents of this photo.",
    "Offer a succinct account of what the picture depicts.",
)


def stable_index(seed: int, key: str, n: int) -> int:
    """A reproducible pseudo-random index in [0, n) for (seed, key), independent of call order."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


def clean_caption(text) -> str:
    """Collapse whitespace (COCO captions carry stray newlines and double spaces)."""
    return " ".join(text.split()) if isinstance(text, str) else ""


def make_record(record_id: str, image: str, caption: str, instruction: str | None) -> dict:
    prompt = DEFAULT_IMAGE_TOKEN if instruction is None else f"{DEFAULT_IMAGE_TOKEN}\n{instruction}"
    return {
        "id": record_id,
        "image": image,
        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": caption}],
    }


def _progress(path: str, desc: str) -> tqdm:
    return tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc=desc, dynamic_ncols=True)


def read_images(path: str) -> tuple[list[int], dict[int, str]]:
    """Image ids in file order and id -> file_name, streamed from the "images" list."""
    order, names = [], {}
    with _progress(path, "images") as bar:
        for index, image in enumerate(iter_records(path, key="images", on_bytes=bar.update)):
            if not isinstance(image, dict) or "id" not in image or not image.get("file_name"):
                raise DataError(
                    f"{path}: images {describe(index, image)} lacks 'id' or 'file_name'; "
                    "is this a COCO captions file (captions_train2017.json)?"
                )
            if image["id"] not in names:
                order.append(image["id"])
            names[image["id"]] = image["file_name"]
    return order, names


def convert(
    captions_file: str,
    output: str,
    per: str = "image",
    caption_choice: str = "first",
    instruction: str = "none",
    seed: int = 0,
    image_prefix: str = "",
    image_folder: str | None = None,
    skip_invalid: bool = False,
) -> dict:
    if (
        per not in ("image", "caption")
        or caption_choice not in ("first", "random")
        or instruction not in ("none", "random")
    ):
        raise DataError("per must be image|caption, caption choice first|random, instruction none|random")
    if not os.path.isfile(captions_file):
        raise DataError(f"{captions_file}: captions file not found")
    if image_folder and not os.path.isdir(image_folder):
        raise DataError(f"{image_folder}: --image-folder is not a folder")
    order, names = read_images(captions_file)
    skips = SkipLog()
    exists: dict[str, bool] = {}
    read = 0

    def reject(reason: str, where: str, message: str) -> None:
        if not skip_invalid:
            raise DataError(f"{where}: {message}. Fix the file, or pass --skip-invalid to skip and count such captions")
        skips.add(reason, where, message)

    def image_path(image_id) -> str | None:
        path = image_prefix + names[image_id]
        if image_folder:
            if path not in exists:
                exists[path] = os.path.isfile(os.path.join(image_folder, path))
            if not exists[path]:
                return None
        return path

    def prompt_for(record_id: str) -> str | None:
        if instruction == "none":
            return None
        return CAPTION_PROMPTS[stable_index(seed, f"prompt:{record_id}", len(CAPTION_PROMPTS))]

    keep_all = per == "image" and caption_choice == "random"
    captions: dict = {}  # image_id -> [captions] (or just the first one)
    per_image_count: dict = {}
    with JsonArrayWriter(output) as out, _progress(captions_file, "captions") as bar:
        for index, ann in enumerate(iter_records(captions_file, key="annotations", on_bytes=bar.update)):
            read += 1
            where = f"{captions_file}: annotations {describe(index, ann)}"
            if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
                reject("malformed_caption", where, "lacks 'image_id' or 'caption'")
                continue
            image_id, caption = ann["image_id"], clean_caption(ann["caption"])
            if image_id not in names:
                reject("unknown_image", where, f"image_id {image_id} is not in the file's images list")
                continue
            if not caption:
                reject("empty_caption", where, "the caption is empty")
                continue
            if per == "caption":
                k = per_image_count[image_id] = per_image_count.get(image_id, -1) + 1
                record_id = str(ann["id"]) if ann.get("id") is not None else f"{image_id}_{k}"
                path = image_path(image_id)
                if path is None:
                    skips.add("missing_image", where, os.path.join(image_folder, image_prefix + names[image_id]))
                    continue
                out.write(make_record(record_id, path, caption, prompt_for(record_id)))
            elif keep_all:
                captions.setdefault(image_id, []).append(caption)
            else:
                captions.setdefault(image_id, caption)

        if per == "image":
            for image_id in tqdm(order, desc="records", unit="img", dynamic_ncols=True):
                found = captions.get(image_id)
                where = f"image_id {image_id}"
                if not found:
                    skips.add("image_without_caption", where)
                    continue
                path = image_path(image_id)
                if path is None:
                    skips.add("missing_image", where, os.path.join(image_folder, image_prefix + names[image_id]))
                    continue
                if keep_all:
                    found = found[stable_index(seed, f"caption:{image_id}", len(found))]
                record_id = str(image_id)
                out.write(make_record(record_id, path, found, prompt_for(record_id)))
        written = out.count
    return {"read": read, "images": len(order), "written": written, "skips": skips}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert_coco_captions_to_llava",
        description="Convert COCO captions to LLaVA stage-1 (pretraining, plain template) JSON.",
    )
    parser.add_argument("--captions-file", required=True, help="captions_train2017.json or captions_val2017.json")
    parser.add_argument("--output", required=True, help="output LLaVA JSON")
    parser.add_argument(
        "--per", choices=("image", "caption"), default="image", help="one record per image or per caption"
    )
    parser.add_argument(
        "--caption",
        choices=("first", "random"),
        default="first",
        help="which caption an image record uses (--per image)",
    )
    parser.add_argument(
        "--instruction",
        choices=("none", "random"),
        default="none",
        help='human turn: just "<image>", or "<image>\\n" + a captioning prompt drawn from a fixed list',
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for random captions/instructions")
    parser.add_argument("--image-prefix", default="", help="prepended to file_name, e.g. train2017/")
    parser.add_argument("--image-folder", help="drop (and count) records whose image is not in this folder")
    parser.add_argument("--skip-invalid", action="store_true", help="skip and count bad captions instead of stopping")
    return parser


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = convert(
        captions_file=args.captions_file,
        output=args.output,
        per=args.per,
        caption_choice=args.caption,
        instruction=args.instruction,
        seed=args.seed,
        image_prefix=args.image_prefix,
        image_folder=args.image_folder,
        skip_invalid=args.skip_invalid,
    )
    logger.info("wrote %s", args.output)
    logger.info(
        "COCO captions: read %d captions of %d images, wrote %d records, %s",
        result["read"],
        result["images"],
        result["written"],
        result["skips"].summary(),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    from llava.errors import run

    run(main)
