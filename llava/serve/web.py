"""Browser demo: upload an image, ask by typing or speaking, read the answer as it streams.

    python -m llava.serve.web --model-path checkpoints/llava-phi [--whisper-model whisper-tiny-dir]

Binds 127.0.0.1 unless `--host` says otherwise. Spoken questions are transcribed by a local
Whisper checkpoint and then treated exactly like typed ones; without `--whisper-model` the audio
input says so. Needs the optional dependency group `web` (gradio).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Callable, Iterator

from llava.eval.inference import GenerationSettings, InferenceEngine
from llava.mm_utils import load_image

logger = logging.getLogger(__name__)

NO_WHISPER = "Spoken questions need a Whisper model: restart with --whisper-model DIR (a local Whisper checkpoint)."


def new_session() -> dict:
    return {"conv": None, "image": None, "pixels": None}


def respond(
    engine: InferenceEngine,
    settings: GenerationSettings,
    transcriber: Callable[[str], str] | None,
    max_upload_bytes: int,
    image_path: str | None,
    question: str,
    audio_path: str | None,
    history: list[dict],
    session: dict,
) -> Iterator[tuple]:
    """One chat turn; yields (history, session, question box, audio box, status) as the answer streams.

    Problems (wrong file type, oversized upload, no question, no Whisper) come back as a status
    message and leave the conversation untouched.
    """
    history = list(history or [])
    session = dict(session or new_session())

    def fail(message: str):
        return history, session, question, audio_path, f"⚠️ {message}"

    for label, path in (("image", image_path), ("audio", audio_path)):
        if path and os.path.getsize(path) > max_upload_bytes:
            yield fail(f"The {label} file is larger than {max_upload_bytes // 2**20} MB; upload a smaller one.")
            return

    question = (question or "").strip()
    status = ""
    if not question and audio_path:
        if transcriber is None:
            yield fail(NO_WHISPER)
            return
        try:
            question = transcriber(audio_path).strip()
        except (OSError, ValueError) as exc:
            yield fail(str(exc))
            return
        if not question:
            yield fail("Whisper heard no words in that recording; try again or type the question.")
            return
        status = f"🎤 Transcribed: {question}"
    if not question:
        yield fail("Type a question or record one.")
        return

    if image_path and image_path != session["image"]:
        try:
            pixels = engine.process_image(load_image(image_path))
        except (OSError, ValueError) as exc:
            yield fail(f"That file is not an image we can read ({exc}). Upload a JPEG, PNG or WebP picture.")
            return
        # A new picture starts a new conversation.
        session, history = {"conv": None, "image": image_path, "pixels": pixels}, []
    if session["conv"] is None:
        session["conv"] = engine.new_conversation()
        first_with_image = session["pixels"] is not None
    else:
        first_with_image = False
    conv = session["conv"]
    engine.add_user_turn(conv, question, has_image=first_with_image)
    try:
        prepared = engine.prepare(conv, session["pixels"])
    except ValueError as exc:  # conversation too long for the model's context
        del conv.messages[-2:]
        yield fail(f"{exc}. Press Reset to start over.")
        return

    history += [{"role": "user", "content": question}, {"role": "assistant", "content": ""}]
    answer = ""
    for answer in engine.stream(prepared, settings):
        history[-1] = {"role": "assistant", "content": answer}
        yield history, session, "", None, status
    conv.messages[-1][-1] = answer
    yield history, session, "", None, status


def build_demo(
    engine: InferenceEngine,
    settings: GenerationSettings | None = None,
    transcriber: Callable[[str], str] | None = None,
    max_upload_mb: int = 20,
):
    import gradio as gr

    settings = settings or GenerationSettings(temperature=0.2, max_new_tokens=512)
    max_bytes = max_upload_mb * 2**20

    def on_submit(image, question, audio, history, session):
        yield from respond(engine, settings, transcriber, max_bytes, image, question, audio, history, session)

    def on_reset():
        return [], new_session(), "", None, None, ""

    with gr.Blocks(title="LLaVA demo", analytics_enabled=False) as demo:
        gr.Markdown("## LLaVA: ask about an image\nUpload a picture, then type a question or record one.")
        session = gr.State(new_session())
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label="Image", sources=["upload"], elem_id="image")
                audio = gr.Audio(
                    sources=["upload", "microphone"],
                    type="filepath",
                    format="wav",
                    label="Spoken question" if transcriber else "Spoken question (unavailable: no --whisper-model)",
                    interactive=transcriber is not None,
                    elem_id="audio",
                )
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=360)
                question = gr.Textbox(label="Question", placeholder="What is in the picture?", elem_id="question")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    reset = gr.Button("Reset", elem_id="reset")
                status = gr.Markdown("" if transcriber else f"ℹ️ {NO_WHISPER}", elem_id="status")
        outputs = [chatbot, session, question, audio, status]
        inputs = [image, question, audio, chatbot, session]
        send.click(on_submit, inputs, outputs)
        question.submit(on_submit, inputs, outputs)
        reset.click(on_reset, None, [chatbot, session, question, audio, image, status])
    # One generation at a time: the model is shared by every browser tab.
    demo.queue(default_concurrency_limit=1)
    return demo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-base", default=None, help="base LLM for LoRA / stage-1 projector checkpoints")
    parser.add_argument("--conv-mode", default=None, help="conversation template (default: the backbone's)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 exposes the demo to the network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--whisper-model", default=None, help="local Whisper checkpoint directory for spoken questions")
    parser.add_argument("--temperature", type=float, default=0.2, help="0 = greedy decoding")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--max-upload-mb", type=int, default=20, help="larger image/audio uploads are refused")
    parser.add_argument("--load-4bit", action="store_true")
    parser.add_argument("--load-8bit", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline by design

    engine = InferenceEngine.from_pretrained(
        args.model_path, args.model_base, args.conv_mode, load_4bit=args.load_4bit, load_8bit=args.load_8bit
    )
    transcriber = None
    if args.whisper_model:
        from llava.serve.speech import WhisperTranscriber

        try:
            transcriber = WhisperTranscriber(args.whisper_model)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--whisper-model: {exc}") from None
    else:
        logger.info("no --whisper-model: spoken questions are disabled")
    demo = build_demo(engine, GenerationSettings(args.temperature, max_new_tokens=args.max_new_tokens), transcriber,
                      args.max_upload_mb)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=f"{args.max_upload_mb}mb")


if __name__ == "__main__":
    from llava.errors import run

    run(main)
