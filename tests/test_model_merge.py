"""The vectorised image/text merge against a plain per-sample reference, on every layout users hit."""

from __future__ import annotations

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX as IMG
from llava.model.registry import get_backbone


@pytest.fixture(scope="module")
def model(tiny_llm, tiny_clip):
    torch.manual_seed(0)
    model = get_backbone("llama").model_class.from_pretrained(tiny_llm("llama"))
    model.get_model().initialize_vision_modules(tiny_clip, mm_projector_type="mlp2x_gelu")
    return model.eval()


def reference_merge(model, input_ids, attention_mask, labels, images):
    """Per-sample loop: what the merge must produce for each sample's valid tokens."""
    features = iter(model.encode_images(images)) if images is not None else iter(())
    embed = model.get_model().get_input_embeddings()
    samples = []
    for ids, mask, labs in zip(input_ids, attention_mask, labels):
        pieces, piece_labels = [], []
        for token, keep, label in zip(ids.tolist(), mask.tolist(), labs.tolist()):
            if not keep:
                continue
            if token == IMG:
                feat = next(features)
                pieces.append(feat)
                piece_labels += [IGNORE_INDEX] * feat.shape[0]
            else:
                pieces.append(embed(torch.tensor([token])))
                piece_labels.append(label)
        samples.append((torch.cat(pieces), torch.tensor(piece_labels)))
    return samples


def check_against_reference(model, input_ids, attention_mask, labels, images, pad_left):
    with torch.no_grad():
        _, position_ids, new_mask, _, embeds, new_labels = model.prepare_inputs_labels_for_multimodal(
            input_ids, None, attention_mask, None, labels, images
        )
        expected = reference_merge(model, input_ids, attention_mask, labels, images)
    out_len = max(e.shape[0] for e, _ in expected)
    assert embeds.shape[:2] == (input_ids.shape[0], out_len)
    for row, (ref_embeds, ref_labels) in enumerate(expected):
        n = ref_embeds.shape[0]
        span = slice(out_len - n, out_len) if pad_left else slice(0, n)
        torch.testing.assert_close(embeds[row, span], ref_embeds)
        assert new_labels[row, span].tolist() == ref_labels.tolist()
        assert new_mask[row].sum() == n and new_mask[row, span].all()
        assert position_ids[row, span].tolist() == list(range(n))
        assert (new_labels[row][~new_mask[row].bool()] == IGNORE_INDEX).all()


def make_batch(rows, pad_left):
    """Pad token lists to one length on the chosen side; labels = ids except at image markers."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if pad_left else slice(0, len(r))
        ids[i, span] = torch.tensor(r)
        mask[i, span] = 1
    labels = torch.where(ids == IMG, IGNORE_INDEX, ids)
    return ids, mask, labels


LAYOUTS = {
    "image_at_start": [[IMG, 5, 6, 7], [IMG, 8, 9]],
    "image_in_middle": [[5, 6, IMG, 7, 8], [5, IMG, 9]],
    "image_at_end": [[5, 6, 7, IMG], [8, 9, IMG]],
    "two_images_in_one_sample": [[5, IMG, 6, IMG, 7], [8, IMG, 9]],
    "text_only_mixed_with_images": [[5, 6, 7, 8, 9, 10], [IMG, 11, 12]],
}


@pytest.mark.parametrize("pad_left", [False, True], ids=["right_pad", "left_pad"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_merge_matches_per_sample_reference(model, layout, pad_left):
    rows = LAYOUTS[layout]
    ids, mask, labels = make_batch(rows, pad_left)
    n_images = int((ids == IMG).sum())
    images = torch.randn(n_images, 3, 32, 32)
    check_against_reference(model, ids, mask, labels, images, pad_left)


def test_image_positions_get_ignore_labels_and_patch_count(model):
    ids, mask, labels = make_batch([[5, IMG, 6]], pad_left=False)
    _, _, _, _, embeds, new_labels = model.prepare_inputs_labels_for_multimodal(
        ids, None, mask, None, labels, torch.randn(1, 3, 32, 32)
    )
    patches = model.get_vision_tower().num_patches
    assert patches == 16  # 32 px / patch 8, CLS dropped
    assert embeds.shape[1] == 2 + patches
    assert new_labels[0].tolist() == [5] + [IGNORE_INDEX] * patches + [6]


def test_official_placeholder_image_for_text_only_sample_is_dropped(model):
    """Official LLaVA batches carry one dummy image per text-only sample; they must not shift real images."""
    ids, mask, labels = make_batch([[5, 6, 7], [IMG, 8]], pad_left=False)
    real = torch.randn(1, 3, 32, 32)
    with_placeholder = torch.cat([torch.zeros(1, 3, 32, 32), real])
    _, _, _, _, a, _ = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, with_placeholder)
    _, _, _, _, b, _ = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, real)
    torch.testing.assert_close(a, b)


def test_marker_image_count_mismatch_is_a_clear_error(model):
    ids, mask, labels = make_batch([[5, IMG, 6, IMG]], pad_left=False)
    with pytest.raises(ValueError, match=r"2 <image> markers .* but 3 images"):
        model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, torch.randn(3, 3, 32, 32))
    with pytest.raises(ValueError, match="no images were passed"):
        model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, None)


def test_truncation_never_splits_an_image(model):
    model.config.tokenizer_model_max_length = 10
    try:
        ids, mask, labels = make_batch([[5, 6, IMG, 7]], pad_left=False)  # image spans positions 2..17
        with pytest.raises(ValueError, match="split an image"):
            model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, torch.randn(1, 3, 32, 32))
        # An image that ends before the cut is kept whole and the text after it is cut.
        model.config.tokenizer_model_max_length = 18
        ids, mask, labels = make_batch([[IMG, 7, 8, 9, 10]], pad_left=False)
        _, _, new_mask, _, embeds, new_labels = model.prepare_inputs_labels_for_multimodal(
            ids, None, mask, None, labels, torch.randn(1, 3, 32, 32)
        )
        assert embeds.shape[1] == 18
        assert new_labels[0, 16:].tolist() == [7, 8]
    finally:
        model.config.tokenizer_model_max_length = None


def test_text_only_training_batch_still_touches_vision_parameters(model):
    """ZeRO-3 needs every rank to run the same modules even when a batch has no image."""
    model.train()
    try:
        ids, mask, labels = make_batch([[5, 6, 7]], pad_left=False)
        out = model(ids, attention_mask=mask, labels=labels, images=torch.zeros(0, 3, 32, 32))
        out.loss.backward()
        projector_grads = [p.grad for p in model.get_model().mm_projector.parameters()]
        assert all(g is not None and torch.count_nonzero(g) == 0 for g in projector_grads)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_text_only_inference_matches_plain_llm(model, tiny_llm):
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_llm("llama")).eval()
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, plain(ids).logits)
