# Shared by scripts/eval/<benchmark>.sh (source it, do not run it).
#
# Every launcher follows official LLaVA-1.5's scripts/v1_5/eval/<benchmark>.sh and its file layout
# under playground/data/eval/<benchmark>/ (docs/evaluation.md lists the files each one needs):
# convert the official files (once), answer with llava.eval.model_vqa in one chunk per GPU, merge
# the chunks, then score locally or write the submission file.
#
#   MODEL_PATH      checkpoint to evaluate                     (required)
#   MODEL_BASE      base LLM for LoRA / projector checkpoints  (default: none)
#   CKPT            name used for answer files                 (default: basename of MODEL_PATH)
#   CONV_MODE       conversation template                      (default: the checkpoint's backbone's)
#   EVAL_DIR        root of the benchmark folders              (default: playground/data/eval)
#   NUM_CHUNKS      processes to split the questions over      (default: one per GPU in
#                   CUDA_VISIBLE_DEVICES, or every visible GPU; 1 on a CPU-only machine)
#   BATCH_SIZE      questions per generate() call              (default: 8)
#   MAX_NEW_TOKENS  answer length limit                        (default per benchmark, as official)
#   EXTRA_ARGS      more llava.eval.model_vqa flags, e.g. "--load-4bit"

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

: "${MODEL_PATH:?set MODEL_PATH to the checkpoint to evaluate}"
CKPT="${CKPT:-$(basename "$MODEL_PATH")}"
EVAL_DIR="${EVAL_DIR:-playground/data/eval}"
BATCH_SIZE="${BATCH_SIZE:-8}"

if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    IFS=',' read -ra GPULIST <<< "$CUDA_VISIBLE_DEVICES"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
    mapfile -t GPULIST < <(seq 0 $(( $(nvidia-smi -L | grep -c "^GPU") - 1 )))
else
    GPULIST=()
fi
if (( ${#GPULIST[@]} > 0 )); then
    NUM_CHUNKS="${NUM_CHUNKS:-${#GPULIST[@]}}"
else
    NUM_CHUNKS="${NUM_CHUNKS:-1}"
fi

benchmarks() { python -m llava.eval.benchmarks "$@"; }

# need FILE...: stop with the file's name when an official input is missing.
need() {
    for path in "$@"; do
        if [[ ! -e "$path" ]]; then
            echo "missing $path: see docs/evaluation.md for where to get it and where it goes" >&2
            exit 1
        fi
    done
}

# answer QUESTIONS IMAGE_FOLDER ANSWERS_FILE MAX_NEW_TOKENS
# One model_vqa process per chunk (chunk i on GPU i), each resuming its own file, then merged in
# chunk order into ANSWERS_FILE (official's ${CHUNKS}_${IDX}.jsonl files, next to it).
answer() {
    local questions="$1" images="$2" answers="$3" max_new_tokens="${MAX_NEW_TOKENS:-$4}"
    local chunk_dir
    chunk_dir="$(dirname "$answers")/$(basename "$answers" .jsonl)-chunks"
    mkdir -p "$chunk_dir"
    local pids=() idx
    for idx in $(seq 0 $((NUM_CHUNKS - 1))); do
        local device_env=()
        if (( ${#GPULIST[@]} > 0 )); then
            device_env=(env CUDA_VISIBLE_DEVICES="${GPULIST[$((idx % ${#GPULIST[@]}))]}")
        fi
        "${device_env[@]}" python -m llava.eval.model_vqa \
            --model-path "$MODEL_PATH" ${MODEL_BASE:+--model-base "$MODEL_BASE"} ${CONV_MODE:+--conv-mode "$CONV_MODE"} \
            --question-file "$questions" --image-folder "$images" \
            --answers-file "$chunk_dir/${NUM_CHUNKS}_${idx}.jsonl" \
            --num-chunks "$NUM_CHUNKS" --chunk-idx "$idx" \
            --temperature 0 --max_new_tokens "$max_new_tokens" --batch-size "$BATCH_SIZE" ${EXTRA_ARGS:-} &
        pids+=($!)
    done
    local failed=0 pid
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
    done
    if (( failed )); then
        echo "a model_vqa chunk failed; rerun to resume the unfinished chunks" >&2
        exit 1
    fi
    : > "$answers"
    for idx in $(seq 0 $((NUM_CHUNKS - 1))); do
        cat "$chunk_dir/${NUM_CHUNKS}_${idx}.jsonl" >> "$answers"
    done
    echo "== merged $NUM_CHUNKS chunk(s) into $answers ($(wc -l < "$answers") answers)"
}
