"""Jinja chat templates: how every conversation becomes a prompt, and where the assistant speaks in it.

All prompts are rendered by Jinja, as transformers' `apply_chat_template` renders them: the templates we
ship (conversation.py writes each one's Jinja once, from its fields) and, with `--version chat_template`,
the tokenizer's own. Training needs more than the text: the character spans of each assistant answer
and its end-of-turn token. A template that marks them with `{% generation %}` blocks says where they
are; for any other template they are found by rendering prefixes of the conversation: the prompt
`render(messages[:k], add_generation_prompt=True)` must be where the full rendering starts the answer of
turn k, the answer must follow as written, then (after optional whitespace) the end-of-turn token. A
template for which that does not hold (one that rewrites earlier turns, or starts an assistant turn
otherwise than its generation prompt does) is refused with what went wrong, never trained on with
labels that are a guess.
"""

from __future__ import annotations

import datetime
import functools
import re
import string

import jinja2
import jinja2.ext
from transformers.utils.chat_template_utils import render_jinja_template

# Templates that print today's date (Llama-3.2: "Today Date: ...") would render another prompt every day,
# and another one at inference than in training. They see this date instead, in training, inference and
# the export alike; it is the default Llama-3.1's template prints when it is given no date.
TEMPLATE_DATE = datetime.date(2024, 7, 26)

_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")
_STRFTIME = re.compile(r"""strftime_now\(\s*(["'])(.*?)\1\s*\)""")


class ChatTemplateError(ValueError):
    """A chat template whose prompts or answer spans cannot be trusted; the message says what to do."""


class TemplateRefused(ChatTemplateError):
    """The template itself raised on a conversation (e.g. Gemma's on a system message): that input's problem."""


def has_generation_blocks(source: str) -> bool:
    return bool(_GENERATION.search(source))


def pin_date(source: str) -> str:
    """`source` with each `strftime_now("FORMAT")` call replaced by TEMPLATE_DATE written in that format."""
    pinned = _STRFTIME.sub(lambda m: repr(TEMPLATE_DATE.strftime(m.group(2))), source)
    if "strftime_now(" in pinned:
        raise ChatTemplateError(
            "the chat template calls strftime_now with a format that is not a literal string, so its prompts "
            "would change with the day they are rendered; give the tokenizer a template that writes a fixed "
            "format, or pass a --version we ship"
        )
    return pinned


def render(source: str, messages: list[dict], add_generation_prompt: bool = False,
           variables: dict | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The text `source` renders for `messages`, and the character spans of its `{% generation %}` blocks.

    Rendered by transformers' own renderer, so a prompt is exactly what `apply_chat_template` (and a
    processor loading an exported template) gives for the same messages and variables.
    """
    tracked = has_generation_blocks(source)
    try:
        texts, indices = render_jinja_template(
            conversations=[messages], chat_template=source, add_generation_prompt=add_generation_prompt,
            return_assistant_tokens_mask=tracked, **(variables or {}),
        )
    except ChatTemplateError:
        raise
    except Exception as exc:  # jinja2's TemplateError (raise_exception), or a template that breaks on the input
        raise TemplateRefused(f"the chat template refused the conversation: {exc}") from exc
    spans = [(int(a), int(b)) for a, b in indices[0] if b > a] if tracked else []
    return texts[0], spans


# Our own templates are trusted code: they render in a plain Jinja environment with the settings
# transformers uses (trim_blocks, lstrip_blocks, loop controls), about twice as fast as its sandbox, and mark
# their {% generation %} blocks with two private-use characters that are cut out afterwards.
# tests/test_export.py checks that transformers renders every one of them to the same text.
_OPEN, _CLOSE = "\ue000", "\ue001"


class _MarkGeneration(jinja2.ext.Extension):
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

    def _mark(self, caller):
        return _OPEN + caller() + _CLOSE


_TRUSTED = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=[_MarkGeneration, jinja2.ext.loopcontrols])


@functools.lru_cache(maxsize=256)
def _compile_trusted(source: str):
    return _TRUSTED.from_string(source)


def render_trusted(source: str, messages: list[dict], add_generation_prompt: bool = False) -> tuple[str, list]:
    """`render` for a template this package wrote (conversation.py), faster; same text, same spans."""
    if any(_OPEN in m["content"] or _CLOSE in m["content"] for m in messages if isinstance(m.get("content"), str)):
        return render(source, messages, add_generation_prompt)  # the markers would be ambiguous
    marked = _compile_trusted(source).render(messages=messages, add_generation_prompt=add_generation_prompt)
    text, spans, start = [], [], 0
    for i, piece in enumerate(re.split(f"[{_OPEN}{_CLOSE}]", marked)):
        if i % 2:  # inside a generation block
            if piece:
                spans.append((start, start + len(piece)))
        text.append(piece)
        start += len(piece)
    return "".join(text), spans


def end_of_turn(source: str, control_tokens, variables: dict | None = None) -> str:
    """The token that closes an assistant turn in `source` (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, ...).

    Found on a probe conversation: the first of `control_tokens` (the tokenizer's added tokens) after the
    answer, with nothing but whitespace before it. Generation stops on it and training labels it.
    """
    question, answer = "What colour is the sky?", "Blue."
    prompt, _ = render(source, [{"role": "user", "content": question}], True, variables)
    full, _ = render(source, [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                     False, variables)
    _check_prompt_prefix(full, prompt, 1)
    at = full.find(answer, len(prompt))
    if at < 0:
        raise ChatTemplateError(
            f"the chat template does not write the assistant's answer as given: {answer!r} is not in {full!r}"
        )
    token = _control_token_at(full, at + len(answer), control_tokens)
    if token is None:
        tail = full[at + len(answer):]
        raise ChatTemplateError(
            f"the chat template ends an assistant turn with {tail!r}, which does not start with a special token "
            "of the tokenizer: generation could not stop there, and no end-of-turn token would be learned. "
            "Give the tokenizer a template whose assistant turns end with a token such as its eos_token, "
            "or pass a --version we ship"
        )
    return token


def assistant_spans(source: str, messages: list[dict], eot: str | None,
                    variables: dict | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering of `messages` (ending with an answer) and the [start, end) span of each answer.

    A span runs from where the template's generation prompt ends to the end of the answer's end-of-turn
    token `eot`: text the model has to write after an inference prompt, and nothing after it (the newline a
    template puts after `<|im_end|>` is the next turn's). With `{% generation %}` blocks the blocks are the
    spans; one that stops short of `eot` is extended through it, so the model learns to stop.
    """
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if has_generation_blocks(source):
        full, spans = render(source, messages, False, variables)
        if len(spans) != len(answers):
            raise ChatTemplateError(
                f"the chat template's {{% generation %}} blocks mark {len(spans)} spans in a conversation with "
                f"{len(answers)} assistant turns; they must wrap each assistant answer once. Fix the template, "
                "remove its generation blocks (the answers are then found by rendering prefixes), or pass a "
                "--version we ship"
            )
        if eot:
            spans = [(a, _through_end_of_turn(full, b, eot)) for a, b in spans]
        return full, spans

    full, _ = render(source, messages, False, variables)
    spans = []
    for k in answers:
        prompt, _ = render(source, messages[:k], True, variables)
        _check_prompt_prefix(full, prompt, k)
        content = messages[k]["content"]
        start = len(prompt)
        stop = full.find(eot, start) if eot else -1
        at, written = _find_answer(full, start, stop, content)
        if at < 0:
            raise ChatTemplateError(
                f"the chat template does not write assistant turn {k}'s text where its generation prompt ends "
                f"(it changes or moves it): cannot tell which tokens are the answer. Pass a --version we ship"
            )
        end = at + len(written)
        gap = len(full) - end - len(full[end:].lstrip(string.whitespace))
        if not full.startswith(eot, end + gap):
            raise ChatTemplateError(
                f"assistant turn {k}'s answer is followed by {full[end:end + 40]!r}, not by the template's "
                f"end-of-turn token {eot!r}: cannot tell where the answer ends. Pass a --version we ship"
            )
        if spans and start < spans[-1][1]:  # pragma: no cover - implied by the prefix checks
            raise ChatTemplateError(f"assistant turn {k} starts inside the previous answer")
        spans.append((start, end + gap + len(eot)))
    return full, spans


def _check_prompt_prefix(full: str, prompt: str, k: int) -> None:
    if full.startswith(prompt):
        return
    common = len(_common_prefix(full, prompt))
    raise ChatTemplateError(
        f"the chat template renders the conversation before assistant turn {k} differently once more turns "
        f"follow: the generation prompt ...{prompt[max(0, common - 30):common + 30]!r} is not how the full "
        f"conversation goes on (...{full[max(0, common - 30):common + 30]!r}). Templates that rewrite earlier "
        "turns (e.g. Qwen3's, which drops the thinking block of all but the last answer) or that open an "
        "assistant turn unlike their generation prompt give prompts at inference that training never showed. "
        "Pass a --version we ship (e.g. qwen_1_5 for Qwen3), or give the tokenizer a template without that rewrite"
    )


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _find_answer(full: str, start: int, stop: int, content: str) -> tuple[int, str]:
    """Where the answer is written after `start` (and before the first end-of-turn `stop`): as given, or
    stripped (templates that `trim` messages)."""
    for written in dict.fromkeys((content, content.strip())):
        if not written:
            continue
        at = full.find(written, start)
        if at >= 0 and (stop < 0 or at + len(written) <= stop):
            return at, written
    return -1, ""


def _control_token_at(text: str, at: int, control_tokens) -> str | None:
    """The longest control token that starts at `at` after optional whitespace, or None."""
    rest = text[at:].lstrip(string.whitespace)
    found = [t for t in control_tokens if t and rest.startswith(t)]
    return max(found, key=len) if found else None


def _through_end_of_turn(full: str, end: int, eot: str) -> int:
    if full[:end].endswith(eot):
        return end
    gap = len(full) - end - len(full[end:].lstrip(string.whitespace))
    return end + gap + len(eot) if full.startswith(eot, end + gap) else end
