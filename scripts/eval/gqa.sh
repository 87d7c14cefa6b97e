#!/usr/bin/env bash
# GQA testdev-balanced, scored locally (official scripts/v1_5/eval/gqa.sh). Needs, under $EVAL_DIR/gqa/data:
# testdev_balanced_questions.json and images/.
source "$(dirname "$0")/common.sh"
D="$EVAL_DIR/gqa"
SPLIT="llava_gqa_testdev_balanced"
need "$D/data/testdev_balanced_questions.json"
[[ -f "$D/$SPLIT.jsonl" ]] || benchmarks convert gqa --questions "$D/data/testdev_balanced_questions.json" --out "$D/$SPLIT.jsonl"
answer "$D/$SPLIT.jsonl" "$D/data/images" "$D/answers/$SPLIT/$CKPT/merge.jsonl" 128
benchmarks score gqa --questions "$D/data/testdev_balanced_questions.json" --result-file "$D/answers/$SPLIT/$CKPT/merge.jsonl" \
    --predictions-file "$D/data/testdev_balanced_predictions.json" --output-file "$D/answers/$SPLIT/$CKPT/scores.json"
