"""What AnyRes costs: LLM positions per sample, training step time and peak memory for pad vs anyres vs
anyres_max_N, and what the vision feature cache saves once an image is several tiles.

Same data, model sizes and loop as benchmarks/feature_cache.py (a real stage-1 step: dataset ->
collator -> forward/backward -> AdamW on the projector and image_newline), with
--image_aspect_ratio pad, anyres and anyres_max_2 (--mm_patch_merge_type spatial_unpad, grid pinpoints
"(1x1),...,(3x3)" in tower tiles). Photo-sized 640x480 images fill a 3x3 grid: 10 tiles per image.

    python -m benchmarks.anyres [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from benchmarks import feature_cache as fc
from benchmarks.common import peak_rss_mib, reset_peak_rss

NAME = "anyres"
PINPOINTS = "(1x1),...,(3x3)"
CASES = (("pad", []), ("anyres", ["--image_aspect_ratio", "anyres"]),
         ("anyres_max_2", ["--image_aspect_ratio", "anyres_max_2"]))

SUITES = {
    "cpu": dict(tower_hidden=192, tower_layers=2, image_size=64, patch_size=16, llm_hidden=256, llm_layers=2,
                images=16, image_width=640, image_height=480, batch_size=4, steps=3, warmup_steps=1,
                dtype="float32"),
}


def case_args(base: list[str], extra: list[str]) -> list[str]:
    if not extra:
        return [*base, "--image_aspect_ratio", "pad"]
    return [*base, *extra, "--image_grid_pinpoints", PINPOINTS, "--mm_patch_merge_type", "spatial_unpad"]


def run(suite: str = "cpu", repeats: int = 3, config: dict | None = None) -> list[dict]:
    from llava.model.llava_arch import anyres_for
    from llava.train import feature_cache
    from llava.train.train import build_data

    config = {**SUITES[suite], **(config or {})}
    rows = []
    shown = {**config, "pinpoints": PINPOINTS, "merge": "spatial_unpad", "threads": torch.get_num_threads()}

    def row(case, metric, values, unit):
        return {"benchmark": NAME, "case": case, "metric": metric, "value": float(statistics.median(values)),
                "unit": unit, "values": [float(v) for v in values], "config": shown}

    with tempfile.TemporaryDirectory(prefix="bench-anyres-") as workdir:
        base = fc.prepare(workdir, config)
        for case, extra in CASES:
            model, tokenizer, data_args, training_args = fc.build(case_args(base, extra))
            train_set, _, _, _ = build_data(data_args, training_args, tokenizer, model, "plain")
            lengths = [abs(n) for n in train_set.modality_token_lengths]
            tower = model.get_vision_tower()
            anyres = anyres_for(model.config, tower)
            tiles = [anyres.num_tiles((config["image_width"], config["image_height"])) if anyres else 1]
            rows.append(row(case, "positions_per_sample", [statistics.mean(lengths)], "tokens"))
            rows.append(row(case, "tiles_per_image", [float(t) for t in tiles], "tiles"))
            steps, peaks = [], []
            for _ in range(repeats):
                reset_peak_rss()
                steps.append(fc.steps_per_second(model, tokenizer, data_args, training_args, config))
                peaks.append(peak_rss_mib())
            rows.append(row(case, "step_seconds", [1 / s for s in steps], "s"))
            rows.append(row(case, "peak_rss", peaks, "MiB"))
            if case == "anyres":  # the cache holds every tile: the tower's share of a step grows with them
                paths = [os.path.join(data_args.image_folder, f) for f in sorted(os.listdir(data_args.image_folder))]
                cached, build = [], []
                for repeat in range(repeats):
                    directory = os.path.join(workdir, f"cache-{repeat}")
                    start = time.perf_counter()
                    feature_cache.ensure(directory, tower, tower.load_image_processor(), "anyres", paths,
                                         image_grid_pinpoints=PINPOINTS, batch_size=config["batch_size"])
                    build.append(time.perf_counter() - start)
                    training_args.vision_feature_cache = directory
                    cached.append(fc.steps_per_second(model, tokenizer, data_args, training_args, config))
                    training_args.vision_feature_cache = None
                rows.append(row("anyres, cached tiles", "step_seconds", [1 / s for s in cached], "s"))
                rows.append(row("anyres, cached tiles", "cache_build_seconds", build, "s"))
                rows.append(row("anyres, cached vs tower every step", "ratio",
                                [c / t for c, t in zip(cached, steps)], "x"))
            del model
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = run("cpu", args.repeats)
    for r in rows:
        print(f"{r['case']:<38} {r['metric']:<22} {r['value']:>10.3f} {r['unit']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
