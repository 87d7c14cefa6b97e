"""Converted OK-VQA and Instruct-150K fixtures train with the fine-tune launcher, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from llava.data import instruct, okvqa
from llava.model.builder import load_pretrained_model

sys.path.insert(0, os.path.dirname(__file__))
from test_data_instruct import slice_records  # noqa: E402
from test_data_okvqa import official_args, write_official  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_finetune_launcher(tiny_llm, tiny_clip, data_path, image_folder, output_dir):
    env = dict(
        os.environ,
        MODEL_PATH=tiny_llm("phi"),
        VISION_TOWER=tiny_clip,
        DATA_PATH=str(data_path),
        IMAGE_FOLDER=str(image_folder),
        OUTPUT_DIR=str(output_dir),
        RUN_NAME="converted-fixture",
        NUM_GPUS="1",
        MAX_STEPS="2",
        BATCH_SIZE="2",
        SAVE_STEPS="2",
        ZERO="2",
    )
    result = subprocess.run(
        ["bash", "scripts/finetune.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = json.loads((output_dir / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    _, model, image_processor, _ = load_pretrained_model(str(output_dir))
    assert model.get_vision_tower() is not None and image_processor is not None


@pytest.mark.slow
def test_converted_okvqa_trains(tiny_llm, tiny_clip, tmp_path):
    q, a, coco = write_official(tmp_path)
    out = tmp_path / "okvqa"
    assert okvqa.main(official_args(q, a, coco, out, "--short-answer-prompt")) in (None, 0)
    run_finetune_launcher(tiny_llm, tiny_clip, out / "llava_okvqa_val.json", out / "images", tmp_path / "ckpt")


@pytest.mark.slow
def test_converted_instruct_slice_trains(tiny_llm, tiny_clip, tmp_path):
    images = tmp_path / "data"
    for rel in ("coco/train2017/000000033471.jpg", "gqa/images/2354786.jpg", "ocr_vqa/images/3.jpg"):
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), "red").save(images / rel)
    source = tmp_path / "llava_v1_5_mix665k.json"
    source.write_text(json.dumps(slice_records()))
    converted = tmp_path / "instruct.json"
    result = instruct.convert([str(source)], str(converted), image_folder=str(images))
    assert result["written"] == 4  # the record with a missing image was dropped and counted
    run_finetune_launcher(tiny_llm, tiny_clip, converted, images, tmp_path / "ckpt")
