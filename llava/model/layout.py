"""What a checkpoint folder holds and where each of its parts comes from, worked out once.

Saving (llava.train.checkpoint) writes these files; loading (llava.model.builder) reads them
through one `CheckpointLayout`:

- `full`       model weights (+ tokenizer, preprocessor_config.json)
- `lora`       adapter_config.json + adapter weights + non_lora_trainables.bin + config.json, over a base LLM
- `projector`  mm_projector.bin (keys `model.mm_projector.*`) + config.json, over a base LLM (stage 1)

Partial checkpoints (lora, projector) hold only what training changed; the rest comes from two
paths recorded as training saw them, usually relative to the folder it ran in:
`base_model_name_or_path` (adapter_config.json) and `mm_vision_tower` (config.json).
- The frozen vision tower travels with the checkpoint: when it came from a local folder, a copy
  (`vision_tower/`, in the training dtype) is written beside the adapter. A tower named by its hub
  id (`openai/clip-vit-large-patch14-336`) is found in the Hugging Face cache on any machine, as in
  official LLaVA, and is not copied.
- A recorded relative path is looked up from the working folder, then from the checkpoint folder
  and each folder above it (training ran in one of them), so a checkpoint loads from any working
  folder. The base LLM is not copied (it is the whole model): when it cannot be found, the error
  names it and says to pass `--model-base`.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass

from transformers import PretrainedConfig

from llava.model.paths import in_hub_cache, resolve_pretrained

FULL, LORA, PROJECTOR = "full", "lora", "projector"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
ADAPTER_CONFIG = "adapter_config.json"
PROJECTOR_FILE = "mm_projector.bin"
NON_LORA_FILE = "non_lora_trainables.bin"
PROCESSOR_FILE = "preprocessor_config.json"
TOWER_COPY = "vision_tower"
# Where a partial checkpoint names its base LLM: peft's field in adapter_config.json, and the same
# field in the config.json of a stage-1 checkpoint (official LLaVA's records none there).
BASE_FIELD = "base_model_name_or_path"

_NO_TOWER_COPY = (
    f"This checkpoint does not carry the vision tower's weights (no {TOWER_COPY}/ folder beside its "
    "config.json): put the tower's folder there, or set mm_vision_tower in config.json to where it is"
)


def checkpoint_kind(model_path: str) -> str:
    """FULL, LORA or PROJECTOR, from the files in `model_path`."""
    if not os.path.isdir(model_path):
        return FULL  # a cached hub name: only full checkpoints are published that way
    present = set(os.listdir(model_path))
    if ADAPTER_CONFIG in present:
        return LORA
    if PROJECTOR_FILE in present and not present.intersection(WEIGHT_FILES):
        return PROJECTOR
    if present.intersection(WEIGHT_FILES):
        return FULL
    raise FileNotFoundError(
        f"{model_path} holds no model weights, LoRA adapter or {PROJECTOR_FILE}; is it a checkpoint directory?"
    )


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


@dataclass
class CheckpointLayout:
    """One checkpoint, resolved: its kind and where its base, tower, tokenizer and image processor come from.

    The base is resolved at once (a partial checkpoint is useless without it); the tower's source
    only when something needs it (a full checkpoint carries the tower's weights), and then once.
    """

    path: str
    kind: str
    base: str | None = None
    mm_vision_tower: str | None = None  # as config.json records it

    @property
    def folder(self) -> str | None:
        """The checkpoint's local folder (None for a cached hub name)."""
        return self.path if os.path.isdir(self.path) else None

    @functools.cached_property
    def tower_source(self) -> str:
        """Where the vision tower's weights and config come from when the weight files lack them."""
        copy = os.path.join(self.folder or "", TOWER_COPY)
        if self.folder and os.path.isfile(os.path.join(copy, "config.json")):
            return copy
        where = os.path.join(self.folder, "config.json") if self.folder else "the checkpoint's config.json"
        if not self.mm_vision_tower:
            raise FileNotFoundError(f"{where} names no mm_vision_tower: this is a plain LLM, not a LLaVA checkpoint")
        try:
            return find_recorded(self.mm_vision_tower, f"mm_vision_tower (in {where})", self.folder)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{exc}. {_NO_TOWER_COPY}") from None

    @property
    def tokenizer_source(self) -> str:
        if self.kind == FULL or _has_any(self.path, TOKENIZER_FILES):
            return self.path
        return self.base

    @property
    def processor_source(self) -> str:
        """The checkpoint's own preprocessor_config.json, else the tower's."""
        return self.path if _has_any(self.path, (PROCESSOR_FILE,)) else self.tower_source

    def load_tower_weights(self, tower) -> str:
        """Fill `tower` from `tower_source`; a hub name that cannot be fetched gets the same advice as a missing folder."""
        source = self.tower_source
        try:
            tower.load_model(source)
        except OSError as exc:
            if os.path.isdir(source):
                raise
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FileNotFoundError(
                f"mm_vision_tower {self.mm_vision_tower}: not a local folder, and the hub gave: {first_line}. {_NO_TOWER_COPY}"
            ) from None
        return source


def resolve_checkpoint(model_path: str, model_base: str | None = None, flag: str = "--model-path") -> CheckpointLayout:
    """`model_path` (+ `--model-base`) as one CheckpointLayout, or a clear error naming what is missing."""
    path = resolve_pretrained(model_path, flag)
    kind = checkpoint_kind(path)
    config, _ = PretrainedConfig.get_config_dict(path)
    layout = CheckpointLayout(path, kind, mm_vision_tower=config.get("mm_vision_tower"))
    if kind == LORA:
        with open(os.path.join(path, ADAPTER_CONFIG), encoding="utf-8") as f:
            recorded = json.load(f).get(BASE_FIELD)
        layout.base = find_base(path, model_base, recorded, os.path.join(path, ADAPTER_CONFIG))
    elif kind == PROJECTOR:
        layout.base = find_base(path, model_base, config.get(BASE_FIELD), os.path.join(path, "config.json"))
    return layout


def find_base(model_path: str, model_base: str | None, recorded: str | None, recorded_in: str) -> str:
    """The base LLM of a partial checkpoint: `--model-base`, else the base training recorded, when it can be found."""
    if model_base:
        return resolve_pretrained(model_base, "--model-base")
    if not recorded:  # an argument is missing, not a folder
        raise ValueError(
            f"{model_path} is a {checkpoint_kind(model_path)} checkpoint whose {os.path.basename(recorded_in)} "
            f"names no base model; pass --model-base with the LLM it was trained on"
        )
    flag = f"{BASE_FIELD} (in {recorded_in})"
    hint = f"pass --model-base with the LLM this checkpoint was trained on ({recorded!r} where training ran)"
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


def record_base(config, base: str | None) -> None:
    """Write the base LLM into a partial checkpoint's config, as peft's adapter_config.json does for LoRA."""
    if base:
        setattr(config, BASE_FIELD, base)


def save_tower_copy(model, output_dir: str) -> str | None:
    """Write the frozen tower into a partial checkpoint when its source is a local folder (see module doc).

    A tower that trains (`--train_modules ...,vision_tower`) gets the same copy; its trained weights
    are in non_lora_trainables.bin, which loads over it.
    """
    tower = model.get_vision_tower()
    return tower.save_copy(os.path.join(output_dir, TOWER_COPY)) if tower is not None else None


def _has_any(folder: str, names) -> bool:
    return os.path.isdir(folder) and any(os.path.exists(os.path.join(folder, name)) for name in names)

