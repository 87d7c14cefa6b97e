"""DEV TOOL, not part of the package: regenerate tests/golden/llava_next/anyres.json.

Nothing in `llava` or `tests` imports this file; tests/test_anyres_parity.py reads only the JSON.

It runs LLaVA-NeXT's own AnyRes code (LLaVA-VL/LLaVA-NeXT at commit df17966, unchanged):
`llava/mm_utils.py`'s select_best_resolution, resize_and_pad_image, divide_to_patches,
get_anyres_image_grid_shape and process_anyres_image, and `llava/model/llava_arch.py`'s unpad_image and
`prepare_inputs_labels_for_multimodal` (the whole merge: tiles laid out, unpadded, anyres_max_N shrinking,
image_newline, base tile first), on synthetic images of several sizes (tall, wide, square, tiny, large)
under several grid pinpoint settings (a list, its string form, the "(1x1),...,(3x3)" range form).

Only the image processor and the vision tower + projector are stand-ins, the same ones the test uses:
the processor turns each PIL tile into float pixels (uint8 / 255, no resizing: the tiles are already
tower-sized), and the "tower" average-pools each tile into 4 x 4 patches of 3 channels and maps them
with a fixed 3 -> 4 matrix. That keeps the golden data small and independent of any transformers
version, while every step that decides the layout is the reference's own.

Rerun (from the repository root, in the project's own env; a few seconds):

    git --git-dir=<a clone of LLaVA-VL/LLaVA-NeXT> archive df17966 llava | tar -x -C /tmp/llava-next
    python tests/golden/llava_next/generate_anyres.py --next /tmp/llava-next
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import types

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "anyres.json")
NEXT_COMMIT = "df17966"

# (name, (width, height)): tall, wide, square, tiny, large, and a few exact pinpoint shapes.
SIZES = [("tall", (30, 100)), ("wide", (150, 40)), ("square", (64, 64)), ("tiny", (5, 7)),
         ("large", (400, 260)), ("exact_2x1", (64, 32)), ("near_square", (90, 81)), ("very_tall", (20, 190))]

# (name, tile side in pixels, image_grid_pinpoints as a config would hold it)
PINPOINTS = [
    ("list_v16", 32, [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]),
    ("string_list", 32, "[(32, 32), (64, 32), (32, 64), (64, 64), (96, 96), (128, 64)]"),
    ("grid_to_6x6", 32, [[32 * i, 32 * j] for i in range(1, 7) for j in range(1, 7)]),
    ("range_3x3", 224, "(1x1),...,(3x3)"),
]

# (image_aspect_ratio, mm_patch_merge_type)
MERGES = [("anyres", "flat"), ("anyres", "spatial"), ("anyres", "spatial_unpad"),
          ("anyres_max_1", "spatial_unpad"), ("anyres_max_2", "spatial_unpad"), ("anyres_max_4", "spatial_unpad")]

FEATURE_DIM = 4
SIDE = 4  # patches per tile side of the stand-in tower
# Full values are stored for merged features up to this many numbers; larger ones by hash and sum.
MAX_STORED = 300


def synthetic_image(size):
    """A deterministic RGB pattern of `size` (width, height) with detail everywhere, so every tile differs."""
    import numpy as np
    from PIL import Image

    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 7 + y * 3) % 256, (x * y) % 256, (x + 2 * y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


class TileProcessor:
    """Stand-in image processor: PIL images -> float pixels (uint8 / 255), channels first, no resizing."""

    def __init__(self, tile):
        self.size = {"shortest_edge": tile}
        self.crop_size = {"height": tile, "width": tile}
        self.do_center_crop = True
        self.image_mean = [0.5, 0.5, 0.5]

    def preprocess(self, images, return_tensors="pt"):
        import numpy as np
        import torch

        images = images if isinstance(images, list) else [images]
        pixels = [torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1) for im in images]
        return {"pixel_values": torch.stack(pixels)}

    def __call__(self, images, return_tensors="pt"):
        return self.preprocess(images, return_tensors)


def stand_in_tower(pixels):
    """(tiles, 3, t, t) -> (tiles, SIDE * SIDE, FEATURE_DIM): 4 x 4 average pooled cells, a fixed 3 -> 4 map."""
    import torch

    tile = pixels.shape[-1]
    pooled = torch.nn.functional.avg_pool2d(pixels, tile // SIDE)  # (tiles, 3, SIDE, SIDE)
    cells = pooled.flatten(2).transpose(1, 2)  # (tiles, SIDE * SIDE, 3)
    weight = torch.tensor([[1.0, 0.5, -1.0], [0.25, -0.75, 2.0], [-1.5, 1.0, 0.5], [0.0, 2.0, 1.0]])
    return cells @ weight.T + torch.arange(FEATURE_DIM, dtype=torch.float32) * 0.01


def newline_vector():
    import torch

    return torch.tensor([9.0, -9.0, 4.5, -4.5])


def digest(tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().float().numpy().tobytes()).hexdigest()


def import_reference(root: str):
    """LLaVA-NeXT's mm_utils and llava_arch with stubs for the modules only model building needs."""
    sys.path.insert(0, root)
    for name in ("llava", "llava.model"):
        package = types.ModuleType(name)
        package.__path__ = [os.path.join(root, *name.split("."))]
        sys.modules[name] = package
    stubs = {
        "llava.model.multimodal_encoder.builder": {"build_vision_tower": None},
        "llava.model.multimodal_resampler.builder": {"build_vision_resampler": None},
        "llava.model.multimodal_projector.builder": {"build_vision_projector": None},
        "llava.utils": {"rank0_print": print, "rank_print": print},
    }
    for name, attrs in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
    import llava.mm_utils as mm_utils
    import llava.model.llava_arch as llava_arch

    assert os.path.abspath(mm_utils.__file__).startswith(os.path.abspath(root)), mm_utils.__file__
    return mm_utils, llava_arch


def phase_reference(root: str) -> dict:
    import torch
    from torch import nn

    mm_utils, llava_arch = import_reference(root)
    from llava.constants import IMAGE_TOKEN_INDEX

    class Tower:
        def __init__(self, tile):
            self.image_size = tile
            self.num_patches_per_side = SIDE

        def __call__(self, images):
            return stand_in_tower(images)

    class Inner(nn.Module):
        def __init__(self, tile):
            super().__init__()
            self.embed_tokens = nn.Embedding(10, FEATURE_DIM)
            nn.init.zeros_(self.embed_tokens.weight)
            self.mm_projector = nn.Identity()
            self.image_newline = nn.Parameter(newline_vector())
            self.tower = Tower(tile)

        def get_vision_tower(self):
            return self.tower

    class Model(llava_arch.LlavaMetaForCausalLM):
        def __init__(self, config, tile):
            self.config = config
            self.model = Inner(tile)
            self.device = torch.device("cpu")

        def get_model(self):
            return self.model

    tiling, merges = [], []
    for pin_name, tile, pinpoints in PINPOINTS:
        processor = TileProcessor(tile)
        resolved = pinpoints
        if isinstance(pinpoints, str) and "x" in pinpoints:  # what both reference functions expand it to
            corners = [tuple(map(int, m)) for m in __import__("re").findall(r"\((\d+)x(\d+)\)", pinpoints)]
            resolved = [[i * tile, j * tile] for i in range(corners[0][0], corners[-1][0] + 1)
                        for j in range(corners[0][1], corners[-1][1] + 1)]
        elif isinstance(pinpoints, str):
            resolved = __import__("ast").literal_eval(pinpoints)
        for size_name, size in SIZES:
            image = synthetic_image(size)
            best = mm_utils.select_best_resolution(size, resolved)
            grid = mm_utils.get_anyres_image_grid_shape(size, pinpoints, tile)
            padded = mm_utils.resize_and_pad_image(image, best)
            tiles = mm_utils.process_anyres_image(image, processor, pinpoints)
            cols, rows = grid
            feature_map = torch.zeros(1, rows * SIDE, cols * SIDE)
            tiling.append({
                "pinpoints": pin_name, "size_name": size_name, "size": list(size), "best": list(best),
                "grid": list(grid), "padded_sha256": hashlib.sha256(padded.tobytes()).hexdigest(),
                "n_patches": len(mm_utils.divide_to_patches(padded, tile)),
                "tiles_shape": list(tiles.shape), "tiles_sha256": digest(tiles),
                "unpadded_map": list(llava_arch.unpad_image(feature_map, size).shape[1:]),
            })
            for aspect, merge in MERGES:
                config = types.SimpleNamespace(image_aspect_ratio=aspect, image_grid_pinpoints=pinpoints,
                                               mm_patch_merge_type=merge, tokenizer_model_max_length=None,
                                               tokenizer_padding_side="right", mm_newline_position="one_token")
                model = Model(config, tile)
                input_ids = torch.tensor([[5, IMAGE_TOKEN_INDEX, 6]])
                with torch.no_grad():
                    out = model.prepare_inputs_labels_for_multimodal(
                        input_ids, None, None, None, None, [tiles], ["image"], image_sizes=[size])
                features = out[4][0, 1:-1]
                row = {"pinpoints": pin_name, "size_name": size_name, "image_aspect_ratio": aspect,
                       "mm_patch_merge_type": merge, "shape": list(features.shape), "sha256": digest(features),
                       "sum": float(features.sum())}
                if features.numel() <= MAX_STORED:
                    row["values"] = features.tolist()
                merges.append(row)
    return {"versions": {"torch": torch.__version__, "pillow": __import__("PIL").__version__},
            "tiling": tiling, "merges": merges}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--next", required=True, help="a checkout of LLaVA-NeXT's llava/ package (its parent folder)")
    parser.add_argument("--python", default=sys.executable, help="the python that runs the reference")
    parser.add_argument("--phase", choices=("reference",), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase == "reference":
        json.dump(phase_reference(args.next), sys.stdout)
        return
    env = {**os.environ, "PYTHONPATH": ""}  # the reference package is also called `llava`
    proc = subprocess.run([args.python, os.path.abspath(__file__), "--next", args.next, "--phase", "reference"],
                          env=env, capture_output=True, text=True, check=True, cwd="/")
    reference = json.loads(proc.stdout.splitlines()[-1])
    golden = {
        "meta": {
            "source": f"LLaVA-VL/LLaVA-NeXT@{NEXT_COMMIT}: llava/mm_utils.py AnyRes functions and "
                      "llava/model/llava_arch.py unpad_image + prepare_inputs_labels_for_multimodal, run unchanged",
            "reference_versions": reference["versions"],
            "sizes": SIZES, "pinpoints": PINPOINTS, "merges": MERGES,
            "feature_dim": FEATURE_DIM, "side": SIDE, "newline": newline_vector().tolist(),
        },
        "tiling": reference["tiling"],
        "merges": reference["merges"],
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(golden, f, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
