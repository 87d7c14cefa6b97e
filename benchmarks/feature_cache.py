"""Stage-1 training steps/s with the vision tower run every step vs with cached tower outputs.

Same model, same batches, a real training step each time: the dataset and collator build the
batch (JPEG decode and CLIP preprocessing when not cached; a memory-mapped read when cached),
then forward, backward and an AdamW step on the projector, as `--tune_mm_mlp_adapter True`
trains. The cache's one-off build time (decode + tower over every image, written to disk) is
reported too, with the number of steps after which it has paid for itself.

Sizes ("cpu" suite): a CLIP-like tower (hidden 384, 4 layers, 224 px, patch 16 -> 196 patches)
and a small Phi (hidden 256, 2 layers), 640x480 JPEG photos-like images, batch 8.

    python -m benchmarks.feature_cache [--repeats 3] [--suite cpu|gpu] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time

import torch

NAME = "feature_cache"
TARGET = 2.0

SUITES = {
    "cpu": dict(tower_hidden=384, tower_layers=4, image_size=224, patch_size=16, llm_hidden=256, llm_layers=2,
                images=32, image_width=640, image_height=480, batch_size=8, steps=4, warmup_steps=1,
                dtype="float32"),
    # Not measured by the author (no GPU at hand): CLIP-L/336-shaped tower, a phi-2-wide 4-layer LLM.
    "gpu": dict(tower_hidden=1024, tower_layers=24, image_size=336, patch_size=14, llm_hidden=2560, llm_layers=4,
                images=512, image_width=640, image_height=480, batch_size=32, steps=10, warmup_steps=2,
                dtype="bfloat16"),
}


# -- data and model ------------------------------------------------------------------------------
def write_images(folder: str, count: int, width: int, height: int, seed: int = 0) -> list[dict]:
    """Photo-sized JPEGs (gradients, shapes and noise, so they do not compress to nothing) + caption records."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    colours = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (240, 210, 30)}
    records = []
    for n in range(count):
        y = np.linspace(0, 1, height)[:, None, None]
        base = (np.array([rng.randrange(256) for _ in range(3)]) * (0.5 + 0.5 * y)).astype(np.float32)
        pixels = np.clip(base + noise.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        name, colour = rng.choice(sorted(colours.items()))
        x0, y0 = rng.randrange(width // 2), rng.randrange(height // 2)
        draw.ellipse((x0, y0, x0 + width // 3, y0 + height // 3), fill=colour)
        file = f"img_{n:05d}.jpg"
        image.save(os.path.join(folder, file), quality=90)
        records.append({"id": f"cap-{n}", "image": file, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image briefly."},
            {"from": "gpt", "value": f"A {name} ellipse on a textured background."},
        ]})
    return records


def prepare(workdir: str, config: dict) -> list[str]:
    """Tiny checkpoints and data under `workdir`; returns the stage-1 training arguments."""
    from llava.model.tiny import save_tiny_llm, save_tiny_vision_tower

    clip, llm, images = (os.path.join(workdir, d) for d in ("clip", "llm", "images"))
    save_tiny_vision_tower(clip, config["image_size"], config["patch_size"], config["tower_hidden"],
                           config["tower_layers"])
    save_tiny_llm("phi", llm, config["llm_hidden"], config["llm_layers"])
    os.makedirs(images)
    records = write_images(images, config["images"], config["image_width"], config["image_height"])
    data = os.path.join(workdir, "pretrain.json")
    with open(data, "w") as f:
        json.dump(records, f)
    return [
        "--model_name_or_path", llm, "--vision_tower", clip, "--data_path", data, "--image_folder", images,
        "--version", "plain", "--tune_mm_mlp_adapter", "True", "--mm_projector_type", "mlp2x_gelu",
        "--per_device_train_batch_size", str(config["batch_size"]), "--learning_rate", "1e-3",
        "--model_max_length", "512", "--output_dir", os.path.join(workdir, "out"), "--report_to", "none",
        *(["--bf16", "True"] if config["dtype"] == "bfloat16" else []),
    ]


def build(train_args: list[str]):
    """(model, training_args) exactly as `llava.train.train` builds them for stage 1."""
    from llava.train.arguments import parse_args, resolve_train_modules
    from llava.train.recipes import build_model

    model_args, data_args, training_args = parse_args(train_args)
    model, tokenizer = build_model(model_args, data_args, training_args, resolve_train_modules(model_args, training_args))
    return model.to(training_args.device), tokenizer, data_args, training_args


# -- measuring -----------------------------------------------------------------------------------
def steps_per_second(model, tokenizer, data_args, training_args, config: dict) -> float:
    """A real stage-1 loop (dataset -> collator -> forward/backward -> AdamW) over the same shuffled batches."""
    from torch.utils.data import DataLoader

    from llava.train.train import build_data

    train_set, _, _, collator = build_data(data_args, training_args, tokenizer, model, "plain")
    order = torch.Generator().manual_seed(0)
    loader = DataLoader(train_set, batch_size=config["batch_size"], shuffle=True, generator=order,
                        collate_fn=collator, drop_last=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    device = training_args.device

    def batches():
        while True:
            yield from loader

    stream = batches()
    start = None
    for step in range(config["warmup_steps"] + config["steps"]):
        if step == config["warmup_steps"]:
            _sync(device)
            start = time.perf_counter()
        batch = {k: v.to(device) for k, v in next(stream).items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return config["steps"] / (time.perf_counter() - start)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run(suite: str = "cpu", repeats: int = 3, config: dict | None = None) -> list[dict]:
    """Rows per the benchmark contract; `config` overrides the suite's sizes (tests use a toy size)."""
    from llava.train import feature_cache

    config = {**SUITES[suite], **(config or {})}
    with tempfile.TemporaryDirectory(prefix="bench-feature-cache-") as workdir:
        train_args = prepare(workdir, config)
        model, tokenizer, data_args, training_args = build(train_args)
        tower = model.get_vision_tower()
        processor = tower.load_image_processor()
        paths = [os.path.join(data_args.image_folder, f) for f in sorted(os.listdir(data_args.image_folder))]
        tower_steps, cached_steps, build_seconds = [], [], []
        for repeat in range(repeats):
            training_args.vision_feature_cache = None
            tower_steps.append(steps_per_second(model, tokenizer, data_args, training_args, config))
            directory = os.path.join(workdir, f"cache-{repeat}")  # a fresh one: each repeat times a full build
            start = time.perf_counter()
            feature_cache.ensure(directory, tower, processor, data_args.image_aspect_ratio, paths,
                                 batch_size=config["batch_size"], device=training_args.device)
            _sync(training_args.device)
            build_seconds.append(time.perf_counter() - start)
            training_args.vision_feature_cache = directory
            cached_steps.append(steps_per_second(model, tokenizer, data_args, training_args, config))

    shown = {**config, "patches": (config["image_size"] // config["patch_size"]) ** 2, "backbone": "phi",
             "projector": "mlp2x_gelu", "threads": torch.get_num_threads(), "device": str(training_args.device)}
    ratios = [c / t for c, t in zip(cached_steps, tower_steps)]
    # Steps after which the one-off build has paid for itself: build time / time saved per step.
    break_even = [b / max(1 / t - 1 / c, 1e-9) for b, t, c in zip(build_seconds, tower_steps, cached_steps)]

    def row(case, metric, values, unit, **extra):
        return {"benchmark": NAME, "case": case, "metric": metric, "value": statistics.median(values),
                "unit": unit, "values": values, "config": shown, **extra}

    ratio = statistics.median(ratios)
    return [
        row("tower every step", "steps_per_s", tower_steps, "steps/s"),
        row("cached features", "steps_per_s", cached_steps, "steps/s"),
        row(f"cache build ({config['images']} images, one-off)", "seconds", build_seconds, "s"),
        row("cache build pays off after", "steps", break_even, "steps"),
        row("cached vs tower every step", "ratio", ratios, "x", target=f">= {TARGET}", met=ratio >= TARGET),
    ]


def print_rows(rows: list[dict]) -> None:
    print(f"{'case':<40} {'metric':<12} {'value':>10}  unit      target")
    for r in rows:
        target = f"{r['target']} ({'met' if r['met'] else 'NOT met'})" if "target" in r else ""
        print(f"{r['case']:<40} {r['metric']:<12} {r['value']:>10.3f}  {r['unit']:<9} {target}")
    print("config:", json.dumps(rows[0]["config"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = run(args.suite, args.repeats)
    print_rows(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
