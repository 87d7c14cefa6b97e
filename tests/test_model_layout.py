"""A checkpoint resolved once (llava.model.layout), the vision tower behind its interface
(llava.model.multimodal_encoder), and what training logs under ZeRO-3."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import torch
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

from llava.model import layout
from llava.model.builder import load_pretrained_model
from llava.model.multimodal_encoder import TOWERS, build_vision_tower, load_vision_tower, read_tower_config
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
from llava.train.recipes import log_trainable

from helpers import train_in_work_folder


# -- kinds ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "files, kind",
    [
        (["adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.bin"], layout.LORA),
        (["config.json", "mm_projector.bin"], layout.PROJECTOR),
        (["config.json", "model.safetensors"], layout.FULL),
        (["config.json", "model.safetensors", "mm_projector.bin"], layout.FULL),
    ],
)
def test_kind_is_told_from_the_files(tmp_path, files, kind):
    for name in files:
        (tmp_path / name).write_text("{}")
    assert layout.checkpoint_kind(str(tmp_path)) == kind


def test_a_folder_without_weights_is_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} holds no model weights, LoRA adapter or mm_projector.bin"):
        layout.checkpoint_kind(str(tmp_path))


# -- one resolve per load ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stage1(tmp_path_factory, tiny_llm, tiny_clip, demo_data):
    """A 1-step stage-1 run made with relative paths from a working folder, as the launchers run."""
    return train_in_work_folder(tmp_path_factory.mktemp("work"), tiny_llm("phi"), tiny_clip, [
        "--data_path", demo_data["pretrain"], "--image_folder", demo_data["image_folder"], "--tune_mm_mlp_adapter", "True",
        "--mm_projector_type", "mlp2x_gelu", "--per_device_train_batch_size", "2", "--max_steps", "1",
        "--output_dir", "checkpoints/stage1",
    ])


def test_stage1_records_its_llm_and_loads_without_model_base(stage1, monkeypatch):
    out = stage1 / "checkpoints" / "stage1"
    assert json.loads((out / "config.json").read_text())[layout.BASE_FIELD] == "checkpoints/tiny-phi"
    monkeypatch.chdir(stage1.parent)  # the recorded relative path is found from the checkpoint's folders
    resolved = layout.resolve_checkpoint(str(out))
    assert resolved.kind == layout.PROJECTOR
    assert os.path.samefile(resolved.base, stage1 / "checkpoints" / "tiny-phi")
    _, recorded, _, _ = load_pretrained_model(str(out))
    _, explicit, _, _ = load_pretrained_model(str(out), str(stage1 / "checkpoints" / "tiny-phi"))
    for (name, a), (_, b) in zip(recorded.state_dict().items(), explicit.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_moved_stage1_checkpoint_names_the_llm_it_needs(stage1, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(stage1 / "checkpoints" / "stage1", moved)
    with pytest.raises(FileNotFoundError) as info:
        load_pretrained_model(str(moved))
    message = str(info.value)
    assert "base_model_name_or_path" in message and "checkpoints/tiny-phi" in message and "--model-base" in message


def test_the_tower_source_is_looked_up_once_per_load(stage1, tmp_path, monkeypatch):
    # No tower copy and no image processor in the checkpoint: both the tower's weights and its image
    # processor come from the recorded mm_vision_tower, which is resolved once.
    bare = tmp_path / "work" / "checkpoints" / "stage1"
    shutil.copytree(stage1 / "checkpoints" / "stage1", bare)
    shutil.rmtree(bare / layout.TOWER_COPY)
    (bare / layout.PROCESSOR_FILE).unlink()
    shutil.copytree(stage1 / "checkpoints" / "tiny-clip", tmp_path / "work" / "checkpoints" / "tiny-clip")
    lookups = []
    real = layout.find_recorded
    monkeypatch.setattr(layout, "find_recorded", lambda path, flag, where: lookups.append(flag) or real(path, flag, where))
    _, model, processor, _ = load_pretrained_model(str(bare), str(stage1 / "checkpoints" / "tiny-phi"))
    assert [flag for flag in lookups if flag.startswith("mm_vision_tower")] == [f"mm_vision_tower (in {bare / 'config.json'})"]
    assert processor.crop_size["height"] == 32
    reference = CLIPVisionModel.from_pretrained(str(stage1 / "checkpoints" / "tiny-clip"))
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.get_vision_tower().vision_tower.state_dict()[name], tensor), name


# -- the tower interface -------------------------------------------------------------------------
def test_towers_are_picked_by_config_model_type():
    assert TOWERS["clip_vision_model"] is CLIPVisionTower and TOWERS["clip"] is CLIPVisionTower

    class Config:
        mm_vision_tower = "some/tower"
        mm_vision_config = {"model_type": "not_a_tower"}

    with pytest.raises(ValueError, match="model_type 'not_a_tower' is not a supported vision tower; supported: clip, clip_vision_model"):
        build_vision_tower(Config())


def test_a_whole_clip_checkpoint_gives_its_vision_part(tmp_path):
    # Official LLaVA names whole CLIP checkpoints (model_type "clip"); the tower is their vision model.
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
                         vision_config=vision)).save_pretrained(tmp_path)
    assert isinstance(read_tower_config(str(tmp_path)), CLIPVisionConfig)
    tower = load_vision_tower(str(tmp_path), select_layer=-2, select_feature="patch")
    pixels = torch.randn(2, 3, 32, 32)
    reference = CLIPVisionModel.from_pretrained(str(tmp_path))
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        features = tower(pixels)
    assert features.shape == (2, 16, 32) and tower.num_patches == 16
    torch.testing.assert_close(features, expected)
    tower.select(-1, "cls_patch")
    assert tower(pixels).shape == (2, 17, 32) and tower.num_patches == 17
    with pytest.raises(ValueError, match="mm_vision_select_layer -5 is out of range for a 3-layer tower"):
        tower.select(-5, "patch")


def test_the_feature_key_follows_what_changes_the_outputs(tiny_clip):
    tower = load_vision_tower(tiny_clip)
    key = tower.feature_key()
    assert key == load_vision_tower(tiny_clip).feature_key()
    tower.select(-1, "patch")
    assert tower.feature_key()["select_layer"] == -1 and tower.feature_key()["tower_weights"] == key["tower_weights"]
    with torch.no_grad():
        next(tower.vision_tower.parameters()).add_(1)
    assert tower.feature_key()["tower_weights"] != key["tower_weights"]


# -- logs ----------------------------------------------------------------------------------------
def test_trainable_counts_are_full_sizes_under_zero3(caplog):
    # ZeRO-3 leaves each rank an empty partition of every parameter; `ds_numel` is its full size.
    model = nn.Linear(4, 4)
    for param, full in ((model.weight, 16), (model.bias, 4)):
        param.data = torch.empty(0)
        param.ds_id, param.ds_numel = id(param), full
    model.bias.requires_grad_(False)
    with caplog.at_level(logging.INFO, logger="llava.train.recipes"):
        log_trainable(model, {"projector"})
    assert "training projector: 16 of 20 parameters (80.00%)" in caplog.text
