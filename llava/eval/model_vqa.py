"""Answer a benchmark's questions with a LLaVA checkpoint (official LLaVA's `model_vqa`, batched).

    python -m llava.eval.model_vqa --model-path checkpoints/llava-phi \
        --question-file playground/data/demo/eval_questions.jsonl \
        --image-folder playground/data/demo/images --answers-file answers.jsonl

Questions JSONL: `question_id, image, text[, category]`; `image` may be a list (each image at its own
<image> marker in `text`, or all before it) and a question may show a `video` (a path) instead. Answers JSONL (one line per question):
`question_id, prompt, text, answer_id, model_id, metadata`. Question ids already in the answers
file are skipped, so an interrupted run continues where it stopped; a file answered by another
--model-path or --image-ablation is refused (`--overwrite-answers` starts it over). Every image is
checked before generation; `--skip-bad-images` answers the other questions and records an unreadable
image's question as failed (`metadata.error`).

`--image-ablation blank|shuffle` asks the same questions without their images (a uniform image of the
same size, uniform video frames) or with another question's image, and records which in each answer's
`metadata`; scored against the real run it shows whether the model looks at the image
(`llava.eval.image_ablation`). The shuffle swaps every image (each of a multi-image question's too)
through one seeded derangement of the file's distinct images, and each video through one of its
distinct videos: `metadata.image_shown` / `video_shown` say what was shown.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time
import uuid
from typing import NamedTuple

from PIL import Image
from tqdm import tqdm

from llava import errors
from llava.errors import DataError
from llava.inference import GenerationSettings, InferenceEngine, get_model_name_from_path
from llava.mm_utils import (
    MAX_IMAGE_PIXELS, ImageOutsideFolder, ImageTooLarge, image_path_in_folder, load_image, probe_image,
    processor_mean_color,
)
from llava.records import describe, image_paths, question_problems, read_records, repeated_ids, video_path
from llava.video import VideoError, frame_total

logger = logging.getLogger(__name__)

ABLATIONS = ("none", "blank", "shuffle")


# -- image ablation ------------------------------------------------------------------------------
class ShuffledMedia(NamedTuple):
    """--image-ablation shuffle's two derangements: image -> the image shown instead, video -> the video."""

    images: dict[str, str]
    videos: dict[str, str]


def derangement(paths: set[str], seed: int) -> dict[str, str]:
    """A seeded cycle through `paths`: each is replaced by the next in a random order (the last by the first).

    One cycle through all of them, so none maps to itself, and the map depends only on the set and the
    seed (every chunk of a split run derives it from the whole question file and gets the same map).
    """
    order = sorted(paths)
    random.Random(seed).shuffle(order)
    return {path: order[(i + 1) % len(order)] for i, path in enumerate(order)}


def distinct_media(questions: list[dict]) -> tuple[set[str], set[str]]:
    """The distinct image paths (single images and those of multi-image questions alike) and video paths."""
    return {name for q in questions for name in image_paths(q)}, {video_path(q) for q in questions if video_path(q)}


def shuffle_problem(questions: list[dict]) -> str | None:
    """Why the shuffle cannot swap these questions' images or videos, or None.

    Images are swapped only among images and videos only among videos, so each kind a question shows
    needs 2 distinct files in the question file; a file of text-only questions has nothing to shuffle.
    """
    images, videos = distinct_media(questions)
    if len(images) < 2 and (images or not videos):
        return (f"needs questions with at least 2 distinct images to swap between; the question file has "
                f"{len(images)} (add questions showing other images)")
    if len(videos) == 1:
        return ("needs questions with at least 2 distinct videos to swap between (a video is replaced only by "
                "another video); the question file has 1 (add questions showing other videos, or take its video "
                "questions out of the file)")
    return None


def shuffled_media(questions: list[dict], seed: int = 0) -> ShuffledMedia:
    """The derangements of the questions' distinct images (single ones and those of multi-image questions
    alike) and, apart, of their distinct videos: no image or video is shown in its own place, and a video
    is never replaced by an image or an image by a video."""
    problem = shuffle_problem(questions)
    if problem:
        raise ValueError(f"--image-ablation shuffle {problem}")
    images, videos = distinct_media(questions)
    return ShuffledMedia(derangement(images, seed), derangement(videos, seed))


def shown_question(question: dict, shuffled: ShuffledMedia) -> dict:
    """`question` with the images and video the shuffle shows in their place.

    A multi-image question keeps its number of images (its <image> markers still match), each replaced by
    the image it maps to in the file's one derangement, so an image is swapped alike wherever it appears
    (no image sits in its own place, though one of the question's own may land at another of its places).
    """
    shown = dict(question)
    image = question.get("image")
    if isinstance(image, (list, tuple)):
        shown["image"] = [shuffled.images[name] for name in image]
    elif image:
        shown["image"] = shuffled.images[image]
    if video_path(question):
        shown["video"] = shuffled.videos[video_path(question)]
    return shown


def shown_metadata(shown: dict) -> dict:
    """What a shuffled answer was shown, in the question's own form: `image_shown` (a path, or a list of
    them for a multi-image question) and `video_shown`."""
    fields = {"image_shown": shown.get("image"), "video_shown": video_path(shown)}
    return {key: value for key, value in fields.items() if value}


def blank_image(image: Image.Image, image_processor) -> Image.Image:
    """A uniform image of `image`'s size in the image processor's mean colour.

    Mean grey rather than black or white: normalised by the processor it becomes (almost exactly)
    zero in every channel, the input that carries no signal, and the colour 'pad' aspect-ratio
    padding already uses, so the model sees no content but nothing out of its training range.
    """
    return Image.new("RGB", image.size, processor_mean_color(image_processor))


def check_answers_file(path: str, ablation: str, model_path: str) -> None:
    """Refuse to add to an answers file written by another model or under another --image-ablation.

    A file holding two models' answers (or two conditions) scores as neither, and nothing in it tells
    them apart afterwards. Files from before `metadata.model_path` was written are matched by `model_id`.
    """
    if not os.path.exists(path):
        return
    model = os.path.abspath(model_path)
    start_over = "give another --answers-file, or pass --overwrite-answers to start this one over"
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            try:
                answer = json.loads(line)
                metadata = answer.get("metadata") or {}
            except (json.JSONDecodeError, AttributeError):
                continue
            found = metadata.get("model_path")
            same = found == model if found else answer.get("model_id") in (None, get_model_name_from_path(model))
            if not same:
                raise DataError(
                    f"{path}:{line_no} was answered by {found or answer.get('model_id')!r}, this run's --model-path "
                    f"is {model}; {start_over} (answers of two models in one file score as neither)"
                )
            found = metadata.get("image_ablation", "none")
            if found != ablation:
                raise DataError(
                    f"{path}:{line_no} was answered with --image-ablation {found}, this run uses {ablation}; "
                    f"{start_over} so conditions do not mix"
                )


def warn_duplicate_question_ids(questions: list[dict], path: str) -> None:
    """Repeated question ids are answered as given, but said: the answers file cannot tell their answers apart."""
    repeats = repeated_ids(q["question_id"] for q in questions)
    if repeats:
        logger.warning("%s: %d question id(s) appear more than once (%s); each copy is answered, and scorers "
                       "keyed by question_id will see only one answer per id", path, *repeats)


def get_chunk(items: list, num_chunks: int, chunk_idx: int) -> list:
    """The `chunk_idx`-th of `num_chunks` contiguous slices (official LLaVA's split for multi-GPU runs)."""
    if not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"--chunk-idx {chunk_idx} must be in [0, --num-chunks={num_chunks})")
    size = math.ceil(len(items) / num_chunks) if items else 0
    return items[chunk_idx * size : (chunk_idx + 1) * size] if size else []


def read_questions(path: str) -> list[dict]:
    """The question file's records (JSON Lines, or a JSON list), each checked by `question_problems`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--question-file {path}: file not found")
    questions = read_records(path)
    for index, record in enumerate(questions):
        for problem in question_problems(record):
            raise DataError(f"{path}: question {describe(index, record, 'question_id')} {problem.message}")
    return questions


def answered_ids(path: str) -> set:
    """Question ids already answered in `path`; a half-written last line (killed run) is ignored."""
    done = set()
    if not os.path.exists(path):
        return done
    with open(path) as f:
        for line in f:
            try:
                done.add(json.loads(line)["question_id"])
            except (json.JSONDecodeError, KeyError):
                continue
    return done


def _truncate_partial_line(path: str) -> None:
    """Drop an unterminated last line so appended answers start on a fresh line."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def resolve_images(questions: list[dict], image_folder: str, skip_missing: bool, allow_outside: bool = False) -> list[dict]:
    """Check every image exists (and lies inside --image-folder) before spending time on generation."""
    kept, missing = [], []
    for q in questions:
        for name in media_of(q):
            try:
                path = image_path_in_folder(image_folder, name, "--allow-outside-image-folder",
                                            "--image-folder", allow_outside)
            except ImageOutsideFolder as exc:
                raise ValueError(f"question {q['question_id']!r}: {exc}") from None
            if not os.path.exists(path):
                missing.append((q["question_id"], path))
                break
        else:
            kept.append(q)
    if missing and not skip_missing:
        qid, path = missing[0]
        raise FileNotFoundError(
            f"image for question {qid!r} not found: {path} ({len(missing)} question(s) have missing images). "
            "Check --image-folder, or pass --skip-missing-images to leave them unanswered."
        )
    if missing:
        logger.warning(
            "skipping %d question(s) whose image is missing (first: %r -> %s)", len(missing), *missing[0]
        )
    return kept


def unreadable_images(questions: list[dict], image_folder: str, max_pixels: int | None) -> dict:
    """question_id -> why its image cannot be used, from each image's header (nothing decoded).

    Run over the questions still to answer, before the model loads: a file that is no image, or is too
    large, stops the run at once instead of at its batch, hours in, on every re-run alike.
    """
    bad = {}
    with_images = [q for q in questions if media_of(q)]
    for q in tqdm(with_images, desc="checking images", unit="img", disable=len(with_images) < 1000):
        try:
            for name in image_paths(q):
                probe_image(os.path.join(image_folder, name), max_pixels=max_pixels)
            if video_path(q) and not frame_total(os.path.join(image_folder, video_path(q))):
                raise VideoError(f"video {os.path.join(image_folder, video_path(q))} has no frames")
        except (OSError, ValueError) as exc:
            bad[q["question_id"]] = exc.hint("--max-image-pixels") if isinstance(exc, ImageTooLarge) else str(exc)
    return bad


def media_of(question: dict) -> list[str]:
    """The question's image paths, or its video's."""
    return image_paths(question) + ([video_path(question)] if video_path(question) else [])


class BadImage(ValueError):
    """A question's image could not be loaded; `question_id` names the question."""

    def __init__(self, question_id, reason):
        super().__init__(f"question {question_id!r}: {reason}")
        self.question_id, self.reason = question_id, reason


def prepare_batch(
    engine: InferenceEngine, batch: list[dict], image_folder: str, max_pixels: int | None = MAX_IMAGE_PIXELS,
    ablation: str = "none", shuffled: ShuffledMedia | None = None,
) -> list:
    """Prompts and pixels for a batch of questions: the batch's images go through the image processor in one
    call, its prompts through the tokenizer in one call.

    `ablation` 'blank' replaces each image (and each video frame) by `blank_image`; 'shuffle' loads the
    images and video `shuffled` shows in their place (`shown_question`)."""
    loaded, videos = [], {}  # each question's images (PIL); question index -> its video's frames
    for index, q in enumerate(batch):
        media = shown_question(q, shuffled) if ablation == "shuffle" else q
        try:
            images = [load_image(os.path.join(image_folder, name), max_pixels=max_pixels)
                      for name in image_paths(media)]
            if video_path(media):
                blank = (lambda frame: blank_image(frame, engine.image_processor)) if ablation == "blank" else None
                videos[index] = engine.process_video(os.path.join(image_folder, video_path(media)), blank)
        except (OSError, ValueError) as exc:
            reason = exc.hint("--max-image-pixels") if isinstance(exc, ImageTooLarge) else str(exc)
            raise BadImage(q["question_id"], reason) from exc
        if ablation == "blank":
            images = [blank_image(image, engine.image_processor) for image in images]
        loaded.append(images)
    present = [image for images in loaded for image in images]
    pixels = iter(engine.process_images(present) if present else [])
    convs = []
    for index, (q, images) in enumerate(zip(batch, loaded)):
        convs.append(engine.new_conversation())
        engine.add_user_turn(convs[-1], q["text"], has_image=len(images) + (index in videos))
    token_ids = engine.tokenize(convs)
    prepared = []
    for index, (q, images, conv, ids) in enumerate(zip(batch, loaded, convs, token_ids)):
        shown_here = [next(pixels) for _ in images] + ([videos[index]] if index in videos else [])
        visual = shown_here[0] if len(shown_here) == 1 and index not in videos else shown_here or None
        try:
            prepared.append(engine.prepare(conv, visual, input_ids=ids))
        except ValueError as exc:
            raise ValueError(f"question {q['question_id']!r}: {exc}") from exc
    return prepared


def eval_model(args, engine: InferenceEngine | None = None) -> dict:
    """Answer the questions of `args`; `engine`: a model already loaded (llava.eval.image_ablation reuses one)."""
    ablation = getattr(args, "image_ablation", "none")
    skip_bad = getattr(args, "skip_bad_images", False)
    every = read_questions(args.question_file)
    warn_duplicate_question_ids(every, args.question_file)
    # From the whole file, before chunking: every chunk of a split run shows the same swapped images and videos.
    shuffled = shuffled_media(every, args.ablation_seed) if ablation == "shuffle" else None
    chunk = get_chunk(every, args.num_chunks, args.chunk_idx)
    questions = resolve_images(chunk, args.image_folder, args.skip_missing_images, args.allow_outside_image_folder)
    skipped_missing = len(chunk) - len(questions)
    overwrite = getattr(args, "overwrite_answers", False)
    if not overwrite:
        check_answers_file(args.answers_file, ablation, args.model_path)
    done = set() if overwrite else answered_ids(args.answers_file)
    todo = [q for q in questions if q["question_id"] not in done]
    max_pixels = args.max_image_pixels or None
    # The images and videos this run will show: under the shuffle, other questions' ones.
    shown = [shown_question(q, shuffled) for q in todo] if ablation == "shuffle" else todo
    bad = unreadable_images(shown, args.image_folder, max_pixels)
    if bad and not skip_bad:
        qid, reason = next(iter(bad.items()))
        raise DataError(f"{len(bad)} question(s) have an image that cannot be read, e.g. question {qid!r}: {reason}. "
                        "Fix or remove them, or pass --skip-bad-images to answer the others and record these as failed")

    if engine is None:
        engine = InferenceEngine.from_pretrained(
            args.model_path, args.model_base, args.conv_mode, load_4bit=args.load_4bit, load_8bit=args.load_8bit
        )
    model_id = get_model_name_from_path(args.model_path)
    model_path = os.path.abspath(args.model_path)
    settings = GenerationSettings(args.temperature, args.top_p, args.num_beams, args.max_new_tokens)

    def answer_line(q: dict, text: str, **extra) -> str:
        metadata = {"image_ablation": ablation, "model_path": model_path, **extra}
        if ablation == "shuffle":
            metadata.update(shown_metadata(shown_question(q, shuffled)))
        return json.dumps({"question_id": q["question_id"], "prompt": q["text"], "text": text,
                           "answer_id": uuid.uuid4().hex, "model_id": model_id, "metadata": metadata}) + "\n"

    os.makedirs(os.path.dirname(os.path.abspath(args.answers_file)), exist_ok=True)
    if overwrite and os.path.exists(args.answers_file):
        os.remove(args.answers_file)  # only once every check passed and the model loaded: a failed start keeps it
    _truncate_partial_line(args.answers_file)
    failed = 0
    start = time.perf_counter()
    with open(args.answers_file, "a") as out, tqdm(total=len(todo), desc="model_vqa", unit="q") as bar:
        for i in range(0, len(todo), args.batch_size):
            batch = todo[i : i + args.batch_size]
            while True:
                for q in [q for q in batch if q["question_id"] in bad]:
                    # An empty answer, which scorers count as wrong, with the reason beside it.
                    out.write(answer_line(q, "", error=bad[q["question_id"]]))
                    logger.warning("question %r recorded as failed: %s", q["question_id"], bad[q["question_id"]])
                    failed += 1
                batch = [q for q in batch if q["question_id"] not in bad]
                if not batch:
                    break
                try:
                    prepared = prepare_batch(engine, batch, args.image_folder, max_pixels, ablation, shuffled)
                    break
                except BadImage as exc:  # damaged past its header: found only when decoded
                    if not skip_bad:
                        raise DataError(f"{exc}. Pass --skip-bad-images to answer the other questions and record "
                                        "this one as failed") from None
                    bad[exc.question_id] = exc.reason
            answers = engine.generate(prepared, settings) if batch else []
            for q, answer in zip(batch, answers):
                out.write(answer_line(q, answer))
            out.flush()  # each finished batch survives an interruption
            bar.update(len(todo[i : i + args.batch_size]))
    elapsed = time.perf_counter() - start
    answered = len(todo) - failed
    summary = {
        "image_ablation": ablation,
        "answered": answered,
        "failed_image": failed,
        "already_done": len(questions) - len(todo),
        "skipped_missing_image": skipped_missing,
        "seconds": elapsed,  # unrounded: benchmarks read sub-second runs from here; the line below rounds
        "questions_per_second": answered / elapsed if answered and elapsed > 0 else None,
    }
    print(
        f"model_vqa: answered {summary['answered']} question(s) in {elapsed:.1f}s "
        f"({summary['questions_per_second'] or 0:.2f} q/s, batch size {args.batch_size}); "
        f"{summary['already_done']} already in {args.answers_file}; "
        f"{summary['skipped_missing_image']} skipped for missing images"
        + (f"; {failed} recorded as failed for unreadable images (metadata.error; delete those lines to retry)"
           if failed else "")
        + ("" if ablation == "none" else f"; image ablation: {ablation}")
    )
    return summary


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Loading, decoding and image flags, shared with llava.eval.image_ablation."""
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-base", default=None, help="base LLM for LoRA / stage-1 projector checkpoints")
    parser.add_argument("--image-folder", default="")
    parser.add_argument("--question-file", required=True)
    parser.add_argument("--conv-mode", default=None, help="conversation template (default: the one the checkpoint was trained with, else the backbone's)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy decoding")
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8, help="questions per generate() call (left-padded)")
    parser.add_argument("--load-4bit", action="store_true")
    parser.add_argument("--load-8bit", action="store_true")
    parser.add_argument(
        "--skip-missing-images", action="store_true", help="leave questions whose image is missing unanswered (counted)"
    )
    parser.add_argument(
        "--skip-bad-images", action="store_true",
        help="answer the other questions when an image cannot be read, and record its question as failed "
             "(empty text, the reason in metadata.error)",
    )
    parser.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS,
                        help="refuse images with more pixels than this before decoding them (0: no limit)")
    parser.add_argument("--allow-outside-image-folder", action="store_true",
                        help="accept image paths that are absolute or climb out of --image-folder with '..'")
    parser.add_argument("--ablation-seed", type=int, default=0, help="seed of --image-ablation shuffle's derangement")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(parser)
    parser.add_argument("--answers-file", required=True)
    parser.add_argument("--overwrite-answers", action="store_true",
                        help="start --answers-file over instead of continuing it (it may hold another model's answers)")
    parser.add_argument("--num-chunks", type=int, default=1)
    parser.add_argument("--chunk-idx", type=int, default=0)
    parser.add_argument(
        "--image-ablation", choices=ABLATIONS, default="none",
        help="none: the questions' images; blank: a uniform mean-grey image of the same size instead; shuffle: "
             "another question's image (a fixed, seeded derangement of the file's distinct images, applied to "
             "each image of a multi-image question) or video (one of the file's distinct videos)",
    )
    return parser


def parse_cli(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Logging and arguments of model_vqa and of the tools that run it (llava.eval.image_ablation)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise SystemExit("--batch-size must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_cli(build_parser(), argv)
    with errors.exit_on_clear_error("model_vqa"):  # bad input: a message, not a traceback
        return eval_model(args)


if __name__ == "__main__":
    errors.run(main)
