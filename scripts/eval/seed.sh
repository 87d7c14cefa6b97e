#!/usr/bin/env bash
# SEED-Bench, scored locally + leaderboard file (official scripts/v1_5/eval/seed.sh). Needs, under
# $EVAL_DIR/seed_bench: SEED-Bench.json, SEED-Bench-image/ and the middle video frames in
# SEED-Bench-video-image/<question_type_id>_<question_id>.png (IMAGE_ONLY=1 skips the video questions).
source "$(dirname "$0")/common.sh"
D="$EVAL_DIR/seed_bench"
need "$D/SEED-Bench.json"
[[ -f "$D/llava-seed-bench.jsonl" ]] || benchmarks convert seed_bench --annotation-file "$D/SEED-Bench.json" \
    ${IMAGE_ONLY:+--image-only} --out "$D/llava-seed-bench.jsonl"
answer "$D/llava-seed-bench.jsonl" "$D" "$D/answers/$CKPT/merge.jsonl" 128
benchmarks score seed_bench --annotation-file "$D/SEED-Bench.json" --result-file "$D/answers/$CKPT/merge.jsonl" \
    --upload-file "$D/answers_upload/$CKPT.jsonl" --output-file "$D/answers/$CKPT/scores.json"
