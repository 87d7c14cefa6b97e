"""Checkpoints that load after being moved: what partial checkpoints carry, and where recorded paths lead.

A LoRA/QLoRA or stage-1 checkpoint holds only what training changed; the rest comes from two
paths recorded as training saw them, usually relative to the folder it ran in:
`base_model_name_or_path` (adapter_config.json) and `mm_vision_tower` (config.json).

- The frozen vision tower travels with the checkpoint: when it came from a local folder, a copy
  (`vision_tower/`: config.json + model.safetensors, in the training dtype) is written beside the
  adapter. A tower named by its hub id (`openai/clip-vit-large-patch14-336`) is found in the Hugging
  Face cache on any machine, as in official LLaVA, and is not copied.
- A recorded relative path is looked up from the working folder, then from the checkpoint folder
  and each folder above it (training ran in one of them), so a checkpoint loads from any working
  folder. The base LLM of a LoRA checkpoint is not copied (it is the whole model): when it cannot be
  found, the error names it and says to pass `--model-base`.
"""

from __future__ import annotations

import json
import os

from llava.model.paths import in_hub_cache, resolve_pretrained

TOWER_COPY = "vision_tower"


def tower_copy_dir(checkpoint_dir: str | None) -> str | None:
    """`checkpoint_dir/vision_tower` when the checkpoint carries its tower, else None."""
    if not checkpoint_dir:
        return None
    folder = os.path.join(checkpoint_dir, TOWER_COPY)
    return folder if os.path.isfile(os.path.join(folder, "config.json")) else None


def find_recorded(path: str, flag: str, checkpoint_dir: str | None) -> str:
    """A path a checkpoint recorded, found from the cwd, the checkpoint folder or a folder above it.

    Otherwise `resolve_pretrained` decides (a hub name, or a FileNotFoundError naming `flag`).
    """
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded) or os.path.isabs(expanded) or not checkpoint_dir:
        return resolve_pretrained(path, flag, relative_to=checkpoint_dir)
    folder = os.path.abspath(checkpoint_dir)
    while True:
        candidate = os.path.join(folder, expanded)
        if os.path.isdir(candidate):
            return candidate
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return resolve_pretrained(path, flag, relative_to=checkpoint_dir)


def tower_source(config, checkpoint_dir: str | None) -> str:
    """Where the vision tower's weights come from when a checkpoint's weight files lack them."""
    copy = tower_copy_dir(checkpoint_dir)
    if copy:
        return copy
    where = os.path.join(checkpoint_dir, "config.json") if checkpoint_dir else "the checkpoint's config.json"
    try:
        return find_recorded(config.mm_vision_tower, f"mm_vision_tower (in {where})", checkpoint_dir)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}. {_NO_TOWER_COPY}") from None


_NO_TOWER_COPY = (
    f"This checkpoint does not carry the vision tower's weights (no {TOWER_COPY}/ folder beside its "
    "config.json): put the CLIP folder there, or set mm_vision_tower in config.json to where it is"
)


def load_tower_weights(tower, config, checkpoint_dir: str | None) -> str:
    """Fill `tower` from `tower_source`; a hub name that cannot be fetched gets the same advice as a missing folder."""
    source = tower_source(config, checkpoint_dir)
    try:
        tower.load_model(source)
    except OSError as exc:
        if os.path.isdir(source):
            raise
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileNotFoundError(
            f"mm_vision_tower {config.mm_vision_tower}: not a local folder, and the hub gave: {first_line}. {_NO_TOWER_COPY}"
        ) from None
    return source


def lora_base(model_path: str, model_base: str | None) -> str:
    """The base LLM of a LoRA checkpoint: `--model-base`, else the adapter's recorded base when it can be found."""
    if model_base:
        return resolve_pretrained(model_base, "--model-base")
    with open(os.path.join(model_path, "adapter_config.json")) as f:
        recorded = json.load(f).get("base_model_name_or_path")
    if not recorded:
        raise FileNotFoundError(
            f"{model_path} is a LoRA checkpoint whose adapter_config.json names no base model; "
            "pass --model-base with the LLM it was trained on"
        )
    flag = f"base_model_name_or_path (in {os.path.join(model_path, 'adapter_config.json')})"
    hint = "pass --model-base with the LLM this checkpoint was trained on"
    try:
        base = find_recorded(recorded, flag, model_path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}; {hint}") from None
    if not os.path.isdir(base) and not in_hub_cache(base):
        # Recorded by training, not asked for by the user: no download attempt (a minute of retries
        # offline) for a name that is most likely a folder relative to where training ran.
        raise FileNotFoundError(
            f"{flag} {recorded}: not a folder here (looked from {os.getcwd()}, and from {model_path} and each "
            f"folder above it) nor in the local Hugging Face cache; {hint}"
        )
    return base


def save_tower_copy(model, output_dir: str) -> str | None:
    """Write the frozen tower into a partial checkpoint when its source is a local folder (see module doc).

    Runs on the saving rank alone: a frozen tower holds exactly its source's weights in the training
    dtype, so they are read from the source rather than gathered from (possibly partitioned) parameters.
    A tower that trains (`--train_modules ...,vision_tower`) gets the same copy; its trained weights are
    in non_lora_trainables.bin, which loads over it.
    """
    tower = model.get_vision_tower()
    if tower is None or not os.path.isdir(tower.vision_tower_name):
        return None
    from transformers import CLIPVisionModel

    from llava.train.recipes import _outside_zero3  # only training saves checkpoints

    out = os.path.join(output_dir, TOWER_COPY)
    # Under ZeRO-3 a DeepSpeed-aware from_pretrained would wait for the other ranks, which do not save.
    with _outside_zero3():
        CLIPVisionModel.from_pretrained(tower.vision_tower_name, dtype=tower.dtype).save_pretrained(out)
    return out
