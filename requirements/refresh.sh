#!/usr/bin/env bash
# Re-resolve requirements/cpu.txt, the lock the README's install and CI use, to the newest versions that
# pyproject.toml's ranges and requirements/cpu.in allow (every extra, for Python 3.11 on Linux, CPU torch).
# Then run the tests against it (bash .ci/run) before committing the new lock.
#
#   bash requirements/refresh.sh                 # everything newest
#   bash requirements/refresh.sh -P peft         # move one package only (pip-compile's --upgrade-package)
set -euo pipefail
cd "$(dirname "$0")/.."

venv="$(mktemp -d)/venv"
python -m venv "$venv"
# pip-compile resolves with pip itself, so it sees the CPU torch wheel where pip does.
"$venv/bin/pip" install -q torch==2.13.0 "pip-tools>=7.4"
upgrade=(--upgrade)
[[ $# -gt 0 ]] && upgrade=("$@")
CUSTOM_COMPILE_COMMAND="bash requirements/refresh.sh" "$venv/bin/pip-compile" -q "${upgrade[@]}" \
    --strip-extras --no-emit-index-url --no-emit-find-links \
    --extra test --extra lmms --extra report --extra data --extra eval --extra serve --extra audio --extra learning --extra video \
    -o requirements/cpu.txt pyproject.toml requirements/cpu.in
rm -rf "$(dirname "$venv")"
echo "requirements/cpu.txt: $(grep -c '^[a-z0-9]' requirements/cpu.txt) pins"
