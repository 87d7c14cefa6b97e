#!/usr/bin/env bash
# MMBench -> OpenCompass submission (official scripts/v1_5/eval/mmbench.sh). Needs $EVAL_DIR/mmbench/$SPLIT.tsv.
#   SPLIT      (default: mmbench_dev_20230712; for MMBench-CN, mmbench_dev_cn_20231003)
#   BENCHMARK  mmbench | mmbench_cn (mmbench_cn.sh sets it: Chinese instruction, files under mmbench_cn/)
source "$(dirname "$0")/common.sh"
BENCHMARK="${BENCHMARK:-mmbench}"
if [[ "$BENCHMARK" == mmbench_cn ]]; then SPLIT="${SPLIT:-mmbench_dev_cn_20231003}"; else SPLIT="${SPLIT:-mmbench_dev_20230712}"; fi
D="$EVAL_DIR/$BENCHMARK"
need "$D/$SPLIT.tsv"
[[ -f "$D/llava_$SPLIT.jsonl" ]] || benchmarks convert "$BENCHMARK" --annotation-file "$D/$SPLIT.tsv" --image-dir "$D/images/$SPLIT" --out "$D/llava_$SPLIT.jsonl"
answer "$D/llava_$SPLIT.jsonl" "$D/images/$SPLIT" "$D/answers/$SPLIT/$CKPT.jsonl" 1024
benchmarks score "$BENCHMARK" --annotation-file "$D/$SPLIT.tsv" --result-file "$D/answers/$SPLIT/$CKPT.jsonl" --upload-file "$D/answers_upload/$SPLIT/$CKPT.xlsx"
