"""Every backbone × projector: trains, generates, saves and loads like a transformers model."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from llava.constants import IMAGE_TOKEN_INDEX as IMG
from llava.mm_utils import tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.model.registry import get_backbone

from conftest import BACKBONES, ORIGINAL_BACKBONES

PROJECTORS = ("linear", "mlp2x_gelu", "mlp3x_gelu", "simple_resblock", "identity")


def build(tiny_llm, tiny_clip, backbone, projector="mlp2x_gelu", seed=0):
    torch.manual_seed(seed)
    model = get_backbone(backbone).model_class.from_pretrained(tiny_llm(backbone))
    if projector == "identity":  # identity needs the tower as wide as the LLM (64)
        clip = os.path.join(os.path.dirname(tiny_clip), "clip64")
        if not os.path.exists(clip):
            from llava.model.tiny import save_tiny_vision_tower

            save_tiny_vision_tower(clip, hidden_size=64)
        tiny_clip = clip
    model.get_model().initialize_vision_modules(tiny_clip, mm_projector_type=projector)
    return model


def prompt_ids(tiny_llm, backbone, text="Describe <image>\nthe shape."):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm(backbone))
    return tokenizer_image_token(text, tokenizer, return_tensors="pt")[None]


@pytest.mark.parametrize(
    "backbone, projector",
    [(b, p) for b in ORIGINAL_BACKBONES for p in PROJECTORS] + [(b, "mlp2x_gelu") for b in BACKBONES[4:]],
)
def test_forward_loss_and_gradients_reach_exactly_the_trainable_parts(tiny_llm, tiny_clip, backbone, projector):
    model = build(tiny_llm, tiny_clip, backbone, projector)
    model.requires_grad_(False)
    model.get_model().mm_projector.requires_grad_(True)  # stage 1: projector only
    if projector == "identity":  # nothing to train in the projector: train the tower instead
        model.get_vision_tower().vision_tower.requires_grad_(True)
    ids = prompt_ids(tiny_llm, backbone).repeat(2, 1)
    labels = ids.clamp(min=0)
    out = model(ids, images=torch.randn(2, 3, 32, 32), labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    # With mm_vision_select_layer=-2 the tower's last layer and post-layernorm are never used.
    unused = (".encoder.layers.1.", ".post_layernorm.")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and not any(u in n for u in unused)}
    assert with_grad == trainable
    assert trainable
    if projector != "identity":
        assert all(".mm_projector." in n for n in trainable)
    assert all(torch.count_nonzero(p.grad) > 0 for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_vision_tower_trains_only_when_unfrozen(tiny_llm, tiny_clip, backbone):
    model = build(tiny_llm, tiny_clip, backbone)
    tower = model.get_vision_tower()
    assert not tower.is_trainable  # frozen by default
    tower.vision_tower.requires_grad_(True)
    ids = prompt_ids(tiny_llm, backbone)
    model(ids, images=torch.randn(1, 3, 32, 32), labels=ids.clamp(min=0)).loss.backward()
    assert all(p.grad is not None for p in tower.vision_tower.encoder.layers[0].parameters())


@pytest.mark.parametrize("backbone", BACKBONES)
def test_generate_with_images_and_kv_cache(tiny_llm, tiny_clip, backbone):
    model = build(tiny_llm, tiny_clip, backbone).eval()
    ids = prompt_ids(tiny_llm, backbone)
    image = torch.randn(1, 3, 32, 32)
    out = model.generate(ids, images=image, max_new_tokens=6, do_sample=False, use_cache=True)
    assert out.shape == (1, 6)
    no_cache = model.generate(ids, images=image, max_new_tokens=6, do_sample=False, use_cache=False)
    assert out.tolist() == no_cache.tolist()
    # The first generated token is the argmax of a plain forward pass over the same prompt.
    with torch.no_grad():
        logits = model(ids, images=image).logits
    assert out[0, 0].item() == logits[0, -1].argmax().item()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_batched_left_padded_generation_matches_single(tiny_llm, tiny_clip, backbone):
    model = build(tiny_llm, tiny_clip, backbone).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm(backbone))
    prompts = ["<image>\nWhat color is it?", "A much longer question <image>\nabout the shape in the picture?"]
    rows = [tokenizer_image_token(p, tokenizer) for p in prompts]
    images = torch.randn(2, 3, 32, 32)
    singles = [
        model.generate(torch.tensor([r]), images=images[i : i + 1], max_new_tokens=5, do_sample=False)[0].tolist()
        for i, r in enumerate(rows)
    ]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    batched = model.generate(ids, attention_mask=mask, images=images, max_new_tokens=5, do_sample=False)
    assert batched.tolist() == singles


@pytest.mark.parametrize("backbone", BACKBONES)
def test_save_pretrained_then_load_gives_identical_logits(tiny_llm, tiny_clip, backbone, tmp_path):
    model = build(tiny_llm, tiny_clip, backbone, projector="linear").eval()
    model.config.image_aspect_ratio = "pad"
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_llm(backbone)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == f"llava_{backbone}"
    for field in ("mm_vision_tower", "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer",
                  "mm_vision_select_feature", "image_aspect_ratio"):
        assert field in config

    ids = prompt_ids(tiny_llm, backbone)
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(ids, images=image).logits
        tokenizer, loaded, image_processor, context_len = load_pretrained_model(str(tmp_path))
        torch.testing.assert_close(loaded(ids, images=image).logits, expected, rtol=0, atol=0)
        auto = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        assert type(auto) is get_backbone(backbone).model_class
        torch.testing.assert_close(auto(ids, images=image).logits, expected, rtol=0, atol=0)
    assert image_processor is not None and context_len == 2048
    assert tokenizer.pad_token is not None


def test_official_llava_llama_checkpoint_layout_loads(tiny_llm, tiny_clip, tmp_path):
    """A directory as official LLaVA writes it: mm_* config fields, no tower weights, no mm_vision_config."""
    model = build(tiny_llm, tiny_clip, "llama", projector="mlp2x_gelu").eval()
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_llm("llama")).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights = {k: v for k, v in weights.items() if ".vision_tower." not in k}
    assert "model.mm_projector.0.weight" in weights and "model.mm_projector.2.weight" in weights
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp_path / "config.json").read_text())
    del config["mm_vision_config"]
    config.update(mm_use_im_start_end=False, mm_use_im_patch_token=False, image_aspect_ratio="pad",
                  tokenizer_padding_side="right", tokenizer_model_max_length=2048, mm_patch_merge_type="flat")
    (tmp_path / "config.json").write_text(json.dumps(config))

    _, loaded, image_processor, _ = load_pretrained_model(str(tmp_path))
    ids = prompt_ids(tiny_llm, "llama")
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # tower weights came from mm_vision_tower, so the outputs agree
        torch.testing.assert_close(loaded(ids, images=image).logits, model(ids, images=image).logits)
    assert image_processor.crop_size["height"] == 32


def test_projector_only_checkpoint_loads_over_base(tiny_llm, tiny_clip, tmp_path):
    model = build(tiny_llm, tiny_clip, "phi", projector="mlp2x_gelu").eval()
    model.config.save_pretrained(tmp_path)
    projector = {f"model.mm_projector.{k}": v for k, v in model.get_model().mm_projector.state_dict().items()}
    torch.save(projector, tmp_path / "mm_projector.bin")
    with pytest.raises(ValueError, match="--model-base"):
        load_pretrained_model(str(tmp_path))
    _, loaded, _, _ = load_pretrained_model(str(tmp_path), model_base=tiny_llm("phi"))
    ids = prompt_ids(tiny_llm, "phi")
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, images=image).logits, model(ids, images=image).logits)


def test_projector_checkpoint_with_im_start_end_embeddings_loads(tiny_llm, tiny_clip, tmp_path):
    """Stage 1 with --mm_use_im_start_end also trains the new tokens' embedding rows (official layout)."""
    model = build(tiny_llm, tiny_clip, "llama", projector="linear").eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm("llama"))
    assert model.initialize_vision_tokenizer(tokenizer, mm_use_im_start_end=True) == 2
    with torch.no_grad():
        model.get_input_embeddings().weight[-2:].normal_()
    model.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    weights = {f"model.mm_projector.{k}": v for k, v in model.get_model().mm_projector.state_dict().items()}
    weights["model.embed_tokens.weight"] = model.get_input_embeddings().weight.detach().clone()
    torch.save(weights, tmp_path / "mm_projector.bin")

    loaded_tokenizer, loaded, _, _ = load_pretrained_model(str(tmp_path), model_base=tiny_llm("llama"))
    assert len(loaded_tokenizer) == 32002 == loaded.get_input_embeddings().num_embeddings
    ids = tokenizer_image_token("<im_start><image><im_end>\nWhat?", loaded_tokenizer, return_tensors="pt")[None]
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, images=image).logits, model(ids, images=image).logits)


def test_lora_checkpoint_loads_over_base_and_merges(tiny_llm, tiny_clip, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = build(tiny_llm, tiny_clip, "opt", projector="linear")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # make the adapter matter
    peft_model.save_pretrained(tmp_path)
    model.config.save_pretrained(tmp_path)
    non_lora = {n: p.detach().clone() for n, p in peft_model.named_parameters() if ".mm_projector." in n}
    torch.save(non_lora, tmp_path / "non_lora_trainables.bin")
    peft_model.eval()

    _, loaded, _, _ = load_pretrained_model(str(tmp_path), model_base=tiny_llm("opt"))
    assert not any("lora" in n for n, _ in loaded.named_parameters())  # merged
    ids = prompt_ids(tiny_llm, "opt")
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, images=image).logits, peft_model(ids, images=image).logits,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_loading_keeps_tower_projector_and_head_in_full_precision(tiny_llm, tiny_clip, tmp_path, bits):
    import bitsandbytes as bnb

    quantized = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    model = build(tiny_llm, tiny_clip, "llama", projector="mlp2x_gelu")
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_llm("llama")).save_pretrained(tmp_path)
    _, loaded, _, _ = load_pretrained_model(str(tmp_path), load_4bit=bits == 4, load_8bit=bits == 8)
    assert isinstance(loaded.model.layers[0].self_attn.q_proj, quantized)
    for module in (loaded.model.mm_projector, loaded.get_vision_tower(), loaded.lm_head):
        assert not any(isinstance(m, quantized) for m in module.modules())
    ids = prompt_ids(tiny_llm, "llama")
    with torch.no_grad():
        assert torch.isfinite(loaded(ids, images=torch.randn(1, 3, 32, 32)).logits).all()


def test_unknown_backbone_and_projector_name_the_choices(tiny_llm, tiny_clip):
    with pytest.raises(ValueError, match="unknown backbone 'gpt5'.*gemma2, gemma3, llama, llama3, mpt, opt, phi, phi3, qwen2, qwen3, smollm2"):
        get_backbone("gpt5")
    from llava.model.registry import backbone_for_model_type

    with pytest.raises(ValueError, match="model_type 'bert'.*llava_phi"):
        backbone_for_model_type("bert")
    model = get_backbone("phi").model_class.from_pretrained(tiny_llm("phi"))
    with pytest.raises(ValueError, match="unknown mm_projector_type 'mlp_fancy'.*linear.*mlp<N>x_gelu"):
        model.get_model().initialize_vision_modules(tiny_clip, mm_projector_type="mlp_fancy")
    with pytest.raises(ValueError, match="mm_vision_select_feature 'all'.*patch, cls_patch"):
        model.get_model().initialize_vision_modules(tiny_clip, mm_vision_select_feature="all")


def test_cls_patch_keeps_the_cls_token(tiny_llm, tiny_clip):
    model = get_backbone("llama").model_class.from_pretrained(tiny_llm("llama"))
    model.get_model().initialize_vision_modules(tiny_clip, mm_vision_select_feature="cls_patch")
    assert model.encode_images(torch.randn(1, 3, 32, 32)).shape == (1, 17, 64)
    model.get_model().initialize_vision_modules(tiny_clip, mm_vision_select_feature="patch", mm_vision_select_layer=-1)
    assert model.encode_images(torch.randn(1, 3, 32, 32)).shape == (1, 16, 64)


def test_stage1_projector_file_loads_with_shape_check(tiny_llm, tiny_clip, tmp_path):
    from llava.model.llava_arch import load_projector_weights

    model = build(tiny_llm, tiny_clip, "phi", projector="mlp2x_gelu")
    path = tmp_path / "mm_projector.bin"
    torch.save({"model.mm_projector.0.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(ValueError, match="do not fit this model's projector"):
        load_projector_weights(model.get_model().mm_projector, str(path))


def test_image_markers_reach_forward_as_minus_200(tiny_llm):
    ids = prompt_ids(tiny_llm, "llama", "a <image> b <image> c")
    assert (ids == IMG).sum() == 2


@pytest.mark.parametrize("backbone", BACKBONES)
def test_label_logits_only_gives_the_same_loss_and_gradients(tiny_llm, tiny_clip, backbone):
    model = build(tiny_llm, tiny_clip, backbone).eval()  # eval: no dropout, so both passes are comparable
    ids = prompt_ids(tiny_llm, backbone).repeat(2, 1)
    labels = ids.clamp(min=0)
    labels[:, : ids.shape[1] // 2] = -100  # only the answer half is predicted
    labels[1, -2:] = -100
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0  # right padding on the second row
    images = torch.randn(2, 3, 32, 32)

    def loss_and_grads(label_logits_only, **extra):
        model.zero_grad()
        model.label_logits_only = label_logits_only
        out = model(ids, attention_mask=mask, images=images, labels=labels, **extra)
        out.loss.backward()
        return out, out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full_out, full_loss, full_grads = loss_and_grads(False)
    sparse_out, sparse_loss, sparse_grads = loss_and_grads(True)
    assert full_out.logits is not None and sparse_out.logits is None
    torch.testing.assert_close(sparse_loss, full_loss)
    assert sparse_grads.keys() == full_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(sparse_grads[name], full_grads[name], msg=name)
    # Under gradient accumulation the Trainer passes the token count of the whole accumulated batch.
    n_items = torch.tensor(40)
    _, full_sum, _ = loss_and_grads(False, num_items_in_batch=n_items)
    _, sparse_sum, _ = loss_and_grads(True, num_items_in_batch=n_items)
    torch.testing.assert_close(sparse_sum, full_sum)
    merged_labels = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, images)[-1]
    predicted = int((merged_labels[:, 1:] != -100).sum())
    torch.testing.assert_close(sparse_sum, full_loss * predicted / 40)


@pytest.mark.parametrize("select_layer,select_feature", [(-2, "patch"), (-1, "cls_patch"), (1, "patch")])
def test_tower_features_equal_clip_hidden_states_and_stay_stable(tiny_llm, tiny_clip, select_layer, select_feature):
    from transformers import CLIPVisionModel

    model = build(tiny_llm, tiny_clip, "phi").eval()
    model.get_vision_tower().select(select_layer, select_feature)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = CLIPVisionModel.from_pretrained(tiny_clip)(images, output_hidden_states=True).hidden_states[select_layer]
        reference = reference[:, 1:] if select_feature == "patch" else reference
        torch.testing.assert_close(model.get_vision_tower()(images), reference)
        # transformers installs output-capturing hooks on the first output_hidden_states call of the
        # LLM around the tower; the tower's features (and so every later answer) must not change.
        ids = prompt_ids(tiny_llm, "phi")
        before = model(ids, images=images[:1]).logits
        model(ids, images=images[:1], output_hidden_states=True)
        after = model(ids, images=images[:1]).logits
        torch.testing.assert_close(model.get_vision_tower()(images), reference)
    torch.testing.assert_close(after, before)
