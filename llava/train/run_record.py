"""What a training run was started with (`OUTPUT_DIR/run_config.json`), checked when the folder is run again.

Re-running a command continues the run in its `--output_dir`; that is right only when it trains on what
the run started with. The record names the data files (size and a content hash), the model, the tower,
the stage-1 projector, the image folder and the flags that decide what a step computes. A resume whose
inputs differ stops with the differences named, unless `--allow_changed_inputs True`. The record also
says when the run finished (its final model written), so re-running a finished command changes nothing.

Not recorded on purpose: `--max_steps` / `--num_train_epochs` (raising them is how a run is trained
further), output and logging flags.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os

from transformers import TrainerCallback

RECORD = "run_config.json"
# Files up to 3 samples long are hashed whole; larger ones by their start, middle and end (a 1 GB
# JSON is not read whole on every rank at every start), with the byte count beside.
_SAMPLE = 8 << 20
logger = logging.getLogger("llava.train")


def file_fingerprint(path: str) -> dict:
    """Path, size and a hash of `path`'s content."""
    size = os.path.getsize(path)
    digest = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as f:
        offsets = [0] if size <= 3 * _SAMPLE else [0, size // 2, size - _SAMPLE]
        for offset in offsets:
            f.seek(offset)
            remaining = size if len(offsets) == 1 else _SAMPLE
            while remaining > 0:
                chunk = f.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                digest.update(chunk)
                remaining -= len(chunk)
    return {"path": os.path.abspath(path), "bytes": size, "hash": digest.hexdigest()}


def _source(path: str | None):
    """A file as its fingerprint, a local folder as its absolute path, a hub name as it is."""
    if not path:
        return None
    if os.path.isfile(path):
        return file_fingerprint(path)
    return os.path.abspath(path) if os.path.exists(path) else path


def describe(model_args, data_args, training_args, modules) -> dict:
    """The record of a run about to start (`modules`: what trains)."""
    inputs = {
        "data_path": _source(data_args.data_path),
        "eval_data_path": _source(data_args.eval_data_path),
        "image_folder": _source(data_args.image_folder),
        "model_name_or_path": _source(model_args.model_name_or_path),
        "vision_tower": _source(model_args.vision_tower),
        "pretrain_mm_mlp_adapter": _source(model_args.pretrain_mm_mlp_adapter),
        "version": model_args.version,
        "mm_projector_type": model_args.mm_projector_type,
        "mm_vision_select_layer": model_args.mm_vision_select_layer,
        "mm_vision_select_feature": model_args.mm_vision_select_feature,
        "image_aspect_ratio": data_args.image_aspect_ratio,
        "train_modules": sorted(modules),
        "lora": [training_args.lora_r, training_args.lora_alpha] if "lora" in modules else None,
        "bits": training_args.bits,
        "model_max_length": training_args.model_max_length,
        "seed": training_args.seed,
        # The data order and what a step sees depend on it; a resume on another world size changes it.
        "global_batch_size": (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                              * int(os.environ.get("WORLD_SIZE", "1"))),
    }
    if data_args.image_grid_pinpoints:  # AnyRes runs only, so records of earlier runs still compare equal
        inputs["image_grid_pinpoints"] = data_args.image_grid_pinpoints
        inputs["mm_patch_merge_type"] = model_args.mm_patch_merge_type
    length = {"max_steps": training_args.max_steps, "num_train_epochs": training_args.num_train_epochs}
    return {"inputs": inputs, "length": length, "finished": None}


def read(output_dir: str) -> dict | None:
    path = os.path.join(output_dir, RECORD)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); delete it to continue without the check") from None


def write(output_dir: str, record: dict) -> None:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RECORD)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)  # a run killed here leaves the old record, never half a new one


def _show(value) -> str:
    if isinstance(value, dict) and "hash" in value:
        return f"{value['path']} ({value['bytes']:,} bytes, hash {value['hash'][:8]})"
    return json.dumps(value)


def changes(old: dict, new: dict) -> list[str]:
    """'name: old -> new' for each input that differs (a data file that moved but kept its content does not)."""
    found = []
    old_inputs, new_inputs = old.get("inputs", {}), new["inputs"]
    for name, value in new_inputs.items():
        before = old_inputs.get(name)
        if isinstance(before, dict) and isinstance(value, dict) and "hash" in value:
            if (before.get("bytes"), before.get("hash")) == (value["bytes"], value["hash"]):
                continue
        elif before == value:
            continue
        found.append(f"{name}: {_show(before)} -> {_show(value)}")
    return found


def check_resume(output_dir: str, old: dict | None, new: dict, allow_changed: bool) -> None:
    """Stop a resume whose inputs differ from the record of the run in `output_dir` (unless allowed)."""
    if old is None:
        return
    found = changes(old, new)
    if not found:
        return
    if allow_changed:
        logger.warning("--allow_changed_inputs True: continuing the run in %s with changed inputs: %s",
                       output_dir, "; ".join(found))
        return
    raise ValueError(
        f"--output_dir {output_dir} holds a run started with other inputs ({'; '.join(found)}); use a new "
        "--output_dir, pass --overwrite_output_dir True to start over, or --allow_changed_inputs True to continue "
        "with the new inputs"
    )


def finished_step(old: dict | None, new: dict) -> int | None:
    """The step at which the run recorded in `old` finished, if it is this run (same inputs, same length)."""
    if not old or not old.get("finished") or changes(old, new):
        return None
    if old.get("length") != new["length"]:
        return None  # asked to train longer (or shorter): not the finished run
    return int(old["finished"]["global_step"])


def mark_finished(output_dir: str, record: dict, global_step: int) -> None:
    record = {**record, "finished": {
        "global_step": global_step, "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }}
    write(output_dir, record)


class WriteAtStart(TrainerCallback):
    """Writes the record when training starts: by then every rank has checked the old one (DeepSpeed's
    and the Trainer's setup synchronise the ranks), so none reads the new record in its place."""

    def __init__(self, record: dict):
        self.record = record

    def on_train_begin(self, args, state, control, **kwargs):
        if args.should_save:
            write(args.output_dir, self.record)
