#!/usr/bin/env bash
# VQAv2 test-dev -> EvalAI submission (official scripts/v1_5/eval/vqav2.sh). Needs, under $EVAL_DIR/vqav2:
# v2_OpenEnded_mscoco_test-dev2015_questions.json, v2_OpenEnded_mscoco_test2015_questions.json, test2015/.
source "$(dirname "$0")/common.sh"
D="$EVAL_DIR/vqav2"
SPLIT="llava_vqav2_mscoco_test-dev2015"
need "$D/v2_OpenEnded_mscoco_test-dev2015_questions.json" "$D/v2_OpenEnded_mscoco_test2015_questions.json"
[[ -f "$D/$SPLIT.jsonl" ]] || benchmarks convert vqav2 --questions "$D/v2_OpenEnded_mscoco_test-dev2015_questions.json" --out "$D/$SPLIT.jsonl"
answer "$D/$SPLIT.jsonl" "$D/test2015" "$D/answers/$SPLIT/$CKPT/merge.jsonl" 128
benchmarks score vqav2 --questions "$D/v2_OpenEnded_mscoco_test-dev2015_questions.json" \
    --test-questions "$D/v2_OpenEnded_mscoco_test2015_questions.json" \
    --result-file "$D/answers/$SPLIT/$CKPT/merge.jsonl" --upload-file "$D/answers_upload/$SPLIT/$CKPT.json"
