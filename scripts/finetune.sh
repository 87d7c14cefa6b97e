#!/usr/bin/env bash
# Stage 2, full fine-tune: the projector and the whole LLM learn from conversations.
# Environment variables: see scripts/common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ZERO="${ZERO:-3}"
OUTPUT_DIR="${OUTPUT_DIR:-checkpoints/$RUN_NAME-finetune}"
llava_train "$OUTPUT_DIR" "${STAGE2_ARGS[@]}" \
    --learning_rate "${LR:-2e-5}"
