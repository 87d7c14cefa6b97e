"""Symbolic links in the image folder follow the rule for paths: one that leads outside is refused unless allowed."""

from __future__ import annotations

import json
import os

import pytest

from llava.mm_utils import ImageOutsideFolder, image_path_in_folder
from llava.records import InvalidRecord

from test_train_inputs import dataset, env, record  # noqa: F401  (the module's fixture and helpers)

FLAG = "--allow_outside_image_folder True"


@pytest.fixture
def folder(tmp_path):
    """images/ holding a real file, a link to it, a link to a file outside and a link to a folder outside."""
    images, elsewhere = tmp_path / "images", tmp_path / "elsewhere"
    images.mkdir(), elsewhere.mkdir()
    (images / "cat.png").write_bytes(b"png")
    (elsewhere / "secret.png").write_bytes(b"png")
    os.symlink(images / "cat.png", images / "same-cat.png")
    os.symlink(elsewhere / "secret.png", images / "secret.png")
    os.symlink(elsewhere, images / "more")
    return images


def test_links_inside_the_folder_are_followed_and_links_out_of_it_refused(folder, tmp_path):
    assert image_path_in_folder(str(folder), "same-cat.png", FLAG) == str(folder / "same-cat.png")
    for path in ("secret.png", "more/secret.png"):
        with pytest.raises(ImageOutsideFolder, match=rf"image path '{path}' is a link to "
                                                     rf"{tmp_path / 'elsewhere' / 'secret.png'}, outside the folder; "
                                                     rf".*pass {FLAG} to allow it"):
            image_path_in_folder(str(folder), path, FLAG)
        assert image_path_in_folder(str(folder), path, FLAG, allow_outside=True) == str(folder / path)
    # A folder that is itself a link (data on another disk) is the folder: its files are inside.
    os.symlink(folder, tmp_path / "linked-images")
    assert image_path_in_folder(str(tmp_path / "linked-images"), "cat.png", FLAG) == str(tmp_path / "linked-images" / "cat.png")


def test_training_refuses_a_record_whose_image_links_out_of_the_folder(env, tmp_path):  # noqa: F811
    os.symlink(env["root"] / "outside.png", os.path.join(env["folder"], "link-out.png"))
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record(0, env["good"]), record(1, "link-out.png")]))
    with pytest.raises(InvalidRecord, match=rf"record 'r1'.*image path 'link-out.png' is a link to .*outside\.png.*{FLAG}"):
        dataset(env, path)
    skipped = dataset(env, path, skip_invalid=True)
    assert len(skipped) == 1 and skipped.stats.skipped == {"image outside --image_folder": 1}
    assert dataset(env, path, allow_outside_image_folder=True)[1]["images"].shape == (1, 3, 32, 32)
