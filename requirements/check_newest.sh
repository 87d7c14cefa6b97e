#!/usr/bin/env bash
# Does the newest release of everything pyproject.toml allows still install, import and train?
# The lock (requirements/cpu.txt) keeps CI and the README on measured versions; this check, run by .ci/run,
# says when a refresh of the lock (bash requirements/refresh.sh) would break something.
#
# In a throwaway venv: the CPU torch, then `pip install -e ".[lmms]"` without the lock (so the lmms extra is
# checked too, as a user installs it) and lmms-eval without its dependency list, as docs/evaluation.md does;
# then the environment check (fails on a known conflict), a SentencePiece tokenizer.model load (the protobuf
# conflict's victim), and 3 QLoRA steps of a tiny LLaMA + CLIP on generated data. About 5 minutes, mostly pip.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$SECONDS

python -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q torch==2.13.0
"$py" -m pip install -q -e ".[lmms]"
"$py" -m pip install -q --no-deps "lmms-eval==0.7.3"
echo "== newest allowed versions installed in $((SECONDS - start)) s"

export PYTHONPATH="$repo" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$py" -m llava.env
cd "$work"
"$py" - <<'EOF'
import os, shutil
from importlib.resources import files
from llava.env import load_tokenizer

os.makedirs("spm", exist_ok=True)
shutil.copy(str(files("mistral_common") / "data" / "tokenizer.model.v1"), "spm/tokenizer.model")
tokenizer = load_tokenizer("spm")
assert len(tokenizer) == 32000, len(tokenizer)
print("== a SentencePiece tokenizer.model loads")
EOF
"$py" -m llava.model.tiny --backbone llama --out llm >/dev/null 2>&1
"$py" -m llava.model.tiny --vision --out clip >/dev/null 2>&1
"$py" -m llava.data.demo --out data --num-train 16 --num-eval 4 >/dev/null
"$py" -m llava.train.train --model_name_or_path llm --vision_tower clip --image_folder data/images \
    --data_path data/finetune.json --mm_projector_type mlp2x_gelu --image_aspect_ratio pad \
    --lora_enable True --lora_r 8 --lora_alpha 16 --bits 4 --learning_rate 1e-3 \
    --per_device_train_batch_size 2 --max_steps 3 --logging_steps 1 --save_strategy no --report_to none \
    --model_max_length 256 --use_cpu True --output_dir out 2>&1 | tail -3
test -e out/adapter_model.safetensors
echo "== newest allowed versions: installed, imported and trained (QLoRA, 3 steps) in $((SECONDS - start)) s"
