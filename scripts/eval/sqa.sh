#!/usr/bin/env bash
# ScienceQA test (IMG accuracy reported), scored locally (official scripts/v1_5/eval/sqa.sh). Needs, under
# $EVAL_DIR/scienceqa: problems.json, pid_splits.json and images/test/.
source "$(dirname "$0")/common.sh"
D="$EVAL_DIR/scienceqa"
need "$D/problems.json" "$D/pid_splits.json"
[[ -f "$D/llava_test_CQM-A.jsonl" ]] || benchmarks convert scienceqa --base-dir "$D" --split test --out "$D/llava_test_CQM-A.jsonl"
answer "$D/llava_test_CQM-A.jsonl" "$D/images/test" "$D/answers/$CKPT.jsonl" 1024
benchmarks score scienceqa --base-dir "$D" --split test --result-file "$D/answers/$CKPT.jsonl" --output-file "$D/answers/${CKPT}_result.json"
