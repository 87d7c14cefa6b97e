#!/usr/bin/env bash
# VizWiz test -> EvalAI submission (official scripts/v1_5/eval/vizwiz.sh). Needs, under $EVAL_DIR/vizwiz:
# test.json and test/.
source "$(dirname "$0")/common.sh"
D="$EVAL_DIR/vizwiz"
need "$D/test.json"
[[ -f "$D/llava_test.jsonl" ]] || benchmarks convert vizwiz --annotation-file "$D/test.json" --out "$D/llava_test.jsonl"
answer "$D/llava_test.jsonl" "$D/test" "$D/answers/$CKPT.jsonl" 128
benchmarks score vizwiz --annotation-file "$D/test.json" --result-file "$D/answers/$CKPT.jsonl" --upload-file "$D/answers_upload/$CKPT.json"
