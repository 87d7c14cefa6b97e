"""Label masks from the one template-driven preprocess, for every backbone tokenizer (≈10 s)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.model.builder import ensure_pad_token
from llava.model.registry import get_backbone
from llava.preprocess import preprocess
from llava.records import InvalidRecord
from llava.train.collator import DataCollatorForSupervisedDataset

BACKBONES = ("phi", "llama", "opt", "mpt")
Q1 = "What shape is in the image?\nAnswer the question using a single word or phrase."

SINGLE = [{"from": "human", "value": "<image>\n" + Q1}, {"from": "gpt", "value": "square"}]
MULTI = SINGLE + [
    {"from": "human", "value": "What color is it?"},
    {"from": "gpt", "value": "a dark yellow"},
]
TEXT_ONLY = [{"from": "human", "value": "How many sides does a triangle have?"}, {"from": "gpt", "value": "three"}]
IMAGE_AFTER = [{"from": "human", "value": Q1 + "\n<image>"}, {"from": "gpt", "value": "square"}]


@pytest.fixture(scope="module")
def tokenizers(tiny_llm):
    out = {}
    for name in BACKBONES:
        tok = AutoTokenizer.from_pretrained(tiny_llm(name), padding_side="right")
        ensure_pad_token(tok)
        out[name] = tok
    return out


def trained_runs(sample, tokenizer) -> list[str]:
    """Decoded text of each contiguous run of trained positions."""
    runs, current = [], []
    for token, label in zip(sample.input_ids.tolist(), sample.labels.tolist()):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def expected_runs(template: str, conversation) -> list[str]:
    conv = get_conv_template(template)
    answers = [turn["value"] for turn in conversation[1::2]]
    if template == "plain":
        return [answers[0] + conv.sep]
    # Each answer plus the template's end separator (LLaMA-2 puts a space before </s>).
    end = " " + conv.stop_str if conv.sep_style.name == "LLAMA_2" else conv.stop_str
    return [a + end for a in answers]


def cases():
    for backbone in BACKBONES:
        for template in (get_backbone(backbone).conv_template, "v1", "plain"):
            for name, conversation, images in (("single", SINGLE, 1), ("multi", MULTI, 1), ("text", TEXT_ONLY, 0)):
                if template == "plain" and name != "single":
                    continue
                yield pytest.param(backbone, template, conversation, images, id=f"{backbone}-{template}-{name}")


@pytest.mark.parametrize("backbone,template,conversation,images", list(cases()))
def test_trained_tokens_are_exactly_the_answers(tokenizers, backbone, template, conversation, images):
    tok = tokenizers[backbone]
    sample = preprocess(conversation, tok, template, record_id="r", num_images=images)
    got = [run.strip() for run in trained_runs(sample, tok)]
    assert got == [text.strip() for text in expected_runs(template, conversation)]
    assert int((sample.input_ids == IMAGE_TOKEN_INDEX).sum()) == images
    # Everything before the first answer is context, never trained.
    first_trained = int((sample.labels != IGNORE_INDEX).nonzero()[0])
    assert first_trained > 0 and (sample.labels[:first_trained] == IGNORE_INDEX).all()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_image_marker_after_question_is_moved_to_front(tokenizers, backbone):
    tok = tokenizers[backbone]
    template = get_backbone(backbone).conv_template
    before = preprocess(SINGLE, tok, template, num_images=1)
    after = preprocess(IMAGE_AFTER, tok, template, num_images=1)
    assert torch.equal(before.input_ids, after.input_ids)
    assert torch.equal(before.labels, after.labels)


def test_end_separator_equal_to_pad_is_still_trained(tokenizers):
    """Phi-2: pad == eos == <|endoftext|>, which is also the answer's end separator."""
    tok = tokenizers["phi"]
    assert tok.pad_token_id == tok.eos_token_id
    samples = [preprocess(c, tok, "phi", num_images=n) for c, n in ((MULTI, 1), (TEXT_ONLY, 0))]
    batch = DataCollatorForSupervisedDataset(tok)([{"input_ids": s.input_ids, "labels": s.labels} for s in samples])
    eos = tok.eos_token_id
    trained_eos = (batch["labels"] == eos).sum(dim=1)
    assert trained_eos.tolist() == [2, 1]  # one per answer, padding excluded
    short = len(samples[1].input_ids)
    assert batch["attention_mask"][1, :short].all() and not batch["attention_mask"][1, short:].any()
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][1, short:] == tok.pad_token_id).all()


@pytest.mark.parametrize("backbone", ("phi", "llama"))
def test_im_start_end_wraps_the_image(tokenizers, backbone):
    tok = tokenizers[backbone]
    tok = AutoTokenizer.from_pretrained(tok.name_or_path)
    tok.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)
    sample = preprocess(SINGLE, tok, get_backbone(backbone).conv_template, num_images=1, mm_use_im_start_end=True)
    ids = sample.input_ids.tolist()
    at = ids.index(IMAGE_TOKEN_INDEX)
    assert ids[at - 1] == tok.convert_tokens_to_ids("<im_start>")
    assert ids[at + 1] == tok.convert_tokens_to_ids("<im_end>")


def test_truncation_counts_image_patches(tokenizers):
    tok = tokenizers["llama"]
    full = preprocess(MULTI, tok, "llava_llama_2", num_images=1, image_tokens=16)
    n = len(full.input_ids)
    # Room for the first answer but not the second: truncated, still trainable.
    first_answer_end = int((full.labels != IGNORE_INDEX).nonzero()[0]) + 4
    cut = preprocess(MULTI, tok, "llava_llama_2", num_images=1, image_tokens=16, max_length=first_answer_end + 15 + 2)
    assert cut.truncated and len(cut.input_ids) == first_answer_end + 2
    assert not preprocess(MULTI, tok, "llava_llama_2", num_images=1, image_tokens=16, max_length=n + 15).truncated
    # Cut before any answer: a clear error naming the record.
    image_at = full.input_ids.tolist().index(IMAGE_TOKEN_INDEX)
    with pytest.raises(InvalidRecord, match="record 'long-1'.*no answer token is left"):
        preprocess(MULTI, tok, "llava_llama_2", record_id="long-1", num_images=1, image_tokens=16, max_length=image_at + 20)
    # So short that the image itself would be cut.
    with pytest.raises(InvalidRecord, match="cut into the images"):
        preprocess(MULTI, tok, "llava_llama_2", record_id="long-2", num_images=1, image_tokens=600, max_length=300)


@pytest.mark.parametrize(
    "conversation,images,message",
    [
        ([{"from": "human", "value": "<image>\nhi"}], 1, "no assistant"),
        ([{"from": "gpt", "value": "hi"}, {"from": "human", "value": "x"}], 0, "must alternate"),
        ([{"from": "human", "value": "<image>\n<image>\nhi"}, {"from": "gpt", "value": "a"}], 1, "2 <image> markers but 1"),
        ([{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "a"}], 0, "1 <image> markers but 0"),
        ([{"from": "human", "value": "hi"}, {"from": "gpt", "value": ""}], 0, "no answer token"),
        ("not a list", 0, "non-empty list"),
    ],
)
def test_bad_conversations_raise_naming_the_record(tokenizers, conversation, images, message):
    with pytest.raises(InvalidRecord, match=f"record 'bad-7'.*{message}"):
        preprocess(conversation, tokenizers["phi"], "phi", record_id="bad-7", num_images=images)
