"""Training recipes: which parts of the LLaVA model train, and how the LLM is loaded.

stage 1 (pretrain) -> projector only
full               -> projector + the whole LLM
lora               -> projector + LoRA adapters on the LLM's linear layers
qlora              -> lora over a 4-bit NF4 (or 8-bit) LLM (--bits 4 / 8)
The vision tower and lm_head train only when asked (--train_modules).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers.integrations import deepspeed as hf_deepspeed

from llava import env
from llava.model.builder import ensure_pad_token
from llava.model.llava_arch import anyres_for, video_for, load_projector_weights
from llava.model.quantization import bnb_config
from llava.model.registry import backbone_for_checkpoint, backbone_names
from llava.model.zero3 import full_numel, gathered, outside_zero3

logger = logging.getLogger(__name__)

VISION_PARTS = ("vision_tower", "mm_projector", "image_newline")


def resolve_backbone(model_args):
    if model_args.backbone and model_args.backbone not in backbone_names():
        raise ValueError(f"--backbone {model_args.backbone!r} is unknown; choose one of {', '.join(backbone_names())}")
    return backbone_for_checkpoint(model_args.model_name_or_path, model_args.backbone)


def compute_dtype(training_args) -> torch.dtype:
    return torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32


def load_tokenizer(model_args, training_args, pad_token: str | None = None):
    tokenizer = env.load_tokenizer(
        model_args.model_name_or_path, model_max_length=training_args.model_max_length, padding_side="right"
    )
    ensure_pad_token(tokenizer, pad_token)
    return tokenizer


def check_template(template: str, model_args, training_args, backbone) -> None:
    """'chat_template' needs the tokenizer's own chat template, usable for training: checked on the tokenizer
    alone, before the model loads (a missing or untrainable template names the tokenizer and what to do)."""
    from llava.conversation import get_conv_template

    if template == "chat_template":
        get_conv_template(template, load_tokenizer(model_args, training_args, backbone.pad_token))


def lora_target_modules(model) -> str:
    """A regex for peft: the LLM's linear layers, never lm_head, the vision tower or the projector."""
    head = model.get_output_embeddings()
    leaf_names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head and not any(p in name for p in VISION_PARTS)
    }
    if not leaf_names:
        raise ValueError("found no linear layer in the LLM to put LoRA adapters on")
    return rf"^(?!.*(?:{'|'.join(VISION_PARTS)})).*\.(?:{'|'.join(sorted(leaf_names))})$"


def set_trainable(model, modules: frozenset[str]) -> None:
    """requires_grad by part; LoRA parameters keep theirs (peft decides them)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        in_vision = any(p in name for p in VISION_PARTS)
        param.requires_grad_("llm" in modules and not in_vision and param.is_floating_point())
    if "projector" in modules:
        base.get_model().mm_projector.requires_grad_(True)
        newline = getattr(base.get_model(), "image_newline", None)
        if newline is not None:  # AnyRes' row separator learns with the projector (and is saved with it)
            newline.requires_grad_(True)
    if "vision_tower" in modules:
        base.get_vision_tower().vision_tower.requires_grad_(True)
    if "lm_head" in modules:
        base.get_output_embeddings().requires_grad_(True)


def build_model(model_args, data_args, training_args, modules: frozenset[str]):
    """(model, tokenizer) ready for the Trainer: LLM + CLIP + projector, parts frozen per `modules`."""
    backbone = resolve_backbone(model_args)
    dtype = compute_dtype(training_args)
    zero3 = hf_deepspeed.is_deepspeed_zero3_enabled()
    bits = training_args.bits
    if bits in (4, 8) and zero3:
        raise ValueError(f"--bits {bits} (QLoRA) does not work under ZeRO-3; use zero2.json")

    kwargs = {"dtype": dtype}
    if bits in (4, 8):
        kwargs["quantization_config"] = bnb_config(bits, dtype, training_args.double_quant, training_args.quant_type)
        kwargs["device_map"] = {"": training_args.device}
    attn = model_args.attn_implementation or backbone.attn_implementation
    if attn:
        kwargs["attn_implementation"] = attn
    logger.info("loading %s LLM %s (%s)", backbone.name, model_args.model_name_or_path, dtype)
    model = backbone.model_class.from_pretrained(model_args.model_name_or_path, **kwargs)
    model.config.use_cache = False
    model.label_logits_only = training_args.label_logits_only
    tokenizer = load_tokenizer(model_args, training_args, backbone.pad_token)

    with outside_zero3():
        model.get_model().initialize_vision_modules(
            vision_tower=model_args.vision_tower,
            mm_projector_type=model_args.mm_projector_type,
            mm_vision_select_layer=model_args.mm_vision_select_layer,
            mm_vision_select_feature=model_args.mm_vision_select_feature,
            mm_patch_merge_type=model_args.mm_patch_merge_type,
        )
    tower = model.get_vision_tower()
    tower.to(dtype=dtype, device=training_args.device if bits in (4, 8) else None)
    projector = model.get_model().mm_projector
    projector.to(dtype=dtype, device=training_args.device if bits in (4, 8) else None)
    if model_args.pretrain_mm_mlp_adapter:
        # Gathered, so a partitioned projector (a LLaVA checkpoint under ZeRO-3) loads without size errors.
        with gathered(list(projector.parameters()), modifier_rank=0):
            load_projector_weights(projector, model_args.pretrain_mm_mlp_adapter)
        logger.info("loaded the stage-1 projector from %s", model_args.pretrain_mm_mlp_adapter)

    config = model.config
    config.image_aspect_ratio = data_args.image_aspect_ratio
    config.image_grid_pinpoints = data_args.image_grid_pinpoints
    try:
        anyres_for(config, tower)  # pinpoints that do not fit the tower's tiles fail here, before any data
    except ValueError as e:
        raise ValueError(f"--image_grid_pinpoints / --mm_patch_merge_type: {e}") from None
    # Videos (records with "video"): sampled and pooled as these say, saved so inference does the same.
    config.frames_upbound, config.force_sample = data_args.frames_upbound, data_args.force_sample
    config.mm_spatial_pool_stride, config.mm_spatial_pool_mode = model_args.mm_spatial_pool_stride, model_args.mm_spatial_pool_mode
    config.mm_newline_position = "one_token"
    try:
        video_for(config, tower)
    except ValueError as e:
        raise ValueError(f"--frames_upbound / --mm_spatial_pool_stride / --mm_spatial_pool_mode: {e}") from None
    newline = getattr(model.get_model(), "image_newline", None)
    if newline is not None:
        newline.data = newline.data.to(dtype=dtype, device=training_args.device if bits in (4, 8) else newline.device)
    config.tokenizer_model_max_length = training_args.model_max_length
    config.tokenizer_padding_side = tokenizer.padding_side
    added = model.initialize_vision_tokenizer(tokenizer, model_args.mm_use_im_start_end, model_args.mm_use_im_patch_token)

    if bits in (4, 8):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=training_args.gradient_checkpointing,
            gradient_checkpointing_kwargs=training_args.gradient_checkpointing_kwargs,
        )
        tower.to(dtype=dtype)  # the kbit preparation upcasts every float weight; the frozen tower need not be
    if "lora" in modules:
        from peft import LoraConfig, get_peft_model

        lora_config = LoraConfig(
            r=training_args.lora_r,
            lora_alpha=training_args.lora_alpha,
            lora_dropout=training_args.lora_dropout,
            bias=training_args.lora_bias,
            target_modules=lora_target_modules(model),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora_config)
        if training_args.deepspeed and training_args.bf16 and bits not in (4, 8):
            model.to(torch.bfloat16)  # DeepSpeed asserts on mixed dtypes when it flattens parameters
    set_trainable(model, modules)
    if added and "llm" not in modules:
        # The new <im_start>/<im_end> rows must learn even when the LLM is frozen (as official LLaVA).
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.get_input_embeddings().requires_grad_(True)
        base.get_output_embeddings().requires_grad_(True)
    if training_args.gradient_checkpointing:
        # With frozen embeddings the checkpointed blocks would otherwise get no input gradient.
        model.enable_input_require_grads()
    log_trainable(model, modules)
    return model, tokenizer


def log_trainable(model, modules) -> None:
    total = sum(full_numel(p) for p in model.parameters())
    trainable = sum(full_numel(p) for p in model.parameters() if p.requires_grad)
    logger.info("training %s: %s of %s parameters (%.2f%%)", ",".join(sorted(modules)), f"{trainable:,}", f"{total:,}",
                100 * trainable / max(total, 1))
