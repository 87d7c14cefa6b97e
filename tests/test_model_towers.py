"""Every vision tower family end to end: built from a folder as users bring it, features, training (full, LoRA,
QLoRA, resume), reload, generation, HF export and the feature cache; ZeRO-3 on 2 processes (slow).

CLIP's own runs are in test_train_run.py / test_export.py / test_feature_cache.py; here the other families,
each from a tiny random-init tower written by plain transformers `save_pretrained` with its own image processor.
Measured on 2 shared CPU cores (load average 4-5): 197 s in all, of which the four 2-process ZeRO-3 runs (slow)
take 25-43 s each and the rest 73 s (16 training runs of 1-2 steps: 47 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from transformers import (
    BitImageProcessor,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.model.layout import TOWER_COPY, checkpoint_kind
from llava.model.multimodal_encoder import TOWERS, load_vision_tower
from llava.train import feature_cache
from llava.train.train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
from fuse_vision_towers import main as write_fused  # noqa: E402  (the command users run)
SIZE, PATCH, WIDTH = dict(image_size=32, patch_size=8), 8, 32
LAYERS = dict(hidden_size=WIDTH, num_hidden_layers=3, num_attention_heads=2)
FAMILIES = ("siglip_vision_model", "dinov2", "dinov2_with_registers", "fused_vision_model")
PREFIX = {"siglip_vision_model": 0, "dinov2": 1, "dinov2_with_registers": 5}  # tokens before the patches


def _write(folder, model, processor) -> str:
    torch.manual_seed(0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> dict[str, str]:
    """Each family's tower folder as a user brings it: transformers' own classes and image processors."""
    root = tmp_path_factory.mktemp("towers")
    dino_processor = BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32},
                                       image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    made = {
        "siglip_vision_model": _write(root / "siglip", SiglipVisionModel(SiglipVisionConfig(**LAYERS, **SIZE, intermediate_size=64)),
                                      SiglipImageProcessor(size={"height": 32, "width": 32})),
        # Pretrained at twice the size its processor crops, as hub DINOv2 checkpoints are (518 vs 224).
        "dinov2": _write(root / "dinov2", Dinov2Model(Dinov2Config(**LAYERS, image_size=64, patch_size=PATCH)), dino_processor),
        "dinov2_with_registers": _write(root / "dinov2-reg", Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
            **LAYERS, image_size=64, patch_size=PATCH, num_register_tokens=4)), dino_processor),
    }
    made["fused_vision_model"] = str(root / "dinov2-siglip")
    write_fused(["--towers", made["dinov2"], made["siglip_vision_model"], "--out", made["fused_vision_model"]])
    return made


def _image(color=(20, 180, 60)):
    return Image.new("RGB", (40, 26), color)  # not square: 'pad' has work to do


def _pixels(tower, aspect="square"):
    config = type("Config", (), {"image_aspect_ratio": aspect})()
    return process_images([_image()], tower.load_image_processor(), config)


# -- building and features -----------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES[:3])
def test_features_are_the_hf_models_selected_layer_minus_its_prefix(towers, family):
    tower = load_vision_tower(towers[family])
    assert type(tower) is TOWERS[family] and tower.prefix_tokens == PREFIX[family]
    pixels = _pixels(tower)
    assert pixels.shape[1:] == tower.pixel_shape == (3, 32, 32)  # DINOv2: the processor's crop, not config's 64
    reference = type(tower.vision_tower).from_pretrained(towers[family]).eval()
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, PREFIX[family]:]
        features = tower(pixels)
    assert features.shape == (1, 16, WIDTH) and tower.num_patches == 16
    torch.testing.assert_close(features, expected, rtol=0, atol=0)
    tower.select(-1, "cls_patch")
    assert tower(pixels).shape == (1, 16 + PREFIX[family], WIDTH) and tower.num_patches == 16 + PREFIX[family]


def test_fused_features_are_its_parts_side_by_side(towers):
    from llava.mm_utils import expand2square, processor_mean_color

    fused = load_vision_tower(towers["fused_vision_model"])
    dino, siglip = (load_vision_tower(towers[f]) for f in ("dinov2", "siglip_vision_model"))
    pixels = _pixels(fused, "pad")
    assert pixels.shape[1:] == fused.pixel_shape == (6, 32, 32) and fused.hidden_size == 2 * WIDTH
    # Each part's own preprocessing; 'pad' fills with the first part's mean colour for both.
    assert torch.equal(pixels[:, :3], _pixels(dino, "pad"))
    padded = expand2square(_image(), processor_mean_color(dino.load_image_processor()))
    assert torch.equal(pixels[:, 3:], siglip.load_image_processor()(images=[padded], return_tensors="pt")["pixel_values"])
    with torch.no_grad():
        expected = torch.cat([dino(pixels[:, :3]), siglip(pixels[:, 3:])], dim=-1)
        features = fused(pixels)
    assert features.shape == (1, 16, 2 * WIDTH)
    torch.testing.assert_close(features, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="mm_vision_select_feature 'cls_patch': a fused tower concatenates"):
        fused.select(-2, "cls_patch")


@pytest.mark.parametrize("family", FAMILIES)
def test_pad_colour_is_the_processors_mean(towers, family):
    tower = load_vision_tower(towers[family])
    pixels = _pixels(tower, "pad")
    # The top rows are padding: the mean colour, which normalises to (about) zero in the first 3 channels.
    assert pixels.shape[1:] == tower.pixel_shape
    assert pixels[0, :3, 0].abs().max() < 0.02 and pixels[0, :3, 16].abs().max() > 0.1


def test_whole_siglip_checkpoints_give_their_vision_part_and_naflex_is_refused(tmp_path):
    torch.manual_seed(0)
    SiglipModel(SiglipConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
                             vision_config=dict(**LAYERS, **SIZE, intermediate_size=64))).save_pretrained(tmp_path / "whole")
    tower = load_vision_tower(str(tmp_path / "whole"))
    reference = SiglipVisionModel.from_pretrained(str(tmp_path / "whole"))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tower(pixels), reference(pixel_values=pixels, output_hidden_states=True).hidden_states[-2])
    (tmp_path / "naflex").mkdir()
    (tmp_path / "naflex" / "config.json").write_text(json.dumps({"model_type": "siglip2_vision_model"}))
    with pytest.raises(ValueError, match="'siglip2_vision_model' is not supported: SigLIP2 NaFlex .* fixed-resolution"):
        load_vision_tower(str(tmp_path / "naflex"))


def test_a_fused_tower_refuses_parts_with_different_patch_grids(towers, tmp_path):
    coarse = _write(tmp_path / "siglip16", SiglipVisionModel(SiglipVisionConfig(**LAYERS, image_size=32, patch_size=16,
                                                                                intermediate_size=64)),
                    SiglipImageProcessor(size={"height": 32, "width": 32}))
    with pytest.raises(ValueError, match=r"same patch grid \(dinov2: 32 px -> 4\^2 patches, siglip_vision_model: 32 px -> 2\^2"):
        write_fused(["--towers", towers["dinov2"], coarse, "--out", str(tmp_path / "fused")])
    with pytest.raises(ValueError, match="--towers: a fused tower needs at least two towers, got 1"):
        write_fused(["--towers", towers["dinov2"], "--out", str(tmp_path / "fused")])


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_writer_writes_each_family(family, tmp_path):
    from llava.model import tiny

    tiny.main(["--vision", "--tower", family, "--out", str(tmp_path)])
    tower = load_vision_tower(str(tmp_path))
    assert type(tower) is TOWERS[family] and _pixels(tower).shape[1:] == tower.pixel_shape
    assert tower(_pixels(tower)).shape == (1, tower.num_patches, tower.hidden_size)


# -- the feature cache ---------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_features_are_the_towers(towers, family, demo_data, tmp_path):
    tower = load_vision_tower(towers[family])
    processor = tower.load_image_processor()
    folder = demo_data["image_folder"]
    paths = [os.path.join(folder, name) for name in sorted(os.listdir(folder))[:3]]
    cache = feature_cache.ensure(str(tmp_path), tower, processor, "pad", paths)
    config = type("Config", (), {"image_aspect_ratio": "pad"})()
    with torch.no_grad():
        fresh = tower(process_images([Image.open(p).convert("RGB") for p in paths], processor, config))
    torch.testing.assert_close(cache.lookup(paths), fresh, rtol=0, atol=0)
    key = feature_cache.key_parts(tower, processor, "pad")
    with torch.no_grad():
        next(tower.vision_tower.parameters()).add_(1)  # any part's weights are in the key
    assert feature_cache.key_parts(tower, processor, "pad")["tower_weights"] != key["tower_weights"]


# -- training, reload, generation, export --------------------------------------------------------
@pytest.fixture(scope="module")
def runs(towers, tiny_llm, demo_data, tmp_path_factory):
    """Per family: full and QLoRA (1 step each), LoRA (2 steps, a checkpoint each) and its resume from checkpoint-1."""
    root = tmp_path_factory.mktemp("tower-runs")
    made = {}

    def run(family, name, *extra):
        out = root / family / name
        train(["--model_name_or_path", tiny_llm("phi"), "--vision_tower", towers[family],
               "--data_path", demo_data["finetune"], "--image_folder", demo_data["image_folder"],
               "--image_aspect_ratio", "pad", "--mm_projector_type", "mlp2x_gelu", "--per_device_train_batch_size", "2",
               "--learning_rate", "1e-3", "--logging_steps", "1", "--report_to", "none", "--model_max_length", "256",
               "--seed", "0", "--data_seed", "0", "--lazy_preprocess", "True", "--output_dir", str(out), *extra])
        return out

    def get(family):
        if family not in made:
            lora = ("--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8")
            once = ("--max_steps", "1", "--save_strategy", "no")
            # Resume on LoRA, whose checkpoints are small; the full run writes only its final checkpoint.
            first = run(family, "lora", *lora, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1")
            made[family] = {
                "full": run(family, "full", *once),
                "lora": first,
                "resumed": run(family, "resumed", *lora, "--max_steps", "2", "--save_strategy", "no",
                               "--resume_from_checkpoint", str(first / "checkpoint-1")),
                "qlora": run(family, "qlora", *lora, *once, "--bits", "4"),
            }
        return made[family]

    return get


def _losses(out):
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {e["step"]: e["loss"] for e in history if "loss" in e}


def _logits(model, tower):
    ids = torch.tensor([[1, 2, IMAGE_TOKEN_INDEX, 3, 4]])
    with torch.no_grad():
        return model(input_ids=ids, images=_pixels(tower, "pad")).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_training_runs_resume_and_reload(runs, towers, family, tmp_path):
    out = runs(family)
    losses = _losses(out["lora"])
    assert sorted(losses) == [1, 2] and all(v > 0 for v in losses.values()) and _losses(out["full"])[1] > 0
    assert _losses(out["resumed"])[2] == pytest.approx(losses[2], rel=1e-4)  # resumed like the uninterrupted run
    assert [checkpoint_kind(str(out[k])) for k in ("full", "lora", "qlora")] == ["full", "lora", "lora"]

    _, model, processor, _ = load_pretrained_model(str(out["full"]), device="cpu")
    tower = model.get_vision_tower()
    assert type(tower) is TOWERS[family] and json.loads((out["full"] / "config.json").read_text())[
        "mm_vision_config"]["model_type"] == family
    source = load_vision_tower(towers[family]).vision_tower.state_dict()
    for name, tensor in tower.vision_tower.state_dict().items():  # frozen: the source's weights
        assert torch.equal(tensor, source[name]), name
    assert processor.to_json_string() == tower.load_image_processor(towers[family]).to_json_string()

    # A LoRA checkpoint carries its tower (all parts of a fused one) and loads the same without the original.
    _, lora, _, _ = load_pretrained_model(str(out["lora"]), device="cpu")
    moved = shutil.copytree(out["lora"], tmp_path / "moved")
    config = json.loads((moved / "config.json").read_text())
    config["mm_vision_tower"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(config))
    assert (moved / TOWER_COPY / "model.safetensors").exists()
    _, reloaded, _, _ = load_pretrained_model(str(moved), device="cpu")
    torch.testing.assert_close(_logits(reloaded, tower), _logits(lora, tower), rtol=0, atol=0)

    bnb = pytest.importorskip("bitsandbytes")
    _, quantized, _, _ = load_pretrained_model(str(out["qlora"]), device="cpu", load_4bit=True)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in quantized.modules())
    assert _logits(quantized, tower).isfinite().all()


@pytest.mark.parametrize("family", FAMILIES)
def test_generates(runs, family):
    tokenizer, model, processor, _ = load_pretrained_model(str(runs(family)["full"]), device="cpu")
    ids = tokenizer_image_token("<image>\nWhat shape is this?", tokenizer, return_tensors="pt")[None]
    images = process_images([_image()], processor, model.config)
    new = model.generate(ids, images=images, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert new.shape == (1, 4)


def _assert_export_matches(checkpoint: str, out_dir, strategy: str) -> None:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from llava.export.hf import export
    from llava.inference import InferenceEngine

    export(checkpoint, str(out_dir))
    hf_model = LlavaForConditionalGeneration.from_pretrained(str(out_dir)).eval()
    hf_processor = AutoProcessor.from_pretrained(str(out_dir))
    engine = InferenceEngine.from_pretrained(checkpoint)
    conv = engine.new_conversation()
    engine.add_user_turn(conv, "What is this?", has_image=True)
    item = engine.prepare(conv, _image())
    n = engine.model.get_vision_tower().num_patches
    expanded = torch.cat([torch.full((n,), hf_model.config.image_token_id) if t == IMAGE_TOKEN_INDEX else t.view(1)
                          for t in item.input_ids])
    inputs = hf_processor(text=item.prompt, images=_image(), return_tensors="pt")
    assert torch.equal(inputs["pixel_values"][0], item.image) and torch.equal(inputs["input_ids"][0], expanded)
    assert hf_model.config.vision_feature_select_strategy == strategy
    with torch.no_grad():
        ours = engine.model(input_ids=item.input_ids[None], images=item.image[None]).logits
        theirs = hf_model(input_ids=expanded[None], pixel_values=item.image[None]).logits
    # A trained Phi head has a bias, which transformers' Llava drops (vLLM applies it; see llava.export.hf).
    bias = engine.model.get_output_embeddings().bias
    assert (ours - theirs[..., : ours.shape[-1]] - bias).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", ["siglip_vision_model", "dinov2"])
def test_export_gives_equal_logits(runs, family, tmp_path):
    _assert_export_matches(str(runs(family)["full"]), tmp_path, "full" if PREFIX[family] == 0 else "default")


def test_registers_export_with_cls_patch(towers, tiny_llm, tmp_path):
    from helpers import make_llava_checkpoint

    checkpoint = make_llava_checkpoint(str(tmp_path / "ckpt"), tiny_llm("phi"), towers["dinov2_with_registers"],
                                       select_feature="cls_patch", image_aspect_ratio="pad")
    _assert_export_matches(checkpoint, tmp_path / "hf", "full")  # all 5 leading tokens kept, as HF's "full" does


@pytest.mark.parametrize("family, message", [
    ("dinov2_with_registers", "puts 5 tokens before its patches .* HF Llava can drop only one"),
    ("fused_vision_model", "'fused_vision_model': transformers' LlavaForConditionalGeneration runs one vision tower"),
])
def test_export_refuses_what_hf_llava_cannot_express(runs, family, message, tmp_path):
    from llava.export.hf import ExportError, export

    with pytest.raises(ExportError, match=message):
        export(str(runs(family)["full"]), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# -- ZeRO-3, 2 processes -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_zero3_full_finetune_on_two_processes(towers, tiny_llm, demo_data, family, tmp_path):
    out = tmp_path / "zero3"
    env = {**os.environ, "MODEL_PATH": tiny_llm("phi"), "VISION_TOWER": towers[family],
           "DATA_DIR": os.path.dirname(demo_data["pretrain"]), "IMAGE_FOLDER": demo_data["image_folder"],
           "RUN_NAME": "test", "OUTPUT_DIR": str(out), "MAX_STEPS": "2", "SAVE_STEPS": "2", "BATCH_SIZE": "2",
           "NUM_GPUS": "2", "ZERO": "3", "TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions")}
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "finetune.sh")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ZeRO-3" in proc.stdout and f"checkpoint in {out}" in proc.stdout
    _, model, _, _ = load_pretrained_model(str(out), device="cpu")
    tower = model.get_vision_tower()
    source = load_vision_tower(towers[family]).vision_tower.state_dict()
    for name, tensor in tower.vision_tower.state_dict().items():  # gathered whole, and still the source's
        assert torch.equal(tensor, source[name]), name
    assert _logits(model, tower).isfinite().all()
