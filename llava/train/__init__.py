"""Training: stage-1 projector pretraining and stage-2 instruction tuning (full, LoRA, QLoRA).

`python -m llava.train.train ...` is the entry point; `scripts/*.sh` are the launchers.
"""
