"""`LLaVATrainer`: the HF Trainer plus LLaVA's sampler, optimizer groups and checkpoint layout."""

from __future__ import annotations

import logging
import os

from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from llava.model import layout
from llava.model.builder import load_non_lora_trainables, load_stage1_weights
from llava.train import checkpoint, disk, final_model
from llava.train.monitors import param_module
from llava.train.sampler import ModalityLengthGroupedSampler, TokenLengthGroupedSampler

logger = logging.getLogger(__name__)


class LLaVATrainer(Trainer):
    def __init__(self, *args, save_mode: str = "full", image_processor=None, **kwargs):
        """`save_mode`: the checkpoint kind to write (llava.model.layout: projector for stage 1, lora or full)."""
        super().__init__(*args, **kwargs)
        self.save_mode = save_mode
        self.image_processor = image_processor
        self._saving_checkpoint = False

    # -- data order --------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.group_by_modality_length:
            group = self.args.train_batch_size * self.args.world_size * self.args.gradient_accumulation_steps
            return ModalityLengthGroupedSampler(dataset.modality_lengths, group, seed=self.args.seed)
        if self.args.train_sampling_strategy == "group_by_length":
            # Not HF's LengthGroupedSampler: it would load every sample (images included) to measure
            # it and never counts image patches.
            return TokenLengthGroupedSampler(
                dataset.modality_token_lengths, self.args.train_batch_size, self.args.world_size, seed=self.args.seed
            )
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        if self.args.train_sampling_strategy == "group_by_length":
            # Same reason as above; evaluation order does not change eval_loss.
            return TokenLengthGroupedSampler(eval_dataset.modality_token_lengths, self.args.eval_batch_size)
        return super()._get_eval_sampler(eval_dataset)

    # -- optimizer ---------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        """HF's optimizer, with the projector and the vision tower in groups of their own when
        --mm_projector_lr / --mm_vision_tower_lr are given (official LLaVA's and LLaVA-NeXT's flags)."""
        if self.optimizer is not None or (self.args.mm_projector_lr is None and self.args.mm_vision_tower_lr is None):
            return super().create_optimizer(model)
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        module_lr = {"projector": self.args.mm_projector_lr, "vision_tower": self.args.mm_vision_tower_lr}
        groups = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            module = param_module(name)
            lr = module_lr.get(module)
            key = (module if lr is not None else "rest", name in decay)
            if key not in groups:
                groups[key] = {
                    "params": [],
                    "weight_decay": self.args.weight_decay if name in decay else 0.0,
                    **({"lr": lr} if lr is not None else {}),
                }
            groups[key]["params"].append(param)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(list(groups.values()), **optimizer_kwargs)
        return self.optimizer

    # -- logs --------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Callbacks that measure something (llava.train.monitors) add it before the line is recorded, so the
        # console, log_history and every --report_to integration get the same numbers.
        for callback in self.callback_handler.callbacks:
            if hasattr(callback, "add_to_logs"):
                callback.add_to_logs(logs)
        super().log(logs, start_time)

    # -- checkpoints -------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        output_dir = output_dir or self.args.output_dir
        if self.save_mode == layout.FULL:
            super().save_model(output_dir, _internal_call)
        else:
            model = self.accelerator.unwrap_model(self.model)
            state = checkpoint.trainable_state(model)  # collective under ZeRO-3: every rank takes part
            if self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
                if self.save_mode == layout.PROJECTOR:
                    checkpoint.save_projector_checkpoint(model, output_dir, state)
                else:
                    checkpoint.save_lora_checkpoint(model, output_dir, state)
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(output_dir)
        if self.args.should_save and self.image_processor is not None:
            self.image_processor.save_pretrained(output_dir)

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, checkpoint.PARTIAL) if self._saving_checkpoint else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        """HF's checkpoint save, written into PARTIAL/checkpoint-N and renamed to checkpoint-N once every
        rank has written its part: a save killed midway leaves no checkpoint-N that looks complete."""
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging, final = os.path.join(run_dir, checkpoint.PARTIAL, name), os.path.join(run_dir, name)
        limit = self.args.save_total_limit
        self._saving_checkpoint, self.args.save_total_limit = True, None  # rotation waits for the rename
        needed = disk.save_size(self.model, trainable_only=self.save_mode != layout.FULL, optimizer=True)
        try:
            with disk.explain_full_disk(run_dir, needed, name, cleanup=staging if self.args.should_save else None):
                super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint, self.args.save_total_limit = False, limit
        self.accelerator.wait_for_everyone()  # every rank's DeepSpeed shards are on disk
        if self.args.should_save:
            if self.state.best_model_checkpoint == staging:
                self.state.best_model_checkpoint = final
                self.state.save_to_json(os.path.join(staging, checkpoint.TRAINER_STATE))
            checkpoint.publish(staging, final)
            rotate_checkpoints(run_dir, limit, self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def save_final_model(self) -> None:
        """The final model into --output_dir, staged (llava.train.final_model): all of it or nothing new."""
        output_dir = self.args.output_dir
        staging = final_model.staging_dir(output_dir)
        needed = disk.save_size(self.model, trainable_only=self.save_mode != layout.FULL)
        with disk.explain_full_disk(output_dir, needed, "the final model", cleanup=staging if self.args.should_save else None):
            self.save_model(staging)
        self.accelerator.wait_for_everyone()  # under ZeRO-3 every rank took part in the gather
        if self.args.should_save:
            final_model.publish(staging, output_dir)
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # Used when resuming without DeepSpeed (which restores its own engine state instead).
        model = self.model if model is None else model
        kind = layout.checkpoint_kind(resume_from_checkpoint)
        if kind == layout.PROJECTOR:
            # The projector, and what stage 1 trained beside it (AnyRes' image_newline, start/end token rows).
            load_stage1_weights(model, os.path.join(resume_from_checkpoint, layout.PROJECTOR_FILE))
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if kind == layout.LORA:
            load_non_lora_trainables(model.get_base_model(), os.path.join(resume_from_checkpoint, layout.NON_LORA_FILE))
