"""`python -m llava.env`: what this install is made of, and the known conflicts with their fix.

Prints the versions of the libraries training and serving use, the device, bf16 and flash-attention
availability, DeepSpeed's ops and bitsandbytes' backend, then checks the conflicts that have broken
installs before (each named with the command that fixes it). Exit status 1 when one is found.

`explain_tokenizer_failure` turns a tokenizer that failed to load for such a reason into one line.
Only the ground layer of llava is imported here (never train, eval, serve or export): the check must
run on an install too broken for those.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass
from importlib import metadata

# Distribution names, in the order printed; the optional ones only when installed.
CORE_PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "peft", "deepspeed", "bitsandbytes",
                 "sentencepiece", "protobuf", "safetensors", "numpy", "pillow")
OPTIONAL_PACKAGES = ("torchvision", "flash-attn", "kernels", "wandb", "tensorboard", "lmms-eval", "gradio")


@dataclass
class Conflict:
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what}\n    fix: {self.fix}"


class TokenizerEnvironmentError(RuntimeError):
    """A tokenizer that cannot load because of the install, not the checkpoint (a one-line clear error)."""


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _release(text: str) -> tuple[int, ...]:
    """'7.36.1' -> (7, 36, 1); local labels ('+cpu') and pre-release tails are ignored."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


# --- conflicts ---------------------------------------------------------------------------------------------

def sentencepiece_protobuf_conflict() -> Conflict | None:
    """SentencePiece's generated model code refuses an older protobuf runtime (or none at all).

    transformers then logs "Detected incompatible Protobuf Gencode/Runtime versions", falls back to its
    tiktoken reader and fails with "Error parsing line b'\\x0e'": every tokenizer.model (LLaMA family) is lost.
    """
    if version("sentencepiece") is None:
        return None
    try:
        from sentencepiece import sentencepiece_model_pb2  # noqa: F401
    except ImportError as exc:
        if version("protobuf") is None:
            return Conflict("protobuf is not installed: SentencePiece tokenizers (tokenizer.model) cannot be read",
                            "pip install protobuf")
        return Conflict(f"sentencepiece {version('sentencepiece')} cannot load its model code: {exc}",
                        "pip install --force-reinstall sentencepiece protobuf")
    except Exception as exc:  # protobuf's VersionError: gencode newer than the runtime
        found = re.search(r"gencode (\d+(?:\.\d+)*) runtime (\d+(?:\.\d+)*)", str(exc))
        need, have = found.groups() if found else ("a newer version", version("protobuf"))
        wandb = version("wandb")
        capped = (f"; wandb {wandb} caps protobuf below 7 (lmms-eval 0.7.3's full install pins wandb 0.25): "
                  "add 'wandb>=0.26'" if wandb and _release(wandb) < (0, 26) else "")
        return Conflict(
            f"protobuf {have} is older than sentencepiece {version('sentencepiece')}'s generated code needs "
            f"({need}): every SentencePiece tokenizer (tokenizer.model) fails to load{capped}",
            f"pip install 'protobuf>={need}'" + (" 'wandb>=0.26'" if capped else ""))
    return None


def torchvision_conflict() -> Conflict | None:
    """A torchvision built for another torch (often a CUDA one beside a CPU torch, pulled by a dependency).

    transformers imports torchvision for its fast image processors once it is installed, so a broken one
    breaks image loading everywhere; without torchvision it uses PIL.
    """
    tv, torch_version = version("torchvision"), version("torch")
    if tv is None or torch_version is None:
        return None
    fix = (f"pip uninstall -y torchvision (image processing then uses PIL), or install the torchvision built for "
           f"torch {torch_version} from the same index as torch")
    for requirement in metadata.requires("torchvision") or ():
        pinned = re.fullmatch(r"torch\s*==\s*([\w.+]+)", requirement.split(";")[0].strip())
        if pinned and _release(pinned.group(1)) != _release(torch_version):
            return Conflict(f"torchvision {tv} is built for torch {pinned.group(1)}, but torch {torch_version} "
                            "is installed", fix)
    try:
        import torch
        import torchvision
    except Exception as exc:
        return Conflict(f"torchvision {tv} fails to import beside torch {torch_version}: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", fix)
    tv_cuda, torch_cuda = getattr(torchvision.version, "cuda", None), torch.version.cuda
    if tv_cuda != torch_cuda:
        return Conflict(f"torchvision {tv} is a {'CUDA ' + tv_cuda if tv_cuda else 'CPU'} build beside a "
                        f"{'CUDA ' + torch_cuda if torch_cuda else 'CPU'} torch {torch_version}", fix)
    return None


def bitsandbytes_conflict() -> Conflict | None:
    """4-bit/8-bit loading (QLoRA, --load-4bit) needs a bitsandbytes backend for this device."""
    bnb = version("bitsandbytes")
    if bnb is None:
        return None
    import torch

    if not torch.cuda.is_available() and _release(bnb) < (0, 45):
        return Conflict(f"bitsandbytes {bnb} has no CPU backend: QLoRA and --load-4bit/--load-8bit fail on this "
                        "machine", "pip install 'bitsandbytes>=0.45'")
    try:
        from bitsandbytes import cextension
    except Exception as exc:
        return Conflict(f"bitsandbytes {bnb} fails to import: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                        "pip install --force-reinstall bitsandbytes")
    backend = getattr(cextension, "BNB_BACKEND", None)
    if torch.cuda.is_available() and torch.version.cuda and backend not in (None, "CUDA"):
        return Conflict(f"bitsandbytes {bnb} loaded its {backend} library, not CUDA, beside torch with CUDA "
                        f"{torch.version.cuda}", "pip install --force-reinstall bitsandbytes (a build with the "
                        "CUDA library for your torch)")
    return None


def filelock_conflict() -> Conflict | None:
    """lmms-eval 0.7.3's evaluator imports filelock._api, which filelock 4 removed."""
    if version("lmms-eval") is None or version("filelock") is None or _release(version("filelock")) < (4,):
        return None
    return Conflict(f"filelock {version('filelock')} beside lmms-eval {version('lmms-eval')}: its evaluator needs "
                    "filelock 3.x", "pip install 'filelock>=3.16,<4'")


CHECKS = (sentencepiece_protobuf_conflict, torchvision_conflict, bitsandbytes_conflict, filelock_conflict)


def conflicts() -> list[Conflict]:
    return [found for check in CHECKS if (found := check()) is not None]


# --- the tokenizer's one line --------------------------------------------------------------------------------

def explain_tokenizer_failure(exc: BaseException, path) -> str | None:
    """One line saying why the tokenizer at `path` failed to load, when the install is the reason; else None.

    The tell-tale of the protobuf conflict is transformers' tiktoken fallback ("Error parsing line") or a
    folder whose tokenizer is a SentencePiece `tokenizer.model`.
    """
    path = os.fspath(path)
    sentencepiece_folder = os.path.isfile(os.path.join(path, "tokenizer.model"))
    if not (sentencepiece_folder or "Error parsing line" in str(exc) or "Protobuf" in str(exc)):
        return None
    found = sentencepiece_protobuf_conflict()
    if found is None:
        return None
    return f"cannot load the tokenizer in {path}: {found.what}; fix: {found.fix} (python -m llava.env checks the install)"


@contextlib.contextmanager
def explained_tokenizer_errors(path):
    """`with explained_tokenizer_errors(path): tokenizer = AutoTokenizer.from_pretrained(path)`."""
    try:
        yield
    except Exception as exc:
        reason = explain_tokenizer_failure(exc, path)
        if reason is None:
            raise
        raise TokenizerEnvironmentError(reason) from exc


def load_tokenizer(path, **kwargs):
    """`AutoTokenizer.from_pretrained(path, **kwargs)`, failing in one line when the install is the reason."""
    from transformers import AutoTokenizer

    with explained_tokenizer_errors(path):
        return AutoTokenizer.from_pretrained(path, **kwargs)


# --- the report ----------------------------------------------------------------------------------------------

def _cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    return set()


def device_lines() -> list[str]:
    import torch

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        lines = [f"device: cuda, {len(names)} GPU(s): {', '.join(names)} (torch built for {build})"]
        bf16 = "yes" if torch.cuda.is_bf16_supported() else "no (use --fp16 or fp32)"
    else:
        mps = getattr(torch.backends, "mps", None)
        kind = "mps" if mps is not None and mps.is_available() else "cpu"
        lines = [f"device: {kind}, {os.cpu_count()} CPU thread(s), no CUDA GPU visible (torch built for {build})"]
        fast = _cpu_flags() & {"amx_bf16", "avx512_bf16"}
        bf16 = ("yes, fast on this CPU (" + ", ".join(sorted(fast)) + ")" if fast else
                "yes, but slow on this CPU (no AMX / AVX-512 bf16): the launchers train in fp32 here")
    lines.append(f"bf16: {bf16}")
    try:
        from transformers.utils import is_flash_attn_2_available

        flash = is_flash_attn_2_available()
    except Exception:
        flash = False
    if flash:
        lines.append(f"flash-attention: yes (flash-attn {version('flash-attn')}; --attn_implementation flash_attention_2)")
    else:
        why = "needs a CUDA GPU" if not torch.cuda.is_available() else "flash-attn is not installed"
        lines.append(f"flash-attention: no ({why}); attention uses PyTorch's sdpa")
    return lines


def deepspeed_lines() -> list[str]:
    if version("deepspeed") is None:
        return ["deepspeed: not installed"]
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # said up front, as the launchers do: no "no GPU" warning
    try:
        from deepspeed.accelerator import get_accelerator
        from deepspeed.git_version_info import installed_ops
        from deepspeed.ops.op_builder.all_ops import ALL_OPS
        from deepspeed.ops.op_builder.builder import probe_is_compatible
    except Exception as exc:
        return [f"deepspeed: {version('deepspeed')} fails to import: {str(exc).splitlines()[0] if str(exc) else exc!r}"]
    accelerator = get_accelerator()._name
    prebuilt = sorted(name for name, built in installed_ops.items() if built)
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        buildable = sorted(name for name, builder in ALL_OPS.items()
                           if name not in prebuilt and name != "deepspeed_not_implemented"
                           and probe_is_compatible(builder, False))
    tools = ", ".join(f"{tool} {'yes' if shutil.which(tool) else 'NO'}" for tool in ("ninja", "g++"))
    return [f"deepspeed ops: accelerator {accelerator}; prebuilt: {', '.join(prebuilt) or 'none'}; "
            f"built on first use (JIT, {tools}): {', '.join(buildable) or 'none'}"]


def bitsandbytes_lines() -> list[str]:
    if version("bitsandbytes") is None:
        return ["bitsandbytes: not installed (QLoRA and --load-4bit/--load-8bit need it)"]
    try:
        from bitsandbytes import cextension
    except Exception:
        return []  # reported as a conflict
    backend = getattr(cextension, "BNB_BACKEND", "unknown")
    return [f"bitsandbytes: backend {backend} (4-bit and 8-bit loading; on a CPU its message about "
            "kernels-community's gemm_4bit_forward is expected offline and silenced: the built-in matmul is used)"]


def report() -> tuple[str, list[Conflict]]:
    lines = ["llava environment check",
             f"python: {platform.python_version()} ({sys.executable}), {platform.system()} {platform.machine()}"]
    lines.append("packages: " + ", ".join(f"{dist} {version(dist) or 'NOT INSTALLED'}" for dist in CORE_PACKAGES))
    optional = [f"{dist} {version(dist)}" for dist in OPTIONAL_PACKAGES if version(dist)]
    lines.append("optional: " + (", ".join(optional) or "none"))
    lines += device_lines() + deepspeed_lines() + bitsandbytes_lines()
    found = conflicts()
    if found:
        lines.append(f"known conflicts: {len(found)}")
        lines += [f"  - {conflict}" for conflict in found]
    else:
        lines.append("known conflicts: none (protobuf/sentencepiece, torchvision/torch, bitsandbytes backend, "
                     "filelock/lmms-eval checked)")
    return "\n".join(lines), found


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(prog="python -m llava.env", description=__doc__.split("\n\n")[0]).parse_args(argv)
    import llava  # noqa: F401  (installs the known-harmless message filters before libraries load)

    text, found = report()
    print(text)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
