"""resolve_pretrained: local folders, paths relative to a checkpoint, hub names, and clear errors."""

from __future__ import annotations

import pytest

from llava.model import paths
from llava.model.paths import resolve_pretrained


def test_local_folder_and_relative_to_checkpoint(tmp_path, monkeypatch):
    (tmp_path / "checkpoints" / "tiny-phi").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_pretrained("checkpoints/tiny-phi", "--model-path") == "checkpoints/tiny-phi"
    # Recorded relative to a checkpoint that moved: found beside it.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "tower").mkdir(parents=True)
    assert resolve_pretrained("tower", "mm_vision_tower", relative_to=str(elsewhere)) == str(elsewhere / "tower")


@pytest.mark.parametrize("name", ["checkpoints/missing", "./missing", "/no/such/folder", "a/b/c"])
def test_missing_local_path_names_the_flag_and_the_folder(tmp_path, monkeypatch, name):
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"^--model_name_or_path {name}: no such folder \(looked for /"):
        resolve_pretrained(name, "--model_name_or_path")


def test_a_file_is_not_a_checkpoint_folder(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="is a file; give the folder"):
        resolve_pretrained(str(tmp_path / "model.safetensors"), "--model-path")


def test_hub_names_pass_online_and_need_the_cache_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paths.hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(paths.hub_constants, "HF_HUB_OFFLINE", False)
    assert resolve_pretrained("microsoft/phi-2", "--model-path") == "microsoft/phi-2"
    monkeypatch.setattr(paths.hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        resolve_pretrained("microsoft/phi-2", "--model-path")
    (tmp_path / "hub" / "models--microsoft--phi-2" / "snapshots" / "abc").mkdir(parents=True)
    assert resolve_pretrained("microsoft/phi-2", "--model-path") == "microsoft/phi-2"
