#!/usr/bin/env bash
# MME perception + cognition, scored locally (official scripts/v1_5/eval/mme.sh). Needs, under $EVAL_DIR/MME:
# MME_Benchmark_release_version/ (the 14 task folders).
source "$(dirname "$0")/common.sh"
D="$EVAL_DIR/MME"
need "$D/MME_Benchmark_release_version"
[[ -f "$D/llava_mme.jsonl" ]] || benchmarks convert mme --data-dir "$D/MME_Benchmark_release_version" --out "$D/llava_mme.jsonl"
answer "$D/llava_mme.jsonl" "$D/MME_Benchmark_release_version" "$D/answers/$CKPT.jsonl" 128
benchmarks score mme --data-dir "$D/MME_Benchmark_release_version" --result-file "$D/answers/$CKPT.jsonl" --output-file "$D/answers/${CKPT}_scores.json"
