#!/usr/bin/env bash
# MM-Vet -> results JSON for its GPT-4 grader (official scripts/v1_5/eval/mmvet.sh). Needs, under
# $EVAL_DIR/mm-vet: mm-vet.json and images/.
source "$(dirname "$0")/common.sh"
D="$EVAL_DIR/mm-vet"
need "$D/mm-vet.json"
[[ -f "$D/llava-mm-vet.jsonl" ]] || benchmarks convert mmvet --annotation-file "$D/mm-vet.json" --out "$D/llava-mm-vet.jsonl"
answer "$D/llava-mm-vet.jsonl" "$D/images" "$D/answers/$CKPT.jsonl" 1024
benchmarks score mmvet --annotation-file "$D/mm-vet.json" --result-file "$D/answers/$CKPT.jsonl" --upload-file "$D/results/$CKPT.json"
