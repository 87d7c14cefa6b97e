"""What each training mode writes, so every checkpoint loads with `load_pretrained_model`.

- projector (stage 1): config.json + mm_projector.bin (keys `model.mm_projector.*`)
- lora / qlora:        adapter + non_lora_trainables.bin + config.json
- full:                save_pretrained (written by the HF Trainer)
Each also gets the tokenizer and the tower's image processor (preprocessor_config.json); the partial
ones also a copy of a frozen tower that came from a local folder (vision_tower/). The file names and
how a folder's kind is told from them are llava.model.layout's, shared with loading.
Under ZeRO-3 parameters are partitioned; they are gathered (on every rank) before writing.

Also: how intermediate checkpoint-N folders are published whole (never half-written) and which one
a run resumes from.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import shutil

import torch

from llava.model.layout import (FULL, LORA, NON_LORA_FILE, PROJECTOR, PROJECTOR_FILE, checkpoint_kind, record_base,
                               save_tower_copy)
from llava.model.zero3 import gathered

MM_PROJECTOR = "mm_projector"  # the projector's parameter names
logger = logging.getLogger("llava.train")


def gather_state(named_params) -> dict[str, torch.Tensor]:
    """CPU copies of the given parameters; every rank must call it under ZeRO-3."""
    state = {}
    for name, param in named_params:
        with gathered([param]):
            state[name] = param.detach().to("cpu", copy=True)
    return state


def trainable_state(model) -> dict[str, torch.Tensor]:
    return gather_state((n, p) for n, p in model.named_parameters() if p.requires_grad)


def save_config(model, output_dir: str) -> None:
    """The LLaVA config (mm_* fields included) without the training-only quantization settings."""
    config = copy.deepcopy(model.config)
    record_base(config, model.config.name_or_path)  # the LLM this checkpoint needs to load
    for key in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, key):
            delattr(config, key)
    config.use_cache = True
    config.save_pretrained(output_dir)


def save_projector_checkpoint(model, output_dir: str, state: dict) -> None:
    # Everything stage 1 trained: the projector, plus the embeddings when --mm_use_im_start_end added
    # tokens (official LLaVA's layout; loaders take the `mm_projector.*` keys they need).
    weights = dict(state)
    if not any(MM_PROJECTOR in k for k in weights):
        raise RuntimeError("the projector is not trainable; nothing to write to mm_projector.bin")
    save_config(model, output_dir)
    torch.save(weights, os.path.join(output_dir, PROJECTOR_FILE))
    save_tower_copy(model, output_dir)


def save_lora_checkpoint(peft_model, output_dir: str, state: dict) -> None:
    # peft picks the adapter weights out of `state`; the rest (projector, unfrozen modules) goes beside it.
    peft_model.save_pretrained(output_dir, state_dict=state)
    non_lora = {k: v for k, v in state.items() if "lora_" not in k}
    torch.save(non_lora, os.path.join(output_dir, NON_LORA_FILE))
    save_config(peft_model.get_base_model(), output_dir)
    save_tower_copy(peft_model.get_base_model(), output_dir)


def save_kind(modules) -> str:
    """The kind of checkpoint a run training `modules` writes (llava.model.layout names the kinds)."""
    if "lora" in modules:
        return LORA
    return PROJECTOR if set(modules) == {"projector"} else FULL


# -- checkpoint-N folders: written whole or not at all, and found again on resume ---------------
# A save writes into PARTIAL/checkpoint-N and is renamed to checkpoint-N once every rank has written
# its part, so a save killed midway never leaves a checkpoint-N behind (only a hidden leftover that
# the next run removes). Folders under PARTIAL are never resumed from.
PARTIAL = ".partial-checkpoints"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def publish(staging: str, final: str) -> None:
    """Move a fully written checkpoint from `staging` to `final` (atomic; an older `final` is replaced)."""
    stale = None
    if os.path.exists(final):  # the same step saved again, e.g. by a run started over in the same folder
        stale = staging.rstrip(os.sep) + ".replaced"
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(final, stale)
    os.replace(staging, final)
    if stale:
        shutil.rmtree(stale, ignore_errors=True)
    with contextlib.suppress(OSError):  # PARTIAL itself goes once empty: a leftover means a killed save
        os.rmdir(os.path.dirname(staging))


def incomplete_reason(path: str) -> str | None:
    """Why `path` is not a checkpoint a run can resume from; None when it is one."""
    if not os.path.isdir(path):
        return "no such folder"
    present = set(os.listdir(path))
    if TRAINER_STATE not in present:
        return f"no {TRAINER_STATE} (its save was interrupted, or it is not a training checkpoint)"
    if "latest" in present:  # DeepSpeed's engine state: `latest` names the global_stepN folder
        with open(os.path.join(path, "latest"), encoding="utf-8") as f:
            tag = f.read().strip()
        if not os.path.isdir(os.path.join(path, tag)):
            return f"DeepSpeed's {tag} folder named by 'latest' is missing"
        return None
    try:
        checkpoint_kind(path)
    except FileNotFoundError:
        return "no model weights, adapter or mm_projector.bin"
    return None


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every checkpoint-N folder in `output_dir`, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_NAME.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def newest_complete(output_dir: str) -> tuple[str | None, list[tuple[str, str]]]:
    """(the newest resumable checkpoint-N in `output_dir` or None, [(path, why not) for newer incomplete ones])."""
    skipped = []
    for _, path in reversed(list_checkpoints(output_dir)):
        reason = incomplete_reason(path)
        if reason is None:
            return path, skipped
        skipped.append((path, reason))
    return None, skipped


def remove_partial(output_dir: str) -> None:
    """Delete what a save killed midway left under PARTIAL (called by the main process before training)."""
    folder = os.path.join(output_dir, PARTIAL)
    if os.path.isdir(folder):
        logger.warning("removing %s: %s, left by a save that was interrupted before it completed",
                       folder, ", ".join(sorted(os.listdir(folder))) or "empty")
        shutil.rmtree(folder)


def resolve_resume(output_dir: str, requested: str | None, overwrite: bool = False, is_main: bool = True) -> str | None:
    """The checkpoint a run continues from, or None to start at step 1; says which on the main process.

    - `requested` None: the newest complete checkpoint-N in `output_dir` if there is one (re-running a
      command continues it, as official LLaVA does), unless `overwrite`, which deletes the old
      checkpoints and starts over.
    - "True": the same, but one must exist. "False": start at step 1; an error if there are checkpoints.
    - a path: that checkpoint; a folder of checkpoint-N folders: its newest complete one.
    Incomplete checkpoints are never resumed from: skipped with a warning, or an error when named.
    """
    if is_main:
        remove_partial(output_dir)
    if overwrite:
        if requested is not None and str(requested).lower() != "false":
            raise ValueError("--overwrite_output_dir True starts the run over; drop --resume_from_checkpoint, or it")
        old = list_checkpoints(output_dir)
        if old and is_main:
            logger.warning("--overwrite_output_dir True: deleting %d checkpoint(s) of an earlier run in %s: %s",
                           len(old), output_dir, ", ".join(os.path.basename(p) for _, p in old))
            for _, path in old:
                shutil.rmtree(path)
        return None
    if str(requested).lower() == "false":  # HF's spelling of "do not resume"
        if list_checkpoints(output_dir):
            raise ValueError(f"--resume_from_checkpoint False: --output_dir {output_dir} holds checkpoints of an "
                             "earlier run; pass --overwrite_output_dir True to start over (deleting them)")
        return None
    if requested is None or str(requested).lower() == "true":
        path, skipped = newest_complete(output_dir)
        if is_main:
            for bad, reason in skipped:
                logger.warning("not resuming from %s: incomplete (%s)", bad, reason)
        if path is None:
            if requested is None:
                return None
            found = f" ({len(skipped)} incomplete)" if skipped else ""
            raise FileNotFoundError(
                f"--resume_from_checkpoint True: no complete checkpoint-N in --output_dir {output_dir}{found}; "
                "drop the flag to start at step 1"
            )
        if is_main:
            why = ("--resume_from_checkpoint True" if requested is not None else
                   "--output_dir holds checkpoints of an earlier run; pass --overwrite_output_dir True to start over")
            logger.info("resuming from %s, the newest complete checkpoint in %s (%s)", path, output_dir, why)
        return path
    path = str(requested)
    if os.path.isdir(path) and TRAINER_STATE not in os.listdir(path) and list_checkpoints(path):
        return resolve_resume(path, "True", is_main=is_main)  # a run's output folder
    reason = incomplete_reason(path)
    if reason is not None:
        newest, _ = newest_complete(os.path.dirname(os.path.abspath(path)))
        hint = f"; the newest complete checkpoint beside it is {newest}" if newest else ""
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: cannot resume from it: {reason}{hint}")
    if is_main:
        logger.info("resuming from %s", path)
    return path
