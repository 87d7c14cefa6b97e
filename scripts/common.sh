# Shared by pretrain.sh, finetune.sh, finetune_lora.sh and finetune_qlora.sh (source it, do not run it).
#
# Every path and size can be overridden from the environment; with nothing set, the launchers
# build tiny offline checkpoints and a generated demo dataset and run a short real job
# (2 processes on the CPU, or every visible GPU).
#
#   BACKBONE        a registered backbone: phi, llama, opt, mpt, qwen2, qwen3, llama3, gemma2, gemma3, phi3,
#                   smollm2 (default: phi); names the tiny default LLM (a MODEL_PATH of yours is read as it is)
#   MODEL_PATH      LLM checkpoint            (default: checkpoints/tiny-$BACKBONE, created if missing)
#   VISION_TOWER    vision tower folder: CLIP, SigLIP, DINOv2 or fused (default: checkpoints/tiny-clip, created if missing)
#   DATA_DIR        demo data root            (default: playground/data/demo, generated if missing)
#   DATA_PATH       training JSON/JSONL       (default: $DATA_DIR/pretrain.json or $DATA_DIR/finetune.json)
#   EVAL_DATA_PATH  records for eval_loss during training (default: none)
#   IMAGE_FOLDER    image root                (default: $DATA_DIR/images)
#   RUN_NAME        checkpoint name stem      (default: llava-$BACKBONE-tiny, or the MODEL_PATH folder name)
#   OUTPUT_DIR      where checkpoints go      (default: checkpoints/$RUN_NAME-{pretrain,finetune,lora,qlora})
#   PRETRAIN_MM_MLP_ADAPTER  stage-1 projector for fine-tuning
#                   (default: checkpoints/$RUN_NAME-pretrain/mm_projector.bin when it exists)
#   PROMPT_VERSION  conversation template     (default: plain for stage 1, the backbone's for stage 2)
#   PROJECTOR_TYPE  mm_projector_type         (default: mlp2x_gelu)
#   ZERO            2 | 3 | 3_offload          (default per launcher; selects zero$ZERO.json)
#   NUM_GPUS        processes per machine     (default: all GPUs, or 2 processes on a CPU-only machine)
#   HOSTFILE        DeepSpeed hostfile for several machines, started from this one over ssh (default: none)
#   NNODES          machines when a scheduler starts this launcher on each (srun, a Kubernetes job); each
#                   runs NUM_GPUS processes under torchrun (default: $SLURM_STEP_NUM_NODES inside srun, else 1)
#   NODE_RANK       this machine's index, 0 .. NNODES-1   (default: $SLURM_NODEID inside srun, else 0)
#   MASTER_ADDR     address of node 0, with NNODES > 1    (default: the first host of $SLURM_STEP_NODELIST)
#   MASTER_PORT     rendezvous port, the same on every node (default: a free port; from $SLURM_JOB_ID
#                   inside srun; required with NNODES > 1 otherwise)
#   BATCH_SIZE      per-device batch size     (default: 16 on GPU, 4 on CPU)
#   GRAD_ACCUM      gradient accumulation     (default: 1)
#   EPOCHS          training epochs           (default: 1)
#   MAX_STEPS       stop after this many steps (default: -1 on GPU, 12 on CPU)
#   LR              learning rate             (default per launcher)
#   MODEL_MAX_LENGTH  sequence limit, image patches included (default: 2048)
#   SAVE_STEPS      checkpoint-N every N steps (default: 50 on GPU, 6 on CPU)
#   IMAGE_ASPECT_RATIO  the views of each image the tower sees, in either stage: unset, the stage's own (stage 1
#                   square, stage 2 pad, as official LLaVA); anyres or anyres_max_N: LLaVA-NeXT's tiles of the
#                   image at its own resolution beside the whole image (--mm_patch_merge_type spatial_unpad)
#   GRID_PINPOINTS  AnyRes tile grids (default: (1x1),...,(2x2), up to 2x2 tiles of the tower's input size)
#   FEATURE_CACHE   a folder for --vision_feature_cache: the frozen tower's outputs (every AnyRes tile too),
#                   computed once per image and read back by every later step and run (default: none)
#   EXTRA_ARGS      more llava.train.train flags, appended last (e.g. "--report_to wandb")
#   PRESET          scratch: a recipe for small data and models trained from scratch (no pretrained
#                   weights), such as the tiny offline checkpoints on a CPU. Changes the defaults above
#                   (each variable set explicitly still wins) and adds the flags in SCRATCH_ARGS below:
#                   the vision tower stays frozen (a random-init tower trained with the LLM collapses
#                   every image onto one feature within ~10 steps and the model answers from the question
#                   alone); projector + LLM train at 2e-3 (warm-up over 100 steps, or a tenth of a run
#                   under 1,000), at a constant rate for the first half of the steps (the LLM finds the
#                   image only after a few hundred steps; scripts/demo.sh saw a cosine decay from the
#                   start keep a question at chance), then decaying to 0 along a cosine over the second
#                   half (at a constant rate the loss stalls with shape and presence questions near
#                   chance); batch 32, 2,000 steps, one process, ZeRO-2, no gradient checkpointing; the
#                   default tiny checkpoints become a 4-layer LLM and a 192-wide CLIP with 16 patches of
#                   8 px (checkpoints/tiny-*-scratch).
#                   Stage 2 alone learns (PRESET=scratch bash scripts/finetune.sh on the QA data) when the
#                   objects are large; for small objects in a larger image, train on the captions first
#                   (PRESET=scratch bash scripts/pretrain.sh trains the LLM with the projector) and start
#                   stage 2 from that whole checkpoint (MODEL_PATH=<its OUTPUT_DIR>), both stages with
#                   IMAGE_ASPECT_RATIO=anyres (the image at its own resolution in tiles) and a FEATURE_CACHE:
#                   at the same steps, questions alone left shape at chance and one padded view at 76-82 %.
#                   reasoning and measurements: docs/training.md, "Training small models from scratch".
#   DECAY_STEPS     PRESET=scratch only: the last steps, over which the rate decays (default: half of MAX_STEPS)

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
# The launched script (llava/train/train.py) imports this checkout even when another copy is installed.
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
    ON_GPU=1
else
    ON_GPU=0
fi

BACKBONE="${BACKBONE:-phi}"
PRESET="${PRESET:-}"
DEFAULT_MODEL="checkpoints/tiny-$BACKBONE"
DEFAULT_TOWER="checkpoints/tiny-clip"
TINY_LLM_ARGS=()
TINY_TOWER_ARGS=()
SCRATCH_ARGS=()
case "$PRESET" in
    "") ;;
    scratch)
        DEFAULT_MODEL="checkpoints/tiny-$BACKBONE-scratch"
        DEFAULT_TOWER="checkpoints/tiny-clip-scratch"
        TINY_LLM_ARGS=(--layers 4)
        TINY_TOWER_ARGS=(--hidden-size 192 --patch-size 8)
        BATCH_SIZE="${BATCH_SIZE:-32}"
        MAX_STEPS="${MAX_STEPS:-2000}"
        SAVE_STEPS="${SAVE_STEPS:-1000}"
        LR="${LR:-2e-3}"
        ZERO="${ZERO:-2}"  # nothing to partition in a model this small; ZeRO-3 only adds gathers
        [[ "$ON_GPU" == 0 ]] && NUM_GPUS="${NUM_GPUS:-1}"
        # Tiny ops: a second thread only spin-waits (measured for scripts/demo.sh).
        export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
        if [[ -z "${DECAY_STEPS:-}" && "$MAX_STEPS" -le 0 ]]; then
            echo "PRESET=scratch with MAX_STEPS=$MAX_STEPS: set DECAY_STEPS, the last steps over which the" \
                 "learning rate decays (about half of the run's steps)" >&2
            exit 2
        fi
        DECAY_STEPS="${DECAY_STEPS:-$((MAX_STEPS / 2))}"
        warmup_steps=100
        [[ "$MAX_STEPS" -gt 0 && "$MAX_STEPS" -lt 1000 ]] && warmup_steps=$((MAX_STEPS / 10))
        if [[ "$MAX_STEPS" -gt 0 && $((warmup_steps + DECAY_STEPS)) -gt "$MAX_STEPS" ]]; then
            echo "PRESET=scratch: DECAY_STEPS=$DECAY_STEPS and $warmup_steps warm-up steps do not fit in" \
                 "MAX_STEPS=$MAX_STEPS; give at most $((MAX_STEPS - warmup_steps))" >&2
            exit 2
        fi
        SCRATCH_ARGS=(
            --train_modules projector,llm
            --lr_scheduler_type warmup_stable_decay --warmup_steps "$warmup_steps"
            --lr_scheduler_kwargs "{\"num_decay_steps\": $DECAY_STEPS}"
            --gradient_checkpointing False --group_by_modality_length False
        )
        ;;
    *) echo "PRESET=$PRESET: unknown preset; use PRESET=scratch or leave it unset" >&2; exit 2 ;;
esac
DEFAULT_DATA="playground/data/demo"
# Which paths the user set (errors name those variables; defaults are built by ensure_assets).
USER_SET_IMAGE_FOLDER="${IMAGE_FOLDER:+1}"
MODEL_PATH="${MODEL_PATH:-$DEFAULT_MODEL}"
VISION_TOWER="${VISION_TOWER:-$DEFAULT_TOWER}"
DATA_DIR="${DATA_DIR:-$DEFAULT_DATA}"
IMAGE_FOLDER="${IMAGE_FOLDER:-$DATA_DIR/images}"
EVAL_DATA_PATH="${EVAL_DATA_PATH:-}"
if [[ "$MODEL_PATH" == "$DEFAULT_MODEL" ]]; then
    RUN_NAME="${RUN_NAME:-llava-$BACKBONE-tiny}"
else
    RUN_NAME="${RUN_NAME:-llava-$(basename "$MODEL_PATH")}"
fi
PROJECTOR_TYPE="${PROJECTOR_TYPE:-mlp2x_gelu}"
HOSTFILE="${HOSTFILE:-}"
GRAD_ACCUM="${GRAD_ACCUM:-1}"
EPOCHS="${EPOCHS:-1}"
MODEL_MAX_LENGTH="${MODEL_MAX_LENGTH:-2048}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
if [[ "$ON_GPU" == 1 ]]; then
    if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
        NUM_GPUS="${NUM_GPUS:-$(tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c .)}"
    else
        NUM_GPUS="${NUM_GPUS:-$(nvidia-smi -L | grep -c "^GPU")}"
    fi
    BATCH_SIZE="${BATCH_SIZE:-16}"
    MAX_STEPS="${MAX_STEPS:--1}"
    SAVE_STEPS="${SAVE_STEPS:-50}"
    DEVICE_ARGS=(--bf16 True --tf32 True --dataloader_num_workers 4)
else
    NUM_GPUS="${NUM_GPUS:-2}"
    BATCH_SIZE="${BATCH_SIZE:-4}"
    [[ -z "${MAX_STEPS:-}" ]] && PLUMBING_RUN=1  # said again when the run ends
    MAX_STEPS="${MAX_STEPS:-12}"
    SAVE_STEPS="${SAVE_STEPS:-6}"
    # fp16 does not exist on the CPU and bf16 is slow without AMX: train in fp32 there.
    DEVICE_ARGS=(--use_cpu True --dataloader_num_workers 0)
    # Said up front, so DeepSpeed does not warn in every process that it found no GPU; and the threads
    # per process accelerate sets otherwise (one per physical core; under the deepspeed launcher it
    # sees one local process), so it need not warn either.
    export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(python -c "import psutil; print(psutil.cpu_count(logical=False) or 1)")}"
fi
# One launcher per machine, started by a scheduler: SLURM's srun says how many and which one this is.
if [[ -n "${SLURM_STEP_NUM_NODES:-}" && -z "${NNODES:-}" ]]; then
    NNODES="$SLURM_STEP_NUM_NODES"
    NODE_RANK="${NODE_RANK:-${SLURM_NODEID:-0}}"
    if [[ "$NNODES" -gt 1 ]]; then
        MASTER_ADDR="${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_STEP_NODELIST" 2>/dev/null | head -n 1 || true)}"
        MASTER_PORT="${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}"
    fi
fi
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
if [[ "$NNODES" -gt 1 ]]; then
    for name in MASTER_ADDR MASTER_PORT; do
        if [[ -z "${!name:-}" ]]; then
            echo "NNODES=$NNODES: set $name (node 0's address and a free port on it, the same on every node)" >&2
            exit 2
        fi
    done
    if [[ -n "$HOSTFILE" ]]; then
        echo "HOSTFILE and NNODES=$NNODES are two ways to run on several machines; set one" >&2
        exit 2
    fi
fi
MASTER_PORT="${MASTER_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}"

# Flags every stage-2 launcher shares: conversations, the stage-1 projector when there is one.
PRETRAIN_MM_MLP_ADAPTER="${PRETRAIN_MM_MLP_ADAPTER:-}"
if [[ -z "$PRETRAIN_MM_MLP_ADAPTER" && -e "checkpoints/$RUN_NAME-pretrain/mm_projector.bin" ]]; then
    PRETRAIN_MM_MLP_ADAPTER="checkpoints/$RUN_NAME-pretrain/mm_projector.bin"
fi
STAGE2_ARGS=(
    --data_path "${DATA_PATH:-$DATA_DIR/finetune.json}"
    --image_aspect_ratio pad
    --group_by_modality_length True
    --gradient_checkpointing True
)
[[ -n "${PROMPT_VERSION:-}" ]] && STAGE2_ARGS+=(--version "$PROMPT_VERSION")
[[ -n "$PRETRAIN_MM_MLP_ADAPTER" ]] && STAGE2_ARGS+=(--pretrain_mm_mlp_adapter "$PRETRAIN_MM_MLP_ADAPTER")
# Flags of both stages, after each stage's own so that they win: AnyRes views, the feature cache.
IMAGE_ASPECT_RATIO="${IMAGE_ASPECT_RATIO:-}"
VIEW_ARGS=()
if [[ -n "$IMAGE_ASPECT_RATIO" ]]; then
    VIEW_ARGS=(--image_aspect_ratio "$IMAGE_ASPECT_RATIO")
    [[ "$IMAGE_ASPECT_RATIO" == anyres* ]] && VIEW_ARGS+=(
        --mm_patch_merge_type spatial_unpad --image_grid_pinpoints "${GRID_PINPOINTS:-(1x1),...,(2x2)}")
fi
[[ -n "${FEATURE_CACHE:-}" ]] && VIEW_ARGS+=(--vision_feature_cache "$FEATURE_CACHE")

# Stop with the variable the user set, before DeepSpeed starts (it takes ~20 s and buries the message).
fail() {
    echo "$(basename "$0"): $*" >&2
    exit 2
}

# check_model VAR: a local folder, or a hub name already in the Hugging Face cache (nothing is downloaded).
check_model() {
    local var="$1" value="${!1}"
    [[ -d "$value" ]] && return 0
    if [[ "$value" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+$ ]] && python - "$value" 2>/dev/null <<'PY'
import sys
from huggingface_hub import try_to_load_from_cache
sys.exit(not isinstance(try_to_load_from_cache(sys.argv[1], "config.json"), str))
PY
    then
        return 0
    fi
    fail "$var=$value: no such folder (relative paths start at $REPO_ROOT) and no model of that name in the" \
         "Hugging Face cache; set $var to a local checkpoint folder, or unset it for the tiny offline default"
}

# check_data_file FILE VAR: FILE came from VAR (DATA_PATH itself, or the folder DATA_DIR it defaults into).
check_data_file() {
    local file="$1" var="$2"
    [[ -f "$file" ]] && return 0
    if [[ "$var" == DATA_DIR ]]; then
        fail "DATA_DIR=$DATA_DIR has no $(basename "$file") (relative paths start at $REPO_ROOT); set DATA_PATH to" \
             "your training JSON, or unset DATA_DIR for the generated demo data"
    fi
    fail "$var=${!var}: no such file (relative paths start at $REPO_ROOT)"
}

# The paths the user set: checked here; the defaults are built by ensure_assets.
check_inputs() {
    local data_path="$1" stage_default="$2"
    [[ "$MODEL_PATH" != "$DEFAULT_MODEL" ]] && check_model MODEL_PATH
    [[ "$VISION_TOWER" != "$DEFAULT_TOWER" ]] && check_model VISION_TOWER
    if [[ -n "${DATA_PATH:-}" ]]; then
        check_data_file "$data_path" DATA_PATH
    elif [[ "$DATA_DIR" != "$DEFAULT_DATA" ]]; then
        check_data_file "$DATA_DIR/$stage_default" DATA_DIR
    fi
    if [[ "$USER_SET_IMAGE_FOLDER" == 1 && ! -d "$IMAGE_FOLDER" ]]; then
        fail "IMAGE_FOLDER=$IMAGE_FOLDER: no such folder (relative paths start at $REPO_ROOT)"
    elif [[ "$DATA_DIR" != "$DEFAULT_DATA" && ! -d "$IMAGE_FOLDER" ]]; then
        fail "DATA_DIR=$DATA_DIR has no images/ folder; set IMAGE_FOLDER to the folder the records' images are in"
    fi
    [[ -n "$EVAL_DATA_PATH" && ! -f "$EVAL_DATA_PATH" ]] && check_data_file "$EVAL_DATA_PATH" EVAL_DATA_PATH
    [[ -n "$PRETRAIN_MM_MLP_ADAPTER" && ! -f "$PRETRAIN_MM_MLP_ADAPTER" ]] && check_data_file "$PRETRAIN_MM_MLP_ADAPTER" PRETRAIN_MM_MLP_ADAPTER
    [[ -n "$HOSTFILE" && ! -f "$HOSTFILE" ]] && check_data_file "$HOSTFILE" HOSTFILE
    [[ -f "zero$ZERO.json" ]] || fail "ZERO=$ZERO: no zero$ZERO.json; use ZERO=2, 3 or 3_offload"
    return 0
}

# The tiny default LLM is built for BACKBONE: it must be one the registry knows.
check_backbone() {
    local supported
    if ! supported="$(python -c 'import sys
from llava.model.registry import backbone_names
print(", ".join(backbone_names()))
sys.exit(sys.argv[1] not in backbone_names())' "$BACKBONE")"; then
        fail "BACKBONE=$BACKBONE is not a supported backbone; supported: $supported (or set MODEL_PATH to a" \
             "checkpoint of one of them)"
    fi
}

# Build what the defaults point at, once. Other paths (local folders or cached hub names) are the user's.
ensure_assets() {
    if [[ "$MODEL_PATH" == "$DEFAULT_MODEL" && ! -e "$MODEL_PATH/config.json" ]]; then
        check_backbone
        echo "== creating tiny $BACKBONE LLM in $MODEL_PATH"
        python -m llava.model.tiny --backbone "$BACKBONE" --out "$MODEL_PATH" "${TINY_LLM_ARGS[@]}"
    fi
    if [[ "$VISION_TOWER" == "$DEFAULT_TOWER" && ! -e "$VISION_TOWER/config.json" ]]; then
        echo "== creating tiny CLIP vision tower in $VISION_TOWER"
        python -m llava.model.tiny --vision --out "$VISION_TOWER" "${TINY_TOWER_ARGS[@]}"
    fi
    if [[ "$DATA_DIR" == "$DEFAULT_DATA" && ! -e "$DATA_DIR/finetune.json" ]]; then
        echo "== generating the demo dataset in $DATA_DIR"
        python -m llava.data.demo --out "$DATA_DIR"
    fi
}

# _llava_wait_for_run PID: wait for the run started in process group PID. SIGTERM / SIGINT sent to this script
# go to every process of the group: training stops at the next step with a checkpoint (llava/train/stop_signal.py),
# then this script exits as the signal would have (143 / 130), after the last process has exited.
_llava_wait_for_run() {
    local group="$1" status=0
    _LLAVA_STOPPED_BY=""
    trap "_LLAVA_STOPPED_BY=TERM; kill -s TERM -- -$group 2>/dev/null || true" TERM
    trap "_LLAVA_STOPPED_BY=INT; kill -s INT -- -$group 2>/dev/null || true" INT
    wait "$group" || status=$?
    while kill -0 -- "-$group" 2>/dev/null; do sleep 0.5; done
    trap - TERM INT
    if [[ -n "$_LLAVA_STOPPED_BY" ]]; then
        echo "== stopped by SIG$_LLAVA_STOPPED_BY; run the same command again to continue from the newest checkpoint"
        exit $((128 + $(kill -l "$_LLAVA_STOPPED_BY")))
    fi
    [[ "$status" == 0 ]] || exit "$status"
}

# llava_train OUTPUT_DIR [flags...]: run llava/train/train.py under DeepSpeed with the shared flags.
llava_train() {
    local output_dir="$1"; shift
    local data_path="" arg previous=""
    for arg in "$@"; do
        [[ "$previous" == --data_path ]] && data_path="$arg"
        previous="$arg"
    done
    check_inputs "$data_path" "$(basename "$data_path")"
    ensure_assets
    local launcher=(deepspeed --num_gpus "$NUM_GPUS" --master_port "$MASTER_PORT")
    [[ -n "$HOSTFILE" ]] && launcher=(deepspeed --hostfile "$HOSTFILE" --master_port "$MASTER_PORT")
    # DeepSpeed's launcher cannot join machines without a hostfile and ssh; torchrun's static rendezvous can.
    [[ "$NNODES" -gt 1 ]] && launcher=(torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NUM_GPUS"
                                       --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
    local eval_args=()
    [[ -n "$EVAL_DATA_PATH" ]] && eval_args=(--eval_data_path "$EVAL_DATA_PATH" --eval_strategy steps --eval_steps "$SAVE_STEPS")
    local where="$NUM_GPUS processes"
    [[ "$NNODES" -gt 1 ]] && where="node $NODE_RANK of $NNODES, $NUM_GPUS processes each"
    echo "== training $RUN_NAME -> $output_dir ($where, $( [[ $ON_GPU == 1 ]] && echo GPU || echo CPU ), ZeRO-$ZERO)"
    local start=$SECONDS
    # In a process group of its own, so that a stop signal sent to this script reaches every process of the
    # run (DeepSpeed's runner does not pass SIGTERM on), and this script returns once each has stopped.
    # shellcheck disable=SC2086  # EXTRA_ARGS is a list of flags
    setsid "${launcher[@]}" llava/train/train.py \
        --deepspeed "./zero$ZERO.json" \
        --model_name_or_path "$MODEL_PATH" \
        --vision_tower "$VISION_TOWER" \
        --image_folder "$IMAGE_FOLDER" \
        --mm_projector_type "$PROJECTOR_TYPE" \
        --mm_vision_select_layer -2 \
        --mm_use_im_start_end False \
        --mm_use_im_patch_token False \
        --output_dir "$output_dir" \
        --num_train_epochs "$EPOCHS" \
        --max_steps "$MAX_STEPS" \
        --per_device_train_batch_size "$BATCH_SIZE" \
        --per_device_eval_batch_size "$BATCH_SIZE" \
        --gradient_accumulation_steps "$GRAD_ACCUM" \
        --save_strategy steps \
        --save_steps "$SAVE_STEPS" \
        --save_total_limit 2 \
        --weight_decay 0. \
        --warmup_steps 0.03 \
        --lr_scheduler_type cosine \
        --logging_steps 1 \
        --model_max_length "$MODEL_MAX_LENGTH" \
        --lazy_preprocess True \
        --report_to none \
        "${DEVICE_ARGS[@]}" \
        "${eval_args[@]}" \
        "$@" \
        "${VIEW_ARGS[@]}" \
        "${SCRATCH_ARGS[@]}" \
        $EXTRA_ARGS &
    _llava_wait_for_run $!
    echo "== done in $((SECONDS - start)) s: checkpoint in $output_dir"
    if [[ "${PLUMBING_RUN:-0}" == 1 ]]; then
        echo "== note: that was $MAX_STEPS steps (the CPU default), a check that training runs end to end, not a model:"
        echo "   with tiny random-init models its answers mean nothing (the main job's checkpoint answers \"yes\" to"
        echo "   everything). For one that learns, run: bash scripts/demo.sh (about 12 minutes on 2 CPU cores)."
    fi
}
