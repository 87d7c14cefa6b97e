"""Training speed with and without the training monitors (llava/train/monitors.py), on a tiny model.

    OMP_NUM_THREADS=1 python -m benchmarks.monitors_overhead [--steps 60] [--repeats 2] [--logging-steps 1]

Runs the same single-process training `--repeats` times each way, alternating (a shared machine's
load drifts), and prints steps/s per run and the median overhead. The launchers log every step
(--logging_steps 1), the worst case: the monitors measure only the steps that log.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--logging-steps", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args(argv)

    from llava.data.demo import generate
    from llava.model.tiny import save_tiny_llm, save_tiny_vision_tower
    from llava.train.train import train

    root = tempfile.mkdtemp(prefix="bench-monitors-")
    llm = save_tiny_llm("phi", os.path.join(root, "llm"), hidden_size=args.hidden_size, num_layers=args.layers)
    clip = save_tiny_vision_tower(os.path.join(root, "clip"))
    data = generate(os.path.join(root, "data"), num_train=200, num_eval=1)
    speeds = {"on": [], "off": []}
    for repeat in range(args.repeats):
        for mode in ("off", "on"):
            out = os.path.join(root, f"{mode}-{repeat}")
            train(["--model_name_or_path", llm, "--vision_tower", clip, "--image_folder", data["image_folder"],
                   "--data_path", data["finetune"], "--mm_projector_type", "mlp2x_gelu", "--output_dir", out,
                   "--per_device_train_batch_size", str(args.batch_size), "--max_steps", str(args.steps),
                   "--logging_steps", str(args.logging_steps), "--report_to", "none", "--save_strategy", "no",
                   "--model_max_length", "256", "--learning_rate", "1e-3", "--mm_monitors", str(mode == "on"),
                   "--disable_tqdm", "True"])
            with open(os.path.join(out, "trainer_state.json")) as f:
                summary = next(e for e in json.load(f)["log_history"] if "train_runtime" in e)
            speeds[mode].append(args.steps / summary["train_runtime"])
            print(f"run {repeat + 1}/{args.repeats} monitors {mode:>3}: {speeds[mode][-1]:.2f} steps/s", flush=True)
    on, off = statistics.median(speeds["on"]), statistics.median(speeds["off"])
    print(f"monitors: {on:.2f} steps/s with, {off:.2f} without (median of {args.repeats}): "
          f"{100 * (off - on) / off:+.1f} % overhead at --logging_steps {args.logging_steps}")


if __name__ == "__main__":
    main()
