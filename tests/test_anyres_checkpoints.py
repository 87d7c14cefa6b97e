"""AnyRes checkpoints: official LLaVA-NeXT configs load, and export to transformers' LlavaNext is exact."""

from __future__ import annotations

import json
import types

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from llava.constants import IMAGE_TOKEN_INDEX
from llava.export.hf import ExportError, check_exportable, export
from llava.model.builder import ensure_pad_token, load_pretrained_model
from llava.model.llava_arch import anyres_for
from llava.model.registry import get_backbone

# (width, height): tall, wide, square, tiny, large
ASPECTS = {"tall": (30, 100), "wide": (150, 40), "square": (64, 64), "tiny": (5, 7), "large": (200, 130)}

# config.json fields as the hub's checkpoints have them (liuhaotian/llava-v1.6-vicuna-7b and
# lmms-lab/llava-onevision-qwen2-0.5b-ov), the sizes of the tiny models left as they are.
LLAVA_V16 = {
    "image_aspect_ratio": "anyres", "mm_patch_merge_type": "spatial_unpad",
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
    "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_projector_lr": None, "mm_vision_tower_lr": 2e-06,
    "unfreeze_mm_vision_tower": True, "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False,
    "tokenizer_model_max_length": 4096, "tokenizer_padding_side": "right", "use_mm_proj": True,
}
ONEVISION = {
    "image_aspect_ratio": "anyres_max_9", "mm_patch_merge_type": "spatial_unpad",
    "image_grid_pinpoints": [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)],
    "image_crop_resolution": None, "image_split_resolution": None, "mm_newline_position": "one_token",
    "mm_spatial_pool_mode": "bilinear", "mm_spatial_pool_stride": 2, "mm_resampler_type": None,
    "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model", "add_faster_video": False,
    "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
    "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "pos_skipping_range": 4096, "use_pos_skipping": False,
    "tokenizer_model_max_length": 32768, "tokenizer_padding_side": "right", "vision_tower_pretrained": None,
}


def save_checkpoint(out, tiny_llm, tower_path, backbone="llama", fields=None, merge="spatial_unpad", scale=8.0):
    torch.manual_seed(0)
    model = get_backbone(backbone).model_class.from_pretrained(tiny_llm(backbone), dtype=torch.float32)
    model.get_model().initialize_vision_modules(tower_path, "mlp2x_gelu", -2, "patch", mm_patch_merge_type=merge)
    with torch.no_grad():
        for param in model.get_model().mm_projector.parameters():
            param.mul_(scale)
    for key, value in (fields or {}).items():
        setattr(model.config, key, value)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm(backbone))
    ensure_pad_token(tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    model.get_vision_tower().load_image_processor().save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def tower48(tmp_path_factory):
    """A tiny CLIP whose 48-px tiles divide the official 336-px pinpoints (7 x 48) as 336 divides them."""
    from llava.model.tiny import save_tiny_vision_tower

    return save_tiny_vision_tower(str(tmp_path_factory.mktemp("clip48")), image_size=48)


@pytest.fixture(scope="module")
def siglip48(tmp_path_factory):
    from llava.model.tiny import save_tiny_vision_tower

    return save_tiny_vision_tower(str(tmp_path_factory.mktemp("siglip48")), image_size=48, tower="siglip_vision_model")


@pytest.mark.parametrize("name, fields, tower", [("llava-v1.6", LLAVA_V16, "tower48"), ("onevision", ONEVISION, "siglip48")])
def test_official_llava_next_configs_load_and_answer(name, fields, tower, request, tiny_llm, tmp_path):
    tower_path = request.getfixturevalue(tower)
    fields = {k: v for k, v in fields.items()}
    # The hub's pinpoints are in 336 / 384 px tiles; the tiny towers' tiles are 48 px: same grids, scaled.
    scale = 48 / (336 if name == "llava-v1.6" else 384)
    fields["image_grid_pinpoints"] = [[int(w * scale), int(h * scale)] for w, h in fields["image_grid_pinpoints"]]
    checkpoint = save_checkpoint(tmp_path / name, tiny_llm, tower_path, fields=fields)
    config = json.loads((tmp_path / name / "config.json").read_text())
    assert config["image_aspect_ratio"] == fields["image_aspect_ratio"]

    from llava.inference import InferenceEngine

    engine = InferenceEngine.from_pretrained(checkpoint)
    anyres = anyres_for(engine.model.config, engine.model.get_vision_tower())
    assert anyres.merge == "spatial_unpad" and anyres.max_tiles == (9 if name == "onevision" else None)
    conv = engine.new_conversation()
    engine.add_user_turn(conv, "What is this?", has_image=True)
    item = engine.prepare(conv, Image.new("RGB", (60, 20), (10, 90, 200)))
    assert item.image.shape[0] == anyres.num_tiles((60, 20))
    assert isinstance(engine.generate([item])[0], str)


@pytest.mark.parametrize("field, value, message", [
    ("image_aspect_ratio", "crop_split", "crop_split.*not supported"),
    ("mm_patch_merge_type", "spatial_unpad_nobase", "'spatial_unpad_nobase' is not supported"),
    ("mm_resampler_type", "spatial_pool", "resamplers are not supported"),
    ("image_grid_pinpoints", [[40, 80]], "not whole multiples of the tower's 48-px input"),
])
def test_unsupported_llava_next_settings_are_refused_naming_the_field(field, value, message, tiny_llm, tower48, tmp_path):
    checkpoint = save_checkpoint(tmp_path / "ck", tiny_llm, tower48, fields={**LLAVA_V16, "image_grid_pinpoints": [[48, 96]]})
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    config[field] = value
    (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        load_pretrained_model(checkpoint)


@pytest.mark.parametrize("aspect, merge, message", [
    ("anyres", "flat", "only as 'spatial_unpad'"), ("anyres", "spatial", "only as 'spatial_unpad'"),
    ("anyres_max_9", "spatial_unpad", "does not shrink"),
])
def test_anyres_settings_transformers_cannot_represent_are_refused(aspect, merge, message):
    config = types.SimpleNamespace(mm_vision_tower="clip", mm_projector_type="mlp2x_gelu", mm_vision_select_feature="patch",
                                   image_aspect_ratio=aspect, mm_patch_merge_type=merge, mm_use_im_start_end=False)
    with pytest.raises(ExportError, match=message):
        check_exportable(config)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["llama", "phi"])
def test_exported_llava_next_logits_equal_ours(backbone, tiny_llm, tiny_clip, tmp_path):
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    from llava.inference import InferenceEngine

    fields = {"image_aspect_ratio": "anyres", "image_grid_pinpoints": "(1x1),...,(3x3)", "tokenizer_model_max_length": 1024,
              "tokenizer_padding_side": "right"}
    checkpoint = save_checkpoint(tmp_path / "ck", tiny_llm, tiny_clip, backbone, fields=fields)
    export(checkpoint, str(tmp_path / "hf"))
    hf_model = LlavaNextForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
    processor = AutoProcessor.from_pretrained(str(tmp_path / "hf"))
    engine = InferenceEngine.from_pretrained(checkpoint)
    assert torch.equal(hf_model.model.image_newline, engine.model.get_model().image_newline)
    diffs = {}
    for name, size in ASPECTS.items():
        conv = engine.new_conversation()
        engine.add_user_turn(conv, "What is this?", has_image=True)
        image = Image.new("RGB", size, (20, 180, 60))
        image.paste((200, 20, 20), (0, 0, size[0] // 2, size[1] // 3))
        item = engine.prepare(conv, image)
        tokens = anyres_for(engine.model.config, engine.model.get_vision_tower()).tokens(size)
        expanded = torch.cat([torch.full((tokens,), hf_model.config.image_token_id) if t == IMAGE_TOKEN_INDEX else t.view(1)
                              for t in item.input_ids])
        with torch.no_grad():
            ours = engine.model(input_ids=item.input_ids[None], images=item.image,
                                image_sizes=torch.tensor([size])).logits
            theirs = hf_model(input_ids=expanded[None], pixel_values=item.image[None],
                              image_sizes=torch.tensor([[size[1], size[0]]])).logits
        assert theirs.shape == ours.shape[:2] + theirs.shape[2:]
        diffs[name] = (ours - theirs[..., : ours.shape[-1]]).abs().max().item()
        # The exported processor tiles as we do and expands <image> to as many tokens as the model fills.
        inputs = processor(text=item.prompt, images=image, return_tensors="pt")
        assert int((inputs["input_ids"] == hf_model.config.image_token_id).sum()) == tokens
        assert inputs["pixel_values"].shape[1] == item.image.shape[0]
        assert (inputs["pixel_values"][0] - item.image).abs().max() <= 1e-5
    print("export |diff| per aspect ratio:", diffs)
    assert max(diffs.values()) <= 1e-4, diffs
