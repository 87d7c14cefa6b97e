"""Every backbone through the training recipes: full, LoRA and QLoRA train, save, resume, reload,
generate and export; and the checks that keep a checkpoint from loading as the wrong family.

One tiny run per recipe and backbone (1-2 steps, hidden 64, 2 layers); each checkpoint is loaded back
with `load_pretrained_model`, answers an image question, and the full one exports to transformers'
`LlavaForConditionalGeneration` with equal logits.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from conftest import BACKBONES
from helpers import exported_logits_diff
from llava.mm_utils import tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.model.layout import checkpoint_kind
from llava.model.registry import backbone_for_checkpoint, get_backbone
from llava.train.train import train

NEW_BACKBONES = BACKBONES[4:]


def run(tiny_llm, tiny_clip, demo_data, backbone, out, *extra):
    train([
        "--model_name_or_path", tiny_llm(backbone), "--vision_tower", tiny_clip,
        "--image_folder", demo_data["image_folder"], "--data_path", demo_data["finetune"],
        "--per_device_train_batch_size", "2", "--logging_steps", "1", "--report_to", "none",
        "--save_strategy", "steps", "--model_max_length", "256", "--seed", "0", "--data_seed", "0",
        "--learning_rate", "1e-3", "--image_aspect_ratio", "pad", "--output_dir", str(out), *extra,
    ])  # fmt: skip


def losses(out):
    with open(os.path.join(out, "trainer_state.json")) as f:
        return {e["step"]: e["loss"] for e in json.load(f)["log_history"] if "loss" in e}


def answers(checkpoint, **load):
    """Greedy tokens for an image question from a reloaded checkpoint."""
    tokenizer, model, processor, _ = load_pretrained_model(str(checkpoint), device="cpu", **load)
    ids = tokenizer_image_token("<image>\nWhat shape is it?", tokenizer, return_tensors="pt")[None]
    image = torch.randn(1, 3, 32, 32)
    out = model.generate(ids, images=image, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 3)
    return model, tokenizer


def export_diff(checkpoint, out_dir) -> float:
    """max |logits| difference between our model and its transformers Llava export, on an image prompt."""
    from llava.export.hf import export

    export(str(checkpoint), str(out_dir))
    return exported_logits_diff(checkpoint, out_dir)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", NEW_BACKBONES)
def test_backbone_trains_full_lora_qlora_resumes_reloads_generates_exports(
    backbone, tiny_llm, tiny_clip, demo_data, tmp_path
):
    pytest.importorskip("bitsandbytes")
    model_type = f"llava_{backbone}"
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run(tiny_llm, tiny_clip, demo_data, backbone, full, "--max_steps", "2", "--save_steps", "1")
    assert checkpoint_kind(str(full)) == "full"
    assert json.loads((full / "config.json").read_text())["model_type"] == model_type
    run(tiny_llm, tiny_clip, demo_data, backbone, resumed, "--max_steps", "2", "--save_steps", "1",
        "--resume_from_checkpoint", str(full / "checkpoint-1"))
    assert losses(resumed)[2] == pytest.approx(losses(full)[2], rel=1e-4)  # step 2 as in the uninterrupted run
    model, tokenizer = answers(full)
    assert type(model) is get_backbone(backbone).model_class and tokenizer.pad_token is not None
    assert export_diff(full, tmp_path / "hf") <= 1e-4

    for recipe, extra, load in (("lora", (), {}), ("qlora", ("--bits", "4"), {"load_4bit": True})):
        out = tmp_path / recipe
        run(tiny_llm, tiny_clip, demo_data, backbone, out, "--lora_enable", "True", "--lora_r", "4",
            "--lora_alpha", "8", "--max_steps", "1", "--save_steps", "1", *extra)
        assert checkpoint_kind(str(out)) == "lora"
        assert all(v > 0 for v in losses(out).values())
        answers(out, **load)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_plain_checkpoint_resolves_to_its_own_backbone(backbone, tiny_llm):
    # Llama-3 and SmolLM2 checkpoints are model_type `llama` like LLaMA-2's: their tokenizers tell them apart.
    assert backbone_for_checkpoint(tiny_llm(backbone)).name == backbone


def test_explicit_backbone_of_another_model_type_is_refused(tiny_llm):
    with pytest.raises(ValueError, match=r"--backbone llama loads model_type llama .* model_type is 'qwen2'; "
                                         r"pass --backbone with one of: qwen2"):
        backbone_for_checkpoint(tiny_llm("qwen2"), "llama")
    # A family declared for the same model type is the user's choice (a Llama-3 checkpoint as LLaMA-2).
    assert backbone_for_checkpoint(tiny_llm("llama3"), "llama").name == "llama"


def test_weights_the_class_has_no_place_for_are_an_error(tiny_llm):
    # LLaMA's attention has no q/k/v biases: loading Qwen2 into it would drop them without a word.
    with pytest.raises(ValueError, match=r"has no place for, e\.g\. model\.layers\.0\.self_attn\.k_proj\.bias"):
        get_backbone("llama").model_class.from_pretrained(tiny_llm("qwen2"))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_default_attention_is_the_backbones_declared_one(backbone, tiny_llm, tiny_clip):
    from types import SimpleNamespace

    from llava.train.recipes import build_model

    spec = get_backbone(backbone)
    model_args = SimpleNamespace(
        backbone=None, model_name_or_path=tiny_llm(backbone), attn_implementation=None, vision_tower=tiny_clip,
        mm_projector_type="linear", mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        pretrain_mm_mlp_adapter=None, mm_use_im_start_end=False, mm_use_im_patch_token=False,
        mm_patch_merge_type="flat", mm_spatial_pool_stride=2, mm_spatial_pool_mode="bilinear",
    )  # fmt: skip
    training_args = SimpleNamespace(
        bf16=False, fp16=False, bits=16, label_logits_only=False, model_max_length=64, device="cpu",
        gradient_checkpointing=False, deepspeed=None,
    )  # fmt: skip
    model, tokenizer = build_model(model_args, SimpleNamespace(image_aspect_ratio="pad", image_grid_pinpoints=None,
                                                              frames_upbound=32, force_sample=False),
                                   training_args,
                                   frozenset({"projector"}))
    assert model.config._attn_implementation == (spec.attn_implementation or "sdpa")
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"


def test_users_own_qwen2_folder_trains_without_backbone_flag(tmp_path, tiny_clip, demo_data):
    """A Qwen2 LLM saved by plain transformers with its tokenizer and chat template, as users bring them."""
    from transformers import Qwen2ForCausalLM

    spec = get_backbone("qwen2")
    folder = tmp_path / "my-qwen"
    tokenizer = spec.tiny_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    torch.manual_seed(0)
    Qwen2ForCausalLM(spec.tiny_config()).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert AutoConfig.from_pretrained(folder).model_type == "qwen2"
    out = tmp_path / "out"
    run(lambda _: str(folder), tiny_clip, demo_data, "qwen2", out, "--max_steps", "1", "--save_steps", "1")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "LlavaQwen2ForCausalLM"
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    assert AutoTokenizer.from_pretrained(out).chat_template is not None
