#!/usr/bin/env bash
# LLaVA-Bench (In-the-Wild) -> judge requests, and their summary once judged (official
# scripts/v1_5/eval/llavabench.sh). Needs, under $EVAL_DIR/llava-bench-in-the-wild: questions.jsonl,
# context.jsonl, answers_gpt4.jsonl, images/; and RULE, official LLaVA's llava/eval/table/rule.json.
#   REVIEWS  the judge's replies (JSONL) to summarise (default: reviews/$CKPT.jsonl when it exists)
source "$(dirname "$0")/common.sh"
D="$EVAL_DIR/llava-bench-in-the-wild"
: "${RULE:?set RULE to official LLaVA's llava/eval/table/rule.json (the judge's instructions)}"
need "$D/questions.jsonl" "$D/context.jsonl" "$D/answers_gpt4.jsonl" "$RULE"
[[ -f "$D/llava_questions.jsonl" ]] || benchmarks convert llava_bench --questions "$D/questions.jsonl" --out "$D/llava_questions.jsonl"
answer "$D/llava_questions.jsonl" "$D/images" "$D/answers/$CKPT.jsonl" 1024
REVIEWS="${REVIEWS:-$D/reviews/$CKPT.jsonl}"
review_args=()
[[ -f "$REVIEWS" ]] && review_args=(--reviews "$REVIEWS")
benchmarks score llava_bench --questions "$D/questions.jsonl" --context "$D/context.jsonl" \
    --reference-answers "$D/answers_gpt4.jsonl" --rule "$RULE" --result-file "$D/answers/$CKPT.jsonl" \
    --judge-file "$D/reviews/$CKPT-requests.jsonl" "${review_args[@]}"
