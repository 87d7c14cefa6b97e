"""Export a LLaVA checkpoint as a transformers `LlavaForConditionalGeneration` + `LlavaProcessor`
(AnyRes checkpoints: `LlavaNextForConditionalGeneration` + `LlavaNextProcessor`).

    python -m llava.export.hf --model-path checkpoints/llava-phi [--model-base B] --out exported/llava-phi-hf

The output loads with `LlavaForConditionalGeneration.from_pretrained(out)` and
`AutoProcessor.from_pretrained(out)` (the layout vLLM and SGLang serve): the vision tower, the
projector as `multi_modal_projector.linear_1/linear_2`, the LLM as `language_model`, a tokenizer
with an `<image>` token, an image processor that pads to square when the checkpoint did, and a
chat template that renders this checkpoint's conversation template. Settings HF Llava cannot
express are refused with the field that causes it, never exported approximately.

Phi's `lm_head` has a bias. It is written as `lm_head.bias`: vLLM's Llava builds the text model
named by `text_config.architectures` (its PhiForCausalLM has a biased head, and refuses to load
without the bias), so there the export is exact. transformers' own LlavaForConditionalGeneration
builds `lm_head` without a bias (modeling_llava.py, whatever `text_config` says), reports
`lm_head.bias` as UNEXPECTED and ignores it: its logits are ours minus the bias (the same vector at
every position), which is exact only while the bias is zero (an untrained head).
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import torch
from transformers import (
    AutoConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaNextConfig, LlavaNextForConditionalGeneration,
    LlavaNextProcessor, LlavaProcessor,
)

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import Conversation, get_conv_template
from llava.mm_utils import anyres_max_tiles, is_anyres, parse_grid_pinpoints
from llava.model.multimodal_encoder import image_processor_class
from llava.model.multimodal_encoder.base import SELECT_FEATURES, tower_class

logger = logging.getLogger(__name__)

SUPPORTED_PROJECTORS = ("linear", "mlp2x_gelu")
# LLaVA-only config fields that must not leak into the exported text config.
_LLAVA_FIELDS = ("image_aspect_ratio", "tokenizer_model_max_length", "tokenizer_padding_side", "use_mm_proj",
                 "image_grid_pinpoints")
# Not carried into the exported configs: the LLaVA class, and where the checkpoint was loaded from.
_NOT_EXPORTED = ("model_type", "architectures", "auto_map", "_name_or_path", "name_or_path")


class ExportError(ValueError):
    pass


# -- checks ------------------------------------------------------------------------------------
def check_exportable(config) -> None:
    """Raise ExportError naming the first setting HF Llava cannot represent exactly."""
    if not getattr(config, "mm_vision_tower", None):
        raise ExportError("config has no mm_vision_tower: this is a plain LLM, not a LLaVA checkpoint")
    if getattr(config, "mm_use_im_start_end", False):
        raise ExportError(
            "mm_use_im_start_end=True: HF Llava has no <im_start>/<im_end> tokens around the image; "
            "such checkpoints cannot be exported"
        )
    projector = getattr(config, "mm_projector_type", "linear")
    if projector not in SUPPORTED_PROJECTORS:
        raise ExportError(
            f"mm_projector_type={projector!r}: HF Llava's projector is Linear-GELU-Linear; "
            f"only {', '.join(SUPPORTED_PROJECTORS)} can be exported"
        )
    feature = getattr(config, "mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURES:
        raise ExportError(f"mm_vision_select_feature={feature!r} is not one of {', '.join(SELECT_FEATURES)}")
    aspect = getattr(config, "image_aspect_ratio", None) or "square"
    merge = getattr(config, "mm_patch_merge_type", None) or "flat"
    if is_anyres(aspect):
        # transformers' LlavaNext always lays the grid out unpadded with image_newline after each row.
        if merge != "spatial_unpad":
            raise ExportError(
                f"image_aspect_ratio={aspect!r} with mm_patch_merge_type={merge!r}: transformers' LlavaNext lays AnyRes "
                "tiles out only as 'spatial_unpad' (unpadded, image_newline after each row)"
            )
        if anyres_max_tiles(aspect) is not None:
            raise ExportError(
                f"image_aspect_ratio={aspect!r}: transformers' LlavaNext does not shrink the feature map to a tile "
                "budget; only 'anyres' exports"
            )
    elif aspect not in ("square", "pad"):
        raise ExportError(f"image_aspect_ratio={aspect!r}: only 'square', 'pad' and 'anyres' have an HF image processor")
    stored = getattr(config, "mm_vision_config", None)
    model_type = (stored.to_dict() if hasattr(stored, "to_dict") else stored or {}).get("model_type")
    refusal = tower_class(model_type).export_refusal if model_type else None
    if refusal:
        raise ExportError(f"mm_vision_config model_type {model_type!r}: {refusal}")


# -- chat template -------------------------------------------------------------------------------
def chat_template_for(conv: Conversation) -> str:
    """The processor's chat template: the Jinja `conv` renders with (ours, or the tokenizer's own for
    'chat_template'), taking image items in a message's content as LLaVA places images.

    A leading system message replaces the template's system prompt. The `{% generation %}` blocks of our
    templates stay: transformers' `return_assistant_tokens_mask` reads them (plain rendering ignores them).
    """
    return conv.processor_chat_template()


# -- weights -------------------------------------------------------------------------------------
def text_config_for(config, backbone) -> "AutoConfig":
    """The plain HF LLM config (e.g. `phi`) inside a LLaVA config (`llava_phi`)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    values = {
        k: v
        for k, v in config.to_dict().items()
        if not k.startswith("mm_") and k not in _LLAVA_FIELDS and k not in _NOT_EXPORTED
    }
    model_type = backbone.base_model_types[0]
    # HF Llava's own lm_head carries the output weights; tying would break OPT (STACK.md) and is never needed
    # (vLLM's Phi refuses tied configs).
    values["tie_word_embeddings"] = False
    values["use_cache"] = True  # training turns the KV cache off for gradient checkpointing; serving wants it
    # vLLM builds the text model from this (e.g. PhiForCausalLM, whose lm_head has the bias).
    values["architectures"] = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]]
    return AutoConfig.for_model(model_type, **values)


def convert_state_dict(model, projector_type: str) -> dict[str, torch.Tensor]:
    """Our parameter names -> HF Llava's (`model.language_model.*`, `model.vision_tower.*`, ...)."""
    inner_prefix = model.base_model_prefix + "."  # "model." (Phi, LLaMA, OPT) or "transformer." (MPT)
    out = {}
    for name, tensor in model.state_dict().items():
        if not name.startswith(inner_prefix):
            if name in ("lm_head.weight", "lm_head.bias"):
                out[name] = tensor
            continue
        rest = name[len(inner_prefix) :]
        if rest == "image_newline":  # LlavaNext's own
            out["model.image_newline"] = tensor
        elif rest.startswith("vision_tower.vision_tower."):
            out["model.vision_tower." + rest[len("vision_tower.vision_tower.") :]] = tensor
        elif rest.startswith("mm_projector."):
            continue
        else:
            out["model.language_model." + rest] = tensor
    projector = model.get_model().mm_projector
    if projector_type == "mlp2x_gelu":
        out["model.multi_modal_projector.linear_1.weight"] = projector[0].weight.data
        out["model.multi_modal_projector.linear_1.bias"] = projector[0].bias.data
        out["model.multi_modal_projector.linear_2.weight"] = projector[2].weight.data
        out["model.multi_modal_projector.linear_2.bias"] = projector[2].bias.data
    else:  # linear: Linear, then an identity activation and an identity Linear (exact in float)
        hidden = projector.weight.shape[0]
        out["model.multi_modal_projector.linear_1.weight"] = projector.weight.data
        out["model.multi_modal_projector.linear_1.bias"] = projector.bias.data
        out["model.multi_modal_projector.linear_2.weight"] = torch.eye(hidden, dtype=projector.weight.dtype)
        out["model.multi_modal_projector.linear_2.bias"] = torch.zeros(hidden, dtype=projector.weight.dtype)
    if "lm_head.weight" not in out:  # tied checkpoints keep only the embeddings
        out["lm_head.weight"] = model.get_output_embeddings().weight.data
    return out


def select_strategy(tower) -> str:
    """HF Llava's vision_feature_select_strategy: "default" drops exactly one leading token, "full" none."""
    if tower.select_feature == "cls_patch" or tower.prefix_tokens == 0:
        return "full"
    if tower.prefix_tokens == 1:
        return "default"
    raise ExportError(
        f"the vision tower puts {tower.prefix_tokens} tokens before its patches and mm_vision_select_feature='patch' "
        "drops them; HF Llava can drop only one"
    )


def image_processor_for(image_processor, aspect_ratio: str):
    """LLaVA's 'pad' (expand to square with the mean colour, then resize) is LlavaImageProcessor(do_pad=True)."""
    settings = image_processor.to_dict()
    keep = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
            "do_normalize", "image_mean", "image_std", "do_convert_rgb")
    kept = {k: settings[k] for k in keep if k in settings}
    kept.setdefault("do_center_crop", False)  # SigLIP's processor only resizes; LlavaImageProcessor would crop 224
    return image_processor_class("LlavaImageProcessor")(**kept, do_pad=aspect_ratio == "pad")


def hf_grid_pinpoints(config, tower) -> list[list[int]]:
    """Our (width, height) canvases as transformers' LlavaNext lists them: [height, width]."""
    return [[height, width] for width, height in parse_grid_pinpoints(config.image_grid_pinpoints, tower.image_size)]


def next_image_processor_for(image_processor, pinpoints):
    """LlavaNextImageProcessor tiling as ours: the same canvases, base image squashed to one tile."""
    settings = image_processor.to_dict()
    keep = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
            "do_normalize", "image_mean", "image_std", "do_convert_rgb")
    kept = {k: settings[k] for k in keep if k in settings}
    kept.setdefault("do_center_crop", False)
    return image_processor_class("LlavaNextImageProcessor")(**kept, image_grid_pinpoints=pinpoints, do_pad=True)


# -- export --------------------------------------------------------------------------------------
def export(
    model_path: str,
    out_dir: str,
    model_base: str | None = None,
    conv_mode: str | None = None,
    dtype: str = "float32",
) -> str:
    from llava.model.builder import load_pretrained_model
    from llava.model.registry import backbone_for_config, trained_conv_template

    config = AutoConfig.from_pretrained(model_path)
    check_exportable(config)  # before the (possibly slow) weight loading
    tokenizer, model, image_processor, _ = load_pretrained_model(model_path, model_base, device="cpu", dtype=torch.float32)
    config = model.config
    check_exportable(config)
    backbone = backbone_for_config(config)
    conv = get_conv_template(conv_mode or trained_conv_template(config), tokenizer)

    # The image token joins the vocabulary; the processor expands it to one token per patch.
    if DEFAULT_IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([DEFAULT_IMAGE_TOKEN], special_tokens=True)
    image_token_id = tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)
    if image_token_id >= model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))

    tower = model.get_vision_tower()
    text_config = text_config_for(model.config, backbone)
    anyres = is_anyres(getattr(config, "image_aspect_ratio", None))
    common = dict(
        text_config=text_config,
        vision_config=tower.export_config(),
        image_token_index=image_token_id,
        image_seq_length=tower.num_patches,
        projector_hidden_act="gelu" if config.mm_projector_type == "mlp2x_gelu" else "linear",
        vision_feature_layer=config.mm_vision_select_layer,
        vision_feature_select_strategy=select_strategy(tower),
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    if anyres:
        pinpoints = hf_grid_pinpoints(config, tower)
        llava_config = LlavaNextConfig(**common, image_grid_pinpoints=pinpoints)
        hf_model = LlavaNextForConditionalGeneration(llava_config)
    else:
        llava_config = LlavaConfig(**common)
        hf_model = LlavaForConditionalGeneration(llava_config)
    weights = convert_state_dict(model, config.mm_projector_type)
    if "lm_head.bias" in weights:  # saved with the weights for vLLM (see the module doc)
        hf_model.lm_head.bias = torch.nn.Parameter(torch.empty_like(weights["lm_head.bias"]))
        _explain_head_bias(weights["lm_head.bias"])
    result = hf_model.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ExportError(
            f"weight names do not line up with HF Llava for backbone {backbone.name!r}: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    if getattr(text_config, "final_logit_softcapping", None):
        logger.warning(
            "final_logit_softcapping=%s (Gemma 2) is kept in text_config for servers that build the text model's "
            "own head (vLLM); transformers' LlavaForConditionalGeneration does not apply it, so its logits are "
            "this model's before the soft-cap (same argmax, |diff| grows with |logit|)",
            text_config.final_logit_softcapping,
        )
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(hf_model.generation_config, name, getattr(tokenizer, name))
    hf_model.generation_config.use_cache = True
    hf_model.to(getattr(torch, dtype)).save_pretrained(out_dir)
    _name_vision_weights_as_the_hub_does(out_dir, tower)

    processor_class, hf_image_processor = (
        (LlavaNextProcessor, next_image_processor_for(image_processor, pinpoints)) if anyres
        else (LlavaProcessor, image_processor_for(image_processor, getattr(config, "image_aspect_ratio", None) or "square"))
    )
    processor = processor_class(
        image_processor=hf_image_processor,
        tokenizer=tokenizer,
        patch_size=tower.config.patch_size,
        vision_feature_select_strategy=llava_config.vision_feature_select_strategy,
        num_additional_image_tokens=tower.prefix_tokens,  # e.g. CLIP's CLS token
        chat_template=chat_template_for(conv),
        image_token=DEFAULT_IMAGE_TOKEN,
    )
    processor.save_pretrained(out_dir)
    # Also the image processor on its own, where transformers 4.x (and servers built on it) look for it.
    processor.image_processor.save_pretrained(out_dir)
    return out_dir


def _name_vision_weights_as_the_hub_does(out_dir: str, tower) -> None:
    """The tower's weights in the saved files renamed as the hub's checkpoints of its family spell them
    (CLIP: `vision_tower.X` -> `vision_tower.vision_model.X`); transformers 5 loads both spellings."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    index_path = os.path.join(out_dir, "model.safetensors.index.json")
    index = json.load(open(index_path)) if os.path.exists(index_path) else None
    files = sorted(set(index["weight_map"].values())) if index else ["model.safetensors"]

    def rename(key: str) -> str:
        if key.startswith("vision_tower."):
            return "vision_tower." + tower.export_weight_name(key[len("vision_tower."):])
        return key

    for name in files:
        path = os.path.join(out_dir, name)
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {"format": "pt"}
            tensors = {rename(k): f.get_tensor(k) for k in f.keys()}
        save_file(tensors, path, metadata=metadata)
    if index:
        index["weight_map"] = {rename(k): v for k, v in index["weight_map"].items()}
        with open(index_path, "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)


def _explain_head_bias(bias: torch.Tensor) -> None:
    largest = float(bias.detach().abs().max())
    if largest == 0:
        return
    logger.warning(
        "lm_head.bias is non-zero (max |b| = %.3g, mean |b| = %.3g): written for vLLM, whose Phi applies it "
        "(exact there); transformers' LlavaForConditionalGeneration has no head bias and ignores it, so its "
        "logits are this model's minus the bias (see docs/evaluation.md, export)",
        largest, float(bias.detach().abs().mean()),
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-base", default=None, help="base LLM for LoRA / stage-1 projector checkpoints")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--conv-mode", default=None, help="template the chat_template renders (default: the one the checkpoint was trained with, else the backbone's; "
                        "chat_template: the tokenizer's own)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from llava.model.paths import resolve_pretrained

    args.model_path = resolve_pretrained(args.model_path, "--model-path")  # export reads its config before loading
    try:
        export(args.model_path, args.out, args.model_base, args.conv_mode, args.dtype)
    except ExportError as exc:
        raise SystemExit(f"cannot export {args.model_path}: {exc}") from None
    print(f"wrote the transformers model and processor to {args.out}")


if __name__ == "__main__":
    from llava.errors import run

    run(main)
