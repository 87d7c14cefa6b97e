"""Pieces every benchmark shares: the row format, medians and timing, peak memory, model building.

Row contract (what `benchmarks.run` prints and writes as JSON):
    {"benchmark", "case", "metric", "value" (median over repeats), "unit", "values" (one per repeat),
     "config" (sizes)}, plus "target" (e.g. ">= 1.0") and "met" (bool) on rows that have a target.

Peak memory on CPU: a case runs in a fresh child process (`measure_in_child`) and reports the
kernel's high-water mark of its resident set (`ru_maxrss`), so nothing the parent holds (other
models, allocator caches) is counted. A child that measures several cases in turn resets the mark
between them through /proc/self/clear_refs (Linux) and runs with a fixed glibc mmap threshold, so
large tensors are returned to the system when freed instead of staying in malloc's heap and hiding
the next case's growth. On GPU: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20


# -- rows ------------------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return float(statistics.median(values))


def target_met(value: float, target: str) -> bool:
    """`target` is ">= X" or "<= X"."""
    match = re.fullmatch(r"\s*(>=|<=)\s*([-+0-9.eE]+)\s*", target)
    if not match:
        raise ValueError(f"target {target!r} must look like '>= 1.0' or '<= 12'")
    op, bound = match.group(1), float(match.group(2))
    return value >= bound if op == ">=" else value <= bound


def make_row(
    benchmark: str, case: str, metric: str, values: list[float], unit: str, config: dict, target: str | None = None
) -> dict:
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"{benchmark}/{case}/{metric}: no measurements")
    row = {
        "benchmark": benchmark,
        "case": case,
        "metric": metric,
        "value": median(values),
        "unit": unit,
        "values": values,
        "config": dict(config),
    }
    if target is not None:
        row["target"] = target
        row["met"] = target_met(row["value"], target)
    return row


ROW_KEYS = ("benchmark", "case", "metric", "value", "unit", "values", "config")


def check_row(row: dict) -> None:
    """Raise if a row breaks the contract (used by the runner and the tests)."""
    missing = [k for k in ROW_KEYS if k not in row]
    if missing:
        raise ValueError(f"row {row} lacks {missing}")
    if not isinstance(row["value"], float) or not all(isinstance(v, float) for v in row["values"]):
        raise ValueError(f"row {row['benchmark']}/{row['case']}/{row['metric']}: value(s) must be floats")
    if ("target" in row) != ("met" in row):
        raise ValueError(f"row {row['benchmark']}/{row['case']}/{row['metric']}: 'target' and 'met' go together")


def format_value(value: float) -> str:
    if value == 0 or 0.01 <= abs(value) < 1e6:
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:.3e}"


def format_table(rows: list[dict]) -> str:
    header = ("benchmark", "case", "metric", "median", "unit", "target", "met")
    lines = [
        (
            r["benchmark"],
            r["case"],
            r["metric"],
            format_value(r["value"]),
            r["unit"],
            r.get("target", ""),
            "" if "met" not in r else ("yes" if r["met"] else "NO"),
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    out = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


# -- the machine -----------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import torch
    import transformers

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_line(info: dict) -> str:
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    return (
        f"machine: {info['cpu']}, {info['cores']} cores (torch threads {info['torch_threads']}){gpu}; "
        f"torch {info['torch']}, transformers {info['transformers']}, python {info['python']}; {info['date']}"
    )


# -- timing ----------------------------------------------------------------------------------------
def seconds_per_call(fn: Callable[[], object], calls: int = 1, sync: Callable[[], None] | None = None) -> float:
    """Mean wall time of `calls` back-to-back calls (sync: e.g. torch.cuda.synchronize)."""
    if sync:
        sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if sync:
        sync()
    return (time.perf_counter() - start) / calls


# -- memory ----------------------------------------------------------------------------------------
def make_step(model, batch: dict, optimizer, label_logits_only: bool | None = None) -> Callable[[], None]:
    """One training step (zero grads, forward + backward, optimizer step) on a fixed batch.

    `label_logits_only` (ours only): set before each step, so two cases can share one model.
    """

    def step():
        if label_logits_only is not None:
            model.label_logits_only = label_logits_only
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()

    return step


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
        return int(match.group(1)) if match else None
    except OSError:
        return None


def rss_mib() -> float:
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else float("nan")


def reset_peak_rss() -> bool:
    """Reset this process's resident high-water mark (Linux); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """High-water mark of this process's resident set since start (or the last reset_peak_rss)."""
    kib = _status_kib("VmHWM")
    if kib is None:  # no /proc: getrusage is KiB on Linux, bytes on macOS
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":
            kib //= 1024
    return kib / 1024


def measure_in_child(target: str, kwargs: dict, timeout: float = 1800) -> dict:
    """Run `module:function(**kwargs)` in a fresh Python and return its dict plus `peak_rss_mib`.

    The child starts from nothing, so its peak is what the case itself needs (plus the
    interpreter and imported libraries, the same for every case).
    """
    env = {
        **os.environ,
        "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        # Freed tensors go back to the system at once (see the module docstring).
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(_torch_threads()),  # the child computes like its parent
    }
    command = [sys.executable, "-m", "benchmarks.common", "--child", target, json.dumps(kwargs)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark child {target} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    for line in reversed(result.stdout.splitlines()):
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT ") :])
    raise RuntimeError(f"benchmark child {target} printed no result:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def set_threads(threads: int | None) -> None:
    """Intra-op threads for this process (None: torch's default). One thread is the steadier figure on a
    shared machine: a multi-threaded op waits for its slowest thread, and a busy neighbour makes that wait long."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def _child_main(target: str, kwargs_json: str) -> None:
    module_name, function_name = target.split(":")
    result = getattr(importlib.import_module(module_name), function_name)(**json.loads(kwargs_json))
    result = dict(result or {})
    result["peak_rss_mib"] = peak_rss_mib()
    print("BENCH-RESULT " + json.dumps(result), flush=True)


# -- models ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class ModelSizes:
    """A LLaVA model's sizes; defaults are the tiny test model."""

    backbone: str = "phi"
    llm_hidden: int = 64
    llm_layers: int = 2
    vision_hidden: int = 32
    vision_layers: int = 2
    image_size: int = 32
    patch_size: int = 8
    projector: str = "mlp2x_gelu"

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def as_config(self) -> dict:
        return {**dataclasses.asdict(self), "image_tokens": self.image_tokens}


def vision_config(sizes: ModelSizes, **overrides):
    from transformers import CLIPVisionConfig

    values = dict(
        hidden_size=sizes.vision_hidden,
        intermediate_size=sizes.vision_hidden * 4,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=max(1, sizes.vision_hidden // 64) if sizes.vision_hidden >= 64 else 1,
        image_size=sizes.image_size,
        patch_size=sizes.patch_size,
        projection_dim=sizes.vision_hidden,
    )
    values.update(overrides)
    return CLIPVisionConfig(**values)


def llava_config(text_config, backbone: str, tower_config, projector: str = "mlp2x_gelu", max_length: int = 4096):
    """A LLaVA checkpoint config (`llava_<backbone>`) around a plain HF LLM config and a CLIP tower config."""
    from llava.model.registry import get_backbone

    spec = get_backbone(backbone)
    values = {k: v for k, v in text_config.to_dict().items() if k not in ("model_type", "architectures")}
    config = spec.config_class(**values)
    config.mm_vision_tower = "benchmark-random-clip"  # never loaded: the config below is the tower
    config.mm_vision_config = tower_config.to_dict()
    config.mm_vision_select_layer = -2
    config.mm_vision_select_feature = "patch"
    config.mm_hidden_size = tower_config.hidden_size
    config.mm_projector_type = projector
    config.mm_use_im_start_end = False
    config.mm_use_im_patch_token = False
    config.use_mm_proj = True
    config.image_aspect_ratio = "square"
    config.tokenizer_model_max_length = max_length
    config.tokenizer_padding_side = "right"
    return config


def build_model(config, seed: int = 0, dtype=None):
    """Random-init LLaVA model from a `llava_config`; the tower is frozen as in training."""
    import torch

    from llava.model.registry import backbone_for_config

    torch.manual_seed(seed)
    model = backbone_for_config(config).model_class(config)
    head_bias = getattr(model.get_output_embeddings(), "bias", None)
    if head_bias is not None:  # Phi's lm_head bias: zero, so HF Llava (no bias) computes the same
        with torch.no_grad():
            head_bias.zero_()
    if dtype is not None:
        model.to(dtype)
    return model


def build_tiny_llava(sizes: ModelSizes, seed: int = 0, max_length: int = 4096):
    """Model of `sizes` from the backbone's tiny config (llava/model/tiny.py's family settings)."""
    from llava.model.registry import get_backbone

    text_config = get_backbone(sizes.backbone).tiny_config(hidden_size=sizes.llm_hidden, num_layers=sizes.llm_layers)
    return build_model(llava_config(text_config, sizes.backbone, vision_config(sizes), sizes.projector, max_length), seed)


def tokenizer_for(backbone: str):
    from llava.model.builder import ensure_pad_token
    from llava.model.registry import get_backbone

    tokenizer = get_backbone(backbone).tiny_tokenizer()
    ensure_pad_token(tokenizer)
    return tokenizer


def save_checkpoint(model, tokenizer, out_dir: str) -> str:
    """Write `model` as a full LLaVA checkpoint (weights, tokenizer, image processor), as training does."""
    from llava.model.tiny import tiny_image_processor

    for name in ("bos", "eos", "pad"):
        setattr(model.config, f"{name}_token_id", getattr(tokenizer, f"{name}_token_id"))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    tiny_image_processor(model.get_vision_tower().config.image_size).save_pretrained(out_dir)
    return out_dir


# -- command line ------------------------------------------------------------------------------------
def benchmark_main(name: str, run: Callable[..., list[dict]], argv=None, add_arguments=None) -> list[dict]:
    """`python -m benchmarks.<name> [--repeats N] [--json FILE]`: run, print the rows, optionally save them."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=sys.modules[run.__module__].__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    set_threads(args.threads)
    extra = {k: v for k, v in vars(args).items() if k not in ("suite", "repeats", "json", "threads")}
    rows = run(suite=args.suite, repeats=args.repeats, **extra)
    print(format_table(rows))
    print(machine_line(machine_info()))
    if args.json:
        write_json(args.json, rows, {name: "ok"})
    return rows


def write_json(path: str, rows: list[dict], status: dict, suite: str | None = None) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"suite": suite, "machine": machine_info(), "status": status, "rows": rows}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child_main(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit("usage: python -m benchmarks.common --child module:function '{json kwargs}'")
