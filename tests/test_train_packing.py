"""Length-grouped batching and sequence packing: order, padding, and packed == unpacked (≈1 min)."""

from __future__ import annotations

import json
import math
import os
import random

import pytest
import torch

from llava.constants import IGNORE_INDEX
from llava.constants import IMAGE_TOKEN_INDEX as IMG
from llava.model.registry import get_backbone
from llava.preprocess import preprocess, sequence_lengths
from llava.train.collator import DataCollatorForSupervisedDataset, balanced_rows
from llava.train.sampler import (
    TokenLengthGroupedSampler,
    length_grouped_indices,
    modality_grouped_indices,
)
from llava.train.train import train

PATCHES = 16  # the tiny CLIP tower: 32 px images, 8 px patches


def llava_instruct_like_lengths(n: int, seed: int = 0, image_tokens: int = 64) -> list[int]:
    """Signed token lengths shaped like LLaVA-Instruct: short answers, a long tail, some multi-turn,
    about 7 % text-only (negative)."""
    rng = random.Random(seed)
    lengths = []
    for _ in range(n):
        turns = 1 if rng.random() < 0.6 else rng.randint(2, 8)
        tokens = 20 + sum(rng.randint(10, 60) + min(400, int(rng.lognormvariate(math.log(25), 0.9))) + 6
                          for _ in range(turns))
        lengths.append(tokens + image_tokens if rng.random() > 0.07 else -tokens)
    return lengths


def padding_fraction(order: list[int], lengths: list[int], batch_size: int) -> float:
    padded = real = 0
    for start in range(0, len(order), batch_size):
        batch = [abs(lengths[i]) for i in order[start : start + batch_size]]
        padded += max(batch) * len(batch)
        real += sum(batch)
    return 1 - real / padded


# -- the sampler ----------------------------------------------------------------------------------
@pytest.mark.parametrize("world_size", [1, 3])
def test_length_grouped_order_is_a_deterministic_permutation(world_size):
    lengths = llava_instruct_like_lengths(1000)
    sampler = TokenLengthGroupedSampler(lengths, batch_size=8, world_size=world_size, seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    assert sorted(first) == list(range(len(lengths))) and len(sampler) == len(lengths)
    sampler.set_epoch(1)
    assert list(sampler) == first  # a resumed run sees the same order
    sampler.set_epoch(2)
    assert list(sampler) != first
    other_seed = TokenLengthGroupedSampler(lengths, 8, world_size, seed=4)
    other_seed.set_epoch(1)
    assert list(other_seed) != first


def test_length_grouped_batches_are_one_modality_and_near_equal():
    lengths = llava_instruct_like_lengths(3000)
    order = length_grouped_indices(lengths, 16, 1, torch.Generator().manual_seed(0))
    full_batches = [order[i : i + 16] for i in range(0, len(order) - 32, 16)]  # the partial tail may mix
    assert all(len({lengths[i] > 0 for i in batch}) == 1 for batch in full_batches)
    ours = padding_fraction(order, lengths, 16)
    official = padding_fraction(modality_grouped_indices(lengths, 16, torch.Generator().manual_seed(0)), lengths, 16)
    shuffled = padding_fraction(torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist(), lengths, 16)
    assert ours < 0.03
    assert official > 0.3 and shuffled > 0.3  # what group_by_length saves


def test_devices_of_one_step_get_neighbouring_lengths():
    lengths = llava_instruct_like_lengths(4000, seed=1)
    batch, world = 4, 4
    order = length_grouped_indices(lengths, batch, world, torch.Generator().manual_seed(0))
    # Each micro-step (batch * world consecutive indices) comes from one sorted run: devices wait little.
    step_padding = padding_fraction(order, lengths, batch * world)
    assert step_padding < 0.03


# -- exact lengths ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["phi", "llama"])
def test_sequence_lengths_equal_preprocess(backbone):
    spec = get_backbone(backbone)
    tokenizer = spec.tiny_tokenizer()
    rng = random.Random(0)
    words = "the a red bus man dog sits near two cars street sign image large small".split()
    records = []
    for i in range(40):
        turns = []
        for _ in range(rng.randint(1, 3)):
            turns += [{"from": "human", "value": " ".join(rng.choices(words, k=rng.randint(2, 12))) + "?"},
                      {"from": "gpt", "value": " ".join(rng.choices(words, k=rng.randint(1, 40)))}]
        images = i % 4 != 0
        if images:
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
        records.append((turns, int(images)))
    got = sequence_lengths(records, tokenizer, spec.conv_template, image_tokens=PATCHES, chunk=7)
    expected = [
        len(preprocess(c, tokenizer, spec.conv_template, num_images=n, image_tokens=PATCHES).input_ids) + n * (PATCHES - 1)
        for c, n in records
    ]
    assert got == expected
    # Samples longer than --model_max_length are cut to it.
    assert sequence_lengths(records, tokenizer, spec.conv_template, max_length=80, image_tokens=PATCHES) == [
        min(n, 80) for n in expected
    ]


# -- packing rows ---------------------------------------------------------------------------------
def test_balanced_rows():
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 100) for _ in range(rng.randint(1, 30))]
        rows = balanced_rows(lengths, 128)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
        loads = [sum(lengths[i] for i in row) for row in rows]
        assert max(loads) - min(loads) <= max(lengths)  # even rows: little padding to the longest
        fewest_possible = max(math.ceil(sum(lengths) / 128), sum(n > 64 for n in lengths))
        assert len(rows) <= fewest_possible + 2
    assert balanced_rows([60, 50, 40, 30, 20], 200) == [[0, 1, 2, 3, 4]]
    assert balanced_rows([60, 50, 40, 30, 20], 110) == [[0, 3, 4], [1, 2]]  # 110 and 90, not 110 and 90 + pad
    with pytest.raises(ValueError, match="--model_max_length"):
        balanced_rows([300], 256)


class Tok:
    pad_token_id = 0


def sample(ids, image_positions=(), first_label=None):
    ids = torch.tensor(ids)
    for p in image_positions:
        ids[p] = IMG
    labels = torch.where(ids == IMG, IGNORE_INDEX, ids)
    labels[: len(ids) // 2] = IGNORE_INDEX  # the "prompt"
    if first_label is not None:
        labels[0] = first_label
    item = {"input_ids": ids, "labels": labels}
    if image_positions:
        item["images"] = torch.randn(len(image_positions), 3, 32, 32)
    return item


def test_packing_collator_layout():
    items = [sample(range(10, 30), [0]), sample(range(40, 50), first_label=40), sample(range(60, 90), [3, 5]),
             sample(range(100, 105))]
    plain = DataCollatorForSupervisedDataset(Tok(), (3, 32, 32))(items)
    packed = DataCollatorForSupervisedDataset(Tok(), (3, 32, 32), packing=True, max_length=80, image_tokens=PATCHES)(items)
    # Expanded sizes 35, 10, 60, 5 -> two rows of at most 80: [60] and [35, 10, 5].
    assert packed["input_ids"].shape == (2, 35)  # 30 token ids, and 20 + 10 + 5
    assert packed["attention_mask"].sum().item() == plain["attention_mask"].sum().item() == 65
    positions = packed["position_ids"][1][packed["attention_mask"][1]].tolist()
    assert positions == list(range(20)) + list(range(10)) + list(range(5))
    assert packed["input_ids"][1, 20:30].tolist() == list(range(40, 50))
    # The first token of a packed sample is never a target; nothing else changed.
    assert packed["labels"][1, 20].item() == IGNORE_INDEX
    assert (plain["labels"][:, 1:] != IGNORE_INDEX).sum() == (packed["labels"][:, 1:] != IGNORE_INDEX).sum()
    # Images follow the markers in row-major order: sample 2's (row 0), then sample 0's.
    assert torch.equal(packed["images"], torch.cat([items[2]["images"], items[0]["images"]]))


# -- the model: packed rows give the unpacked results ----------------------------------------------
def build_model(tiny_llm, tiny_clip, backbone, attn=None):
    torch.manual_seed(0)
    attn = attn or get_backbone(backbone).attn_implementation or "sdpa"
    model = get_backbone(backbone).model_class.from_pretrained(tiny_llm(backbone), attn_implementation=attn)
    model.get_model().initialize_vision_modules(tiny_clip, mm_projector_type="mlp2x_gelu")
    model.config.tokenizer_model_max_length = 256
    return model.float().train()


def random_items(vocab: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    specs = [(24, [0]), (9, []), (31, [4]), (17, [0, 8]), (5, []), (40, [0])]
    items = []
    for length, images in specs:
        ids = torch.randint(5, vocab, (length,), generator=gen)
        item = sample(ids.tolist(), images)
        if images:
            item["images"] = torch.randn(len(images), 3, 32, 32, generator=gen)
        items.append(item)
    return items


def loss_and_grads(model, batch, num_items=None):
    model.zero_grad()
    kwargs = {} if num_items is None else {"num_items_in_batch": num_items}
    loss = model(**batch, **kwargs).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("label_logits_only", [True, False], ids=["label_logits_only", "full_logits"])
@pytest.mark.parametrize("backbone,attn", [("phi", "sdpa"), ("llama", "sdpa"), ("llama", "eager")])
def test_packed_batch_gives_unpacked_loss_and_gradients(tiny_llm, tiny_clip, backbone, attn, label_logits_only):
    model = build_model(tiny_llm, tiny_clip, backbone, attn)
    model.label_logits_only = label_logits_only
    items = random_items(model.config.vocab_size)
    plain = DataCollatorForSupervisedDataset(Tok(), (3, 32, 32))(items)
    packed = DataCollatorForSupervisedDataset(Tok(), (3, 32, 32), packing=True, max_length=120, image_tokens=PATCHES)(items)
    assert packed["input_ids"].shape[0] < len(items)  # really packed
    assert (packed["position_ids"] == 0).logical_and(packed["attention_mask"]).sum(1).max() > 1

    loss, grads = loss_and_grads(model, plain)
    packed_loss, packed_grads = loss_and_grads(model, packed)
    torch.testing.assert_close(packed_loss, loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == packed_grads.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(packed_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)

    # The HF Trainer's normalisation (summed loss / predicted tokens counted from the collated labels).
    count = (packed["labels"][:, 1:] != IGNORE_INDEX).sum()
    assert count == (plain["labels"][:, 1:] != IGNORE_INDEX).sum()
    summed, _ = loss_and_grads(model, plain, num_items=torch.tensor(1))
    packed_summed, _ = loss_and_grads(model, packed, num_items=torch.tensor(1))
    torch.testing.assert_close(packed_summed, summed, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(summed / count, loss, rtol=1e-5, atol=1e-6)


def _packable():
    from conftest import BACKBONES

    return [b for b in BACKBONES if get_backbone(b).model_class.packing_unsupported is None]


@pytest.mark.parametrize("backbone", _packable())
def test_a_packed_sample_sees_exactly_what_it_sees_alone(tiny_llm, tiny_clip, backbone):
    model = build_model(tiny_llm, tiny_clip, backbone).eval()
    first, second = random_items(model.config.vocab_size, seed=1)[2:4]  # both with images
    collate = DataCollatorForSupervisedDataset(Tok(), (3, 32, 32), packing=True, max_length=256, image_tokens=PATCHES)
    packed = collate([first, second])
    assert packed["input_ids"].shape[0] == 1
    alone = DataCollatorForSupervisedDataset(Tok(), (3, 32, 32))([second])
    offset = len(first["input_ids"]) + (PATCHES - 1) * int((first["input_ids"] == IMG).sum())
    size = len(second["input_ids"]) + (PATCHES - 1) * int((second["input_ids"] == IMG).sum())
    with torch.no_grad():
        # Not about packing: the very first output_hidden_states=True call of a fresh LLaVA model
        # gives different image features than every later one (seen unpacked too); warm up first.
        model(**{k: v for k, v in alone.items() if k != "labels"}, output_hidden_states=True)
        out_packed = model(**{k: v for k, v in packed.items() if k != "labels"}, output_hidden_states=True)
        out_alone = model(**{k: v for k, v in alone.items() if k != "labels"}, output_hidden_states=True)
    torch.testing.assert_close(out_packed.logits[0, offset : offset + size], out_alone.logits[0], rtol=1e-5, atol=1e-5)
    for packed_h, alone_h in zip(out_packed.hidden_states, out_alone.hidden_states):
        torch.testing.assert_close(packed_h[0, offset : offset + size], alone_h[0], rtol=1e-5, atol=1e-5)


def test_merged_positions_restart_per_sample(tiny_llm, tiny_clip):
    model = build_model(tiny_llm, tiny_clip, "llama").eval()
    items = [sample(range(10, 14), [1]), sample(range(20, 23)), sample(range(30, 32))]
    batch = DataCollatorForSupervisedDataset(Tok(), (3, 32, 32), packing=True, max_length=64, image_tokens=PATCHES)(items)
    batch["labels"][0, [4, 7]] = torch.tensor([20, 30])  # as if a caller had left each sample's first label on
    with torch.no_grad():
        _, position_ids, mask, _, _, labels = model.prepare_inputs_labels_for_multimodal(
            batch["input_ids"], batch["position_ids"], batch["attention_mask"], None, batch["labels"], batch["images"]
        )
    assert mask is None  # the backbone builds the block-diagonal mask from the positions
    assert position_ids[0].tolist() == list(range(4 + PATCHES - 1)) + list(range(3)) + list(range(2))
    # The model never learns a sample's first token from the previous sample's last one.
    assert labels[0, 4 + PATCHES - 1].item() == IGNORE_INDEX and labels[0, -2].item() == IGNORE_INDEX
    assert labels[0, -1].item() == 31


@pytest.mark.parametrize("backbone,reason", [("mpt", "ALiBi"), ("opt", "without looking at position_ids")])
def test_packing_is_refused_where_attention_cannot_keep_samples_apart(
    tiny_llm, tiny_clip, demo_data, tmp_path, backbone, reason
):
    model = build_model(tiny_llm, tiny_clip, backbone, attn="eager")
    items = random_items(1000)[:3]
    packed = DataCollatorForSupervisedDataset(Tok(), (3, 32, 32), packing=True, max_length=200, image_tokens=PATCHES)(items)
    with pytest.raises(ValueError, match=reason):
        model(**packed)
    with pytest.raises(ValueError, match=f"--packing True does not work with the {backbone} backbone.*{reason}"):
        train(["--model_name_or_path", tiny_llm(backbone), "--vision_tower", tiny_clip, "--data_path",
               demo_data["finetune"], "--image_folder", demo_data["image_folder"], "--output_dir", str(tmp_path),
               "--packing", "True", "--report_to", "none"])


# -- under the HF Trainer --------------------------------------------------------------------------
def test_trainer_run_with_packing_matches_unpacked_and_learns(tiny_llm, tiny_clip, demo_data, tmp_path):
    common = [
        "--model_name_or_path", tiny_llm("phi"), "--vision_tower", tiny_clip, "--data_path", demo_data["finetune"],
        "--image_folder", demo_data["image_folder"], "--mm_projector_type", "mlp2x_gelu",
        "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2", "--learning_rate", "2e-3",
        "--lr_scheduler_type", "constant", "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no",
        "--model_max_length", "256", "--seed", "0", "--train_sampling_strategy", "group_by_length",
    ]

    def losses(out):
        with open(os.path.join(out, "trainer_state.json")) as f:
            return [e["loss"] for e in json.load(f)["log_history"] if "loss" in e]

    train([*common, "--packing", "True", "--max_steps", "12", "--output_dir", str(tmp_path / "packed")])
    train([*common, "--max_steps", "3", "--output_dir", str(tmp_path / "plain")])
    packed, plain = losses(tmp_path / "packed"), losses(tmp_path / "plain")
    assert packed[:3] == pytest.approx(plain, rel=1e-4)  # same batches, same losses, same updates
    assert sum(packed[-3:]) / 3 < sum(packed[:3]) / 3 - 0.5


def test_length_mix_benchmark_rows_at_toy_size():
    from benchmarks.length_mix import run

    rows = run("cpu", repeats=1, records=60, batch_size=4, timed_batches=1, hidden=64, layers=1)
    assert {(r["case"], r["metric"]) for r in rows} >= {
        ("random", "padding_fraction"), ("group_by_length", "padding_fraction"), ("packing", "train_tokens_per_s"),
        ("group_by_length_vs_random", "ratio"), ("packing_vs_random", "ratio"),
    }
    for row in rows:
        assert row["benchmark"] == "length_mix" and len(row["values"]) == 1 and row["config"]["records"] == 60
        if row["metric"] == "padding_fraction":
            assert 0 <= row["value"] < 1
        else:
            assert row["value"] > 0
        if "target" in row:
            assert isinstance(row["met"], bool)
    padding = {r["case"]: r["value"] for r in rows if r["metric"] == "padding_fraction"}
    assert padding["group_by_length"] < padding["random"] and padding["packing"] < padding["random"]
