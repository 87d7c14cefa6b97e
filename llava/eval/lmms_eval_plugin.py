"""lmms-eval discovers `llava_checkpoint` here (pyproject.toml's `lmms_eval.models` entry point).

Kept apart from the adapter so that listing lmms-eval's models does not load torch or our model code.
"""

from __future__ import annotations

MODEL_ID = "llava_checkpoint"


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path="llava.eval.lmms_eval_model.LlavaCheckpoint")]
