"""Write a fused vision tower (e.g. DINOv2 + SigLIP, patch features side by side) as one tower folder.

    python scripts/fuse_vision_towers.py --towers facebook/dinov2-large google/siglip-so400m-patch14-224 \
        --out checkpoints/dinov2-siglip

Then train with `--vision_tower checkpoints/dinov2-siglip` (or VISION_TOWER=... for the launchers).
See llava/model/multimodal_encoder/fused.py and docs/training.md, "Vision towers".
"""

from __future__ import annotations

import argparse

from llava.model.multimodal_encoder.fused import save_fused_tower
from llava.model.paths import resolve_pretrained


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--towers", nargs="+", required=True,
                        help="the towers' folders or cached hub names, in order (e.g. a DINOv2, then a SigLIP)")
    parser.add_argument("--out", required=True, help="output folder (pass it as --vision_tower)")
    args = parser.parse_args(argv)
    save_fused_tower([resolve_pretrained(t, "--towers") for t in args.towers], args.out)
    print(f"wrote a fused vision tower of {' + '.join(args.towers)} to {args.out}")


if __name__ == "__main__":
    from llava.errors import run

    run(main)
