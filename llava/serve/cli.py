"""Chat with a LLaVA checkpoint about images or a video in the terminal; answers stream as they are generated.

    python -m llava.serve.cli --model-path checkpoints/llava-phi --image-file photo.jpg
    python -m llava.serve.cli --model-path M --image-file a.jpg --image-file b.jpg    # several images
    python -m llava.serve.cli --model-path M --video-file clip.mp4                    # a video's frames

The images (or the video) go with the first question: each image at its own <image> in that question
when it has one per image, else all before it. Later questions continue the conversation.
An empty line or end of input (Ctrl-D) ends the chat.
"""

from __future__ import annotations

import argparse
import sys

from llava.inference import GenerationSettings, InferenceEngine


def display_roles(conv) -> tuple[str, str]:
    # ChatML roles ("<|im_start|>user\n") are markup, not names to show.
    if all(role.isalnum() for role in conv.roles):
        return conv.roles
    return "USER", "ASSISTANT"


def chat(engine: InferenceEngine, image_file: str | list[str], settings: GenerationSettings, stdin=None, stdout=None,
         video_file: str | None = None) -> int:
    """Run the chat loop about one or several images or a video; returns the number of answered turns."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    files = [image_file] if isinstance(image_file, str) else list(image_file or [])
    if files and video_file:
        raise SystemExit("give --image-file (one or more) or --video-file, not both")
    try:
        pixels = [engine.process_image(f) for f in files]
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--image-file: {exc}") from None
    if video_file:
        try:
            pixels = [engine.process_video(video_file)]
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--video-file: {exc}") from None
    conv = engine.new_conversation()
    user, assistant = display_roles(conv)
    turns = 0
    while True:
        stdout.write(f"{user}: ")
        stdout.flush()
        line = stdin.readline()
        question = line.strip()
        if not question:  # empty line or EOF
            stdout.write("\n" if not line else "")
            break
        engine.add_user_turn(conv, question, has_image=len(pixels) if turns == 0 else 0)
        try:
            prepared = engine.prepare(conv, pixels[0] if len(pixels) == 1 and not video_file else pixels)
        except ValueError as exc:  # the conversation outgrew the model's context
            stdout.write(f"[{exc}]\n")
            break
        stdout.write(f"{assistant}: ")
        shown = ""
        for text in engine.stream(prepared, settings):
            if text.startswith(shown):
                stdout.write(text[len(shown) :])
                stdout.flush()
                shown = text
        stdout.write("\n")
        conv.messages[-1][-1] = text  # the answer becomes history for the next turn
        turns += 1
    stdout.write(f"bye ({turns} turn{'s' if turns != 1 else ''})\n")
    return turns


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-base", default=None, help="base LLM for LoRA / stage-1 projector checkpoints")
    parser.add_argument("--image-file", action="append", default=[],
                        help="an image; repeat for several (each goes at its own <image> in the first question)")
    parser.add_argument("--video-file", default=None, help="a video, shown as frames sampled as the model was trained")
    parser.add_argument("--conv-mode", default=None, help="conversation template (default: the one the checkpoint was trained with, else the backbone's)")
    parser.add_argument("--temperature", type=float, default=0.2, help="0 = greedy decoding")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--load-4bit", action="store_true")
    parser.add_argument("--load-8bit", action="store_true")
    args = parser.parse_args(argv)
    if not args.image_file and not args.video_file:
        parser.error("give --image-file (one or more) or --video-file")
    if args.image_file and args.video_file:
        parser.error("give --image-file (one or more) or --video-file, not both")
    engine = InferenceEngine.from_pretrained(
        args.model_path, args.model_base, args.conv_mode, load_4bit=args.load_4bit, load_8bit=args.load_8bit
    )
    chat(engine, args.image_file, GenerationSettings(temperature=args.temperature, max_new_tokens=args.max_new_tokens),
         video_file=args.video_file)


if __name__ == "__main__":
    from llava.errors import run

    run(main)
