"""Generated small objects: one small coloured shape at a random place and size, as VQA.

The demo's shapes (`llava.data.demo`) fill most of the image and sit near its centre; here the one
shape is a small part of a larger image, anywhere in it, so a model must find it before it can
tell its form:

    python -m llava.data.small_objects --out playground/data/small_objects

writes into OUT the layout of `llava.data.demo` (launchers, model_vqa, image_ablation and eval_okvqa
take it unchanged):
    images/                 PNG files (train_*.png, eval_*.png), --image-size pixels square (default 64)
    pretrain.json           one caption record per training image ("A small red circle.")
    finetune.json           four records per training image, one question each: its colour, its shape,
                            "Is there a <its shape>?" (yes) and "Is there a <another shape>?" (no)
    eval_questions.jsonl    held-out questions (`category`: color, shape or presence)
    eval_questions.json     the same in the official VQA questions format
    eval_annotations.json   official VQA annotations: 10 identical human answers per question
    objects.json            every image's shape, colour and box (x0, y0, x1, y1 in pixels), for probes

Each held-out image gets three questions: its colour (6 answers), its shape (3: circle, square,
triangle) and "Is there a <shape>?" asking its own shape or another one with equal odds (yes / no).
The shape's extent (width of its box) is drawn uniformly from --min-extent to --max-extent of the
image side (default 15-35 %: 10-22 px at 64 px), its box anywhere inside the image.

`python -m llava.data.small_objects --baseline --out DIR` prints the majority-answer baseline.
"""

from __future__ import annotations

import argparse
import os
import random

from PIL import Image, ImageDraw

from llava.data import vqa_layout
from llava.data.demo import COLORS, SHAPES
from llava.records import write_json

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
CAPTION_PROMPTS = ("Describe the image briefly.", "What is in this picture?", "Give a short caption.")
QUESTIONS = {"color": "What color is the shape?", "shape": "What shape is in the image?"}


def draw_object(shape: str, color: str, image_size: int, rng: random.Random, min_extent: float, max_extent: float
                ) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """(image, box): one filled shape of a random extent at a random place, on a light background."""
    background = tuple(rng.randint(225, 255) for _ in range(3))
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    extent = rng.uniform(min_extent, max_extent) * image_size
    x0 = rng.uniform(0, image_size - extent)
    y0 = rng.uniform(0, image_size - extent)
    box = (x0, y0, x0 + extent, y0 + extent)
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((box[0] + box[2]) / 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
    return image, tuple(round(v, 2) for v in box)


def presence_question(asked: str) -> str:
    return f"Is there a {asked} in the image?"


def question_type(question: str) -> str | None:
    """'color', 'shape' or 'presence' for a question (prompt and <image> allowed), else None."""
    text = question.replace("<image>", "").strip().split("\n")[0]
    for kind, asked in QUESTIONS.items():
        if text == asked:
            return kind
    if text.startswith("Is there a "):
        return "presence"
    return None


def majority_baseline(finetune_path: str, annotations_path: str) -> dict:
    """Held-out accuracy of always giving the training data's most common answer per question type."""
    return vqa_layout.majority_baseline(finetune_path, annotations_path, question_type)


def _record(record_id: str, image: str, question: str, answer: str) -> dict:
    return {
        "id": record_id,
        "image": image,
        "conversations": [
            {"from": "human", "value": f"<image>\n{question}\n{SHORT_ANSWER_PROMPT}"},
            {"from": "gpt", "value": answer},
        ],
    }


def generate(out_dir: str, num_train: int = 3000, num_eval: int = 200, image_size: int = 64, seed: int = 0,
             min_extent: float = 0.15, max_extent: float = 0.35) -> dict:
    """Write the dataset; returns the paths written (plus "objects"). Same arguments, same bytes."""
    if not 0 < min_extent <= max_extent <= 1:
        raise ValueError(f"extents {min_extent}..{max_extent}: give 0 < --min-extent <= --max-extent <= 1")
    if num_train < 1 or num_eval < 2:
        raise ValueError(f"--num-train {num_train} / --num-eval {num_eval}: give at least 1 and 2")
    if image_size < 8:
        raise ValueError(f"--image-size {image_size}: give at least 8 pixels")
    rng = random.Random(seed)
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    objects = []

    def make(name: str) -> tuple[str, str]:
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        image, box = draw_object(shape, color, image_size, rng, min_extent, max_extent)
        image.save(os.path.join(image_dir, name))
        objects.append({"image": name, "shape": shape, "color": color, "box": list(box)})
        return shape, color

    pretrain, finetune = [], []
    for i in range(num_train):
        name = f"train_{i:05d}.png"
        shape, color = make(name)
        other = rng.choice([s for s in SHAPES if s != shape])
        pretrain.append({
            "id": f"cap-{i}",
            "image": name,
            "conversations": [
                {"from": "human", "value": "<image>\n" + rng.choice(CAPTION_PROMPTS)},
                {"from": "gpt", "value": f"A small {color} {shape}."},
            ],
        })
        # One question per record: asked together, a later answer could be read off an earlier one.
        finetune += [
            _record(f"qa-{i}-color", name, QUESTIONS["color"], color),
            _record(f"qa-{i}-shape", name, QUESTIONS["shape"], shape),
            _record(f"qa-{i}-yes", name, presence_question(shape), "yes"),
            _record(f"qa-{i}-no", name, presence_question(other), "no"),
        ]

    eval_lines, vqa_questions, annotations = [], [], []
    question_id = 0
    for i in range(num_eval):
        name = f"eval_{i:05d}.png"
        shape, color = make(name)
        asked = rng.choice([shape, rng.choice([s for s in SHAPES if s != shape])])
        for kind, question, answer in (
            ("color", QUESTIONS["color"], color),
            ("shape", QUESTIONS["shape"], shape),
            ("presence", presence_question(asked), "yes" if asked == shape else "no"),
        ):
            eval_lines.append({"question_id": question_id, "image": name,
                               "text": f"{question}\n{SHORT_ANSWER_PROMPT}", "category": kind})
            vqa_questions.append({"image_id": i, "question": question, "question_id": question_id})
            annotations.append({
                "image_id": i,
                "question_id": question_id,
                "question_type": kind,
                "answer_type": "yes/no" if kind == "presence" else "other",
                "answers": vqa_layout.human_answers(answer),
            })
            question_id += 1

    paths = vqa_layout.write_dataset(out_dir, image_dir, pretrain, finetune, eval_lines, vqa_questions, annotations)
    paths["objects"] = os.path.join(out_dir, "objects.json")
    write_json(paths["objects"], objects, indent=1)
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="playground/data/small_objects")
    parser.add_argument("--num-train", type=int, default=3000, help="training images (4 records each)")
    parser.add_argument("--num-eval", type=int, default=200, help="held-out images (3 questions each)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--min-extent", type=float, default=0.15, help="smallest shape, as a fraction of the side")
    parser.add_argument("--max-extent", type=float, default=0.35, help="largest shape, as a fraction of the side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", action="store_true",
                        help="print the majority-answer baseline of the data in --out (writes nothing)")
    args = parser.parse_args(argv)
    if args.baseline:
        vqa_layout.print_baseline(args.out, majority_baseline, f"python -m llava.data.small_objects --out {args.out}")
        return
    try:
        paths = generate(args.out, args.num_train, args.num_eval, args.image_size, args.seed, args.min_extent,
                         args.max_extent)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    print(f"wrote small-object data to {args.out}: {args.num_train} training images, "
          f"{args.num_eval * 3} held-out questions")
    for key, path in paths.items():
        print(f"  {key}: {path}")


if __name__ == "__main__":
    from llava.errors import run

    run(main)
