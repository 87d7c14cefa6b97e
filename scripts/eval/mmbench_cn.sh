#!/usr/bin/env bash
# MMBench-CN -> OpenCompass submission (official scripts/v1_5/eval/mmbench_cn.sh). Needs $EVAL_DIR/mmbench_cn/$SPLIT.tsv.
#   SPLIT  (default: mmbench_dev_cn_20231003)
source "$(dirname "$0")/common.sh"
SPLIT="${SPLIT:-mmbench_dev_cn_20231003}"
D="$EVAL_DIR/mmbench_cn"
need "$D/$SPLIT.tsv"
[[ -f "$D/llava_$SPLIT.jsonl" ]] || benchmarks convert mmbench_cn --annotation-file "$D/$SPLIT.tsv" --image-dir "$D/images/$SPLIT" --out "$D/llava_$SPLIT.jsonl"
answer "$D/llava_$SPLIT.jsonl" "$D/images/$SPLIT" "$D/answers/$SPLIT/$CKPT.jsonl" 1024
benchmarks score mmbench_cn --annotation-file "$D/$SPLIT.tsv" --result-file "$D/answers/$SPLIT/$CKPT.jsonl" --upload-file "$D/answers_upload/$SPLIT/$CKPT.xlsx"
