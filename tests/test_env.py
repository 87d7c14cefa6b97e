"""The environment check (`python -m llava.env`), its conflict checks, the one-line tokenizer diagnosis and
the bitsandbytes message filter.

The conflicts are simulated (a protobuf runtime older than sentencepiece's generated code, a torchvision
built for another torch, ...): installing a broken stack in a test would take minutes and the network.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from importlib import metadata

import pytest

import llava.env as env
from llava.errors import is_clear, message

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSION_ERROR = ("Detected incompatible Protobuf Gencode/Runtime versions when loading sentencepiece_model.proto: "
                 "gencode 7.36.1 runtime 6.33.6. Runtime version cannot be older than the linked gencode version.")


def test_env_check_prints_versions_device_and_no_conflict():
    done = subprocess.run([sys.executable, "-m", "llava.env"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"torch {metadata.version('torch')}" in out
    assert f"transformers {metadata.version('transformers')}" in out
    assert f"protobuf {metadata.version('protobuf')}" in out
    import torch

    assert ("device: cuda" if torch.cuda.is_available() else "device: cpu") in out
    for line in ("bf16: ", "flash-attention: ", "deepspeed ops: accelerator ", "bitsandbytes: backend "):
        assert line in out, line
    assert "known conflicts: none" in out
    # The DeepSpeed op table lists the optimizer ops a CPU run may build.
    assert "cpu_adam" in out
    assert "Traceback" not in done.stderr


@pytest.fixture
def protobuf_too_old(monkeypatch):
    """Importing sentencepiece's generated model code fails as it does beside protobuf 6 (the wandb 0.25 cap)."""
    import sentencepiece
    from google.protobuf.runtime_version import VersionError

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name == "sentencepiece.sentencepiece_model_pb2":
                raise VersionError(VERSION_ERROR)
            return None

    monkeypatch.delattr(sentencepiece, "sentencepiece_model_pb2", raising=False)
    monkeypatch.delitem(sys.modules, "sentencepiece.sentencepiece_model_pb2", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Refuse(), *sys.meta_path])


def test_protobuf_conflict_names_versions_and_fix(protobuf_too_old):
    found = env.sentencepiece_protobuf_conflict()
    assert found is not None
    assert "protobuf 6.33.6 is older than sentencepiece" in found.what and "(7.36.1)" in found.what
    assert found.fix == "pip install 'protobuf>=7.36.1'"


def test_protobuf_conflict_names_an_old_wandb(protobuf_too_old, monkeypatch):
    real = env.version
    monkeypatch.setattr(env, "version", lambda dist: "0.25.0" if dist == "wandb" else real(dist))
    found = env.sentencepiece_protobuf_conflict()
    assert "wandb 0.25.0 caps protobuf below 7" in found.what
    assert found.fix == "pip install 'protobuf>=7.36.1' 'wandb>=0.26'"


def test_no_protobuf_conflict_on_this_install():
    assert env.sentencepiece_protobuf_conflict() is None


@pytest.fixture
def sentencepiece_only_folder(tmp_path):
    """A tokenizer folder as official LLaMA-family LLaVA checkpoints ship it: a SentencePiece tokenizer.model."""
    from importlib.resources import files

    shutil.copy(str(files("mistral_common") / "data" / "tokenizer.model.v1"), tmp_path / "tokenizer.model")
    return tmp_path


def test_tokenizer_failure_is_one_line_naming_the_conflict(protobuf_too_old, sentencepiece_only_folder):
    from transformers import AutoTokenizer

    with pytest.raises(env.TokenizerEnvironmentError) as caught:
        with env.explained_tokenizer_errors(sentencepiece_only_folder):
            AutoTokenizer.from_pretrained(str(sentencepiece_only_folder))
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"cannot load the tokenizer in {sentencepiece_only_folder}: protobuf 6.33.6 is older")
    assert "fix: pip install 'protobuf>=7.36.1'" in text and "python -m llava.env" in text
    # transformers' misleading tiktoken error stays the cause, for LLAVA_DEBUG=1; the entry points print one line.
    assert "Error parsing line" in str(caught.value.__cause__)
    assert is_clear(caught.value) and message(caught.value) == text


def test_tokenizer_loads_and_unrelated_failures_pass_through(sentencepiece_only_folder, tmp_path):
    from transformers import AutoTokenizer

    with env.explained_tokenizer_errors(sentencepiece_only_folder):
        tokenizer = AutoTokenizer.from_pretrained(str(sentencepiece_only_folder))
    assert len(tokenizer) == 32000
    # No conflict on this install: the original error is kept as it was.
    assert env.explain_tokenizer_failure(ValueError("Error parsing line b'\\x0e'"), sentencepiece_only_folder) is None
    with pytest.raises(OSError):
        with env.explained_tokenizer_errors(tmp_path / "missing"):
            raise OSError("no such folder")


def test_unrelated_tokenizer_error_is_not_blamed_on_protobuf(protobuf_too_old, tmp_path):
    # A GPT-2 style folder (no tokenizer.model) failing for another reason is not a protobuf problem.
    assert env.explain_tokenizer_failure(OSError("tokenizer.json is truncated"), tmp_path) is None


def test_torchvision_built_for_another_torch(monkeypatch):
    real = env.version
    monkeypatch.setattr(env, "version", lambda dist: "0.29.1" if dist == "torchvision" else real(dist))
    monkeypatch.setattr(env.metadata, "requires", lambda dist: ["numpy", "torch==2.14.1", "pillow>=5.3.0,!=8.3.*"])
    found = env.torchvision_conflict()
    assert found.what == f"torchvision 0.29.1 is built for torch 2.14.1, but torch {real('torch')} is installed"
    assert found.fix.startswith("pip uninstall -y torchvision")


def test_old_bitsandbytes_without_cpu_backend(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU-backend check applies to machines without a CUDA GPU")
    real = env.version
    monkeypatch.setattr(env, "version", lambda dist: "0.43.3" if dist == "bitsandbytes" else real(dist))
    found = env.bitsandbytes_conflict()
    assert "bitsandbytes 0.43.3 has no CPU backend" in found.what
    assert found.fix == "pip install 'bitsandbytes>=0.45'"


def test_filelock_4_beside_lmms_eval(monkeypatch):
    fake = {"lmms-eval": "0.7.3", "filelock": "4.0.1"}
    real = env.version
    monkeypatch.setattr(env, "version", lambda dist: fake.get(dist) or real(dist))
    found = env.filelock_conflict()
    assert "filelock 4.0.1 beside lmms-eval 0.7.3" in found.what
    assert found.fix == "pip install 'filelock>=3.16,<4'"
    fake["filelock"] = "3.32.7"
    assert env.filelock_conflict() is None


def test_env_check_exits_1_and_lists_the_conflict(protobuf_too_old, capsys):
    assert env.main([]) == 1
    out = capsys.readouterr().out
    assert "known conflicts: 1" in out
    assert "    fix: pip install 'protobuf>=7.36.1'" in out


def test_bitsandbytes_kernel_message_is_dropped_with_any_reason(caplog):
    import llava  # noqa: F401  (installs the filters)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    template = ("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                "`pip install kernels` and the kernels >= 0.11.1")
    with caplog.at_level(logging.WARNING):
        logger.warning(template, "No module named 'kernels'")
        logger.warning(template, "Kernel repository 'kernels-community/quantization-bitsandbytes' could not verify "
                                 "publisher trust status. Set trust_remote_code=True ...")
        logger.warning("another bitsandbytes message")
    assert [record.getMessage() for record in caplog.records] == ["another bitsandbytes message"]
