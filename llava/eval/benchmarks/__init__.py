"""Official LLaVA-1.5's benchmark suite on top of `model_vqa`.

    python -m llava.eval.benchmarks list
    python -m llava.eval.benchmarks convert pope --annotation-dir .../pope/coco --out .../llava_pope_test.jsonl
    python -m llava.eval.model_vqa --question-file .../llava_pope_test.jsonl ...
    python -m llava.eval.benchmarks score pope --annotation-dir .../pope/coco --result-file answers.jsonl

Every module in this package that defines a `@register`ed `Benchmark` is loaded here, so a new
benchmark is one new file (plus its test).
"""

from __future__ import annotations

import importlib
import pkgutil

from llava.eval.benchmarks.registry import BENCHMARKS, Benchmark, get_benchmark, register

_NOT_BENCHMARKS = {"registry", "common", "cli", "__main__"}

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _module.name not in _NOT_BENCHMARKS:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["BENCHMARKS", "Benchmark", "get_benchmark", "register"]
