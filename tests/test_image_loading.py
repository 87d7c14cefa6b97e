"""load_image: every Pillow mode becomes correct 8-bit RGB, and oversized images are refused unread."""

from __future__ import annotations

import numpy as np
import torch
import pytest
from PIL import Image

from llava.mm_utils import MAX_IMAGE_PIXELS, ImageTooLarge, load_image


def _ramp(dtype, high, size=32):
    return np.linspace(0, high, size * size).reshape(size, size).astype(dtype)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "depth16.png"
    Image.fromarray(_ramp(np.uint16, 65535)).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = np.asarray(load_image(str(path)))
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    expected = np.rint(_ramp(np.uint16, 65535) / 257).astype(np.uint8)
    assert np.array_equal(pixels[..., 0], expected)
    assert (pixels == 255).mean() < 0.01  # Pillow's own convert makes ~99.6 % of them 255


def test_32_bit_integer_and_float_modes():
    as_int = load_image(Image.fromarray(_ramp(np.int32, 65535)))
    assert np.asarray(as_int)[..., 0].max() == 255 and np.asarray(as_int)[..., 0].min() == 0
    assert np.asarray(as_int)[16, 16, 0] == round(_ramp(np.int32, 65535)[16, 16] / 257)
    unit = load_image(Image.fromarray(_ramp(np.float32, 1.0), mode="F"))
    assert np.asarray(unit)[0, 0, 0] == 0 and np.asarray(unit)[-1, -1, 0] == 255
    # Outside 0..1 a float image is stretched from its own range.
    wide = load_image(Image.fromarray(_ramp(np.float32, 1.0) * 40 - 20, mode="F"))
    assert np.asarray(wide)[0, 0, 0] == 0 and np.asarray(wide)[-1, -1, 0] == 255


def test_transparency_is_composited_over_white(tmp_path):
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.putpixel((1, 1), 1)
    path = tmp_path / "palette.png"
    palette.save(path, transparency=0)
    pixels = np.asarray(load_image(str(path)))
    assert tuple(pixels[0, 0]) == (255, 255, 255)  # the transparent index, black in the palette
    assert tuple(pixels[1, 1]) == (200, 10, 10)
    half = np.asarray(load_image(Image.new("LA", (2, 2), (0, 128))))
    assert tuple(half[0, 0]) == (127, 127, 127)
    rgba = np.asarray(load_image(Image.new("RGBA", (2, 2), (0, 0, 255, 255))))
    assert tuple(rgba[0, 0]) == (0, 0, 255)


def test_cmyk_grey_and_bilevel():
    assert tuple(np.asarray(load_image(Image.new("CMYK", (2, 2), (0, 255, 255, 0))))[0, 0]) == (255, 0, 0)
    assert tuple(np.asarray(load_image(Image.new("L", (2, 2), 77)))[0, 0]) == (77, 77, 77)
    assert tuple(np.asarray(load_image(Image.new("1", (2, 2), 1)))[0, 0]) == (255, 255, 255)


def test_oversized_images_are_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (9000, 8000)).save(path)  # 72 MP: over our limit, under Pillow's
    assert 9000 * 8000 > MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLarge, match=r"huge\.png is 9000 x 8000 = 72,000,000 pixels"):
        load_image(str(path))
    with pytest.raises(ImageTooLarge, match="huge.png"):
        load_image(str(path), max_pixels=1000)
    assert load_image(str(path), max_pixels=None).size == (9000, 8000)


def test_decompression_bomb_names_the_file(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (14000, 14000)).save(path)  # Pillow itself refuses this in open()
    with pytest.raises(ImageTooLarge, match=r"bomb\.png is too large"):
        load_image(str(path), max_pixels=None)
    assert issubclass(ImageTooLarge, ValueError)  # callers that catch decode errors catch it too


# -- EXIF orientation: phone photos store pixels sideways plus a tag saying how to turn them ------------
def phone_photo(path, orientation=6):
    """A 40 x 20 JPEG stored sideways: red on the stored left half, blue on the right; EXIF orientation 6
    ("turn 90 degrees clockwise to view"), as a phone held upright writes it."""
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, exif=exif, quality=95)
    return str(path)


def assert_upright(image):
    """Turned clockwise, the stored left half (red) is on top: 20 wide, 40 high."""
    assert image.size == (20, 40)
    pixels = np.asarray(image).astype(int)
    assert pixels[5, 10, 0] > 200 and pixels[5, 10, 2] < 60   # top: red
    assert pixels[35, 10, 2] > 200 and pixels[35, 10, 0] < 60  # bottom: blue


def test_exif_orientation_is_applied_from_a_path_bytes_a_file_and_a_pil_image(tmp_path):
    path = phone_photo(tmp_path / "phone.jpg")
    assert Image.open(path).size == (40, 20)  # what Pillow decodes without looking at the tag
    assert_upright(load_image(path))
    assert_upright(load_image(open(path, "rb").read()))
    with open(path, "rb") as f:
        assert_upright(load_image(f))
    assert_upright(load_image(Image.open(path)))  # e.g. an upload a web framework already opened
    # Orientation 1 (or no tag) leaves the pixels as stored.
    assert load_image(phone_photo(tmp_path / "plain.jpg", orientation=1)).size == (40, 20)


def test_training_data_and_inference_see_phone_photos_upright(tmp_path, tiny_llm, tiny_clip, tmp_path_factory):
    """The dataset (training, the feature cache's loader) and the inference engine (model_vqa, cli, web) agree
    with the upright picture, pixel for pixel."""
    import json

    from transformers import AutoTokenizer, CLIPImageProcessor

    from helpers import cached_checkpoint
    from llava.inference import InferenceEngine
    from llava.train.dataset import LazySupervisedDataset

    phone_photo(tmp_path / "phone.jpg")
    load_image(str(tmp_path / "phone.jpg")).save(tmp_path / "upright.png")  # the picture with no tag to apply
    engine = InferenceEngine.from_pretrained(cached_checkpoint(tmp_path_factory, tiny_llm, tiny_clip, "phi"))
    expected = engine.process_image(str(tmp_path / "upright.png"))
    assert torch.equal(engine.process_image(str(tmp_path / "phone.jpg")), expected)
    sideways = Image.fromarray(np.asarray(Image.open(tmp_path / "phone.jpg")))  # pixels as stored, tag dropped
    assert not torch.equal(engine.process_image(sideways), expected)

    records = tmp_path / "data.json"
    records.write_text(json.dumps([{"id": name, "image": name, "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is on top?"}, {"from": "gpt", "value": "red"}]}
        for name in ("phone.jpg", "upright.png")]))

    class Config:
        image_aspect_ratio = "square"

    data = LazySupervisedDataset(str(records), AutoTokenizer.from_pretrained(tiny_llm("phi")), "phi",
                                 image_folder=str(tmp_path), image_processor=CLIPImageProcessor.from_pretrained(tiny_clip),
                                 model_config=Config(), max_length=256, image_tokens=16)
    assert torch.equal(data[0]["images"], data[1]["images"])
