#!/usr/bin/env bash
# Q-Bench (LLVisionQA) dev|test -> answers file for its authors (official scripts/v1_5/eval/qbench.sh and
# qbench_zh.sh). Needs, under $EVAL_DIR/qbench: llvisionqa_<split>.json (or QBENCH_FILE) and images_llvisionqa/.
#   usage: qbench.sh dev|test      LANG_CODE=zh with QBENCH_FILE=质衡-问答-验证集.json for Chinese Q-Bench
source "$(dirname "$0")/common.sh"
SPLIT="${1:?usage: qbench.sh dev|test}"
LANG_CODE="${LANG_CODE:-en}"
D="$EVAL_DIR/qbench"
QBENCH_FILE="${QBENCH_FILE:-llvisionqa_$SPLIT.json}"
TAG="$([[ "$LANG_CODE" == zh ]] && echo "zh_$SPLIT" || echo "$SPLIT")"
need "$D/$QBENCH_FILE"
[[ -f "$D/llava_llvisionqa_$TAG.jsonl" ]] || benchmarks convert qbench --annotation-file "$D/$QBENCH_FILE" --lang "$LANG_CODE" --out "$D/llava_llvisionqa_$TAG.jsonl"
answer "$D/llava_llvisionqa_$TAG.jsonl" "$D/images_llvisionqa" "$D/answers/$CKPT-$TAG.jsonl" 1024
benchmarks score qbench --annotation-file "$D/$QBENCH_FILE" --result-file "$D/answers/$CKPT-$TAG.jsonl" --upload-file "$D/llvisionqa_${TAG}_answers.jsonl"
