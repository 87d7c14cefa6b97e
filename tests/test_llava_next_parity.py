"""Our Llama-3, Qwen and Gemma templates and label masks against LLaVA-NeXT's own outputs (golden data).

tests/golden/llava_next/preprocess.json was written by tests/golden/llava_next/generate.py, which ran
LLaVA-NeXT's `preprocess_llama3`, `preprocess_qwen` and `preprocess_gemma` (transformers 4.39.3) on
five conversations with tokenizers of the tiny checkpoints' kind. The prompts and input_ids must be
equal. LLaVA-NeXT also labels template tokens the prompt already gives at inference (role headers,
BOS, the user turns' markers and newlines, the newline after Gemma's <end_of_turn>); we train only the
answers and their end-of-turn token. So: every token we label, it labels with the same id; the
tokens only it labels are the ones the JSON records, and each is text of the template, never of a message.
"""

from __future__ import annotations

import json
import os

import pytest

from llava.constants import IGNORE_INDEX
from llava.conversation import get_conv_template
from llava.model.registry import get_backbone
from llava.preprocess import preprocess, render

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "llava_next", "preprocess.json")
with open(GOLDEN, encoding="utf-8") as f:
    DATA = json.load(f)
SAMPLES = {s["id"]: s for s in DATA["meta"]["samples"]}
ROWS = [(template, r["tokenizer"], row) for template, r in DATA["results"].items() for row in r["samples"]]


@pytest.fixture(scope="module")
def tokenizers():
    return {name: get_backbone(name).tiny_tokenizer() for name in {r["tokenizer"] for r in DATA["results"].values()}}


@pytest.mark.parametrize("template, tok_name, row", ROWS, ids=[f"{t}-{r['id']}" for t, _, r in ROWS])
def test_prompts_ids_equal_and_labels_differ_only_by_template_tokens(template, tok_name, row, tokenizers):
    tok = tokenizers[tok_name]
    sample = SAMPLES[row["id"]]
    ours = preprocess(sample["conversations"], tok, template, num_images=int(sample["image"]))
    ids, labels, reference = ours.input_ids.tolist(), ours.labels.tolist(), row["labels"]
    conv = get_conv_template(template)
    prompt = render(sample["conversations"], template, int(sample["image"]), False)[0]
    if conv.system_role.startswith("<|start_header_id|>"):
        # LLaVA-NeXT's LLAMA_3 get_prompt goes through the tokenizer's chat template: BOS in the text, and
        # always an open assistant turn at the end (its training tokenises per message, without it).
        prompt = tok.bos_token + prompt + conv.roles[1]
    assert prompt == row["prompt"]
    assert ids == row["input_ids"]

    # Where the reference is right we are equal: each answer token and its end-of-turn, same ids.
    assert all(b == a for a, b in zip(labels, reference) if a != IGNORE_INDEX)
    extra = [i for i, (a, b) in enumerate(zip(labels, reference)) if a == IGNORE_INDEX and b != IGNORE_INDEX]
    assert [[i, tok.decode([ids[i]])] for i in extra] == row["differs"]["reference_also_labels"]
    # What only the reference trains is template text (headers, separators, BOS), which the prompt gives.
    template_text = "".join([conv.system_role, *conv.roles, conv.sep, conv.sep2 or "", tok.bos_token or ""])
    assert all(tok.decode([ids[i]]) in template_text for i in extra)
    answers = [t["value"] for t in sample["conversations"][1::2]]
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == conv.sep.join(answers) + conv.sep
