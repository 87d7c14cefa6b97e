"""AnyRes (--image_aspect_ratio anyres / anyres_max_N) in training, budgets, the feature cache and inference."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from helpers import read_jsonl, write_questions
from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import Tiles
from llava.model.builder import ensure_pad_token
from llava.model.llava_arch import anyres_for
from llava.model.registry import get_backbone
from llava.preprocess import sequence_lengths
from llava.records import InvalidRecord
from llava.train import feature_cache
from llava.train.collator import DataCollatorForSupervisedDataset
from llava.train.dataset import LazySupervisedDataset
from llava.train.train import train

PINPOINTS = "(1x1),...,(3x3)"  # tiles of the tiny tower's 32 px: canvases up to 96 x 96
# (width, height): tall, wide, square, large, tiny
SIZES = [(20, 70), (90, 30), (48, 48), (100, 64), (6, 9)]


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    """Records whose images have several aspect ratios; colours the answers name."""
    root = tmp_path_factory.mktemp("anyres-data")
    (root / "images").mkdir()
    colours = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}
    records = []
    for i in range(12):
        name, rgb = list(colours.items())[i % 3]
        size = SIZES[i % len(SIZES)]
        Image.new("RGB", size, rgb).save(root / "images" / f"{i}.png")
        records.append({"id": f"r{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the picture?"}, {"from": "gpt", "value": f"It is {name}."}]})
    records.append({"id": "text", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]})
    (root / "train.json").write_text(json.dumps(records))
    return {"root": root, "data": str(root / "train.json"), "images": str(root / "images"), "records": records}


def tiny_model(tiny_llm, tiny_clip, aspect="anyres_max_4", merge="spatial_unpad", max_length=512):
    torch.manual_seed(0)
    model = get_backbone("phi").model_class.from_pretrained(tiny_llm("phi"), dtype=torch.float32)
    model.get_model().initialize_vision_modules(tiny_clip, "mlp2x_gelu", -2, "patch", mm_patch_merge_type=merge)
    model.config.image_aspect_ratio = aspect
    model.config.image_grid_pinpoints = PINPOINTS
    model.config.tokenizer_model_max_length = max_length
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm("phi"))
    ensure_pad_token(tokenizer)
    return model, tokenizer


def dataset(model, tokenizer, data, max_length=512, cache=None, **kwargs):
    tower = model.get_vision_tower()
    return LazySupervisedDataset(
        data["data"], tokenizer, "phi", image_folder=data["images"], image_processor=tower.load_image_processor(),
        model_config=model.config, max_length=max_length, image_tokens=tower.num_patches, feature_cache=cache,
        anyres=anyres_for(model.config, tower), **kwargs,
    )


@pytest.mark.parametrize("aspect, merge", [("anyres", "flat"), ("anyres", "spatial"), ("anyres", "spatial_unpad"),
                                           ("anyres_max_1", "spatial_unpad")])
def test_counted_lengths_equal_the_sequences_the_model_builds(aspect, merge, tiny_llm, tiny_clip, shapes_data):
    """The dataset's exact lengths (length grouping), the collator's (packing) and the model's merged
    sequences agree for every image size; the counts differ between sizes."""
    model, tokenizer = tiny_model(tiny_llm, tiny_clip, aspect, merge)
    data = dataset(model, tokenizer, shapes_data)
    counted = [abs(n) for n in data.modality_token_lengths]
    collator = DataCollatorForSupervisedDataset(tokenizer, image_shape=model.get_vision_tower().pixel_shape)
    model.eval()
    for i in range(len(data)):
        item = data[i]
        assert collator.positions(item) == counted[i]
        batch = collator([item])
        with torch.no_grad():
            merged = model.prepare_inputs_labels_for_multimodal(
                batch["input_ids"], None, batch["attention_mask"], None, batch["labels"], batch.get("images"),
                batch.get("image_sizes"))
        embeds = merged[4] if merged[4] is not None else batch["input_ids"]
        assert embeds.shape[1] == counted[i]
    image_counts = {tuple(data[i]["image_sizes"][0]): data[i]["image_tokens"][0] for i in range(len(SIZES))}
    assert len(set(image_counts.values())) > 1 or merge == "spatial_unpad" and aspect == "anyres_max_1"


def test_a_record_just_over_the_budget_is_cut_after_its_image_or_refused(tiny_llm, tiny_clip, shapes_data, tmp_path):
    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    anyres = anyres_for(model.config, model.get_vision_tower())
    size = (100, 64)
    Image.new("RGB", size, (200, 10, 10)).save(tmp_path / "wide.png")
    image_tokens = anyres.tokens(size)
    assert image_tokens > 16  # more than one tile's patches

    def record(question, answer):
        return {"id": "long", "image": "wide.png", "conversations": [
            {"from": "human", "value": question}, {"from": "gpt", "value": answer}]}

    after = record("<image>\nDescribe it.", "red " * 30)
    full = sequence_lengths([(after["conversations"], 1, [image_tokens])], tokenizer, "phi")[0]
    (tmp_path / "after.json").write_text(json.dumps([after]))
    data = {"data": str(tmp_path / "after.json"), "images": str(tmp_path)}
    item = dataset(model, tokenizer, data, max_length=full - 1)[0]
    assert item["image_tokens"] == [image_tokens]
    assert len(item["input_ids"]) - 1 + image_tokens == full - 1  # one position over: one text token cut
    assert int((item["input_ids"] == IMAGE_TOKEN_INDEX).sum()) == 1

    # A budget ending inside the image would split it: the record is refused (a single image goes first
    # in the first turn, so the cut falls after the template's opening text and half the image).
    from llava.preprocess import preprocess

    opening = preprocess(after["conversations"], tokenizer, "phi", num_images=1).input_ids.tolist().index(IMAGE_TOKEN_INDEX)
    with pytest.raises(InvalidRecord, match="would cut into the images"):
        dataset(model, tokenizer, data, max_length=opening + image_tokens // 2)[0]


def test_the_model_refuses_to_cut_inside_an_anyres_image(tiny_llm, tiny_clip, shapes_data):
    model, tokenizer = tiny_model(tiny_llm, tiny_clip, max_length=40)
    data = dataset(model, tokenizer, shapes_data, max_length=None)
    batch = DataCollatorForSupervisedDataset(tokenizer, image_shape=model.get_vision_tower().pixel_shape)([data[3]])
    with pytest.raises(ValueError, match="would split an image's"):
        model(**batch)


def test_cached_tiles_give_the_same_loss_and_gradients(tiny_llm, tiny_clip, shapes_data, tmp_path):
    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    tower = model.get_vision_tower()
    plain = dataset(model, tokenizer, shapes_data)
    cache = feature_cache.ensure(str(tmp_path / "cache"), tower, tower.load_image_processor(), "anyres_max_4",
                                 plain.image_files(), image_grid_pinpoints=PINPOINTS)
    anyres = anyres_for(model.config, tower)
    assert cache.array.shape[0] == sum(anyres.num_tiles(s) for s in (SIZES * 3)[:12])  # every image's tiles
    cached = dataset(model, tokenizer, shapes_data, cache=cache)
    items = list(range(6)) + [12]
    pixels = DataCollatorForSupervisedDataset(tokenizer, image_shape=tower.pixel_shape)([plain[i] for i in items])
    features = DataCollatorForSupervisedDataset(tokenizer, feature_shape=cache.feature_shape)([cached[i] for i in items])
    assert torch.equal(pixels["image_sizes"], features["image_sizes"])
    results = []
    for batch in (pixels, features):
        model.train()
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        results.append((loss.detach(), model.get_model().image_newline.grad.clone()))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)
    assert results[0][1].abs().sum() > 0  # the newline learns

    # anyres_max_N shrinks features after the tower: its cache is anyres' cache, reused.
    again = feature_cache.ensure(str(tmp_path / "cache"), tower, tower.load_image_processor(), "anyres",
                                 plain.image_files(), image_grid_pinpoints=PINPOINTS)
    assert again.key == cache.key
    other = feature_cache.ensure(str(tmp_path / "cache"), tower, tower.load_image_processor(), "anyres",
                                 plain.image_files(), image_grid_pinpoints="(1x1),...,(2x2)")
    assert other.key != cache.key


@pytest.mark.slow
def test_anyres_run_with_cache_grouping_and_packing_saves_reloads_generates_and_answers(
        tiny_llm, tiny_clip, shapes_data, tmp_path):
    from llava.eval.model_vqa import main as model_vqa
    from llava.inference import InferenceEngine

    out = tmp_path / "ft"
    train(["--model_name_or_path", tiny_llm("phi"), "--vision_tower", tiny_clip, "--data_path", shapes_data["data"],
           "--image_folder", shapes_data["images"], "--mm_projector_type", "mlp2x_gelu",
           "--image_aspect_ratio", "anyres_max_4", "--image_grid_pinpoints", PINPOINTS,
           "--mm_patch_merge_type", "spatial_unpad", "--vision_feature_cache", str(tmp_path / "cache"),
           "--train_sampling_strategy", "group_by_length", "--packing", "True",
           "--per_device_train_batch_size", "4", "--max_steps", "3", "--learning_rate", "1e-3",
           "--model_max_length", "512", "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no",
           "--output_dir", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert (config["image_aspect_ratio"], config["image_grid_pinpoints"], config["mm_patch_merge_type"]) == (
        "anyres_max_4", PINPOINTS, "spatial_unpad")

    engine = InferenceEngine.from_pretrained(str(out))
    init, _ = tiny_model(tiny_llm, tiny_clip)
    assert not torch.equal(engine.model.get_model().image_newline, init.get_model().image_newline)  # trained, saved
    items = []
    for size in SIZES:
        conv = engine.new_conversation()
        engine.add_user_turn(conv, "What colour is the picture?", has_image=True)
        pixels = engine.process_image(Image.new("RGB", size, (30, 200, 60)))
        assert isinstance(pixels, Tiles) and pixels.size == size
        items.append(engine.prepare(conv, pixels))
    batched = engine.generate(items)
    assert batched == [engine.generate([item])[0] for item in items]  # batching tiles of different counts

    questions = write_questions(str(tmp_path / "q.jsonl"), [
        {"question_id": i, "image": f"{i}.png", "text": "What colour is the picture?"} for i in range(5)])
    answers = tmp_path / "answers.jsonl"
    model_vqa(["--model-path", str(out), "--question-file", questions, "--image-folder", shapes_data["images"],
               "--answers-file", str(answers), "--max_new_tokens", "4", "--batch-size", "2"])
    assert [r["question_id"] for r in read_jsonl(str(answers))] == list(range(5))


@pytest.mark.slow
def test_benchmark_rows_at_a_toy_size():
    from benchmarks import anyres as bench
    from benchmarks.common import check_row

    toy = dict(tower_hidden=32, tower_layers=1, image_size=32, patch_size=8, llm_hidden=64, llm_layers=1, images=4,
               image_width=90, image_height=60, batch_size=2, steps=1, warmup_steps=0)
    rows = bench.run("cpu", repeats=1, config=toy)
    for r in rows:
        check_row(r)
    positions = {r["case"]: r["value"] for r in rows if r["metric"] == "positions_per_sample"}
    assert positions["pad"] < positions["anyres_max_2"] < positions["anyres"]


@pytest.mark.slow
def test_zero3_two_processes_train_anyres_with_image_newline(tiny_llm, tiny_clip, shapes_data, tmp_path):
    """Under ZeRO-3 the parameters are partitioned; image_newline (used outside any submodule's forward) must
    still be gathered for the merge, and text-only batches keep the ranks in lockstep."""
    import subprocess

    from test_train_run import REPO

    out = tmp_path / "ft"
    env = {**os.environ, "MODEL_PATH": tiny_llm("phi"), "VISION_TOWER": tiny_clip, "DATA_PATH": shapes_data["data"],
           "IMAGE_FOLDER": shapes_data["images"], "RUN_NAME": "test", "OUTPUT_DIR": str(out), "MAX_STEPS": "3",
           "SAVE_STEPS": "3", "BATCH_SIZE": "2", "NUM_GPUS": "2",
           "EXTRA_ARGS": f"--image_aspect_ratio anyres_max_4 --image_grid_pinpoints {PINPOINTS} "
                         "--mm_patch_merge_type spatial_unpad --model_max_length 512"}
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "finetune.sh")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=400, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "ZeRO-3" in log and f"checkpoint in {out}" in log
    from safetensors.torch import load_file

    weights = load_file(str(out / "model.safetensors"))
    newline = weights["model.image_newline"]
    assert newline.numel() == 64 and torch.isfinite(newline).all() and newline.abs().sum() > 0
