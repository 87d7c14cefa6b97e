"""Our AnyRes tiling and feature layout against LLaVA-NeXT's own code (golden data).

tests/golden/llava_next/anyres.json was written by tests/golden/llava_next/generate_anyres.py, which ran
LLaVA-NeXT's select_best_resolution, resize_and_pad_image, divide_to_patches, get_anyres_image_grid_shape,
process_anyres_image, unpad_image and its whole prepare_inputs_labels_for_multimodal merge on synthetic
images of 8 sizes under 4 grid pinpoint settings (list, string, the range form) and 6 merge settings
(flat, spatial, spatial_unpad, anyres_max_1/2/4). The image processor and the tower + projector are the
same stand-ins here (pixels = uint8 / 255; 4 x 4 average-pooled cells through a fixed 3 -> 4 map), so
every layout decision is compared, exactly, with the reference's.
"""

from __future__ import annotations

import hashlib
import json
import os
import types

import numpy as np
import pytest
import torch
from PIL import Image

from llava.mm_utils import AnyRes, parse_grid_pinpoints, process_images, resize_and_pad_image, select_best_resolution
from llava.model.llava_arch import pack_image_features, unpad_features

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "llava_next", "anyres.json")
with open(GOLDEN, encoding="utf-8") as f:
    DATA = json.load(f)
META = DATA["meta"]
SIZES = dict((name, tuple(size)) for name, size in META["sizes"])
PINPOINTS = {name: (tile, value) for name, tile, value in META["pinpoints"]}
SIDE, DIM = META["side"], META["feature_dim"]


def synthetic_image(size):
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 7 + y * 3) % 256, (x * y) % 256, (x + 2 * y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


class TileProcessor:
    """The generator's stand-in processor: float pixels (uint8 / 255), channels first, no resizing."""

    def __init__(self, tile):
        self.size = {"shortest_edge": tile}
        self.crop_size = {"height": tile, "width": tile}
        self.do_center_crop = True
        self.image_mean = [0.5, 0.5, 0.5]

    def __call__(self, images, return_tensors="pt"):
        pixels = [torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1) for im in images]
        return {"pixel_values": torch.stack(pixels)}


def stand_in_tower(pixels):
    tile = pixels.shape[-1]
    cells = torch.nn.functional.avg_pool2d(pixels, tile // SIDE).flatten(2).transpose(1, 2)
    weight = torch.tensor([[1.0, 0.5, -1.0], [0.25, -0.75, 2.0], [-1.5, 1.0, 0.5], [0.0, 2.0, 1.0]])
    return cells @ weight.T + torch.arange(DIM, dtype=torch.float32) * 0.01


def digest(tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().float().numpy().tobytes()).hexdigest()


def config_for(pinpoints, aspect="anyres", merge="flat"):
    return types.SimpleNamespace(image_aspect_ratio=aspect, image_grid_pinpoints=pinpoints, mm_patch_merge_type=merge)


@pytest.mark.parametrize("row", DATA["tiling"], ids=[f"{r['pinpoints']}-{r['size_name']}" for r in DATA["tiling"]])
def test_tiling_equals_llava_next(row):
    tile, pinpoints = PINPOINTS[row["pinpoints"]]
    size = tuple(row["size"])
    anyres = AnyRes.from_config(config_for(pinpoints), tile=tile, side=SIDE, tile_tokens=SIDE * SIDE)
    image = synthetic_image(size)
    assert select_best_resolution(size, parse_grid_pinpoints(pinpoints, tile)) == tuple(row["best"])
    assert anyres.grid(size) == tuple(row["grid"])
    assert hashlib.sha256(resize_and_pad_image(image, tuple(row["best"])).tobytes()).hexdigest() == row["padded_sha256"]
    assert anyres.num_tiles(size) == 1 + row["n_patches"]
    tiles = process_images([image], TileProcessor(tile), config_for(pinpoints))
    assert list(tiles.shape) == row["tiles_shape"]
    assert digest(tiles) == row["tiles_sha256"]
    cols, rows = row["grid"]
    assert list(unpad_features(torch.zeros(1, rows * SIDE, cols * SIDE), size).shape[1:]) == row["unpadded_map"]


@pytest.mark.parametrize(
    "row", DATA["merges"],
    ids=[f"{r['pinpoints']}-{r['size_name']}-{r['image_aspect_ratio']}-{r['mm_patch_merge_type']}" for r in DATA["merges"]],
)
def test_merged_features_equal_llava_next(row):
    tile, pinpoints = PINPOINTS[row["pinpoints"]]
    size = SIZES[row["size_name"]]
    config = config_for(pinpoints, row["image_aspect_ratio"], row["mm_patch_merge_type"])
    anyres = AnyRes.from_config(config, tile=tile, side=SIDE, tile_tokens=SIDE * SIDE)
    tiles = process_images([synthetic_image(size)], TileProcessor(tile), config)
    packed = pack_image_features([stand_in_tower(tiles)], [size], anyres, torch.tensor(META["newline"]))[0]
    assert list(packed.shape) == row["shape"]
    assert anyres.tokens(size) == row["shape"][0]  # what length budgets count, without running the model
    if "values" in row:
        assert packed.tolist() == row["values"]
    assert digest(packed) == row["sha256"]
