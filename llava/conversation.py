"""Conversation templates: how a dialogue is rendered into one prompt string.

Each template knows its roles, separators and stop string. Its rendering is defined once, as a Jinja
chat template with `{% generation %}` around what the assistant writes (`Conversation.chat_template()`):
training takes the prompt and its target spans from it, inference the prompt, and the HF export writes
it as the processor's chat template. Training derives its label mask from those spans, so one
preprocess function serves every template and tokenizer. Every conv_mode official LLaVA accepts is
here and renders what official renders (tests/test_official_parity.py). 'chat_template' renders with
the tokenizer's own chat template instead (llava/chat_template.py finds its answer spans).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import weakref
from enum import Enum, auto

from llava import chat_template as tpl
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
    # The tokenizer's own Jinja chat template (--version chat_template); sep is its end-of-turn token.
    TOKENIZER = auto()


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
    jinja: str | None = None  # TOKENIZER: the tokenizer's chat template (its dates pinned)
    variables: dict = dataclasses.field(default_factory=dict)  # TOKENIZER: bos_token, eos_token, ... as HF passes them
    # False: the rendered text is the whole sequence, the tokenizer adds no BOS of its own (the template writes it)
    add_special_tokens: bool = True

    # -- rendering ---------------------------------------------------------------------
    def get_prompt(self) -> str:
        return self.render(spans=False)[0]

    def get_prompt_and_targets(self) -> tuple[str, list[tuple[int, int]]]:
        """The prompt plus the [start, end) character spans that training learns to predict."""
        return self.render()

    def render(self, spans: bool = True) -> tuple[str, list[tuple[int, int]]]:
        """The prompt, rendered by this template's Jinja (`chat_template()`), and the target spans.

        A target is what the model must generate after an inference prompt, which ends at the
        assistant tag ("ASSISTANT:", "[/INST]", "<|im_start|>assistant\n"): the space between the
        tag and the answer, the answer, and its end separator. A tokenizer may make that space a
        token of its own (SentencePiece before digits or CJK, GPT-2 BPE before a space or newline),
        and the model must learn to emit it. An empty or None message is an open turn; a trailing
        open assistant turn is the generation prompt.
        """
        source = self.chat_template()
        messages, open_turn = self.chat_messages()
        if self.sep_style != SeparatorStyle.TOKENIZER:  # ours mark their targets with {% generation %}
            return tpl.render_trusted(source, messages, open_turn)
        targets: list[tuple[int, int]] = []
        if spans and any(m["role"] == "assistant" for m in messages):
            full, targets = tpl.assistant_spans(source, messages, self.sep, self.variables)
            if not open_turn:
                return full, targets
        return tpl.render(source, messages, open_turn, self.variables)[0], targets

    def chat_messages(self) -> tuple[list[dict], bool]:
        """The turns after the template's own example exchange as chat messages ({"role", "content"}),
        and whether the last one is an open assistant turn (left out: the generation prompt stands for it)."""
        turns = [_text_of(message) for _, message in self.messages[self.offset :]]
        open_turn = len(turns) % 2 == 0 and bool(turns) and not turns[-1]
        if open_turn:
            turns = turns[:-1]
        messages = [{"role": "system", "content": self.system}] if self.jinja is not None and self.system else []
        messages += [{"role": ("user", "assistant")[i % 2], "content": text or ""} for i, text in enumerate(turns)]
        return messages, open_turn

    def chat_template(self) -> str:
        """The Jinja this template renders with: the one definition training, inference and the export share."""
        if self.sep_style == SeparatorStyle.TOKENIZER:
            if self.jinja is None:
                raise tpl.ChatTemplateError(
                    "the 'chat_template' conversation template renders with a tokenizer's own chat template: "
                    "get it with get_conv_template('chat_template', tokenizer)"
                )
            return self.jinja
        examples = tuple((role, _text_of(text)) for role, text in self.messages[: self.offset])
        return _jinja(self.sep_style, self.system, tuple(self.roles), self.sep, self.sep2, self.system_role, examples)

    def processor_chat_template(self) -> str:
        """`chat_template()` for a processor (the HF export): messages whose content is a list of
        {"type": "image"} / {"type": "text"} items render as LLaVA writes images into the text."""
        return IMAGE_CONTENT + self.chat_template()

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
        # The turns are copied (callers append and edit them); everything else is strings and tuples.
        return dataclasses.replace(self, messages=[list(m) for m in self.messages], variables=dict(self.variables))

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


# -- each template's Jinja ---------------------------------------------------------------------
# Images in a message's content list become "<image>\n" before its text, as LLaVA places them, so a
# processor's messages ([{"type": "image"}, {"type": "text", ...}]) render what training showed.
IMAGE_CONTENT = (
    "{%- set llava = namespace(messages=[]) %}{%- for m in messages %}{%- if m.content is string or m.content is none %}"
    "{%- set llava.messages = llava.messages + [m] %}{%- else %}{%- set flat = namespace(text='') %}"
    "{%- for item in m.content if item.type == 'image' %}{%- set flat.text = flat.text + '" + DEFAULT_IMAGE_TOKEN
    + "\n' %}{%- endfor %}{%- for item in m.content if item.type == 'text' %}{%- set flat.text = flat.text + item.text %}"
    "{%- endfor %}{%- set llava.messages = llava.messages + [{'role': m.role, 'content': flat.text}] %}{%- endif %}"
    "{%- endfor %}{%- set messages = llava.messages %}"
)


@functools.lru_cache(maxsize=256)
def _jinja(style, system, roles, sep, sep2, system_role, examples) -> str:
    """The Jinja chat template of a template with these fields: its one definition of rendering.

    `{% generation %}` marks what the assistant writes (training's targets). A leading system message
    replaces the template's system prompt; an empty message is an open turn (just its role header).
    """
    q = lambda s: json.dumps(s, ensure_ascii=False)  # noqa: E731  (a Jinja string literal)
    user, assistant = roles
    role = "{% set role = " + q(user) + " if m.role == 'user' else " + q(assistant) + " %}"
    head = (
        "{% if messages and messages[0].role == 'system' %}{% set system = messages[0].content %}"
        "{% set turns = messages[1:] %}{% else %}{% set system = " + q(system) + " %}{% set turns = messages %}{% endif %}"
    )
    if style in (SeparatorStyle.SINGLE, SeparatorStyle.TWO):
        end = sep if style == SeparatorStyle.SINGLE else sep2
        shown = "".join(f"{r}: {t}{sep}" for r, t in examples)  # v0's example exchange, never a target
        body = (
            "{{ system + " + q(sep + shown) + " }}{% for m in turns %}" + role + "{% if not m.content %}{{ role + ':' }}"
            "{% elif m.role == 'user' %}{{ role + ': ' + m.content + " + q(sep) + " }}"
            "{% else %}{{ role + ':' }}{% generation %}{{ ' ' + m.content + " + q(end) + " }}{% endgeneration %}"
            "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ " + q(assistant + ":") + " }}{% endif %}"
        )
    elif style == SeparatorStyle.LLAMA_2:
        body = (
            "{% for m in turns if m.content %}{% if m.role == 'user' %}{% set text = m.content %}"
            "{% if loop.first and system %}{% set text = '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + text %}{% endif %}"
            "{{ ('' if loop.first else " + q(sep) + ") + '[INST] ' + text + ' [/INST]' }}"
            "{% else %}{% generation %}{{ ' ' + m.content + ' ' + " + q(sep2) + " }}{% endgeneration %}{% endif %}"
            "{% endfor %}"
        )
    elif style == SeparatorStyle.MPT:
        body = (
            "{{ system + " + q(sep) + " }}{% for m in turns %}" + role + "{% if not m.content %}{{ role }}"
            "{% elif m.role == 'user' %}{{ role + m.content + " + q(sep) + " }}"
            "{% else %}{{ role }}{% generation %}{{ m.content + " + q(sep) + " }}{% endgeneration %}{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}{{ " + q(assistant) + " }}{% endif %}"
        )
    elif style == SeparatorStyle.CHAT:  # the end-of-turn token is learned (generation stops on it), the text after it is not
        body = (
            "{% if system %}{{ " + q(system_role) + " + system + " + q(sep + sep2) + " }}{% endif %}"
            "{% for m in turns %}" + role + "{% if not m.content %}{{ role }}"
            "{% elif m.role == 'user' %}{{ role + m.content + " + q(sep + sep2) + " }}"
            "{% else %}{{ role }}{% generation %}{{ m.content + " + q(sep) + " }}{% endgeneration %}{{ " + q(sep2) + " }}"
            "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ " + q(assistant) + " }}{% endif %}"
        )
    elif style == SeparatorStyle.PLAIN:  # official stage 1: the human turn is reduced to the image; the caption is learned
        body = (
            "{% for m in turns if m.content %}{% if m.role == 'user' %}"
            "{{ '" + DEFAULT_IMAGE_TOKEN + "' if '" + DEFAULT_IMAGE_TOKEN + "' in m.content else m.content }}"
            "{% else %}{% generation %}{{ m.content + " + q(sep) + " }}{% endgeneration %}{% endif %}{% endfor %}"
        )
    else:  # pragma: no cover - TOKENIZER templates bring their own Jinja
        raise ValueError(f"no Jinja for separator style {style}")
    return head + body


# -- the tokenizer's own template (--version chat_template) --------------------------------------
_BOUND: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> (its chat_template, Conversation)


def tokenizer_conversation(tokenizer) -> Conversation:
    """The 'chat_template' template bound to `tokenizer`'s own Jinja chat template, checked once per tokenizer.

    Its end-of-turn token (the stop string) is read off the template, and a two-round probe conversation
    must give trustworthy answer spans, so a template that cannot be trained on fails here, at startup.
    """
    where = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    source = getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):  # several named templates: the default one is the chat template
        source = source.get("default")
    if not source:
        shipped = ", ".join(sorted(conv_templates))
        raise tpl.ChatTemplateError(
            f"the tokenizer at {where} has no chat_template, so the 'chat_template' conversation template has "
            f"nothing to render. Choose a template we ship with --version / --conv-mode ({shipped}), or give the "
            "tokenizer a chat template (chat_template.jinja or tokenizer_config.json's chat_template)"
        )
    try:
        cached = _BOUND.get(tokenizer)
    except TypeError:  # an unhashable tokenizer object: bound (and checked) anew each time
        cached = None
    if cached is not None and cached[0] == source:
        return cached[1].copy()
    try:
        pinned = tpl.pin_date(source)
        variables = dict(tokenizer.special_tokens_map)  # what apply_chat_template passes the template
        control = [t for t in tokenizer.get_added_vocab() if t != DEFAULT_IMAGE_TOKEN]
        conv = dataclasses.replace(
            conv_chat_template, sep=tpl.end_of_turn(pinned, control, variables), jinja=pinned, variables=variables,
        )
        probe = conv.copy()
        for text in ("What colour is the sky?", "Blue.", "And the grass?", "Green."):
            probe.append_message(probe.roles[len(probe.messages) % 2], text)
        prompt = probe.render()[0]
    except tpl.ChatTemplateError as exc:
        raise tpl.ChatTemplateError(f"the chat template of the tokenizer at {where}: {exc}") from None
    # As transformers' processors tokenise a rendered chat: a template that writes BOS gets no second one,
    # another gets the tokenizer's own (where it adds one), as our templates of that family do.
    bos = getattr(tokenizer, "bos_token", None)
    conv.add_special_tokens = not (bos and prompt.startswith(bos))
    try:
        _BOUND[tokenizer] = (source, conv)
    except TypeError:
        pass
    return conv.copy()


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
conv_chat_template = Conversation(
    system="", roles=("user", "assistant"), messages=[], sep_style=SeparatorStyle.TOKENIZER, sep="",
    version="chat_template", add_special_tokens=False,
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
# The tokenizer's own chat template: not in conv_templates (it renders nothing without a tokenizer);
# get_conv_template(TOKENIZER_TEMPLATE, tokenizer) binds it.
TOKENIZER_TEMPLATE = "chat_template"

default_conversation = conv_vicuna_v1


def get_conv_template(name: str, tokenizer=None) -> Conversation:
    """A fresh copy of the named template; unknown names list the valid choices.

    'chat_template' renders with `tokenizer`'s own chat template; without a tokenizer it is a placeholder
    that can be named and copied but not rendered.
    """
    if name == TOKENIZER_TEMPLATE:
        return tokenizer_conversation(tokenizer) if tokenizer is not None else conv_chat_template.copy()
    try:
        return conv_templates[name].copy()
    except KeyError:
        raise ValueError(
            f"unknown conversation template {name!r}; choose one of: {', '.join(sorted(conv_templates))}, "
            f"or {TOKENIZER_TEMPLATE} (the tokenizer's own chat template)"
        ) from None
