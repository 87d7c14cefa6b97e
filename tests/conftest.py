"""Shared fixtures: tiny offline checkpoints built once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BACKBONES = ("phi", "llama", "opt", "mpt", "qwen2", "qwen3", "llama3", "gemma2", "gemma3", "phi3", "smollm2")
ORIGINAL_BACKBONES = BACKBONES[:4]  # official LLaVA's era; the full projector matrix runs on these


def pytest_configure(config):
    # pytest resets warning filters around each test; re-apply the known-harmless ones `import llava` installs.
    from llava.quiet import IGNORED_WARNINGS

    for category, message, _why in IGNORED_WARNINGS:
        config.addinivalue_line("filterwarnings", f"ignore:{message}:{category.__name__}")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    from llava.model.tiny import save_tiny_vision_tower

    return save_tiny_vision_tower(str(tmp_path_factory.mktemp("tiny-clip")))


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory):
    """`tiny_llm("phi")` -> path of a tiny plain LLM checkpoint with its tokenizer (cached per backbone)."""
    from llava.model.tiny import save_tiny_llm

    cache: dict[str, str] = {}

    def make(backbone: str) -> str:
        if backbone not in cache:
            try:
                cache[backbone] = save_tiny_llm(backbone, str(tmp_path_factory.mktemp(f"tiny-{backbone}")))
            except ModuleNotFoundError as exc:  # a real vocabulary from a wheel installed apart (.ci/run has it)
                if os.environ.get("CI"):
                    raise
                pytest.skip(str(exc))
        return cache[backbone]

    return make


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory) -> str:
    """A tiny random-init Whisper (max_target_positions 64) for spoken questions, written by the CLI users run."""
    from llava.model import tiny

    out = str(tmp_path_factory.mktemp("tiny-whisper"))
    tiny.main(["--whisper", "--out", out])
    return out


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir(tiny_llm) -> str:
    """A directory holding a GPT-2-family tokenizer (the tiny Phi checkpoint's)."""
    return tiny_llm("phi")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict:
    """A small generated shapes dataset (paths as returned by `llava.data.demo.generate`)."""
    from llava.data.demo import generate

    return generate(str(tmp_path_factory.mktemp("demo")), num_train=64, num_eval=8)
