"""Training monitors: is the image signal reaching the LLM, and which part of the model is learning?

Added to the training log every `--logging_steps` (so to the console line, trainer_state.json's
log_history, and TensorBoard / wandb under --report_to), measured on the logging step itself:

    monitor/image_rms              RMS of the projected image features (the projector's output)
    monitor/text_rms               RMS of the text token embeddings of the same batches
    monitor/image_text_rms_ratio   their ratio; far from 1 the LLM sees one of the two as noise or not at all
    monitor/image_spread           std across the step's images of each image's mean projected feature,
                                   over the features' RMS: ~0 when every image maps to the same features
    grad_norm/projector            gradient norm of each trainable group before clipping (a frozen
    grad_norm/vision_tower         group has no key): mm_projector, vision tower, and the LLM (every
    grad_norm/llm                  other trainable parameter: LoRA adapters, embeddings, lm_head)

Features are read by forward hooks (no second forward pass); the numbers are summed over the
step's micro-batches and over all ranks. Gradient norms are taken after the last backward of the
step and before clipping: under DeepSpeed by wrapping the engine's `step()` (it clips inside), from
each rank's own ZeRO-2/3 gradient partition, squared norms summed over ranks; otherwise from the
reduced `.grad`s just before the Trainer clips them. See docs/training.md, 'Reading the monitors'.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist
from transformers import TrainerCallback
from transformers.trainer_utils import IntervalStrategy

from llava.constants import IMAGE_TOKEN_INDEX

logger = logging.getLogger(__name__)

GROUPS = ("projector", "vision_tower", "llm")
# Image/text RMS beyond 1000x (or under 1/1000) is worth a look. Not 100x: the full demo (scripts/demo.sh),
# whose model reads the image (blank images cost it 58 points), ran at 12-116x; the collapse of
# issue 15 was ~70,000x.
RATIO_LIMIT = 1000.0
SPREAD_LIMIT = 1e-3
DOC = "docs/training.md, 'Reading the monitors'"


def param_module(name: str) -> str:
    """'projector', 'vision_tower' or 'llm' for a parameter name (plain, DeepSpeed or peft-wrapped): the
    groups monitored here and the ones --mm_projector_lr / --mm_vision_tower_lr give a rate of their own."""
    if "mm_projector" in name or "image_newline" in name:  # AnyRes' row separator trains with the projector
        return "projector"
    if "vision_tower" in name:
        return "vision_tower"
    return "llm"


# -- feature statistics --------------------------------------------------------------------------
class FeatureStats:
    """Running sums over a step's batches, kept as one float64 vector so ranks add theirs in one all-reduce.

    Layout: [image sum of squares, image elements, text sum of squares, text elements, images,
    sum over images of the per-image mean feature (hidden), the same of its square (hidden)].
    """

    def __init__(self, hidden: int, device=None):
        self.hidden = hidden
        self.sums = torch.zeros(5 + 2 * hidden, dtype=torch.float64, device=device)

    def add_images(self, features: torch.Tensor) -> None:
        """(images, patches, hidden) projected features."""
        f = features.detach().float()
        means = f.mean(dim=1).double()
        self.sums[0] += f.pow(2).sum().double()
        self.sums[1] += f.numel()
        self.sums[4] += f.shape[0]
        self.sums[5 : 5 + self.hidden] += means.sum(dim=0)
        self.sums[5 + self.hidden :] += means.pow(2).sum(dim=0)

    def add_text(self, embeds: torch.Tensor) -> None:
        """(tokens, hidden) token embeddings."""
        e = embeds.detach().float()
        self.sums[2] += e.pow(2).sum().double()
        self.sums[3] += e.numel()

    def reduce(self) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.sums)

    def metrics(self) -> dict[str, float]:
        """The monitor/* values of these sums (a value needing images or text that never came is left out)."""
        s = self.sums.cpu()
        image_sq, image_n, text_sq, text_n, images = (float(v) for v in s[:5])
        out = {}
        if image_n:
            out["monitor/image_rms"] = math.sqrt(image_sq / image_n)
        if text_n:
            out["monitor/text_rms"] = math.sqrt(text_sq / text_n)
        if image_n and text_n and text_sq > 0:
            out["monitor/image_text_rms_ratio"] = out["monitor/image_rms"] / out["monitor/text_rms"]
        if images >= 2 and image_sq > 0:
            mean = s[5 : 5 + self.hidden] / images
            variance = (s[5 + self.hidden :] / images - mean.pow(2)).clamp(min=0)
            out["monitor/image_spread"] = math.sqrt(float(variance.mean())) / out["monitor/image_rms"]
        return out


# -- gradient norms ------------------------------------------------------------------------------
def _total_norm(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    if not tensors:
        return None
    return torch.nn.utils.get_total_norm([t.detach() for t in tensors], error_if_nonfinite=False).float()


def _zero12_fragment(param: torch.Tensor) -> torch.Tensor | None:
    """This rank's part of a ZeRO-1/2 parameter's reduced gradient (None where it owns no part of it)."""
    mapping = param._hp_mapping
    if mapping is None:
        return None
    fragment = mapping.get_lp_grad_fragment(param._index_in_param_group)
    address = mapping.lp_fragment_address
    if fragment.numel() == param.numel() and fragment.numel() != address.numel:
        # bf16 keeps the whole accumulation buffer on every rank; only the owned slice counts here.
        fragment = fragment.flatten().narrow(0, address.start, address.numel)
    return fragment


def group_grad_norms(named_params, deepspeed: bool = False, scale: float = 1.0) -> dict[str, float]:
    """grad_norm/<group> of the trainable parameters (groups without any are left out).

    `deepspeed`: gradients may be ZeRO partitions; each rank's squared norms are summed over ranks
    (a collective: every rank must call this at the same point). `scale`: a loss scale to divide out.
    """
    groups = {}
    for name, param in named_params:
        if param.requires_grad:
            groups.setdefault(param_module(name), []).append(param)
    order = [g for g in GROUPS if g in groups]
    partitioned = torch.zeros(len(order), dtype=torch.float64)
    replicated = torch.zeros(len(order), dtype=torch.float64)
    device = None
    for i, group in enumerate(order):
        local, full = [], []
        for param in groups[group]:
            if deepspeed and hasattr(param, "ds_id"):  # ZeRO-3: this rank's partition
                from deepspeed.utils import safe_get_local_grad

                grad = safe_get_local_grad(param)
                if grad is not None:
                    local.append(grad)
            elif deepspeed and param.grad is None and hasattr(param, "_hp_mapping"):  # ZeRO-1/2
                fragment = _zero12_fragment(param)
                if fragment is not None:
                    local.append(fragment)
            elif param.grad is not None:  # the whole (already reduced) gradient, the same on every rank
                full.append(param.grad)
        for tensors, into in ((local, partitioned), (full, replicated)):
            norm = _total_norm(tensors)
            if norm is not None:
                into[i] = float(norm) ** 2
                device = norm.device
    if deepspeed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        partitioned = partitioned.to(device or _comm_device())
        dist.all_reduce(partitioned)
    total = partitioned.cpu() + replicated
    return {f"grad_norm/{group}": math.sqrt(float(total[i])) / scale for i, group in enumerate(order)}


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# -- the callback --------------------------------------------------------------------------------
class TrainingMonitors(TrainerCallback):
    """Adds the monitors to the logs of the steps that log; `LLaVATrainer.log` asks it via `add_to_logs`."""

    def __init__(self, trainer):
        self.trainer = trainer
        model = trainer.model
        llava = model.get_base_model() if hasattr(model, "get_base_model") else model
        inner = llava.get_model()
        self.stats = FeatureStats(inner.get_input_embeddings().embedding_dim, device=trainer.args.device)
        self.armed = False  # this step will log: measure it
        self.measured = False
        self.grad_norms: dict[str, float] = {}
        self.warned: set[str] = set()
        self._inputs = None
        self._undo = []
        hooks = [model.register_forward_pre_hook(self._see_inputs, with_kwargs=True),
                 inner.get_input_embeddings().register_forward_hook(self._see_text)]
        if getattr(inner, "mm_projector", None) is not None:
            hooks.append(inner.mm_projector.register_forward_hook(self._see_images))
        self._undo += [hook.remove for hook in hooks]

    # forward hooks
    def _see_inputs(self, module, args, kwargs):
        if not (self.armed and module.training):
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self._inputs = (input_ids, kwargs.get("attention_mask")) if isinstance(input_ids, torch.Tensor) else None

    def _see_images(self, module, args, output):
        if not (self.armed and module.training) or self._inputs is None:
            return
        # Rows past the batch's <image> markers are a placeholder (an image-less batch still runs the
        # vision modules, see llava_arch), merged nowhere: they are not image features.
        markers = int((self._inputs[0] == IMAGE_TOKEN_INDEX).sum())
        if markers:
            self.stats.add_images(output[:markers].to(self.stats.sums.device))

    def _see_text(self, module, args, output):
        if not (self.armed and module.training) or self._inputs is None:
            return
        input_ids, attention_mask = self._inputs
        self._inputs = None  # the merge embeds each batch once; later calls are not this batch's text
        if output.shape[:2] != input_ids.shape:
            return
        text = input_ids != IMAGE_TOKEN_INDEX
        if attention_mask is not None and attention_mask.shape == input_ids.shape:
            text &= attention_mask.bool()
        self.stats.add_text(output[text.to(output.device)].to(self.stats.sums.device))

    # gradient norms, before clipping
    def _measure_grads(self, deepspeed: bool, scale: float = 1.0) -> None:
        if self.armed:
            self.grad_norms = group_grad_norms(self.trainer.model.named_parameters(), deepspeed, scale)

    def on_train_begin(self, args, state, control, **kwargs):
        wrapper = getattr(self.trainer.accelerator, "deepspeed_engine_wrapped", None)
        if wrapper is not None:
            engine = wrapper.engine
            step = engine.step

            def measured_step(*a, **kw):
                if engine.is_gradient_accumulation_boundary():
                    self._measure_grads(True, float(getattr(engine.optimizer, "loss_scale", 1.0) or 1.0))
                return step(*a, **kw)

            engine.step = measured_step
            self._undo.append(lambda: setattr(engine, "step", step))
        else:
            accelerator = self.trainer.accelerator
            clip = accelerator.clip_grad_norm_

            def measured_clip(*a, **kw):
                scaler = getattr(accelerator, "scaler", None)  # fp16: gradients are still loss-scaled here
                scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
                self._measure_grads(False, scale)
                return clip(*a, **kw)

            accelerator.clip_grad_norm_ = measured_clip
            self._undo.append(lambda: setattr(accelerator, "clip_grad_norm_", clip))

    def on_step_begin(self, args, state, control, **kwargs):
        step = state.global_step + 1
        every = state.logging_steps or args.logging_steps
        self.armed = (args.logging_strategy == IntervalStrategy.EPOCH
                      or (args.logging_strategy == IntervalStrategy.STEPS and step % every == 0)
                      or (step == 1 and args.logging_first_step))
        self.measured = self.measured or self.armed

    def on_step_end(self, args, state, control, **kwargs):
        self.armed = False
        self._inputs = None

    def on_train_end(self, args, state, control, **kwargs):
        for undo in self._undo:
            undo()
        self._undo = []

    # the log line
    def add_to_logs(self, logs: dict) -> None:
        """Add the measured step's numbers to a training log line (every rank calls this, at the same step)."""
        if "loss" not in logs or not self.measured:
            return
        self.stats.reduce()
        values = {**self.stats.metrics(), **self.grad_norms}
        self.stats.sums.zero_()
        self.grad_norms, self.measured = {}, False
        logs.update(values)
        self._warn(values)

    def _warn(self, values: dict) -> None:
        if not self.trainer.is_world_process_zero():
            return
        ratio = values.get("monitor/image_text_rms_ratio")
        if ratio is not None and not (1 / RATIO_LIMIT <= ratio <= RATIO_LIMIT) and "ratio" not in self.warned:
            self.warned.add("ratio")
            logger.warning(
                "projected image features have %.3g times the RMS of the text embeddings (image %.3g, text %.3g): "
                "the LLM may drown in or ignore the image tokens; check the projector's learning rate and whether "
                "the vision tower trains (see %s)", ratio, values["monitor/image_rms"], values["monitor/text_rms"], DOC)
        spread = values.get("monitor/image_spread")
        if spread is not None and spread < SPREAD_LIMIT and "spread" not in self.warned:
            self.warned.add("spread")
            logger.warning(
                "image spread %.2g: every image is projected to almost the same features, so the model cannot "
                "tell images apart and will answer from the question alone (see %s)", spread, DOC)
