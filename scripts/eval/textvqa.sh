#!/usr/bin/env bash
# TextVQA val, scored locally (official scripts/v1_5/eval/textvqa.sh). Needs, under $EVAL_DIR/textvqa:
# TextVQA_0.5.1_val.json and train_images/.
source "$(dirname "$0")/common.sh"
D="$EVAL_DIR/textvqa"
need "$D/TextVQA_0.5.1_val.json"
[[ -f "$D/llava_textvqa_val_v051_ocr.jsonl" ]] || benchmarks convert textvqa --annotation-file "$D/TextVQA_0.5.1_val.json" --out "$D/llava_textvqa_val_v051_ocr.jsonl"
answer "$D/llava_textvqa_val_v051_ocr.jsonl" "$D/train_images" "$D/answers/$CKPT.jsonl" 128
benchmarks score textvqa --annotation-file "$D/TextVQA_0.5.1_val.json" --result-file "$D/answers/$CKPT.jsonl" --output-file "$D/answers/${CKPT}_scores.json"
