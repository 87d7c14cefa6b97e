"""Checkpoints that move: a QLoRA run made with relative paths loads from elsewhere and after being copied."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from llava.model import paths
from llava.model.builder import load_pretrained_model
from llava.model.layout import TOWER_COPY, find_recorded

from helpers import train_in_work_folder

pytestmark = pytest.mark.slow  # end to end: a training run, then loads from elsewhere (≈25 s)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_llm, tiny_clip, demo_data):
    """A working folder laid out like this repository, and a 1-step QLoRA run made in it with relative paths."""
    pytest.importorskip("bitsandbytes")
    return train_in_work_folder(tmp_path_factory.mktemp("repo"), tiny_llm("phi"), tiny_clip, [
        "--data_path", demo_data["finetune"], "--image_folder", demo_data["image_folder"],
        "--mm_projector_type", "mlp2x_gelu", "--per_device_train_batch_size", "2", "--max_steps", "1",
        "--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8", "--bits", "4", "--output_dir", "checkpoints/qlora",
    ])


def _logits(model):
    ids = torch.tensor([[1, 2, 3, 4]])
    pixels = torch.linspace(-1, 1, 3 * 32 * 32).view(1, 3, 32, 32)
    marked = torch.tensor([[1, -200, 3, 4]])
    with torch.no_grad():
        return torch.cat([model(input_ids=ids).logits, model(input_ids=marked, images=pixels).logits], dim=1)


def test_checkpoint_records_the_llava_class_and_carries_its_tower(repo):
    out = repo / "checkpoints" / "qlora"
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlavaPhiForCausalLM"] and config["model_type"] == "llava_phi"
    assert config["mm_vision_tower"] == "checkpoints/tiny-clip"  # as given, for the record
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "checkpoints/tiny-phi"
    copy = out / TOWER_COPY
    assert (copy / "config.json").exists() and (copy / "model.safetensors").exists()


def test_loads_from_another_folder_and_after_being_copied(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(repo)
    _, reference, _, _ = load_pretrained_model("checkpoints/qlora", device="cpu")
    expected = _logits(reference)

    # From another working folder: the recorded base is found above the checkpoint (where training ran).
    monkeypatch.chdir(tmp_path)
    _, model, processor, _ = load_pretrained_model(str(repo / "checkpoints" / "qlora"), device="cpu")
    assert processor is not None
    torch.testing.assert_close(_logits(model), expected)

    # Copied away from the repository (the tower copy comes along; the base does not): the error says
    # which base is missing and how to pass it, and --model-base then loads the same model.
    moved = shutil.copytree(repo / "checkpoints" / "qlora", tmp_path / "elsewhere" / "qlora")
    shutil.rmtree(repo / "checkpoints" / "tiny-clip.moved", ignore_errors=True)
    os.rename(repo / "checkpoints" / "tiny-clip", repo / "checkpoints" / "tiny-clip.moved")  # the tower is gone
    try:
        with pytest.raises(FileNotFoundError, match=r"base_model_name_or_path \(in .*adapter_config.json\) checkpoints/tiny-phi: not a folder.*--model-base"):
            load_pretrained_model(str(moved), device="cpu")
        _, model, _, _ = load_pretrained_model(str(moved), str(repo / "checkpoints" / "tiny-phi"), device="cpu")
        torch.testing.assert_close(_logits(model), expected)
    finally:
        os.rename(repo / "checkpoints" / "tiny-clip.moved", repo / "checkpoints" / "tiny-clip")


def test_a_missing_tower_is_named_with_what_to_do(repo, tmp_path, monkeypatch):
    moved = shutil.copytree(repo / "checkpoints" / "qlora", tmp_path / "qlora")
    shutil.rmtree(moved / TOWER_COPY)  # as official LLaVA LoRA checkpoints are
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paths.hub_constants, "HF_HUB_OFFLINE", True)  # no minute of hub retries
    with pytest.raises(FileNotFoundError, match=r"mm_vision_tower \(in .*config.json\) checkpoints/tiny-clip.*"
                                                r"does not carry the vision tower's weights"):
        load_pretrained_model(str(moved), str(repo / "checkpoints" / "tiny-phi"), device="cpu")


def test_recorded_paths_are_found_from_the_checkpoint_and_the_folders_above_it(tmp_path, monkeypatch):
    (tmp_path / "work" / "checkpoints" / "tiny-phi").mkdir(parents=True)
    (tmp_path / "work" / "checkpoints" / "run").mkdir()
    monkeypatch.chdir(tmp_path)
    found = find_recorded("checkpoints/tiny-phi", "base", str(tmp_path / "work" / "checkpoints" / "run"))
    assert os.path.samefile(found, tmp_path / "work" / "checkpoints" / "tiny-phi")
    with pytest.raises(FileNotFoundError, match="^base ./missing: no such folder"):
        find_recorded("./missing", "base", str(tmp_path / "work" / "checkpoints" / "run"))
