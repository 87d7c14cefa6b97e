#!/usr/bin/env bash
# MMBench -> OpenCompass submission (official scripts/v1_5/eval/mmbench.sh). Needs $EVAL_DIR/mmbench/$SPLIT.tsv.
#   SPLIT  (default: mmbench_dev_20230712)
source "$(dirname "$0")/common.sh"
SPLIT="${SPLIT:-mmbench_dev_20230712}"
D="$EVAL_DIR/mmbench"
need "$D/$SPLIT.tsv"
[[ -f "$D/llava_$SPLIT.jsonl" ]] || benchmarks convert mmbench --annotation-file "$D/$SPLIT.tsv" --image-dir "$D/images/$SPLIT" --out "$D/llava_$SPLIT.jsonl"
answer "$D/llava_$SPLIT.jsonl" "$D/images/$SPLIT" "$D/answers/$SPLIT/$CKPT.jsonl" 1024
benchmarks score mmbench --annotation-file "$D/$SPLIT.tsv" --result-file "$D/answers/$SPLIT/$CKPT.jsonl" --upload-file "$D/answers_upload/$SPLIT/$CKPT.xlsx"
