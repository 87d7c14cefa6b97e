"""Dev tool, not imported by the package or the tests: what an export loses in transformers.

transformers' LlavaForConditionalGeneration has no lm_head bias, so a Phi checkpoint exported by
`llava.export.hf` is exact in vLLM (whose Phi applies the exported `lm_head.bias`) but, in
transformers, shifted by the bias. This prints how much, on real questions:

    python -m benchmarks.export_head_bias --model-path CKPT [--model-base BASE] \
        --question-file playground/data/demo/eval_questions.jsonl --image-folder playground/data/demo/images

For each question: the largest logit difference at the answer's first position (ours vs transformers'),
whether the first answer token agrees, and whether the whole greedy answer agrees.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-base", default=None)
    parser.add_argument("--question-file", required=True)
    parser.add_argument("--image-folder", required=True)
    parser.add_argument("--limit", type=int, default=150)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args(argv)

    from transformers import LlavaForConditionalGeneration

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.inference import GenerationSettings, InferenceEngine
    from llava.export.hf import export

    engine = InferenceEngine.from_pretrained(args.model_path, args.model_base, device="cpu")
    bias = getattr(engine.model.get_output_embeddings(), "bias", None)
    out = tempfile.mkdtemp(prefix="export-")
    export(args.model_path, out, args.model_base)
    hf_model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    image_token, patches = hf_model.config.image_token_id, engine.model.get_vision_tower().num_patches
    settings = GenerationSettings(temperature=0.0, max_new_tokens=args.max_new_tokens)

    with open(args.question_file) as f:
        questions = [json.loads(line) for line in f if line.strip()][: args.limit]
    largest, first_same, answers_same = 0.0, 0, 0
    for q in questions:
        conv = engine.new_conversation()
        engine.add_user_turn(conv, q["text"], has_image=True)
        item = engine.prepare(conv, os.path.join(args.image_folder, q["image"]))
        ids = torch.cat([torch.full((patches,), image_token) if t == IMAGE_TOKEN_INDEX else t.view(1)
                         for t in item.input_ids])[None]
        with torch.no_grad():
            ours = engine.model(input_ids=item.input_ids[None], images=item.image[None]).logits[0, -1]
            theirs = hf_model(input_ids=ids, pixel_values=item.image[None]).logits[0, -1, : ours.shape[-1]]
            generated = hf_model.generate(input_ids=ids, pixel_values=item.image[None], do_sample=False,
                                          max_new_tokens=args.max_new_tokens,
                                          pad_token_id=engine.tokenizer.pad_token_id)
        largest = max(largest, float((ours - theirs).abs().max()))
        first_same += int(ours.argmax() == theirs.argmax())
        answer = engine.generate([item], settings)[0]
        hf_text = engine.tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=False)
        answers_same += int(engine._clean(hf_text, engine.new_conversation().stop_str) == answer)
    n = len(questions)
    if bias is None:
        print(f"checkpoint {args.model_path}: no lm_head bias")
    else:
        # A constant shift changes no probability: what can reorder tokens is the bias's spread.
        b = bias.detach()
        print(f"checkpoint {args.model_path}: lm_head.bias max |b| = {float(b.abs().max()):.4g}, "
              f"mean |b| = {float(b.abs().mean()):.4g}, spread max b - min b = {float(b.max() - b.min()):.4g}")
    print(f"{n} questions: max |logit difference| at the first answer position {largest:.4g}; "
          f"first answer token agrees on {first_same}/{n}; whole greedy answer ({args.max_new_tokens} tokens) "
          f"agrees on {answers_same}/{n}")


if __name__ == "__main__":
    main()
