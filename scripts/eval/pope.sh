#!/usr/bin/env bash
# POPE (adversarial, popular, random), scored locally (official scripts/v1_5/eval/pope.sh). Needs, under
# $EVAL_DIR/pope: coco/coco_pope_<split>.json (from the POPE repository) and val2014/.
source "$(dirname "$0")/common.sh"
D="$EVAL_DIR/pope"
need "$D/coco"
[[ -f "$D/llava_pope_test.jsonl" ]] || benchmarks convert pope --annotation-dir "$D/coco" --out "$D/llava_pope_test.jsonl"
answer "$D/llava_pope_test.jsonl" "$D/val2014" "$D/answers/$CKPT.jsonl" 128
benchmarks score pope --annotation-dir "$D/coco" --result-file "$D/answers/$CKPT.jsonl" --output-file "$D/answers/${CKPT}_scores.json"
