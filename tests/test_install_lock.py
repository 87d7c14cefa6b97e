"""The install: the CPU lock (requirements/cpu.txt) that the README and CI use, and extras that cannot break it.

Read from pyproject.toml and the lock, no network: every range in pyproject (dependencies and every extra)
must hold for the locked version, the lock must not reach for a CUDA build, and no extra may pull a
torch or a protobuf that breaks the CPU install (lmms-eval's full dependency list did both).
"""

from __future__ import annotations

import os
import re
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = os.path.join(REPO, "requirements", "cpu.txt")


def read_pyproject() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def read_lock() -> dict[str, Version]:
    pins = {}
    with open(LOCK) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            found = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line)
            assert found, f"requirements/cpu.txt: {line!r} is not a plain name==version pin (constraints allow no more)"
            pins[canonicalize_name(found.group(1))] = Version(found.group(2))
    return pins


def requirements() -> list[tuple[str, Requirement]]:
    project = read_pyproject()
    declared = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra, reqs in project["optional-dependencies"].items():
        declared += [(f"extra {extra}", Requirement(r)) for r in reqs]
    return declared


def test_every_declared_range_holds_for_the_locked_version():
    pins = read_lock()
    for where, req in requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} ({where}) is not in requirements/cpu.txt: run bash requirements/refresh.sh"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{req} ({where}) excludes the locked {name}=={pins[name]}: run bash requirements/refresh.sh"


def test_lock_takes_the_cpu_torch_and_nothing_for_cuda():
    pins = read_lock()
    assert pins["torch"] == Version("2.13.0+cpu")
    cuda = sorted(name for name in pins if name.startswith(("nvidia-", "triton", "cuda-")) or name == "torchvision")
    assert cuda == []


def test_lock_holds_a_protobuf_sentencepiece_can_use_and_a_wandb_that_allows_it():
    pins = read_lock()
    protobuf = next(req for where, req in requirements() if where == "dependencies" and req.name == "protobuf")
    # sentencepiece 0.2.3's generated model code was made with protobuf 7.36.1 and refuses an older runtime.
    assert not protobuf.specifier.contains("7.35.1") and not protobuf.specifier.contains("6.33.6")
    assert pins["protobuf"] >= Version("7.36.1")
    assert pins["wandb"] >= Version("0.26")  # 0.25 (lmms-eval 0.7.3's pin) caps protobuf below 7


def test_no_extra_can_pull_a_torch_or_protobuf_that_breaks_the_install():
    for where, req in requirements():
        name = canonicalize_name(req.name)
        # lmms-eval's full list pins wandb 0.25 (protobuf < 7) and a CUDA torch + torchvision: --no-deps only.
        assert name != "lmms-eval", f"{where} lists lmms-eval; install it with pip install --no-deps (docs/evaluation.md)"
        assert name not in ("torchvision",), f"{where} lists {req}: a CUDA torchvision breaks a CPU torch"
        if name == "torch":
            assert where == "dependencies" and not str(req.specifier).startswith("=="), req
        if name == "wandb":
            assert not req.specifier.contains("0.25.0"), f"{req} ({where}) allows wandb 0.25, which caps protobuf < 7"
        if name == "protobuf":
            assert not req.specifier.contains("6.33.6"), f"{req} ({where}) allows a protobuf sentencepiece refuses"


def test_readme_and_ci_install_with_the_lock():
    ci = open(os.path.join(REPO, ".ci", "run")).read()
    readme = open(os.path.join(REPO, "README.md")).read()
    install = 'pip install -c requirements/cpu.txt torch==2.13.0 && pip install -c requirements/cpu.txt -e ".[test]"'
    assert install in readme
    assert 'pip install -q -c requirements/cpu.txt -e ".[test,lmms]"' in ci
    assert "requirements/check_newest.sh" in ci  # the newest allowed versions still import and train
    # CI ends with exactly the README's test command.
    assert ci.rstrip().splitlines()[-1] == "python -m pytest -q"
    assert "\n    python -m pytest -q\n" in readme


def test_this_install_is_the_locked_one():
    if not os.environ.get("CI"):
        pytest.skip("a developer's environment may differ from the lock; CI installs exactly it")
    pins = read_lock()
    for dist in ("torch", "transformers", "tokenizers", "peft", "accelerate", "deepspeed", "bitsandbytes",
                 "protobuf", "sentencepiece", "wandb", "tensorboard"):
        assert Version(metadata.version(dist)) == pins[dist], dist
