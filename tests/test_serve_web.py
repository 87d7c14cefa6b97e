"""Web demo: chat turns (typed and spoken), upload checks, and the page driven in headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket

import pytest

from helpers import cached_checkpoint, grey_png, solid_image, tone_wav
from llava.inference import GenerationSettings, InferenceEngine

gr = pytest.importorskip("gradio")
from llava.serve import web  # noqa: E402  (needs gradio)

GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=6)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_llm, tiny_clip):
    return InferenceEngine.from_pretrained(cached_checkpoint(tmp_path_factory, tiny_llm, tiny_clip, "phi"))


@pytest.fixture(scope="module")
def transcriber(tiny_whisper):
    from llava.serve.speech import WhisperTranscriber

    return WhisperTranscriber(tiny_whisper, max_new_tokens=6)


@pytest.fixture(scope="module")
def bad_uploads(tmp_path_factory):
    """Files a browser can send as "images": not a picture, a bomb, too many pixels, not even named like one."""
    folder = tmp_path_factory.mktemp("uploads")
    (folder / "x.png").write_text("this is text, not a picture")
    (folder / "notes.txt").write_text("a text file")
    return {
        "x.png": (str(folder / "x.png"), "x.png is not an image we can read"),
        "bomb.png": (grey_png(str(folder / "bomb.png"), 50_000, 50_000, complete=False), "bomb.png has more than"),
        "huge.png": (grey_png(str(folder / "huge.png"), 12_000, 12_000), "huge.png has more than 64,000,000 pixels"),
        "notes.txt": (str(folder / "notes.txt"), "notes.txt is not an image we can read"),
    }


def expected_answer(engine, image, question):
    conv = engine.new_conversation()
    engine.add_user_turn(conv, question, has_image=image is not None)
    return engine.generate([engine.prepare(conv, image)], GREEDY)[0]


def turn(engine, transcriber, image, question, audio=None, history=None, session=None, limit=2**20):
    *_, last = web.respond(engine, GREEDY, transcriber, limit, image, question, audio, history or [],
                           session or web.new_session())
    return last  # (history, session, question box, audio box, status)


def test_typed_question_streams_an_answer_and_keeps_history(engine, tmp_path):
    image = solid_image(str(tmp_path / "red.png"))
    updates = list(web.respond(engine, GREEDY, None, 2**20, image, "What colour?", None, [], web.new_session()))
    assert len(updates) > 2, "the answer should stream"
    history, session, box, _, status = updates[-1]
    assert history == [{"role": "user", "content": "What colour?"},
                       {"role": "assistant", "content": expected_answer(engine, image, "What colour?")}]
    assert box == "" and status == ""
    history, session, *_ = turn(engine, None, image, "And the shape?", history=history, session=session)
    assert len(history) == 4 and session["conv"].messages[0][1].startswith("<image>\n")
    # A new picture starts a new conversation.
    other = solid_image(str(tmp_path / "blue.png"), color=(20, 40, 220))
    history, *_ = turn(engine, None, other, "What colour?", history=history, session=session)
    assert len(history) == 2


def test_spoken_question_is_transcribed_and_asked(engine, transcriber, tmp_path):
    image = solid_image(str(tmp_path / "red.png"))
    audio = tone_wav(str(tmp_path / "q.wav"))
    heard = transcriber(audio)
    assert heard
    history, _, _, audio_box, status = turn(engine, transcriber, image, "", audio)
    assert history[0] == {"role": "user", "content": heard}
    assert history[1]["content"] == expected_answer(engine, image, heard)
    assert status == f"🎤 Transcribed: {heard}" and audio_box is None
    not_audio = tmp_path / "q2.wav"
    not_audio.write_text("not a recording")
    history, _, _, _, status = turn(engine, transcriber, image, "", str(not_audio))
    assert history == [] and "cannot read audio file q2.wav" in status


def test_audio_without_whisper_says_so(engine, tmp_path):
    audio = tone_wav(str(tmp_path / "q.wav"))
    history, _, _, _, status = turn(engine, None, None, "", audio)
    assert history == [] and "--whisper-model" in status


def test_bad_uploads_are_refused_with_a_message(engine, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is text, not a picture")
    history, _, box, _, status = turn(engine, None, str(not_image), "What colour?")
    assert history == [] and box == "What colour?" and "not an image" in status
    big = solid_image(str(tmp_path / "big.png"), size=(256, 256))
    history, _, _, _, status = turn(engine, None, big, "What colour?", limit=100)
    assert history == [] and "larger than" in status
    history, _, _, _, status = turn(engine, None, solid_image(str(tmp_path / "ok.png")), "  ")
    assert history == [] and "Type a question" in status
    history, session, _, _, status = turn(engine, None, solid_image(str(tmp_path / "ok.png")), "why " * 600)
    assert history == [] and "context of 512 tokens" in status and session["conv"] is None
    # Nothing was asked: the picture still goes with the next question.
    history, session, *_ = turn(engine, None, str(tmp_path / "ok.png"), "What colour?", session=session)
    assert session["conv"].messages[0][1].startswith("<image>\n") and len(history) == 2


def test_a_refused_upload_starts_over_and_refuses_questions_until_a_picture_is_given(engine, bad_uploads, tmp_path):
    red = solid_image(str(tmp_path / "red.png"))
    history, session, *_ = turn(engine, None, red, "What colour?")
    assert len(history) == 2
    for name, (path, message) in bad_uploads.items():
        # The upload's own event, as the page runs it.
        refused, status = web.use_image(engine, web.UploadLimits(), path)
        assert message in status and refused["pixels"] is None and refused["conv"] is None, name
        # The next question is refused with the reason, never answered from the old conversation or without a picture.
        history, session, box, _, status = turn(engine, None, path, "And the shape?", history=history, session=session)
        assert history == [] and session["conv"] is None and message in status and box == "And the shape?", name
        _, again, _, _, status = turn(engine, None, path, "And now?", session=session)
        assert message in status and again["conv"] is None
    # Removing the file: a new conversation without a picture.
    history, session, _, _, status = turn(engine, None, None, "Hello?", session=session)
    assert len(history) == 2 and session["pixels"] is None and not session["conv"].messages[0][1].startswith("<image>")


def test_oversized_pictures_are_refused_from_the_header_without_decoding(engine, bad_uploads, monkeypatch):
    from PIL import ImageFile

    def no_decoding(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    path, _ = bad_uploads["huge.png"]  # 144 M pixels: Pillow alone would decode it (with a warning)
    _, status = web.use_image(engine, web.UploadLimits(), path)
    assert "more than 64,000,000 pixels (--max-image-pixels); it was not decoded" in status
    _, status = web.use_image(engine, web.UploadLimits(max_pixels=1000), grey_png(path + ".small.png", 40, 30))
    assert "has more than 1,000 pixels" in status


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_page_in_headless_chromium_answers_and_refuses_uploads(engine, transcriber, bad_uploads, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM) and not shutil.which("chromium"):
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    image = solid_image(str(tmp_path / "red.png"))
    audio = tone_wav(str(tmp_path / "q.wav"))
    typed_answer = expected_answer(engine, image, "What colour?")
    heard = transcriber(audio)

    demo = web.build_demo(engine, GREEDY, transcriber)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    assert url.startswith("http://127.0.0.1:")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#send")
            has = "([id, text]) => document.querySelector(id).innerText.includes(text)"
            lacks = "([id, text]) => !document.querySelector(id).innerText.includes(text)"

            def upload(path, expected_status):
                # The box takes several files and adds each upload to them: clear it to show only this one.
                if page.locator("#image button[aria-label=Clear]").count():
                    page.locator("#image button[aria-label=Clear]").click()
                page.locator("#image input[type=file]").set_input_files(path)
                page.wait_for_function(has, arg=["#status", expected_status], timeout=30_000)

            upload(image, "red.png (40 x 32)")
            page.locator("#question textarea").fill("What colour?")
            page.locator("#send").click()
            page.wait_for_function(has, arg=["#chatbot", typed_answer], timeout=60_000)

            for name, (path, message) in bad_uploads.items():
                upload(path, message)
                page.wait_for_function(lacks, arg=["#chatbot", "What colour?"], timeout=30_000)  # a new conversation
                page.locator("#question textarea").fill("And the shape?")
                page.locator("#send").click()
                page.wait_for_function(has, arg=["#status", "⚠️"], timeout=30_000)
                assert message in page.locator("#status").inner_text(), name
                assert "And the shape?" not in page.locator("#chatbot").inner_text(), name
                assert page.locator(".error").count() == 0, f"{name}: gradio shows an error badge"

            upload(image, "red.png (40 x 32)")
            page.locator("#question textarea").fill("")
            page.locator("#audio input[type=file]").set_input_files(audio)
            page.wait_for_timeout(500)  # let the upload land before sending
            page.locator("#send").click()
            page.wait_for_function(has, arg=["#status", heard], timeout=60_000)
            assert heard in page.locator("#chatbot").inner_text()

            page.locator("#reset").click()
            page.wait_for_function(lacks, arg=["#chatbot", heard], timeout=30_000)
            browser.close()
    finally:
        demo.close()


def test_whisper_budget_is_clamped_to_its_decoder(tiny_whisper, tmp_path):
    from llava.serve.speech import WhisperTranscriber

    transcriber = WhisperTranscriber(tiny_whisper)  # asks for 128 new tokens by default
    assert transcriber.model.config.max_target_positions == 64 and transcriber.max_new_tokens == 60
    assert transcriber(tone_wav(str(tmp_path / "q.wav")))  # would raise past the decoder's 64 positions
