"""Conversation templates: how a dialogue is rendered into one prompt string.

Each template knows its roles, separators and stop string, and can report which
character spans of the rendered prompt are assistant answers (plus each answer's end
separator). Training derives its label mask from those spans, so one preprocess
function serves every template and tokenizer.
"""

from __future__ import annotations

import copy
import dataclasses
from enum import Enum, auto

from llava.constants import DEFAULT_IMAGE_TOKEN


class SeparatorStyle(Enum):
    PLAIN = auto()  # stage 1: "<image>caption\n", no roles
    TWO = auto()  # vicuna v1 / phi / opt: "SYSTEM USER: q ASSISTANT: a</s>"
    LLAMA_2 = auto()  # "[INST] <<SYS>>...<</SYS>>\n\nq [/INST] a </s><s>[INST] ..."
    MPT = auto()  # ChatML: "<|im_start|>user\nq<|im_end|><|im_start|>assistant\na<|im_end|>"


@dataclasses.dataclass
class Conversation:
    system: str
    roles: tuple[str, str]
    messages: list[list]
    sep_style: SeparatorStyle
    sep: str = "###"
    sep2: str | None = None
    version: str = "unknown"

    # -- rendering ---------------------------------------------------------------------
    def get_prompt(self) -> str:
        return self.render()[0]

    def get_prompt_and_targets(self) -> tuple[str, list[tuple[int, int]]]:
        """The prompt plus the [start, end) character spans that training learns to predict."""
        return self.render()

    def render(self) -> tuple[str, list[tuple[int, int]]]:
        parts: list[tuple[str, bool]] = []  # (text, is_target)
        messages = [(role, _text_of(msg)) for role, msg in self.messages]
        style = self.sep_style

        if style == SeparatorStyle.PLAIN:
            # Official LLaVA stage 1: the human turn is reduced to the image; the caption is learned.
            for i, (_, msg) in enumerate(messages):
                if msg is None:
                    continue
                if i % 2 == 0:
                    parts.append((DEFAULT_IMAGE_TOKEN if DEFAULT_IMAGE_TOKEN in msg else msg, False))
                else:
                    parts.append((msg + self.sep, True))
        elif style == SeparatorStyle.TWO:
            parts.append((self.system + self.sep, False))
            for i, (role, msg) in enumerate(messages):
                if msg is None:
                    parts.append((role + ":", False))
                elif i % 2 == 0:
                    parts.append((role + ": " + msg + self.sep, False))
                else:
                    parts.append((role + ": ", False))
                    parts.append((msg + self.sep2, True))
        elif style == SeparatorStyle.LLAMA_2:
            for i, (role, msg) in enumerate(messages):
                if msg is None:
                    continue
                if i % 2 == 0:
                    if i == 0 and self.system:
                        msg = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{msg}"
                    parts.append(((self.sep if i else "") + f"[INST] {msg} [/INST]", False))
                else:
                    parts.append((" ", False))
                    parts.append((msg + " " + self.sep2, True))
        elif style == SeparatorStyle.MPT:
            parts.append((self.system + self.sep, False))
            for i, (role, msg) in enumerate(messages):
                if msg is None:
                    parts.append((role, False))
                elif i % 2 == 0:
                    parts.append((role + msg + self.sep, False))
                else:
                    parts.append((role, False))
                    parts.append((msg + self.sep, True))
        else:  # pragma: no cover - enum is closed
            raise ValueError(f"unknown separator style {style}")

        prompt, spans = "", []
        for text, is_target in parts:
            if is_target:
                spans.append((len(prompt), len(prompt) + len(text)))
            prompt += text
        return prompt, spans

    # -- editing -----------------------------------------------------------------------
    def append_message(self, role: str, message) -> None:
        self.messages.append([role, message])

    def copy(self) -> "Conversation":
        return copy.deepcopy(self)

    @property
    def stop_str(self) -> str:
        """The string that ends an assistant answer; generation stops on it."""
        if self.sep_style in (SeparatorStyle.TWO, SeparatorStyle.LLAMA_2):
            return self.sep2
        return self.sep


def _text_of(message):
    """Messages may be (text, image, mode) tuples as in official LLaVA; keep only the text."""
    if isinstance(message, tuple):
        return message[0]
    return message


VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

conv_plain = Conversation(
    system="", roles=("", ""), messages=[], sep_style=SeparatorStyle.PLAIN, sep="\n", version="plain"
)

conv_vicuna_v1 = Conversation(
    system=VICUNA_SYSTEM,
    roles=("USER", "ASSISTANT"),
    messages=[],
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
    version="v1",
)

conv_llava_llama_2 = Conversation(
    system=(
        "You are a helpful language and vision assistant. You are able to understand the visual "
        "content that the user provides, and assist the user with a variety of tasks using natural language."
    ),
    roles=("USER", "ASSISTANT"),
    messages=[],
    sep_style=SeparatorStyle.LLAMA_2,
    sep="<s>",
    sep2="</s>",
    version="llama_v2",
)

conv_mpt = Conversation(
    system=(
        "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
        "The assistant gives helpful and honest answers."
    ),
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    messages=[],
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
    version="mpt",
)

# Phi-2 and OPT chat in vicuna style, but each answer ends with the model's own EOS text.
conv_phi = dataclasses.replace(conv_vicuna_v1, sep2="<|endoftext|>", version="phi")
conv_opt = dataclasses.replace(conv_vicuna_v1, sep2="</s>", version="opt")

conv_templates: dict[str, Conversation] = {
    "plain": conv_plain,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llava_v1": conv_vicuna_v1,
    "llava_llama_2": conv_llava_llama_2,
    "mpt": conv_mpt,
    "phi": conv_phi,
    "opt": conv_opt,
}

default_conversation = conv_vicuna_v1


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of the named template; unknown names list the valid choices."""
    try:
        return conv_templates[name].copy()
    except KeyError:
        raise ValueError(
            f"unknown conversation template {name!r}; choose one of: {', '.join(sorted(conv_templates))}"
        ) from None
