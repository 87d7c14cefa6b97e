"""The benchmark registry: one `Benchmark` subclass per benchmark, registered by name.

A benchmark knows two things: how to turn its official distribution files into `model_vqa`
questions (`convert`), and what to do with `model_vqa`'s answers (`score`): compute the metric
locally the way the benchmark's own evaluation code does, or write the file its server takes.
"""

from __future__ import annotations

import argparse

BENCHMARKS: dict[str, "Benchmark"] = {}


class Benchmark:
    name: str = ""  # CLI name, e.g. "pope"
    title: str = ""  # as papers write it, e.g. "POPE"
    folder: str = ""  # official layout: playground/data/eval/<folder>
    # What `score` produces: "local" (metrics computed here), "submission" (the server's file),
    # "local+submission" (both) or "judge" (requests for an LLM judge, then its summary).
    output: str = "local"
    normalization: str = ""  # how answers are normalised before comparison (docs table)

    def add_convert_arguments(self, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def convert(self, args: argparse.Namespace) -> list[dict]:
        """model_vqa question records: `question_id, image, text, category`."""
        raise NotImplementedError

    def add_score_arguments(self, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def score(self, args: argparse.Namespace, answers: dict[str, dict]) -> dict:
        """Metrics (and/or the path of the submission file written) from answers keyed by str(question_id)."""
        raise NotImplementedError


def register(cls: type[Benchmark]) -> type[Benchmark]:
    benchmark = cls()
    if not benchmark.name:
        raise ValueError(f"{cls.__name__} has no name")
    if benchmark.name in BENCHMARKS:
        raise ValueError(f"benchmark {benchmark.name!r} is registered twice")
    BENCHMARKS[benchmark.name] = benchmark
    return cls


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]
