#!/usr/bin/env bash
# End-to-end demo on a CPU, no arguments needed: tiny offline checkpoints + generated shapes data
# -> stage 1 (scripts/pretrain.sh) -> stage 2 (scripts/finetune.sh) -> model_vqa on the held-out
# questions -> VQA accuracy, printed beside the majority-answer baseline, with wall time per stage,
# and the image ablation (llava.eval.image_ablation: the same questions with blank and shuffled images,
# which tells whether the model looks at the image at all).
#
# The LLM and the CLIP tower are random-init (no weights exist offline), so unlike official LLaVA
# the first stage trains them too: captioning ("A red circle.") is where the tower learns to see
# colour and shape cheaply (short sequences); stage 2 then learns to answer questions.
#
# Environment variables (all optional):
#   DEMO_DIR        where everything goes           (default: checkpoints/demo)
#   DEMO_QUICK=1    tiny sizes and a few steps: checks the plumbing in about a minute (accuracy is meaningless)
#   BACKBONE        any registered backbone: phi, llama, opt, mpt, qwen2, qwen3, llama3, gemma2, gemma3,
#                   phi3, smollm2 (default: phi)
#   LLM_HIDDEN LLM_LAYERS                           tiny LLM width / depth
#   CLIP_IMAGE_SIZE CLIP_PATCH_SIZE CLIP_HIDDEN CLIP_LAYERS   tiny CLIP tower
#   SELECT_LAYER    --mm_vision_select_layer
#   NUM_TRAIN NUM_EVAL                              training images / held-out images (3 questions each)
#   PRETRAIN_STEPS PRETRAIN_LR PRETRAIN_BATCH       stage 1 (batch per process; default 600, 1e-3, 64)
#   FINETUNE_STEPS FINETUNE_LR FINETUNE_BATCH       stage 2 (batch per process; default 600, 2e-3, 32)
#   EVAL_BATCH      model_vqa --batch-size
#   SEED            one seed for the tiny weights, the data and both training runs (default: 0)
#   NUM_GPUS        training processes              (default: 1)
#   OMP_NUM_THREADS torch threads per process       (default: 1; see below)
#   THP_MEM_ALLOC_ENABLE  torch CPU allocations in huge pages (default: 1; see below)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

DEMO_DIR="${DEMO_DIR:-checkpoints/demo}"
BACKBONE="${BACKBONE:-phi}"
if [[ "${DEMO_QUICK:-0}" == 1 ]]; then
    Q_LLM_HIDDEN=64 Q_LLM_LAYERS=1 Q_NUM_TRAIN=32 Q_NUM_EVAL=4
    Q_PRETRAIN_STEPS=2 Q_PRETRAIN_BATCH=4 Q_FINETUNE_STEPS=2 Q_FINETUNE_BATCH=4
else
    Q_LLM_HIDDEN=64 Q_LLM_LAYERS=4 Q_NUM_TRAIN=2000 Q_NUM_EVAL=150
    # Stage 1: 600 steps of 64 captions (~365 s here) reach ~0.013 loss; 600 steps of 16 left the
    # shape questions at 70-88 %. Stage 2: presence needs ~250-500 steps at 2e-3 (see finetune()).
    Q_PRETRAIN_STEPS=600 Q_PRETRAIN_BATCH=64 Q_FINETUNE_STEPS=600 Q_FINETUNE_BATCH=32
fi
LLM_HIDDEN="${LLM_HIDDEN:-$Q_LLM_HIDDEN}"
LLM_LAYERS="${LLM_LAYERS:-$Q_LLM_LAYERS}"
CLIP_IMAGE_SIZE="${CLIP_IMAGE_SIZE:-32}"
CLIP_PATCH_SIZE="${CLIP_PATCH_SIZE:-16}"  # 4 patch tokens: whole corners of a shape per token
CLIP_HIDDEN="${CLIP_HIDDEN:-192}"
CLIP_LAYERS="${CLIP_LAYERS:-2}"
SELECT_LAYER="${SELECT_LAYER:--2}"
NUM_TRAIN="${NUM_TRAIN:-$Q_NUM_TRAIN}"
NUM_EVAL="${NUM_EVAL:-$Q_NUM_EVAL}"
PRETRAIN_STEPS="${PRETRAIN_STEPS:-$Q_PRETRAIN_STEPS}"
PRETRAIN_LR="${PRETRAIN_LR:-1e-3}"
PRETRAIN_BATCH="${PRETRAIN_BATCH:-$Q_PRETRAIN_BATCH}"
FINETUNE_STEPS="${FINETUNE_STEPS:-$Q_FINETUNE_STEPS}"
FINETUNE_LR="${FINETUNE_LR:-2e-3}"
FINETUNE_BATCH="${FINETUNE_BATCH:-$Q_FINETUNE_BATCH}"
EVAL_BATCH="${EVAL_BATCH:-64}"
SEED="${SEED:-0}"
export NUM_GPUS="${NUM_GPUS:-1}"
# These models are tiny: with 2 threads each op is too small to split, and on a shared machine the
# threads spin-wait for each other (measured: 0.2 vs 3.8 steps/s for stage 1 on a busy 2-core box).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# Each step's vocabulary logits (tokens x 51,200 floats, ~80 MB) are freshly mapped memory, faulted in
# 4 KiB at a time: a quarter of a stage-1 step was kernel time. torch's CPU allocator asks for 2 MiB
# pages with this (measured here: 1.36 -> 1.82 stage-1 steps/s); harmless where THP is off.
export THP_MEM_ALLOC_ENABLE="${THP_MEM_ALLOC_ENABLE:-1}"

LLM="$DEMO_DIR/tiny-$BACKBONE"
CLIP="$DEMO_DIR/tiny-clip"
DATA="$DEMO_DIR/data"
STAGE1="$DEMO_DIR/llava-$BACKBONE-demo-pretrain"
STAGE2="$DEMO_DIR/llava-$BACKBONE-demo-finetune"
ANSWERS="$DEMO_DIR/answers.jsonl"
ABLATION="$DEMO_DIR/ablation"
# The tiny LLM is built for BACKBONE: a name the backbone registry does not know stops here, with the ones it does.
if ! supported="$(python -c 'import sys
from llava.model.registry import backbone_names
print(", ".join(backbone_names()))
sys.exit(sys.argv[1] not in backbone_names())' "$BACKBONE")"; then
    echo "demo.sh: BACKBONE=$BACKBONE is not a supported backbone; supported: $supported" >&2
    exit 2
fi
mkdir -p "$DEMO_DIR"
export TOKENIZERS_PARALLELISM=false

declare -A STAGE_SECONDS
STAGES=()
stage() {  # stage NAME COMMAND...: run one step, timing it
    local name="$1"; shift
    echo
    echo "=== demo: $name"
    local start=$SECONDS
    "$@"
    STAGE_SECONDS[$name]=$((SECONDS - start))
    STAGES+=("$name")
}

assets() {
    python -m llava.model.tiny --backbone "$BACKBONE" --out "$LLM" --hidden-size "$LLM_HIDDEN" --layers "$LLM_LAYERS" \
        --seed "$SEED"
    python -m llava.model.tiny --vision --out "$CLIP" --image-size "$CLIP_IMAGE_SIZE" --patch-size "$CLIP_PATCH_SIZE" \
        --hidden-size "$CLIP_HIDDEN" --layers "$CLIP_LAYERS" --seed "$SEED"
    python -m llava.data.demo --out "$DATA" --num-train "$NUM_TRAIN" --num-eval "$NUM_EVAL" --image-size "$CLIP_IMAGE_SIZE" \
        --seed "$SEED"
}

# Both stages: one save at the end (no intermediate checkpoint-N), the demo's vision settings, one seed.
common_env=(MODEL_PATH="$LLM" VISION_TOWER="$CLIP" DATA_DIR="$DATA" RUN_NAME="llava-$BACKBONE-demo" SAVE_STEPS=100000)
common_args="--mm_vision_select_layer $SELECT_LAYER --save_strategy no --seed $SEED"

pretrain() {
    env "${common_env[@]}" OUTPUT_DIR="$STAGE1" MAX_STEPS="$PRETRAIN_STEPS" BATCH_SIZE="$PRETRAIN_BATCH" \
        LR="$PRETRAIN_LR" ZERO=2 \
        EXTRA_ARGS="$common_args --train_modules projector,llm,vision_tower" \
        bash scripts/pretrain.sh
}

finetune() {
    # Starts from the whole stage-1 model (a full checkpoint), not just its projector, and trains the
    # LLM only, at a constant learning rate, on randomly drawn batches. "Is there a <shape>?" is
    # answered by comparing the asked word with the seen shape; the tiny LLM sits at chance on it
    # until it finds that comparison, which the helper questions in the data shorten (see
    # llava/data/demo.py: training_conversations). A cosine decay kept it at chance for all 800 steps
    # from a stage-1 model that found it in 220-520 steps at a constant rate.
    env "${common_env[@]}" MODEL_PATH="$STAGE1" OUTPUT_DIR="$STAGE2" MAX_STEPS="$FINETUNE_STEPS" \
        BATCH_SIZE="$FINETUNE_BATCH" LR="$FINETUNE_LR" ZERO=2 \
        EXTRA_ARGS="$common_args --train_modules llm --lr_scheduler_type constant --group_by_modality_length False --gradient_checkpointing False" \
        bash scripts/finetune.sh
}

evaluate() {
    # model_vqa three times on one loaded model: real, blank and shuffled images; the real run's
    # answers are the demo's answers file.
    rm -f "$ANSWERS"
    python -m llava.eval.image_ablation --model-path "$STAGE2" --question-file "$DATA/eval_questions.jsonl" \
        --image-folder "$DATA/images" --annotation-file "$DATA/eval_annotations.json" --out-dir "$ABLATION" \
        --batch-size "$EVAL_BATCH" --max_new_tokens 8
    cp "$ABLATION/answers-real.jsonl" "$ANSWERS"
}

score() {
    python -m llava.eval.eval_okvqa --annotation-file "$DATA/eval_annotations.json" \
        --question-file "$DATA/eval_questions.json" --result-file "$ANSWERS" \
        --output-file "$DEMO_DIR/scores.json" | tee "$DEMO_DIR/accuracy.txt"
    python -m llava.data.demo --baseline --out "$DATA" | tee "$DEMO_DIR/baseline.txt"
}

total_start=$SECONDS
stage "assets" assets
stage "stage 1 (pretrain)" pretrain
stage "stage 2 (finetune)" finetune
stage "model_vqa" evaluate
stage "score" score

echo
echo "=== demo summary ($BACKBONE, $NUM_TRAIN training images, $((NUM_EVAL * 3)) held-out questions)"
echo "$(grep '^Accuracy:' "$DEMO_DIR/accuracy.txt" | head -1)    vs    $(cat "$DEMO_DIR/baseline.txt")"
for name in "${STAGES[@]}"; do
    printf '  %-20s %5d s\n' "$name" "${STAGE_SECONDS[$name]}"
done
printf '  %-20s %5d s\n' "total" "$((SECONDS - total_start))"
cat "$ABLATION/ablation.txt"
echo "checkpoint: $STAGE2   answers: $ANSWERS   scores: $DEMO_DIR/scores.json   ablation: $ABLATION/ablation.json"
