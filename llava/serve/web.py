"""Browser demo: upload an image (or several, or a video), ask by typing or speaking, read the answer as it streams.

    python -m llava.serve.web --model-path checkpoints/llava-phi [--whisper-model whisper-tiny-dir]

Binds 127.0.0.1 unless `--host` says otherwise. Spoken questions are transcribed by a local
Whisper checkpoint and then treated exactly like typed ones; without `--whisper-model` the audio
input says so (`python -m llava.model.tiny --whisper --out DIR` writes a tiny offline one for
trying the plumbing). Needs the optional dependency group `serve` (gradio, scipy).

Uploads are checked here, not by gradio: the image box takes any file, and whatever it is (not a
picture, a decompression bomb, more pixels than `--max-image-pixels`, larger than
`--max-upload-mb`) ends in a status-line message. Pixel counts are read from the file's header,
so an oversized picture is refused without being decoded. Several pictures go with the first question,
each at its own <image> in it when it has one per picture, else all before it; a video (a file named
.mp4, .webm, .mov, .mkv or .avi) is shown as frames sampled as the model was trained, alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from typing import Callable, Iterator

from llava.inference import GenerationSettings, InferenceEngine
from llava.mm_utils import MAX_IMAGE_PIXELS, ImageTooLarge, load_image
from llava.video import VideoError

logger = logging.getLogger(__name__)

NO_WHISPER = "Spoken questions need a Whisper model: restart with --whisper-model DIR (a local Whisper checkpoint)."
PREVIEW_SIDE = 384  # the preview is a thumbnail; the model gets the full image
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi")


@dataclasses.dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 20 * 2**20
    max_pixels: int = MAX_IMAGE_PIXELS


def _size(n: int) -> str:
    return f"{n / 2**20:g} MB" if n >= 2**20 else f"{n:,} bytes"


def new_session() -> dict:
    """`image`: the upload the session is about (also when it was refused); `refused`: why, if it was."""
    return {"conv": None, "image": None, "pixels": None, "preview": None, "refused": None}


def _upload_key(image_path) -> str | tuple | None:
    """What identifies an upload (one path, several, or none) for telling whether it changed."""
    if isinstance(image_path, (list, tuple)):
        return tuple(image_path) or None
    return image_path or None


def use_image(engine: InferenceEngine, limits: UploadLimits, image_path: str | list | None) -> tuple[dict, str]:
    """A new session for the uploaded file(s) (or for none) and the status line to show.

    Every change of picture (a new one, a refused one, none) starts a new conversation, so no
    question is ever answered from the previous picture's conversation. A refused upload leaves a
    session that refuses questions, with the reason, until another picture is uploaded, the file is
    removed or Reset is pressed.
    """
    session = new_session()
    if not _upload_key(image_path):
        return session, ""
    if isinstance(image_path, (list, tuple)):
        return _use_several(engine, limits, list(image_path))
    session["image"] = image_path
    name = os.path.basename(image_path)
    try:
        too_big = os.path.getsize(image_path) > limits.max_bytes
        if too_big:
            session["refused"] = f"{name} is larger than {_size(limits.max_bytes)}; upload a smaller one."
        else:
            image = load_image(image_path, max_pixels=limits.max_pixels)
            session["pixels"] = engine.process_image(image)
    except ImageTooLarge:
        session["refused"] = (
            f"{name} has more than {limits.max_pixels:,} pixels (--max-image-pixels); it was not decoded. "
            "Upload a smaller picture."
        )
    except ValueError:  # not a picture Pillow can decode
        session["refused"] = f"{name} is not an image we can read. Upload a JPEG, PNG or WebP picture."
    except OSError:
        session["refused"] = f"{name} could not be read. Upload it again."
    if session["refused"]:
        logger.info("refused upload %s: %s", name, session["refused"])
        return session, f"⚠️ {session['refused']}"
    preview = image.copy()
    preview.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    session["preview"] = preview
    return session, f"🖼️ {name} ({image.width} x {image.height}): ask a question about it."


def _use_several(engine: InferenceEngine, limits: UploadLimits, paths: list[str]) -> tuple[dict, str]:
    """Several uploads (each checked as one is), or a video; the session's pixels are then a list, one per marker."""
    videos = [p for p in paths if p.lower().endswith(VIDEO_SUFFIXES)]
    if len(paths) == 1 and not videos:
        session, status = use_image(engine, limits, paths[0])
        session["image"] = tuple(paths)
        return session, status
    session = new_session()
    session["image"] = tuple(paths)
    if videos:
        name = os.path.basename(videos[0])
        if len(paths) > 1:
            session["refused"] = "A video goes alone: upload one video, or pictures only."
        elif os.path.getsize(videos[0]) > limits.max_bytes:
            session["refused"] = f"{name} is larger than {_size(limits.max_bytes)}; upload a smaller one."
        else:
            try:
                frames = engine.process_video(videos[0])
                session["pixels"] = [frames]
            except (OSError, ValueError) as exc:
                session["refused"] = f"{name}: {exc}. Upload another video." if isinstance(exc, VideoError) else (
                    f"{name} could not be read. Upload it again.")
        if session["refused"]:
            logger.info("refused upload %s: %s", name, session["refused"])
            return session, f"⚠️ {session['refused']}"
        return session, f"🎞️ {name} ({len(frames.pixels)} frames): ask a question about it."
    pixels, previews = [], []
    for path in paths:
        one, status = use_image(engine, limits, path)
        if one["refused"]:
            session["refused"] = one["refused"]
            return session, status
        pixels.append(one["pixels"])
        previews.append(one["preview"])
    session["pixels"], session["preview"] = pixels, previews[0]
    names = ", ".join(os.path.basename(p) for p in paths)
    return session, f"🖼️ {len(paths)} pictures ({names}): ask about them; write <image> where each goes, or not."


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
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Iterator[tuple]:
    """One chat turn; yields (history, session, question box, audio box, status) as the answer streams.

    Problems (a refused upload, oversized audio, no question, no Whisper) come back as a status
    message; the conversation is left as it was, or emptied when the picture changed.
    """
    history = list(history or [])
    session = dict(session or new_session())
    status = ""
    if _upload_key(image_path) != _upload_key(session["image"]):  # the upload's own event has not run (or an API call)
        session, _ = use_image(engine, UploadLimits(max_upload_bytes, max_pixels), image_path)  # refusals below
        history = []

    def fail(message: str):
        return history, session, question, audio_path, f"⚠️ {message}"

    if session["refused"]:
        yield fail(session["refused"])
        return
    if audio_path and os.path.getsize(audio_path) > max_upload_bytes:
        yield fail(f"The audio file is larger than {_size(max_upload_bytes)}; upload a smaller one.")
        return

    question = (question or "").strip()
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

    if session["conv"] is None:
        session["conv"] = engine.new_conversation()
        first_with_image = session["pixels"] is not None
    else:
        first_with_image = False
    conv = session["conv"]
    several = isinstance(session["pixels"], list)
    shown = (len(session["pixels"]) if several else 1) if first_with_image else 0
    engine.add_user_turn(conv, question, has_image=shown)
    try:
        prepared = engine.prepare(conv, session["pixels"])
    except ValueError as exc:  # conversation too long for the model's context
        del conv.messages[-2:]
        if not conv.messages:
            session["conv"] = None  # nothing was asked yet: the image still goes with the next question
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
    max_image_pixels: int = MAX_IMAGE_PIXELS,
):
    import gradio as gr

    settings = settings or GenerationSettings(temperature=0.2, max_new_tokens=512)
    limits = UploadLimits(max_upload_mb * 2**20, max_image_pixels)

    def on_image(image, session):
        if _upload_key(image) == _upload_key((session or new_session())["image"]):
            return gr.skip(), session, session["preview"], gr.skip()  # already taken in by a question
        session, status = use_image(engine, limits, image)
        return [], session, session["preview"], status

    def on_submit(image, question, audio, history, session):
        yield from respond(engine, settings, transcriber, limits.max_bytes, image, question, audio, history, session,
                           limits.max_pixels)

    def on_reset():
        return [], new_session(), "", None, None, None, ""

    with gr.Blocks(title="LLaVA demo", analytics_enabled=False) as demo:
        gr.Markdown("## LLaVA: ask about an image\nUpload a picture (or several, or a video), then type a question "
                    "or record one.")
        session = gr.State(new_session())
        with gr.Row():
            with gr.Column(scale=1):
                # A plain file box: gradio's image box decodes uploads itself, before anything here can
                # refuse a file that is not a picture or is too large to decode.
                image = gr.File(label="Image(s) (JPEG, PNG, WebP, ...) or a video (MP4, WebM, ...)", type="filepath",
                                file_count="multiple", elem_id="image")
                preview = gr.Image(label="Preview", interactive=False, elem_id="preview", height=200)
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
        image.change(on_image, [image, session], [chatbot, session, preview, status])
        send.click(on_submit, inputs, outputs)
        question.submit(on_submit, inputs, outputs)
        reset.click(on_reset, None, [chatbot, session, question, audio, image, preview, status])
    # One event at a time: the model is shared by every browser tab, and an upload is taken in
    # before the question sent after it.
    demo.queue(default_concurrency_limit=1)
    return demo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-base", default=None, help="base LLM for LoRA / stage-1 projector checkpoints")
    parser.add_argument("--conv-mode", default=None, help="conversation template (default: the one the checkpoint was trained with, else the backbone's)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 exposes the demo to the network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--whisper-model", default=None, help="local Whisper checkpoint directory for spoken questions")
    parser.add_argument("--temperature", type=float, default=0.2, help="0 = greedy decoding")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--max-upload-mb", type=int, default=20, help="larger image/audio uploads are refused")
    parser.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS,
                        help="images with more pixels (read from the file header) are refused without being decoded")
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
                      args.max_upload_mb, args.max_image_pixels)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=f"{args.max_upload_mb}mb")


if __name__ == "__main__":
    from llava.errors import run

    run(main)
