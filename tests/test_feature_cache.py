"""The vision feature cache (--vision_feature_cache): same results as running the tower, reuse and invalidation."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, CLIPImageProcessor

from llava.model.builder import ensure_pad_token
from llava.model.registry import get_backbone
from llava.records import InvalidRecord
from llava.train import feature_cache
from llava.train.arguments import parse_args, resolve_train_modules
from llava.train.collator import DataCollatorForSupervisedDataset
from llava.train.dataset import LazySupervisedDataset
from llava.train.train import train

from test_train_run import base_args, losses, stage1  # noqa: F401  (fixture and helpers shared with the run tests)


def tiny_model(tiny_llm, tiny_clip, select_layer=-2):
    torch.manual_seed(0)
    model = get_backbone("phi").model_class.from_pretrained(tiny_llm("phi"), dtype=torch.float32)
    model.get_model().initialize_vision_modules(tiny_clip, "mlp2x_gelu", select_layer, "patch")
    model.config.image_aspect_ratio = "square"
    model.config.tokenizer_model_max_length = 256
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm("phi"))
    ensure_pad_token(tokenizer)
    return model, tokenizer


def dataset(data_path, tokenizer, model, image_folder, template, cache=None):
    tower = model.get_vision_tower()
    return LazySupervisedDataset(
        data_path, tokenizer, template, image_folder=image_folder, image_processor=tower.load_image_processor(),
        model_config=model.config, max_length=256, image_tokens=tower.num_patches, feature_cache=cache,
    )


def ensure(directory, model, paths, processor=None, aspect="square"):
    tower = model.get_vision_tower()
    return feature_cache.ensure(str(directory), tower, processor or tower.load_image_processor(), aspect, paths)


def loss_and_projector_grads(model, batch):
    model.train()
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.get_model().mm_projector.named_parameters()}
    return loss.detach(), grads


@pytest.mark.parametrize("data", ["pretrain", "finetune"])
def test_cached_features_give_the_same_loss_and_projector_gradients(tiny_llm, tiny_clip, demo_data, tmp_path, data):
    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    template = "plain" if data == "pretrain" else "phi"
    plain = dataset(demo_data[data], tokenizer, model, demo_data["image_folder"], template)
    cache = ensure(tmp_path / "cache", model, plain.image_files())
    cached = dataset(demo_data[data], tokenizer, model, demo_data["image_folder"], template, cache)
    tower = model.get_vision_tower()
    size = tower.load_image_processor().crop_size
    with_pixels = DataCollatorForSupervisedDataset(tokenizer, image_shape=(3, size["height"], size["width"]))
    with_features = DataCollatorForSupervisedDataset(tokenizer, feature_shape=cache.feature_shape)

    has_image = [i for i, r in enumerate(plain.records) if "image" in r]
    text_only = [i for i, r in enumerate(plain.records) if "image" not in r]
    batches = [has_image[:4]] + ([text_only[:2]] if text_only else [])
    assert data == "pretrain" or text_only, "the finetune demo data should hold text-only records"
    for indices in batches:
        a = with_pixels([plain[i] for i in indices])
        b = with_features([cached[i] for i in indices])
        assert "images" not in b and b["image_features"].shape[1:] == (tower.num_patches, tower.hidden_size)
        torch.testing.assert_close(b["input_ids"], a["input_ids"], rtol=0, atol=0)
        loss_a, grads_a = loss_and_projector_grads(model, a)
        loss_b, grads_b = loss_and_projector_grads(model, b)
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-6)
        assert grads_b.keys() == grads_a.keys()
        for name in grads_a:  # on a text-only batch: zeros, but present (the projector ran on every rank)
            torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-7)


def test_samples_carry_cached_features_without_decoding_images(tiny_llm, tiny_clip, demo_data, tmp_path, monkeypatch):
    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    plain = dataset(demo_data["pretrain"], tokenizer, model, demo_data["image_folder"], "plain")
    cache = ensure(tmp_path / "cache", model, plain.image_files())
    cached = dataset(demo_data["pretrain"], tokenizer, model, demo_data["image_folder"], "plain", cache)

    def no_decode(*args):
        raise AssertionError("an image was decoded although its features are cached")

    monkeypatch.setattr("llava.train.dataset.load_image", no_decode)
    item = cached[0]
    assert "images" not in item
    monkeypatch.undo()
    # The cached row is the tower's output for that image.
    with torch.no_grad():
        fresh = model.get_vision_tower()(plain[0]["images"])
    torch.testing.assert_close(item["image_features"], fresh, rtol=1e-6, atol=1e-6)
    assert isinstance(cache.array, np.memmap) and cache.array.shape[0] == len(plain.image_files())


def test_reused_when_settings_match_and_recomputed_when_they_change(tiny_llm, tiny_clip, demo_data, tmp_path,
                                                                     monkeypatch, caplog):
    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    paths = dataset(demo_data["pretrain"], tokenizer, model, demo_data["image_folder"], "plain").image_files()
    builds = []
    real_build = feature_cache.build
    monkeypatch.setattr(feature_cache, "build", lambda *a, **k: (builds.append(1), real_build(*a, **k)))
    directory = tmp_path / "cache"

    def run(**kwargs):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="llava.train.feature_cache"):
            cache = ensure(directory, model, paths, **kwargs)
        return cache, caplog.text

    first, log = run()
    assert len(builds) == 1 and "no cache yet" in log
    assert isinstance(first.array, np.memmap)
    assert sorted(os.listdir(directory)) == [f"features-{first.key}.npy", "index.json"]

    again, log = run()
    assert len(builds) == 1 and "up to date" in log and again.key == first.key

    model.get_vision_tower().select(-1, "patch")
    changed, log = run()
    assert len(builds) == 2 and "select_layer changed" in log and changed.key != first.key
    assert sorted(os.listdir(directory)) == [f"features-{changed.key}.npy", "index.json"]  # old array removed
    model.get_vision_tower().select(-2, "patch")

    processor = CLIPImageProcessor.from_pretrained(tiny_clip)
    processor.image_mean = [0.5, 0.5, 0.5]
    _, log = run(processor=processor)
    assert len(builds) == 3 and "image_processor changed" in log

    _, log = run(aspect="pad")
    assert len(builds) == 4 and "image_aspect_ratio changed" in log

    with torch.no_grad():
        model.get_vision_tower().vision_tower.post_layernorm.weight.add_(1.0)
    _, log = run(aspect="pad")
    assert len(builds) == 5 and "tower_weights changed" in log

    _, log = run(aspect="pad")
    assert len(builds) == 5 and "up to date" in log
    ensure(directory, model, paths[:3], aspect="pad")  # a subset is served by the same cache
    assert len(builds) == 5


def test_bfloat16_features_round_trip(tiny_llm, tiny_clip, demo_data, tmp_path):
    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    tower = model.get_vision_tower().to(torch.bfloat16)
    plain = dataset(demo_data["pretrain"], tokenizer, model, demo_data["image_folder"], "plain")
    cache = ensure(tmp_path / "cache", model, plain.image_files()[:4])
    assert json.loads((tmp_path / "cache" / "index.json").read_text())["dtype"] == "bfloat16"
    features = cache.lookup(plain.image_files()[:2])
    with torch.no_grad():
        fresh = tower(torch.cat([plain[0]["images"], plain[1]["images"]]))
    assert features.dtype == torch.bfloat16
    torch.testing.assert_close(features, fresh, rtol=0, atol=0)


def test_unreadable_image_is_reported_like_a_corrupt_file(tiny_llm, tiny_clip, demo_data, tmp_path):
    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    folder = tmp_path / "images"
    folder.mkdir()
    records = json.loads(open(demo_data["pretrain"]).read())[:2]
    for record in records:
        shutil.copy(os.path.join(demo_data["image_folder"], record["image"]), folder / record["image"])
    os.remove(folder / records[1]["image"])
    (folder / records[1]["image"]).write_bytes(b"not an image")
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    plain = dataset(str(data), tokenizer, model, str(folder), "plain")
    cache = ensure(tmp_path / "cache", model, plain.image_files())
    cached = dataset(str(data), tokenizer, model, str(folder), "plain", cache)
    assert cached[0]["image_features"].shape[0] == 1
    with pytest.raises(InvalidRecord, match="cannot be read") as error:
        cached[1]
    assert error.value.kind == "corrupt image"


def test_an_unfrozen_tower_is_a_clear_error(tiny_llm, tiny_clip, demo_data, tmp_path):
    args = ["--model_name_or_path", tiny_llm("phi"), "--vision_tower", tiny_clip, "--data_path", demo_data["pretrain"],
            "--output_dir", str(tmp_path), "--train_modules", "projector,vision_tower",
            "--vision_feature_cache", str(tmp_path / "cache")]
    model_args, _, training_args = parse_args(args)
    with pytest.raises(ValueError, match="--vision_feature_cache needs a frozen vision tower"):
        resolve_train_modules(model_args, training_args)
    model, _ = tiny_model(tiny_llm, tiny_clip)
    model.get_vision_tower().vision_tower.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen vision tower"):
        ensure(tmp_path / "cache", model, [])


def test_stage1_run_with_the_cache_matches_the_run_without(base_args, demo_data, tmp_path):  # noqa: F811
    cache = tmp_path / "cache"
    stage1(base_args, demo_data, tmp_path / "pixels", "--max_steps", "5", "--save_steps", "5")
    stage1(base_args, demo_data, tmp_path / "cached", "--max_steps", "5", "--save_steps", "5",
           "--vision_feature_cache", str(cache))
    # Reused on a second run (the file is not rewritten), with the same losses again.
    array = next(p for p in os.listdir(cache) if p.endswith(".npy"))
    written = os.stat(cache / array).st_mtime_ns
    stage1(base_args, demo_data, tmp_path / "reused", "--max_steps", "5", "--save_steps", "5",
           "--vision_feature_cache", str(cache), "--lazy_preprocess", "False")
    assert os.stat(cache / array).st_mtime_ns == written
    expected = losses(tmp_path / "pixels")
    assert sorted(expected) == [1, 2, 3, 4, 5]
    for run in ("cached", "reused"):
        got = losses(tmp_path / run)
        assert got.keys() == expected.keys()
        for step in expected:
            assert got[step] == pytest.approx(expected[step], rel=1e-5)
    a = torch.load(tmp_path / "pixels" / "mm_projector.bin", weights_only=True)
    b = torch.load(tmp_path / "cached" / "mm_projector.bin", weights_only=True)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)


def test_command_line_builds_the_cache_training_reuses(tiny_llm, tiny_clip, demo_data, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    feature_cache.main(["--vision_tower", tiny_clip, "--data_path", demo_data["pretrain"],
                        "--image_folder", demo_data["image_folder"], "--out", str(out), "--device", "cpu"])
    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    paths = dataset(demo_data["pretrain"], tokenizer, model, demo_data["image_folder"], "plain").image_files()
    monkeypatch.setattr(feature_cache, "build", lambda *a, **k: pytest.fail("the command-line cache was not reused"))
    cache = ensure(out, model, paths)
    assert cache.array.shape[0] == len(paths)


@pytest.mark.slow
def test_two_deepspeed_processes_zero3_share_one_cache(tiny_llm, tiny_clip, demo_data, tmp_path):
    """Rank 0 builds while rank 1 waits, then rank 1 must find the cache valid (else it raises); text-only
    batches run the projector alone on every rank under ZeRO-3."""
    import subprocess

    from test_train_run import REPO

    cache, out = tmp_path / "cache", tmp_path / "ft"
    env = {**os.environ, "MODEL_PATH": tiny_llm("phi"), "VISION_TOWER": tiny_clip,
           "DATA_DIR": os.path.dirname(demo_data["finetune"]), "IMAGE_FOLDER": demo_data["image_folder"],
           "RUN_NAME": "test", "OUTPUT_DIR": str(out), "MAX_STEPS": "3", "SAVE_STEPS": "3", "BATCH_SIZE": "2",
           "NUM_GPUS": "2", "EXTRA_ARGS": f"--vision_feature_cache {cache} --group_by_modality_length True"}
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "finetune.sh")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=400, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "ZeRO-3" in log and log.count("computing the vision feature cache") == 1
    assert f"checkpoint in {out}" in log
    index = json.loads((cache / "index.json").read_text())
    assert index["shape"][0] == len({r["image"] for r in json.load(open(demo_data["finetune"])) if "image" in r})


def test_benchmark_rows_at_a_toy_size():
    from benchmarks import feature_cache as bench

    toy = dict(tower_hidden=32, tower_layers=1, image_size=32, patch_size=8, llm_hidden=64, llm_layers=1, images=8,
               image_width=64, image_height=48, batch_size=4, steps=1, warmup_steps=1)
    rows = bench.run("cpu", repeats=1, config=toy)
    assert [r["metric"] for r in rows] == ["steps_per_s", "steps_per_s", "seconds", "steps", "ratio"]
    for r in rows:
        assert r["benchmark"] == "feature_cache" and len(r["values"]) == 1 and r["value"] > 0
        assert r["config"]["tower_hidden"] == 32 and r["config"]["patches"] == 16
    ratio = rows[-1]
    assert ratio["target"] == ">= 2.0" and ratio["met"] == (ratio["value"] >= 2.0)
