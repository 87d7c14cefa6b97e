#!/usr/bin/env python
"""OK-VQA -> LLaVA training JSON (+ val-split evaluation files).

Thin wrapper around llava.data.okvqa; see --help.
"""

import sys
from pathlib import Path

try:
    from llava.data.okvqa import main
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from llava.data.okvqa import main

if __name__ == "__main__":
    from llava.errors import run

    run(main)
