"""CLI chat: streamed answers over stdin/stdout, multi-turn history, clean exit."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from helpers import cached_checkpoint, solid_image
from llava.inference import GenerationSettings, InferenceEngine
from llava.serve import cli


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_llm, tiny_clip):
    return InferenceEngine.from_pretrained(cached_checkpoint(tmp_path_factory, tiny_llm, tiny_clip, "phi"))


GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=8)


def expected_answer(engine, image, question):
    conv = engine.new_conversation()
    engine.add_user_turn(conv, question, has_image=True)
    return engine.generate([engine.prepare(conv, image)], GREEDY)[0]


def test_stream_grows_to_the_batched_answer(engine, tmp_path):
    image = solid_image(str(tmp_path / "red.png"))
    conv = engine.new_conversation()
    engine.add_user_turn(conv, "What colour is it?", has_image=True)
    partials = list(engine.stream(engine.prepare(conv, image), GREEDY))
    final = expected_answer(engine, image, "What colour is it?")
    assert final and partials[-1] == final
    assert len(partials) > 2, "tokens should arrive one by one"
    assert all(later.startswith(earlier) for earlier, later in zip(partials, partials[1:]))


def test_chat_keeps_history_and_image_only_in_first_turn(engine, tmp_path):
    image = solid_image(str(tmp_path / "red.png"))
    out = io.StringIO()
    turns = cli.chat(engine, image, GREEDY, stdin=io.StringIO("What colour is it?\nAnd the shape?\n\n"), stdout=out)
    assert turns == 2
    text = out.getvalue()
    assert f"ASSISTANT: {expected_answer(engine, image, 'What colour is it?')}\n" in text
    assert text.rstrip().endswith("bye (2 turns)")


def test_missing_image_is_a_clear_error(engine, tmp_path):
    with pytest.raises(SystemExit, match="--image-file: image file not found: .*nope.png"):
        cli.chat(engine, str(tmp_path / "nope.png"), GREEDY, stdin=io.StringIO(""), stdout=io.StringIO())


@pytest.mark.slow
def test_cli_process_streams_answers_and_exits_on_eof(engine, tmp_path_factory, tiny_llm, tiny_clip, tmp_path):
    checkpoint = cached_checkpoint(tmp_path_factory, tiny_llm, tiny_clip, "phi")
    image = solid_image(str(tmp_path / "red.png"))
    proc = subprocess.run(
        [sys.executable, "-m", "llava.serve.cli", "--model-path", checkpoint, "--image-file", image,
         "--temperature", "0", "--max-new-tokens", "8"],
        input="What colour is it?\n", capture_output=True, text=True, timeout=300,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"ASSISTANT: {expected_answer(engine, image, 'What colour is it?')}\n" in proc.stdout
    assert "bye (1 turn)" in proc.stdout
