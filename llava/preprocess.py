"""One preprocess for every template: conversation record -> (input_ids, labels).

The template renders the conversation and reports the character spans of what the
assistant must learn (each answer, the space between the assistant tag and it, and its end
separator); for 'chat_template' the tokenizer's own chat template renders it and
llava/chat_template.py finds the spans. A token is trained iff its character span overlaps one of those spans, so the
mask is right for any tokenizer (BPE or SentencePiece, BOS or not, pad == eos or not) without
per-template token arithmetic. tests/test_official_parity.py checks it against official
LLaVA's preprocess_* outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.chat_template import ChatTemplateError, TemplateRefused
from llava.conversation import get_conv_template
from llava.mm_utils import tokenizer_image_token, tokenizer_image_tokens
from llava.records import InvalidRecord, conversation_problems, raise_first_error


@dataclass
class Sample:
    input_ids: torch.Tensor
    labels: torch.Tensor
    truncated: bool
    length: int  # positions before any cut, each image counted as image_tokens


def place_image_markers(conversations, num_images: int, image_text: str = DEFAULT_IMAGE_TOKEN) -> list[dict]:
    """Official LLaVA's convention: a single image goes first in the first human turn, then a newline.

    The turn is stripped after that, as official does, so a turn that is only "<image>" stays
    "<image>". A record with images but no marker gets them at the front, so converter output
    without markers still shows the model its image. `image_text` is how the template writes an
    image (`Conversation.image_text`: start/end tokens, <Image> tags).
    """
    turns = [dict(turn) for turn in conversations]
    markers = sum(turn["value"].count(DEFAULT_IMAGE_TOKEN) for turn in turns)
    if num_images and (num_images == 1 or markers == 0):
        text = turns[0]["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
        turns[0]["value"] = ((DEFAULT_IMAGE_TOKEN + "\n") * num_images + text).strip()
    if image_text != DEFAULT_IMAGE_TOKEN:
        for turn in turns:
            turn["value"] = turn["value"].replace(DEFAULT_IMAGE_TOKEN, image_text)
    return turns


def conversation(conversations, template: str, num_images: int, mm_use_im_start_end: bool, tokenizer=None):
    """The record's turns (image markers placed) in the named template, ready to render.

    A leading {"from": "system"} turn replaces the template's system prompt. `tokenizer` is needed
    for 'chat_template' (its own chat template renders the prompt).
    """
    conv = get_conv_template(template, tokenizer)
    # A template's own example exchange (v0) is for inference only, as official trains.
    conv.messages, conv.offset = [], 0
    turns = list(conversations)
    if turns and turns[0].get("from") == "system":
        conv.system, turns = turns[0]["value"], turns[1:]
    turns = place_image_markers(turns, num_images, conv.image_text(mm_use_im_start_end))
    for i, turn in enumerate(turns):
        conv.append_message(conv.roles[i % 2], turn["value"])
    return conv


def render(conversations, template: str, num_images: int, mm_use_im_start_end: bool, tokenizer=None) -> tuple[str, list]:
    """The prompt the template renders (image markers placed) and the answer character spans."""
    return conversation(conversations, template, num_images, mm_use_im_start_end, tokenizer).get_prompt_and_targets()


def image_token_counts(image_tokens: int | Sequence[int], num_markers: int) -> list[int]:
    """Each image's positions: `image_tokens` for every marker, or the per-image list (one per marker)."""
    if isinstance(image_tokens, int):
        return [image_tokens] * num_markers
    counts = [int(n) for n in image_tokens]
    if len(counts) != num_markers:
        raise ValueError(f"{len(counts)} per-image token counts for {num_markers} <image> markers")
    return counts


def sequence_lengths(
    records: list[tuple[list, int]],
    tokenizer,
    template: str,
    *,
    mm_use_im_start_end: bool = False,
    max_length: int | None = None,
    image_tokens: int = 1,
    chunk: int = 4096,
) -> list[int]:
    """How many positions each (conversations, num_images[, per-image tokens]) record fills in the LLM, images expanded.

    The same count `preprocess` gives (`len(input_ids)` + `image_tokens - 1` per image, cut to
    `max_length`), without the per-token answer mask: prompts are tokenised in batches, which is
    several times faster, so exact lengths for a whole dataset cost little before training.
    """
    lengths = []
    for begin in range(0, len(records), chunk):
        part = records[begin : begin + chunk]
        convs = [conversation(r[0], template, r[1], mm_use_im_start_end, tokenizer) for r in part]
        prompts = [conv.get_prompt() for conv in convs]
        special = convs[0].add_special_tokens if convs else True
        for record, ids in zip(part, tokenizer_image_tokens(prompts, tokenizer, add_special_tokens=special)):
            # Each marker is one position that becomes its image's tokens (a record's third item, when
            # given, lists them per image: AnyRes images differ).
            counts = image_token_counts(record[2] if len(record) > 2 else image_tokens, int((ids == IMAGE_TOKEN_INDEX).sum()))
            lengths.append(len(ids) + sum(counts) - len(counts))
    return lengths if max_length is None else [min(n, max_length) for n in lengths]


def preprocess(
    conversations,
    tokenizer,
    template: str,
    *,
    record_id=None,
    num_images: int = 0,
    mm_use_im_start_end: bool = False,
    max_length: int | None = None,
    image_tokens: int | Sequence[int] = 1,
) -> Sample:
    """Tokenise one conversation and mask everything but the assistant's answers.

    `image_tokens` is how many positions one image fills once the model expands it
    (the tower's patch count), or a list with each image's count (AnyRes: they depend on the
    image's size), so `max_length` bounds the sequence the LLM really sees. A cut never falls
    inside an image: such a record is refused.
    """
    raise_first_error(record_id, conversation_problems(conversations, num_images))
    conv = conversation(conversations, template, num_images, mm_use_im_start_end, tokenizer)
    try:
        prompt, spans = conv.get_prompt_and_targets()
    except TemplateRefused as exc:  # e.g. Gemma's template on a system message: this record, not the template
        raise InvalidRecord(record_id, str(exc), "template refused") from None
    except ChatTemplateError as exc:
        raise ChatTemplateError(f"record {record_id!r}: {exc}") from None
    ids, offsets = tokenizer_image_token(prompt, tokenizer, return_offsets=True, add_special_tokens=conv.add_special_tokens)

    labels = [IGNORE_INDEX] * len(ids)
    span_iter = iter(spans)
    span = next(span_iter, None)
    for i, (start, end) in enumerate(offsets):
        while span is not None and start >= span[1]:
            span = next(span_iter, None)
        if span is not None and start >= 0 and start < span[1] and end > span[0]:
            labels[i] = ids[i]
    if all(label == IGNORE_INDEX for label in labels):
        raise InvalidRecord(record_id, "no answer token to learn from (are all assistant answers empty?)", "no answer")

    truncated = False
    image_positions = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX]
    extra = sum(image_token_counts(image_tokens, len(image_positions))) - len(image_positions)
    length = len(ids) + extra
    if max_length is not None:
        if length > max_length:
            keep = max_length - extra
            if keep <= (image_positions[-1] if image_positions else 0):
                raise InvalidRecord(
                    record_id,
                    f"{len(ids) + extra} tokens with its images expanded; --model_max_length {max_length} "
                    "would cut into the images. Raise --model_max_length or shorten the first turn.",
                    "too long",
                )
            ids, labels, truncated = ids[:keep], labels[:keep], True
            if all(label == IGNORE_INDEX for label in labels):
                raise InvalidRecord(
                    record_id,
                    f"{len(offsets) + extra} tokens; cut to --model_max_length {max_length} no answer token is left. "
                    "Raise --model_max_length or split the conversation.",
                    "too long",
                )
    return Sample(torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long), truncated, length)
