"""Conversation templates, image/prompt utilities and the offline tiny checkpoints' tokenizers."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoTokenizer

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates, get_conv_template
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    expand2square,
    load_image,
    process_images,
    strip_stop_str,
    tokenizer_image_token,
)


def two_turns(name):
    conv = get_conv_template(name)
    user, assistant = conv.roles
    for message in ("<image>\nWhat is it?", "A red circle.", "Is it big?", "Yes."):
        conv.append_message(user if len(conv.messages) % 2 == 0 else assistant, message)
    return conv


@pytest.mark.parametrize(
    "name,answers",
    [
        ("plain", ["A red circle.\n", "Yes.\n"]),
        ("v1", [" A red circle.</s>", " Yes.</s>"]),
        ("llava_llama_2", [" A red circle. </s>", " Yes. </s>"]),
        ("mpt", ["A red circle.<|im_end|>", "Yes.<|im_end|>"]),
        ("phi", [" A red circle.<|endoftext|>", " Yes.<|endoftext|>"]),
        ("opt", [" A red circle.</s>", " Yes.</s>"]),
        ("v0", [" A red circle.###", " Yes.###"]),
    ],
)
def test_target_spans_are_exactly_the_answers_and_their_end_separator(name, answers):
    """Everything generated after the assistant tag: the space before the answer too."""
    prompt, spans = two_turns(name).get_prompt_and_targets()
    assert [prompt[a:b] for a, b in spans][-2:] == answers  # v0's example exchange is rendered first
    assert prompt.endswith(answers[-1])


def test_templates_know_roles_separators_and_stop_strings():
    assert get_conv_template("vicuna_v1").roles == ("USER", "ASSISTANT")
    assert get_conv_template("phi").stop_str == "<|endoftext|>"
    assert get_conv_template("mpt").stop_str == "<|im_end|>"
    assert get_conv_template("llava_llama_2").stop_str == "</s>"
    v1 = two_turns("v1").get_prompt()
    assert "USER: <image>\nWhat is it? ASSISTANT: A red circle.</s>USER: Is it big? ASSISTANT: Yes.</s>" in v1
    llama2 = two_turns("llava_llama_2").get_prompt()
    assert llama2.startswith("[INST] <<SYS>>\n") and "[/INST] A red circle. </s><s>[INST] Is it big? [/INST]" in llama2
    # An open assistant turn ends the prompt with the role, ready for generation.
    conv = get_conv_template("v1")
    conv.append_message(conv.roles[0], "Hi")
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt().endswith("USER: Hi ASSISTANT:")


def test_mmtag_templates_wrap_the_image_outside_its_start_end_tokens():
    """Official preprocess_multimodal wraps "<image>" in <Image> tags, then adds <im_start>/<im_end>."""
    from llava.preprocess import render

    turns = [{"from": "human", "value": "What is it?\n<image>"}, {"from": "gpt", "value": "A cat."}]
    prompt, _ = render(turns, "v1_mmtag", 1, True)
    assert "USER: <Image><im_start><image><im_end></Image>\nWhat is it? ASSISTANT: A cat.</s>" in prompt
    assert "USER: <im_start><image><im_end>\nWhat is it?" in render(turns, "v1", 1, True)[0]
    assert get_conv_template("v0_mmtag").image_text() == "<Image><image></Image>"


def test_unknown_template_names_the_choices():
    with pytest.raises(ValueError, match="unknown conversation template 'chatml'.*llava_llama_2.*phi"):
        get_conv_template("chatml")
    assert {"plain", "v1", "vicuna_v1", "llava_llama_2", "mpt", "phi", "opt"} <= set(conv_templates)


def test_get_conv_template_returns_independent_copies():
    a = get_conv_template("phi")
    a.append_message(a.roles[0], "x")
    assert get_conv_template("phi").messages == []


# -- images ----------------------------------------------------------------------------------
def test_load_image_from_path_bytes_and_errors(tmp_path):
    path = tmp_path / "a.png"
    Image.new("L", (7, 5), 128).save(path)
    assert load_image(str(path)).mode == "RGB"
    assert load_image(path.read_bytes()).size == (7, 5)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(str(tmp_path / "missing.png"))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot decode image .*bad.jpg"):
        load_image(str(tmp_path / "bad.jpg"))


def test_expand2square_centres_and_fills_with_the_background():
    image = Image.new("RGB", (4, 2), (255, 0, 0))
    square = expand2square(image, (1, 2, 3))
    assert square.size == (4, 4)
    assert square.getpixel((0, 0)) == (1, 2, 3) and square.getpixel((0, 1)) == (255, 0, 0)


def test_process_images_pads_with_the_processor_mean(tiny_clip):
    from types import SimpleNamespace

    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(tiny_clip)
    wide = Image.new("RGB", (64, 16), (0, 0, 0))
    padded = process_images([wide], processor, SimpleNamespace(image_aspect_ratio="pad"))
    assert padded.shape == (1, 3, 32, 32)
    # The padding is the mean colour, which normalises to ~0; the black band does not.
    assert padded[0, :, 0, 16].abs().max() < 0.02 and padded[0, :, 16, 16].abs().min() > 1
    with pytest.raises(ValueError, match="anyres"):
        process_images([wide], processor, SimpleNamespace(image_aspect_ratio="anyres"))


# -- prompts -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["phi", "llama", "opt", "mpt"])
def test_tokenizer_image_token_inserts_markers_and_maps_offsets(tiny_llm, backbone):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm(backbone))
    prompt = "Look <image>\nat this and <image> that."
    ids, offsets = tokenizer_image_token(prompt, tokenizer, return_offsets=True)
    assert ids.count(IMAGE_TOKEN_INDEX) == 2 and len(ids) == len(offsets)
    text_ids = [i for i in ids if i != IMAGE_TOKEN_INDEX and i != tokenizer.bos_token_id]
    decoded = tokenizer.decode(text_ids)
    assert decoded.replace(" ", "") == prompt.replace("<image>", "").replace(" ", "")
    for token_id, (start, end) in zip(ids, offsets):
        if start >= 0:  # the span of each text token decodes back to that token's text
            assert prompt[start:end].strip() == tokenizer.decode([token_id]).strip()
    tensor = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")
    assert tensor.dtype == torch.long and tensor.tolist() == ids


def test_keywords_stopping_criteria_is_per_row(tiny_llm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm("mpt"))
    stop = KeywordsStoppingCriteria(["<|im_end|>"], tokenizer)
    done = tokenizer("red<|im_end|>")["input_ids"]
    running = tokenizer("red green")["input_ids"]
    width = max(len(done), len(running))
    batch = torch.tensor([[0] * (width - len(done)) + done, [0] * (width - len(running)) + running])
    assert stop(batch, None).tolist() == [True, False]
    assert strip_stop_str(" red <|im_end|> junk", "<|im_end|>") == "red"


# -- tiny checkpoints --------------------------------------------------------------------------
def test_tiny_tokenizers_reproduce_the_real_special_tokens(tiny_llm):
    phi = AutoTokenizer.from_pretrained(tiny_llm("phi"))
    assert phi.pad_token == phi.eos_token == "<|endoftext|>" and len(phi) == 50257
    assert phi("hi")["input_ids"][0] != phi.bos_token_id  # Phi-2 adds no BOS

    opt = AutoTokenizer.from_pretrained(tiny_llm("opt"))
    assert opt.bos_token == opt.eos_token == "</s>" and opt.pad_token == "<pad>"
    assert opt("hi")["input_ids"][0] == opt.bos_token_id  # OPT prepends </s>

    llama = AutoTokenizer.from_pretrained(tiny_llm("llama"))
    assert (llama.bos_token_id, llama.eos_token_id, len(llama)) == (1, 2, 32000)
    assert llama("hi")["input_ids"][0] == 1 and llama.pad_token is None
    assert llama.convert_ids_to_tokens(llama("Hello world")["input_ids"])[1:] == ["▁Hello", "▁world"]

    mpt = AutoTokenizer.from_pretrained(tiny_llm("mpt"))
    assert mpt.eos_token == "<|endoftext|>" and mpt.pad_token is None
    assert len(mpt("<|im_start|>user\n")["input_ids"]) == 3  # ChatML markers are single tokens


@pytest.mark.parametrize("backbone", ["phi", "llama", "opt", "mpt"])
def test_tiny_llm_checkpoint_is_a_plain_hf_checkpoint(tiny_llm, backbone):
    config = AutoConfig.from_pretrained(tiny_llm(backbone))
    assert config.model_type == backbone
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm(backbone))
    assert config.vocab_size >= len(tokenizer)
    assert config.eos_token_id == tokenizer.eos_token_id


def test_tiny_cli_writes_a_vision_tower(tmp_path):
    from llava.model.tiny import main

    main(["--vision", "--out", str(tmp_path / "clip"), "--image-size", "64", "--patch-size", "16"])
    config = json.loads((tmp_path / "clip" / "config.json").read_text())
    processor = json.loads((tmp_path / "clip" / "preprocessor_config.json").read_text())
    assert config["image_size"] == 64 and config["patch_size"] == 16
    assert processor["crop_size"] == {"height": 64, "width": 64}
    image = Image.new("RGB", (10, 10))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    assert load_image(buffer.getvalue()).size == (10, 10)
