#!/usr/bin/env bash
# Stage 2 with LoRA (r=128, alpha=256) on the LLM's linear layers; the projector trains fully.
# Environment variables: see scripts/common.sh (plus LORA_R, LORA_ALPHA).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ZERO="${ZERO:-3}"
OUTPUT_DIR="${OUTPUT_DIR:-checkpoints/$RUN_NAME-lora}"
llava_train "$OUTPUT_DIR" "${STAGE2_ARGS[@]}" \
    --lora_enable True --lora_r "${LORA_R:-128}" --lora_alpha "${LORA_ALPHA:-256}" \
    --mm_projector_lr 2e-5 \
    --learning_rate "${LR:-2e-4}"
