#!/usr/bin/env bash
# MMBench-CN -> OpenCompass submission (official scripts/v1_5/eval/mmbench_cn.sh). Needs
# $EVAL_DIR/mmbench_cn/$SPLIT.tsv (default SPLIT: mmbench_dev_cn_20231003).
BENCHMARK=mmbench_cn exec bash "$(dirname "$0")/mmbench.sh" "$@"
