"""Conversation templates: how a dialogue is rendered into one prompt string.

Each template knows its roles, separators and stop string, and can report which
character spans of the rendered prompt the assistant must generate (each answer, the space
before it and its end separator). Training derives its label mask from those spans, so one
preprocess function serves every template and tokenizer. Every conv_mode official LLaVA
accepts is here and renders what official renders (tests/test_official_parity.py).
"""

from __future__ import annotations

import copy
import dataclasses
from enum import Enum, auto

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN


class SeparatorStyle(Enum):
    SINGLE = auto()  # v0: "SYSTEM###Human: q###Assistant: a###"
    TWO = auto()  # vicuna v1 / phi / opt: "SYSTEM USER: q ASSISTANT: a</s>"
    LLAMA_2 = auto()  # "[INST] <<SYS>>...<</SYS>>\n\nq [/INST] a </s><s>[INST] ..."
    MPT = auto()  # ChatML: "<|im_start|>user\nq<|im_end|><|im_start|>assistant\na<|im_end|>"
    PLAIN = auto()  # stage 1: "<image>caption\n", no roles
    # Role headers + end-of-turn token, as chat-tuned LLMs of today write them: ChatML (Qwen, SmolLM2),
    # Llama-3, Gemma, Phi-3. "{system_role}{system}{sep}{sep2}" then "{role}{message}{sep}{sep2}" per turn.
    CHAT = auto()


@dataclasses.dataclass
class Conversation:
    system: str
    roles: tuple[str, str]
    messages: list[list]
    sep_style: SeparatorStyle
    sep: str = "###"
    sep2: str | None = None
    version: str = "unknown"
    offset: int = 0  # the first `offset` messages are the template's own example exchange (v0)
    mmtag: bool = False  # images appear as "<Image><image></Image>" (official's *_mmtag templates)
    system_role: str = ""  # CHAT: the system turn's header (a system message then replaces only its text)

    # -- rendering ---------------------------------------------------------------------
    def get_prompt(self) -> str:
        return self.render()[0]

    def get_prompt_and_targets(self) -> tuple[str, list[tuple[int, int]]]:
        """The prompt plus the [start, end) character spans that training learns to predict."""
        return self.render()

    def render(self) -> tuple[str, list[tuple[int, int]]]:
        """The prompt, rendered as official LLaVA's get_prompt() renders it, and the target spans.

        A target is what the model must generate after an inference prompt, which ends at the
        assistant tag ("ASSISTANT:", "[/INST]", "<|im_start|>assistant\n"): the space between the
        tag and the answer, the answer, and its end separator. A tokenizer may make that space a
        token of its own (SentencePiece before digits or CJK, GPT-2 BPE before a space or newline),
        and the model must learn to emit it. An empty or None message is an open turn.
        """
        parts: list[tuple[str, bool]] = []  # (text, is_target)
        messages = [(role, _text_of(msg)) for role, msg in self.messages]
        style = self.sep_style

        if style == SeparatorStyle.PLAIN:
            # Official LLaVA stage 1: the human turn is reduced to the image; the caption is learned.
            for i, (_, msg) in enumerate(messages):
                if not msg:
                    continue
                if i % 2 == 0:
                    parts.append((DEFAULT_IMAGE_TOKEN if DEFAULT_IMAGE_TOKEN in msg else msg, False))
                else:
                    parts.append((msg + self.sep, True))
        elif style in (SeparatorStyle.SINGLE, SeparatorStyle.TWO):
            end = self.sep if style == SeparatorStyle.SINGLE else self.sep2
            parts.append((self.system + self.sep, False))
            for i, (role, msg) in enumerate(messages):
                if not msg:
                    parts.append((role + ":", False))
                elif i % 2 == 0:
                    parts.append((role + ": " + msg + self.sep, False))
                else:
                    parts.append((role + ":", False))
                    parts.append((" " + msg + end, i >= self.offset))
        elif style == SeparatorStyle.LLAMA_2:
            for i, (role, msg) in enumerate(messages):
                if not msg:
                    continue
                if i % 2 == 0:
                    if i == 0 and self.system:
                        msg = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{msg}"
                    parts.append(((self.sep if i else "") + f"[INST] {msg} [/INST]", False))
                else:
                    parts.append((" " + msg + " " + self.sep2, True))
        elif style == SeparatorStyle.MPT:
            parts.append((self.system + self.sep, False))
            for i, (role, msg) in enumerate(messages):
                if not msg:
                    parts.append((role, False))
                elif i % 2 == 0:
                    parts.append((role + msg + self.sep, False))
                else:
                    parts.append((role, False))
                    parts.append((msg + self.sep, True))
        elif style == SeparatorStyle.CHAT:
            if self.system:
                parts.append((self.system_role + self.system + self.sep + self.sep2, False))
            for i, (role, msg) in enumerate(messages):
                if not msg:
                    parts.append((role, False))
                elif i % 2 == 0:
                    parts.append((role + msg + self.sep + self.sep2, False))
                else:  # the end-of-turn token is learned (generation stops on it), the text after it is not
                    parts += [(role, False), (msg + self.sep, True), (self.sep2, False)]
        else:  # pragma: no cover - enum is closed
            raise ValueError(f"unknown separator style {style}")

        prompt, spans = "", []
        for text, is_target in parts:
            if is_target:
                spans.append((len(prompt), len(prompt) + len(text)))
            prompt += text
        return prompt, spans

    def image_text(self, mm_use_im_start_end: bool = False) -> str:
        """How one image is written in a user message, in training and at inference alike."""
        marker = DEFAULT_IMAGE_TOKEN
        if mm_use_im_start_end:
            marker = DEFAULT_IM_START_TOKEN + marker + DEFAULT_IM_END_TOKEN
        return f"<Image>{marker}</Image>" if self.mmtag else marker

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
        return self.sep  # CHAT: the end-of-turn token, not the newline after it


def _text_of(message):
    """Messages may be (text, image, mode) tuples as in official LLaVA; keep only the text."""
    if isinstance(message, tuple):
        return message[0]
    return message


# The template strings are official LLaVA's (llava/conversation.py at c121f04), character for
# character: checkpoints were trained on them. tests/golden/official_llava/prompts.json holds
# what official renders with each template.
HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
USER_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
MMTAG_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant is able to understand the visual content that the user provides, and assist the user "
    "with a variety of tasks using natural language."  # no space before the next sentence, as official
    "The visual content will be provided with the following format: <Image>visual content</Image>."
)
LLAMA_2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being "
    "safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal "
    "content. Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information."
)
LLAVA_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)
# The example exchange official's v0 template shows before every inference prompt (never trained on).
V0_EXAMPLE = [
    ["Human", "What are the key differences between renewable and non-renewable energy sources?"],
    [
        "Assistant",
        "Renewable energy sources are those that can be replenished naturally in a relatively short amount of "
        "time, such as solar, wind, hydro, geothermal, and biomass. Non-renewable energy sources, on the other "
        "hand, are finite and will eventually be depleted, such as coal, oil, and natural gas. Here are some key "
        "differences between renewable and non-renewable energy sources:\n"
        "1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable energy "
        "sources are finite and will eventually run out.\n"
        "2. Environmental impact: Renewable energy sources have a much lower environmental impact than "
        "non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, and other "
        "negative effects.\n"
        "3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically have "
        "lower operational costs than non-renewable sources.\n"
        "4. Reliability: Renewable energy sources are often more reliable and can be used in more remote "
        "locations than non-renewable sources.\n"
        "5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different "
        "situations and needs, while non-renewable sources are more rigid and inflexible.\n"
        "6. Sustainability: Renewable energy sources are more sustainable over the long term, while "
        "non-renewable sources are not, and their depletion can lead to economic and social instability.\n",
    ],
]

conv_vicuna_v0 = Conversation(
    system=HUMAN_SYSTEM, roles=("Human", "Assistant"), messages=V0_EXAMPLE, sep_style=SeparatorStyle.SINGLE,
    sep="###", version="v0", offset=2,
)  # fmt: skip
conv_vicuna_v1 = Conversation(
    system=USER_SYSTEM, roles=("USER", "ASSISTANT"), messages=[], sep_style=SeparatorStyle.TWO,
    sep=" ", sep2="</s>", version="v1",
)  # fmt: skip
conv_llama_2 = Conversation(
    system=LLAMA_2_SYSTEM, roles=("USER", "ASSISTANT"), messages=[], sep_style=SeparatorStyle.LLAMA_2,
    sep="<s>", sep2="</s>", version="llama_v2",
)  # fmt: skip
conv_llava_llama_2 = dataclasses.replace(conv_llama_2, system=LLAVA_LLAMA_2_SYSTEM)
conv_mistral_instruct = dataclasses.replace(conv_llama_2, system="", sep="")
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
conv_chatml_direct = dataclasses.replace(conv_mpt, system="<|im_start|>system\nAnswer the questions.")
conv_plain = Conversation(
    system="", roles=("", ""), messages=[], sep_style=SeparatorStyle.PLAIN, sep="\n", version="plain"
)
conv_llava_v0 = dataclasses.replace(conv_vicuna_v0, messages=[], offset=0)
conv_llava_v0_mmtag = dataclasses.replace(conv_llava_v0, system=MMTAG_SYSTEM, version="v0_mmtag", mmtag=True)
conv_llava_v1 = dataclasses.replace(conv_vicuna_v1, system=HUMAN_SYSTEM)
conv_llava_v1_mmtag = dataclasses.replace(conv_vicuna_v1, system=MMTAG_SYSTEM, version="v1_mmtag", mmtag=True)

# Phi-2 and OPT chat in vicuna v1 style, but each answer ends with the model's own EOS text.
conv_phi = dataclasses.replace(conv_vicuna_v1, sep2="<|endoftext|>", version="phi")
conv_opt = dataclasses.replace(conv_vicuna_v1, sep2="</s>", version="opt")

# Today's chat LLMs. LLaVA-NeXT's templates (llava/conversation.py there) render the same strings:
# llava_llama_3, qwen_1_5 / qwen_2 / qwen_2_5 and gemma_instruct; phi3 and smollm2 follow the models' own chat
# templates. The tokenizer adds BOS where the family has one (Llama-3, Gemma, Phi-3).
conv_llava_llama_3 = Conversation(
    system=LLAVA_LLAMA_2_SYSTEM, system_role="<|start_header_id|>system<|end_header_id|>\n\n",
    roles=("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    messages=[], sep_style=SeparatorStyle.CHAT, sep="<|eot_id|>", sep2="", version="llama_v3",
)  # fmt: skip
conv_qwen = Conversation(
    system="You are a helpful assistant.", system_role="<|im_start|>system\n",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"), messages=[], sep_style=SeparatorStyle.CHAT,
    sep="<|im_end|>", sep2="\n", version="qwen",
)  # fmt: skip
conv_qwen_2_5 = dataclasses.replace(conv_qwen, system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
conv_smollm2 = dataclasses.replace(
    conv_qwen, system="You are a helpful AI assistant named SmolLM, trained by Hugging Face", version="smollm2"
)
conv_gemma_instruct = Conversation(
    system="", roles=("<start_of_turn>user\n", "<start_of_turn>model\n"), messages=[], sep_style=SeparatorStyle.CHAT,
    sep="<end_of_turn>", sep2="\n", version="gemma",
)  # fmt: skip
conv_phi3 = Conversation(
    system="", system_role="<|system|>\n", roles=("<|user|>\n", "<|assistant|>\n"), messages=[],
    sep_style=SeparatorStyle.CHAT, sep="<|end|>", sep2="\n", version="phi3",
)  # fmt: skip

# Every name official LLaVA's --version / --conv-mode accepts, ours for Phi-2 and OPT, and LLaVA-NeXT's
# for Llama-3, Qwen and Gemma.
conv_templates: dict[str, Conversation] = {
    "default": conv_vicuna_v0,
    "v0": conv_vicuna_v0,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llama_2": conv_llama_2,
    "mistral_instruct": conv_mistral_instruct,
    "chatml_direct": conv_chatml_direct,
    "mistral_direct": conv_chatml_direct,
    "plain": conv_plain,
    "v0_plain": conv_plain,
    "llava_v0": conv_llava_v0,
    "v0_mmtag": conv_llava_v0_mmtag,
    "llava_v1": conv_llava_v1,
    "v1_mmtag": conv_llava_v1_mmtag,
    "llava_llama_2": conv_llava_llama_2,
    "mpt": conv_mpt,
    "phi": conv_phi,
    "opt": conv_opt,
    "llava_llama_3": conv_llava_llama_3,
    "qwen_1_5": conv_qwen,
    "qwen_2": conv_qwen,
    "qwen_2_5": conv_qwen_2_5,
    "gemma_instruct": conv_gemma_instruct,
    "phi3": conv_phi3,
    "smollm2": conv_smollm2,
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
