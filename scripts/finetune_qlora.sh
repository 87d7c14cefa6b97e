#!/usr/bin/env bash
# Stage 2 with QLoRA: the LLM is loaded in 4-bit NF4 (double quantization), LoRA r=128, alpha=256.
# Environment variables: see scripts/common.sh (plus BITS=4|8, LORA_R, LORA_ALPHA).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ZERO="${ZERO:-2}"
OUTPUT_DIR="${OUTPUT_DIR:-checkpoints/$RUN_NAME-qlora}"
llava_train "$OUTPUT_DIR" "${STAGE2_ARGS[@]}" \
    --bits "${BITS:-4}" --double_quant True --quant_type nf4 \
    --lora_enable True --lora_r "${LORA_R:-128}" --lora_alpha "${LORA_ALPHA:-256}" \
    --mm_projector_lr 2e-5 \
    --learning_rate "${LR:-2e-4}"
