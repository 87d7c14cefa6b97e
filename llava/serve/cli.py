"""Chat with a LLaVA checkpoint about one image in the terminal; answers stream as they are generated.

    python -m llava.serve.cli --model-path checkpoints/llava-phi --image-file photo.jpg

The image goes with the first question; later questions continue the conversation.
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


def chat(engine: InferenceEngine, image_file: str, settings: GenerationSettings, stdin=None, stdout=None) -> int:
    """Run the chat loop; returns the number of answered turns."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    try:
        pixels = engine.process_image(image_file)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--image-file: {exc}") from None
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
        engine.add_user_turn(conv, question, has_image=turns == 0)
        try:
            prepared = engine.prepare(conv, pixels)
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
    parser.add_argument("--image-file", required=True)
    parser.add_argument("--conv-mode", default=None, help="conversation template (default: the one the checkpoint was trained with, else the backbone's)")
    parser.add_argument("--temperature", type=float, default=0.2, help="0 = greedy decoding")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--load-4bit", action="store_true")
    parser.add_argument("--load-8bit", action="store_true")
    args = parser.parse_args(argv)
    engine = InferenceEngine.from_pretrained(
        args.model_path, args.model_base, args.conv_mode, load_4bit=args.load_4bit, load_8bit=args.load_8bit
    )
    chat(engine, args.image_file, GenerationSettings(temperature=args.temperature, max_new_tokens=args.max_new_tokens))


if __name__ == "__main__":
    from llava.errors import run

    run(main)
