"""Ranks whose micro-batches hold different modalities stay in lockstep (issue 16, part 1).

ZeRO-3 gathers each module's parameters when the module runs, and ZeRO-2/3 reduce gradients in
buckets in the order they become ready: every rank must run the same modules in the same order
and produce the same gradients in the same order, whether its batch has images or not.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from llava.train import feature_cache
from llava.train.collator import DataCollatorForSupervisedDataset
from llava.train.train import train

from test_feature_cache import dataset, tiny_model
from test_train_run import REPO, log_history, losses


def trace(model, batch) -> tuple[list[str], list[str]]:
    """(modules with parameters in the order they ran, parameters in the order their gradient was ready)."""
    ran, ready, handles = [], [], []
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            handles.append(module.register_forward_pre_hook(lambda m, a, name=name: ran.append(name)))
    for name, param in model.named_parameters():
        if param.requires_grad:
            handles.append(param.register_post_accumulate_grad_hook(lambda p, name=name: ready.append(name)))
    try:
        model.zero_grad()
        model(**batch).loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    return ran, ready


@pytest.mark.parametrize("variant", ["pixels", "pixels-tower-trains-checkpointing", "feature-cache"])
def test_image_text_and_mixed_batches_run_the_same_modules_in_the_same_order(
        tiny_llm, tiny_clip, demo_data, tmp_path, variant):
    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    model.train()
    if "tower-trains" in variant:
        model.get_vision_tower().vision_tower.requires_grad_(True)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    data = dataset(demo_data["finetune"], tokenizer, model, demo_data["image_folder"], "phi")
    if variant == "feature-cache":
        cache = feature_cache.ensure(str(tmp_path / "cache"), model.get_vision_tower(),
                                     model.get_vision_tower().load_image_processor(), "square", data.image_files())
        data = dataset(demo_data["finetune"], tokenizer, model, demo_data["image_folder"], "phi", cache)
        collate = DataCollatorForSupervisedDataset(tokenizer, feature_shape=cache.feature_shape)
    else:
        collate = DataCollatorForSupervisedDataset(tokenizer, image_shape=(3, 32, 32))
    image = [i for i, r in enumerate(data.records) if "image" in r][:2]
    text = [i for i, r in enumerate(data.records) if "image" not in r][:1]
    assert image and text
    batches = {"images": image, "text": text, "mixed": [image[0], text[0]]}
    traces = {kind: trace(model, collate([data[i] for i in indices])) for kind, indices in batches.items()}

    ran, ready = traces["images"]
    assert ran.index("model.mm_projector.0") < ran.index("model.embed_tokens")  # vision first
    if variant == "feature-cache":
        assert not any("vision_tower" in name for name in ran)  # the cache replaces the tower on every rank
    else:
        assert any("vision_tower" in name for name in ran)
    assert {n for n in ready if "mm_projector" in n} == {n for n, _ in model.get_model().mm_projector.named_parameters(
        prefix="model.mm_projector")}
    assert any("vision_tower" in n for n in ready) == ("tower-trains" in variant)
    for kind in ("text", "mixed"):
        assert traces[kind][0] == ran, f"{kind} batch ran other modules or another order than an image batch"
        assert traces[kind][1] == ready, f"{kind} batch produced gradients in another order than an image batch"


def test_a_text_only_batch_gets_zero_vision_gradients_and_the_loss_of_the_text(tiny_llm, tiny_clip, demo_data):
    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    model.train()
    data = dataset(demo_data["finetune"], tokenizer, model, demo_data["image_folder"], "phi")
    text = next(i for i, r in enumerate(data.records) if "image" not in r)
    batch = DataCollatorForSupervisedDataset(tokenizer, image_shape=(3, 32, 32))([data[text]])
    loss = model(**batch).loss
    loss.backward()
    for param in model.get_model().mm_projector.parameters():
        assert param.grad is not None and not param.grad.any()
    plain = {k: v for k, v in batch.items() if k != "images"}
    torch.testing.assert_close(model(**plain).loss, loss, rtol=1e-6, atol=1e-6)
    model.eval()
    with torch.no_grad():  # single-process inference skips the placeholder
        calls = []
        handle = model.get_model().mm_projector.register_forward_pre_hook(lambda *a: calls.append(1))
        model(**batch)
        handle.remove()
    assert not calls


# -- 2 DeepSpeed processes -----------------------------------------------------------------------------
# Records in file order, two per step (rank 0 gets the first, rank 1 the second): every combination,
# with one rank holding an image and the other none at most steps.
STEPS = ("IT", "TI", "II", "TT", "IT", "TI")


def alternating_data(demo_data, path) -> str:
    images = iter(r for r in json.load(open(demo_data["finetune"])) if "image" in r)
    texts = iter({"id": f"text-{i}", "conversations": [
        {"from": "human", "value": f"Question {i}: how many sides does a square have?"},
        {"from": "gpt", "value": "four" + " sides" * (i % 3)}]} for i in range(100))
    records = [next(images) if kind == "I" else next(texts) for step in STEPS for kind in step]
    path.write_text(json.dumps(records))
    return str(path)


COMMON = ["--train_sampling_strategy", "sequential", "--group_by_modality_length", "False"]
VARIANTS = {
    "zero2-tower-trains": ("2", ["--train_modules", "projector,llm,vision_tower"]),
    "zero3": ("3", []),
    "zero3-feature-cache": ("3", ["--vision_feature_cache", "{cache}"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_ranks_with_different_modalities_train_like_one_process(
        tiny_llm, tiny_clip, demo_data, tmp_path, variant):
    """Used to abort at step 1 with a gloo size mismatch (ZeRO-2 gradient buckets, ZeRO-3 parameter fetch)."""
    zero, extra = VARIANTS[variant]
    extra = [a.format(cache=tmp_path / "cache") for a in extra]
    data = alternating_data(demo_data, tmp_path / "alternating.json")
    out = tmp_path / "two"
    env = {**os.environ, "MODEL_PATH": tiny_llm("phi"), "VISION_TOWER": tiny_clip, "DATA_PATH": data,
           "IMAGE_FOLDER": demo_data["image_folder"], "RUN_NAME": "lockstep", "OUTPUT_DIR": str(out),
           "MAX_STEPS": str(len(STEPS)), "SAVE_STEPS": "100", "BATCH_SIZE": "1", "NUM_GPUS": "2", "ZERO": zero,
           "LR": "1e-3", "EXTRA_ARGS": " ".join(COMMON + extra)}
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "finetune.sh")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert f"ZeRO-{zero}" in proc.stdout

    # One process, no DeepSpeed, both records of each step in one batch: the launcher's other flags.
    single = tmp_path / "one"
    train(["--model_name_or_path", tiny_llm("phi"), "--vision_tower", tiny_clip, "--image_folder",
           demo_data["image_folder"], "--data_path", data, "--mm_projector_type", "mlp2x_gelu",
           "--output_dir", str(single), "--max_steps", str(len(STEPS)), "--per_device_train_batch_size", "2",
           "--save_strategy", "no", "--weight_decay", "0.", "--warmup_steps", "0.03", "--lr_scheduler_type", "cosine",
           "--logging_steps", "1", "--report_to", "none", "--image_aspect_ratio", "pad", "--gradient_checkpointing",
           "True", "--learning_rate", "1e-3", "--model_max_length", "2048", *COMMON, *extra])
    expected, got = losses(single), losses(out)
    assert sorted(got) == list(range(1, len(STEPS) + 1))
    assert expected[len(STEPS)] < expected[1] - 0.3  # it learns, so a wrong gradient would show
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5), (step, got, expected)

    # The training monitors (llava/train/monitors.py) sum over ranks: the same numbers as one process,
    # feature RMS and spread, and each group's gradient norm from ZeRO-2/3 partitions.
    def monitors(out):
        return {e["step"]: {k: v for k, v in e.items() if k.startswith(("monitor/", "grad_norm/"))}
                for e in log_history(out) if "loss" in e}

    one, two = monitors(single), monitors(out)
    for step, values in one.items():
        assert set(two[step]) == set(values), (step, two[step], values)
        assert two[step] == pytest.approx(values, rel=1e-4), (step, two[step], values)
    assert any("monitor/image_spread" in v for v in one.values()) and "grad_norm/projector" in one[1]
    assert ("grad_norm/vision_tower" in one[1]) == ("vision_tower" in " ".join(extra))
