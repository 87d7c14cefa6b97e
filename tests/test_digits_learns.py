"""Public data, through the launchers: scikit-learn's digits as VQA, learnt from scratch with PRESET=scratch.

A small run (a few hundred training images, ~250 steps) must answer held-out questions well above
the majority-answer baseline, and must fall back to about that baseline when every image is blank:
the answers come from the image, not the question. The full-size figures come from
`python -m benchmarks.digits` (docs/training.md).
"""

from __future__ import annotations

import pytest

from benchmarks import digits
from llava.model.tiny import save_tiny_llm, save_tiny_vision_tower

STEPS, NUM_TRAIN, NUM_EVAL = 250, 500, 60
MARGIN = 20  # points above the majority baseline
BLANK_TOLERANCE = 12  # points either side of it: 180 questions, and the model's prior need not be the majority


@pytest.mark.slow
def test_digits_are_read_from_the_image(tmp_path):
    # The preset's tower width with 16-px patches (4 tokens, faster than its 16) and a 2-layer LLM, built here so
    # nothing lands in checkpoints/.
    llm = save_tiny_llm("phi", str(tmp_path / "llm"), num_layers=2)
    tower = save_tiny_vision_tower(str(tmp_path / "clip"), hidden_size=192, patch_size=16)
    outcome = digits.run_dataset(
        "sklearn", str(tmp_path / "work"), steps=STEPS, num_train=NUM_TRAIN, num_eval=NUM_EVAL,
        train_env={"MODEL_PATH": llm, "VISION_TOWER": tower}, modes=("real", "blank"), log=lambda msg: None,
    )
    real, blank = outcome["results"]["real"]["overall"], outcome["results"]["blank"]["overall"]
    baseline = outcome["baseline"]["overall"]
    print(f"digits (small): real {real:.1f} %, blank {blank:.1f} %, majority baseline {baseline:.1f} %, "
          f"train {outcome['seconds']['train']:.0f} s")
    assert real >= baseline + MARGIN, (real, baseline)
    assert abs(blank - baseline) <= BLANK_TOLERANCE, (blank, baseline)
