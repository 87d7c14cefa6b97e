#!/usr/bin/env bash
# Stage 1: train the projector on image-caption pairs; LLM and vision tower stay frozen.
# Writes config.json + mm_projector.bin to $OUTPUT_DIR. Environment variables: see scripts/common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ZERO="${ZERO:-2}"
OUTPUT_DIR="${OUTPUT_DIR:-checkpoints/$RUN_NAME-pretrain}"
llava_train "$OUTPUT_DIR" \
    --data_path "${DATA_PATH:-$DATA_DIR/pretrain.json}" \
    --version "${PROMPT_VERSION:-plain}" \
    --tune_mm_mlp_adapter True \
    --learning_rate "${LR:-1e-3}"
