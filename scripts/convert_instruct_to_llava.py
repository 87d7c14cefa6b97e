#!/usr/bin/env python
"""LLaVA-Instruct-150K / mix665k -> checked, normalised LLaVA JSON.

Thin wrapper around llava.data.instruct; see --help.
"""

import sys
from pathlib import Path

try:
    from llava.data.instruct import main
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from llava.data.instruct import main

if __name__ == "__main__":
    from llava.errors import run

    run(main)
