"""HF export: LlavaForConditionalGeneration + LlavaProcessor reproduce our model's logits, prompts and pixels."""

from __future__ import annotations

import json
import os
import shutil
import types

import pytest
import torch
from PIL import Image

from conftest import BACKBONES
from helpers import cached_checkpoint, soft_capped
from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates, get_conv_template
from llava.export.hf import ExportError, chat_template_for, check_exportable, export


def _ours_and_exported(checkpoint, out_dir, question="What is this?"):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from llava.inference import InferenceEngine

    export(checkpoint, str(out_dir))
    hf_model = LlavaForConditionalGeneration.from_pretrained(str(out_dir)).eval()
    processor = AutoProcessor.from_pretrained(str(out_dir))
    engine = InferenceEngine.from_pretrained(checkpoint)
    conv = engine.new_conversation()
    engine.add_user_turn(conv, question, has_image=True)
    image = Image.new("RGB", (40, 26), (20, 180, 60))  # not square: exercises 'pad'
    return engine, engine.prepare(conv, image), hf_model, processor, image


@pytest.mark.parametrize("backbone", BACKBONES)
def test_exported_logits_match_ours(backbone, tmp_path_factory, tiny_llm, tiny_clip, tmp_path):
    checkpoint = cached_checkpoint(tmp_path_factory, tiny_llm, tiny_clip, backbone, image_aspect_ratio="pad")
    engine, item, hf_model, processor, image = _ours_and_exported(checkpoint, tmp_path / "hf")

    n_patches = engine.model.get_vision_tower().num_patches
    assert hf_model.config.vision_feature_select_strategy == "default"
    assert hf_model.config.vision_feature_layer == -2
    assert processor.num_additional_image_tokens == 1
    # Our ids with the image marker expanded to one HF image token per patch.
    expanded = torch.cat([
        torch.full((n_patches,), hf_model.config.image_token_id) if t == IMAGE_TOKEN_INDEX else t.view(1)
        for t in item.input_ids
    ])
    with torch.no_grad():
        ours = engine.model(input_ids=item.input_ids[None], images=item.image[None]).logits
        theirs = hf_model(input_ids=expanded[None], pixel_values=item.image[None]).logits
    vocab = ours.shape[-1]
    assert theirs.shape[1] == ours.shape[1]
    assert (ours - soft_capped(theirs, hf_model)[..., :vocab]).abs().max().item() <= 1e-4

    # The processor renders our prompt, pads the image like we do, and expands <image> per patch.
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == item.prompt
    inputs = processor(text=text, images=image, return_tensors="pt")
    assert torch.equal(inputs["pixel_values"][0], item.image)
    assert int((inputs["input_ids"] == hf_model.config.image_token_id).sum()) == n_patches
    tokens = processor.tokenizer.convert_ids_to_tokens(processor.tokenizer("a b", add_special_tokens=False).input_ids)
    if not any(t.startswith("▁") for t in tokens):
        # SentencePiece adds a "▁" to the chunk after <image> when LLaVA tokenises chunks
        # separately (official LLaVA does too); HF tokenises the whole string, so those differ by that token.
        assert torch.equal(inputs["input_ids"][0], expanded)


@pytest.mark.parametrize("projector, feature, strategy", [("linear", "patch", "default"), ("mlp2x_gelu", "cls_patch", "full")])
def test_linear_projector_and_cls_patch_export_exactly(projector, feature, strategy, tmp_path_factory, tiny_llm,
                                                      tiny_clip, tmp_path):
    checkpoint = cached_checkpoint(tmp_path_factory, tiny_llm, tiny_clip, "phi", projector=projector,
                                   select_feature=feature)
    engine, item, hf_model, processor, image = _ours_and_exported(checkpoint, tmp_path / "hf")
    assert hf_model.config.vision_feature_select_strategy == strategy
    n = engine.model.get_vision_tower().num_patches
    expanded = torch.cat([torch.full((n,), hf_model.config.image_token_id) if t == IMAGE_TOKEN_INDEX else t.view(1)
                          for t in item.input_ids])
    inputs = processor(text=item.prompt, images=image, return_tensors="pt")
    assert torch.equal(inputs["input_ids"][0], expanded)  # CLS counted in or out, as the model does
    with torch.no_grad():
        ours = engine.model(input_ids=item.input_ids[None], images=item.image[None]).logits
        theirs = hf_model(input_ids=expanded[None], pixel_values=item.image[None]).logits
    assert (ours - theirs[..., : ours.shape[-1]]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", sorted(conv_templates))
def test_chat_template_renders_every_conversation_template(name, tiny_llm):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm("phi"))
    conv = get_conv_template(name)
    conv.append_message(conv.roles[0], "<image>\nWhat colour?")
    conv.append_message(conv.roles[1], "Red.")
    conv.append_message(conv.roles[0], "And the shape?")
    conv.append_message(conv.roles[1], None)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
        {"role": "user", "content": "And the shape?"},
    ]
    rendered = tokenizer.apply_chat_template(
        messages, chat_template=chat_template_for(conv), tokenize=False, add_generation_prompt=True
    )
    assert rendered == conv.get_prompt()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("mm_use_im_start_end", True, "mm_use_im_start_end"),
        ("mm_projector_type", "simple_resblock", "mm_projector_type='simple_resblock'"),
        ("mm_projector_type", "mlp3x_gelu", "mm_projector_type='mlp3x_gelu'"),
        ("image_aspect_ratio", "anyres", "image_aspect_ratio='anyres'"),
    ],
)
def test_inexpressible_settings_are_refused_naming_the_field(field, value, message):
    config = types.SimpleNamespace(
        mm_vision_tower="clip", mm_projector_type="mlp2x_gelu", mm_vision_select_feature="patch",
        image_aspect_ratio="pad", mm_use_im_start_end=False,
    )
    setattr(config, field, value)
    with pytest.raises(ExportError, match=message):
        check_exportable(config)


def test_cli_refuses_before_loading_weights(tmp_path_factory, tiny_llm, tiny_clip, tmp_path):
    from llava.export import hf

    checkpoint = cached_checkpoint(tmp_path_factory, tiny_llm, tiny_clip, "phi")
    edited = shutil.copytree(checkpoint, tmp_path / "ckpt")
    config = json.loads((edited / "config.json").read_text())
    config["mm_projector_type"] = "simple_resblock"
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="cannot export .*mm_projector_type='simple_resblock'"):
        hf.main(["--model-path", str(edited), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def _text_model_as_vllm_builds_it(out_dir):
    """vLLM's Llava: the CausalLM class `text_config.architectures` names, loaded from the `language_model.*`
    weights (vLLM refuses a checkpoint that leaves any of its parameters unloaded, e.g. Phi's head bias)."""
    import transformers
    from safetensors.torch import load_file

    config = transformers.LlavaConfig.from_pretrained(out_dir)
    text = getattr(transformers, config.text_config.architectures[0])(config.text_config).eval()
    weights = load_file(os.path.join(out_dir, "model.safetensors"))
    assert all(k.startswith(("language_model.", "vision_tower.vision_model.", "multi_modal_projector."))
               for k in weights), "not the llava-hf layout vLLM and transformers 4 read"
    result = text.load_state_dict({k.removeprefix("language_model."): v for k, v in weights.items()
                                   if k.startswith("language_model.")}, strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    return text


def test_phi_head_bias_is_exported_for_vllm_and_transformers_loses_exactly_it(tmp_path_factory, tiny_llm, tiny_clip,
                                                                               tmp_path):
    from safetensors.torch import load_file, save_file

    checkpoint = shutil.copytree(cached_checkpoint(tmp_path_factory, tiny_llm, tiny_clip, "phi"), tmp_path / "ckpt")
    weights = load_file(checkpoint / "model.safetensors")
    torch.manual_seed(0)
    bias = torch.randn_like(weights["lm_head.bias"])  # a trained head, as real Phi-2's is
    save_file({**weights, "lm_head.bias": bias}, checkpoint / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((checkpoint / "config.json").read_text())
    config["use_cache"] = False  # as gradient checkpointing leaves it
    (checkpoint / "config.json").write_text(json.dumps(config))

    engine, item, hf_model, _, _ = _ours_and_exported(str(checkpoint), tmp_path / "hf")
    n = engine.model.get_vision_tower().num_patches
    expanded = torch.cat([torch.full((n,), hf_model.config.image_token_id) if t == IMAGE_TOKEN_INDEX else t.view(1)
                          for t in item.input_ids])
    with torch.no_grad():
        ours = engine.model(input_ids=item.input_ids[None], images=item.image[None]).logits
        theirs = hf_model(input_ids=expanded[None], pixel_values=item.image[None]).logits[..., : ours.shape[-1]]
        embeds = engine.model.prepare_inputs_labels_for_multimodal(
            item.input_ids[None], None, None, None, None, item.image[None])[4]
        served = _text_model_as_vllm_builds_it(tmp_path / "hf")(inputs_embeds=embeds).logits[..., : ours.shape[-1]]
    assert (served - ours).abs().max().item() <= 1e-4  # vLLM: exact, bias included
    # transformers' Llava has no head bias: the same shift at every position, exactly the bias.
    assert (ours - theirs - bias[: ours.shape[-1]]).abs().max().item() <= 1e-4

    exported = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert exported["text_config"]["architectures"] == ["PhiForCausalLM"]
    assert exported["text_config"]["use_cache"] is True
    assert json.loads((tmp_path / "hf" / "generation_config.json").read_text())["use_cache"] is True
    for name in ("config.json", "generation_config.json", "processor_config.json", "preprocessor_config.json",
                 "tokenizer_config.json"):
        assert str(tmp_path) not in (tmp_path / "hf" / name).read_text(), f"{name} names a local path"
    preprocessor = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert preprocessor["image_processor_type"] == "LlavaImageProcessor" and preprocessor["do_pad"] is False
