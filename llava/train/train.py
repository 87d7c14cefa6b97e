"""Entry point: `python -m llava.train.train --model_name_or_path ... --vision_tower ... --data_path ...`.

Also launched by `deepspeed llava/train/train.py ...` (scripts/*.sh), as in official LLaVA.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

import torch
import torch.distributed as dist
import transformers

from llava import errors
from llava.train.arguments import check_inputs, parse_args, resolve_train_modules
from llava.train.collator import DataCollatorForSupervisedDataset
from llava.train import deepspeed_cpu, feature_cache, final_model, run_record
from llava.train.dataset import LazySupervisedDataset
from llava.train.recipes import build_model, check_template, resolve_backbone
from llava.model.layout import checkpoint_kind
from llava.model.llava_arch import anyres_for, video_for
from llava.train.checkpoint import TRAINER_STATE, resolve_resume, save_kind
from llava.train.disk import explain_full_disk
from llava.train.monitors import TrainingMonitors
from llava.train.stop_signal import StopOnSignal
from llava.train.trainer import LLaVATrainer

logger = logging.getLogger("llava.train")


def _init_distributed(training_args) -> None:
    """ZeRO-3 builds partitioned models, so DeepSpeed's comm layer must exist before the model does.

    (accelerate may already have set up torch.distributed; DeepSpeed then wraps that group.)
    """
    if training_args.deepspeed and training_args.use_cpu:
        deepspeed_cpu.skip_shm_comm_build()
    if not training_args.deepspeed or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return
    import deepspeed

    if not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if training_args.use_cpu else "nccl")


def build_data(data_args, training_args, tokenizer, model, template):
    """(train dataset, eval dataset or None, image processor, collator); pixels or cached tower outputs."""
    tower = model.get_vision_tower()  # a peft wrapper forwards this to the LLaVA model
    image_processor = tower.load_image_processor()
    config = model.config
    anyres = anyres_for(config, tower)  # None unless --image_aspect_ratio anyres / anyres_max_N
    common = dict(
        tokenizer=tokenizer,
        template=template,
        image_folder=data_args.image_folder,
        image_processor=image_processor,
        model_config=config,
        max_length=training_args.model_max_length,
        image_tokens=tower.num_patches,
        mm_use_im_start_end=config.mm_use_im_start_end,
        skip_invalid=data_args.skip_invalid,
        max_image_pixels=data_args.max_image_pixels or None,
        allow_outside_image_folder=data_args.allow_outside_image_folder,
        anyres=anyres,
        video=video_for(config, tower),
        # With a feature cache, samples are built only once the cache is attached.
        lazy=data_args.lazy_preprocess or bool(training_args.vision_feature_cache),
    )
    train = LazySupervisedDataset(data_args.data_path, **common)
    evaluation = LazySupervisedDataset(data_args.eval_data_path, **common) if data_args.eval_data_path else None
    datasets = [d for d in (train, evaluation) if d is not None]
    collator = DataCollatorForSupervisedDataset(
        tokenizer, packing=training_args.packing, max_length=training_args.model_max_length,
        image_tokens=tower.num_patches,
    )
    if training_args.vision_feature_cache:
        cache = open_feature_cache(training_args, tower, image_processor, config, datasets, data_args.max_image_pixels)
        for dataset in datasets:
            dataset.feature_cache = cache
            if not data_args.lazy_preprocess:
                dataset.preload()
        collator.feature_shape = cache.feature_shape
    else:
        collator.image_shape = tower.pixel_shape
    return train, evaluation, image_processor, collator


def open_feature_cache(training_args, tower, image_processor, config, datasets, max_image_pixels):
    """The tower-output cache for every image of `datasets`: the main process (re)builds it, the others wait."""
    paths = [path for dataset in datasets for path in dataset.image_files()]
    videos = [path for dataset in datasets for path in dataset.video_files()]
    with training_args.main_process_first(desc="vision feature cache"):
        return feature_cache.ensure(
            training_args.vision_feature_cache, tower, image_processor, config.image_aspect_ratio, paths,
            videos=videos, video=video_for(config, tower),
            build_allowed=training_args.local_process_index == 0, max_image_pixels=max_image_pixels or None,
            image_grid_pinpoints=getattr(config, "image_grid_pinpoints", None),
            num_workers=training_args.dataloader_num_workers, device=training_args.device,
        )


def summarize(datasets, training_args, result) -> None:
    """One end-of-run line per dataset: how many records were skipped and truncated, on all ranks.

    Each rank loads its own share of the records (and, over epochs, records other ranks loaded before),
    so truncated records are merged by index: a record counts once however often it was loaded.
    """
    for name, dataset in datasets:
        if dataset is None:
            continue
        local = (sum(dataset.stats.skipped.values()), dataset.stats.truncated)
        shares = [local]
        if dist.is_initialized():
            shares = [None] * dist.get_world_size()
            dist.all_gather_object(shares, local)
        skipped = sum(count for count, _ in shares)
        truncated = {index: record_id for _, share in shares for index, record_id in share.items()}
        if training_args.should_log:
            reasons = ", ".join(f"{n} x {r}" for r, n in dataset.stats.skipped.items()) or "none"
            named = ", ".join(repr(record_id) for record_id in list(truncated.values())[:5])
            named = f" ({named}{', ...' if len(truncated) > 5 else ''})" if truncated else ""
            logger.info(
                "%s data: %d records, %d skipped (%s on rank 0), %d truncated to --model_max_length %d%s",
                name, dataset.stats.total, skipped, reasons, len(truncated), training_args.model_max_length, named,
            )
    if training_args.should_log and result is not None:
        logger.info("done: %d steps, train_loss %.4f, checkpoint in %s",
                    result.global_step, result.training_loss, training_args.output_dir)


def train(args=None, attn_implementation=None):
    model_args, data_args, training_args = parse_args(args)
    check_inputs(model_args, data_args)
    if attn_implementation and not model_args.attn_implementation:
        model_args.attn_implementation = attn_implementation
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO if training_args.should_log else logging.WARNING)
    modules = resolve_train_modules(model_args, training_args)
    backbone = resolve_backbone(model_args)
    template = model_args.version or backbone.conv_template
    check_template(template, model_args, training_args, backbone)
    if training_args.packing and backbone.model_class.packing_unsupported:
        reason = backbone.model_class.packing_unsupported
        raise ValueError(f"--packing True does not work with the {backbone.name} backbone: {reason}")

    resume = resolve_resume(
        training_args.output_dir, training_args.resume_from_checkpoint, training_args.overwrite_output_dir,
        is_main=training_args.should_save,
    )
    record = run_record.describe(model_args, data_args, training_args, modules)
    if already_done(training_args, resume, record):
        return None

    _init_distributed(training_args)
    transformers.set_seed(training_args.seed)  # identical projector init on every rank
    model, tokenizer = build_model(model_args, data_args, training_args, modules)
    if template != "plain":  # stage 1's bare captions are not how the finished model is asked questions
        model.config.conv_template = template  # inference and the export default to it
    train_dataset, eval_dataset, image_processor, collator = build_data(
        data_args, training_args, tokenizer, model, template
    )
    if training_args.should_log:
        logger.info("%s backbone, template %r, %d training records", backbone.name, template, len(train_dataset))

    trainer = LLaVATrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        save_mode=save_kind(modules),
        image_processor=image_processor,
    )
    if model_args.mm_monitors:
        trainer.add_callback(TrainingMonitors(trainer))
    trainer.add_callback(run_record.WriteAtStart(record))
    stop = StopOnSignal()
    trainer.add_callback(stop)
    errors.ranks_may_differ()  # from here a bad record may reach one rank only
    stop.install()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        stop.uninstall()
    if stop.stopped_by:
        return stopped(stop.stopped_by, trainer, training_args)
    trainer.save_state()
    trainer.save_final_model()
    if training_args.should_save:
        run_record.mark_finished(training_args.output_dir, record, result.global_step)
    summarize([("train", train_dataset), ("eval", eval_dataset)], training_args, result)
    end_distributed()
    return result


def already_done(training_args, resume: str | None, record: dict) -> bool:
    """Whether nothing is left to train in --output_dir; checks a resume's inputs against the run's record.

    True when the folder holds this run's final model (said in one line, nothing is touched), or when its
    newest checkpoint already reached --max_steps and only the final model is missing (a failed final save:
    that checkpoint's model becomes the final model).
    """
    output_dir = training_args.output_dir
    old = None if training_args.overwrite_output_dir else run_record.read(output_dir)
    has_model = has_final_model(output_dir)
    if resume is not None or has_model:
        run_record.check_resume(output_dir, old, record, training_args.allow_changed_inputs)
    done = run_record.finished_step(old, record)
    if done is not None and has_model:
        if training_args.should_log:
            logger.info("%s already holds the final model of this run (%d steps, finished %s): nothing to do; "
                        "raise --max_steps or --num_train_epochs to train further, or pass --overwrite_output_dir "
                        "True to start over", output_dir, done, old["finished"]["at"])
        return True
    if resume is None or training_args.max_steps <= 0:
        return False
    with open(os.path.join(resume, TRAINER_STATE), encoding="utf-8") as f:
        step = json.load(f)["global_step"]
    if step < training_args.max_steps:
        return False
    if training_args.should_save:
        needed = sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(resume) for n in names)
        with explain_full_disk(output_dir, needed, "the final model", cleanup=final_model.staging_dir(output_dir)):
            final_model.from_checkpoint(resume, output_dir)
        run_record.mark_finished(output_dir, record, step)
        logger.info("%s reached --max_steps %d; only the final model was missing: written from it into %s",
                    resume, training_args.max_steps, output_dir)
    return True


def has_final_model(output_dir: str) -> bool:
    if not os.path.isdir(output_dir):
        return False
    try:
        checkpoint_kind(output_dir)
    except FileNotFoundError:
        return False
    return True


def stopped(signum: int, trainer, training_args):
    """After a stop on SIGTERM/SIGINT: say where the run can continue from, exit as the signal would have."""
    if training_args.should_log:
        logger.warning("stopped by %s at step %d; checkpoint-%d is in %s: run the same command again to continue",
                       signal.Signals(signum).name, trainer.state.global_step, trainer.state.global_step,
                       training_args.output_dir)
    end_distributed()
    raise SystemExit(128 + signum)


def end_distributed() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    errors.run(train, sys.argv[1:], program="llava.train")
