#!/usr/bin/env python
"""COCO captions -> LLaVA stage-1 (pretraining) JSON.

Thin wrapper around llava.data.coco_captions; see --help.
"""

import sys
from pathlib import Path

try:
    from llava.data.coco_captions import main
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from llava.data.coco_captions import main

if __name__ == "__main__":
    from llava.errors import run

    run(main)
