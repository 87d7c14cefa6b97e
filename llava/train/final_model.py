"""The final model in `--output_dir`, never half there.

It is written whole into a staging folder (beside the staged checkpoints) and then moved into
`--output_dir` file by file, `config.json` last: a save that fails (a full disk, a kill) leaves the
earlier contents of `--output_dir` and no `config.json` without its weights. When training already
reached its last step but the final model was never written (a failed final save), the final model
is taken from that last checkpoint instead of training again.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil

from llava.model.layout import ADAPTER_CONFIG
from llava.train.checkpoint import PARTIAL

STAGING = "final-model"
# What a checkpoint-N holds besides the model files: the state a resume needs, not the final model.
_TRAINING_STATE = re.compile(r"^(global_step\d+|latest|optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth|"
                             r"zero_to_fp32\.py)$")
# Moved last: what loaders look for first, so it appears only once the weights are in place.
_LAST = ("config.json", ADAPTER_CONFIG)


def staging_dir(output_dir: str) -> str:
    return os.path.join(output_dir, PARTIAL, STAGING)


def publish(staging: str, output_dir: str) -> None:
    """Move every file of the complete `staging` folder into `output_dir` (replacing older ones), config last."""
    names = sorted(os.listdir(staging), key=lambda n: (n in _LAST, n))
    for name in names:
        target = os.path.join(output_dir, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)  # e.g. an older vision_tower/ copy
        os.replace(os.path.join(staging, name), target)
    os.rmdir(staging)
    with contextlib.suppress(OSError):  # other staged saves may still be there
        os.rmdir(os.path.dirname(staging))


def from_checkpoint(checkpoint_dir: str, output_dir: str) -> None:
    """Copy the model files of `checkpoint_dir` (not its optimizer or DeepSpeed state) into `output_dir`, staged."""
    staging = staging_dir(output_dir)
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    for name in os.listdir(checkpoint_dir):
        if _TRAINING_STATE.match(name):
            continue
        source = os.path.join(checkpoint_dir, name)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(staging, name))
        else:
            shutil.copy2(source, os.path.join(staging, name))
    publish(staging, output_dir)
