"""Dataset validation, bad records (error or counted skip), collator and modality sampler (≈5 s)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from transformers import AutoTokenizer, CLIPImageProcessor

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.builder import ensure_pad_token
from llava.records import InvalidRecord
from llava.train.collator import DataCollatorForSupervisedDataset
from llava.train.dataset import LazySupervisedDataset
from llava.train.sampler import ModalityLengthGroupedSampler, modality_grouped_indices


class Cfg:
    image_aspect_ratio = "pad"


@pytest.fixture(scope="module")
def env(tiny_llm, tiny_clip, demo_data, tmp_path_factory):
    tok = AutoTokenizer.from_pretrained(tiny_llm("phi"), padding_side="right")
    ensure_pad_token(tok)
    folder = str(tmp_path_factory.mktemp("images"))
    for name in sorted(os.listdir(demo_data["image_folder"]))[:4]:
        shutil.copy(os.path.join(demo_data["image_folder"], name), folder)
    good = min(os.listdir(folder))
    with open(os.path.join(folder, "corrupt.png"), "wb") as f:
        f.write(b"not a png at all")
    return dict(tok=tok, folder=folder, good=good, processor=CLIPImageProcessor.from_pretrained(tiny_clip))


def make(env, tmp_path, records, name="data.json", **kwargs):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("\n".join(json.dumps(r) for r in records))
    else:
        path.write_text(json.dumps(records))
    return LazySupervisedDataset(
        str(path), env["tok"], "phi", image_folder=env["folder"], image_processor=env["processor"],
        model_config=Cfg(), max_length=kwargs.pop("max_length", 256), image_tokens=16, **kwargs,
    )


def good(env, i):
    return {"id": f"ok-{i}", "image": env["good"], "conversations": [
        {"from": "human", "value": "<image>\nWhat shape?"}, {"from": "gpt", "value": "circle"}]}


def text(i):
    return {"id": f"txt-{i}", "conversations": [{"from": "human", "value": "Hi " * (i + 1)}, {"from": "gpt", "value": "hello"}]}


BAD = {
    "missing image": ({"image": "nope.png"}, "does not exist"),
    "no assistant turn": ({"conversations": [{"from": "human", "value": "<image>\nq"}]}, "no assistant"),
    "wrong role order": ({"conversations": [{"from": "gpt", "value": "<image>\na"}, {"from": "human", "value": "q"}]},
                         "must alternate"),
    "too many markers": ({"conversations": [{"from": "human", "value": "<image>\n<image>\nq"}, {"from": "gpt", "value": "a"}]},
                         "2 <image> markers but 1"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_record_found_upfront_with_clear_error(env, tmp_path, case):
    patch, message = BAD[case]
    bad = {**good(env, 9), "id": "bad-9", **patch}
    with pytest.raises(InvalidRecord, match=f"record 'bad-9'.*{message}.*--skip_invalid"):
        make(env, tmp_path, [good(env, 0), bad])


def test_skip_invalid_counts_every_kind(env, tmp_path):
    bads = [{**good(env, 9), "id": f"bad-{k}", **patch} for k, (patch, _) in enumerate(BAD.values())]
    ds = make(env, tmp_path, [good(env, 0), *bads, text(1)], skip_invalid=True)
    assert len(ds) == 2 and ds.stats.total == 6
    assert ds.stats.skipped == {"missing image": 1, "bad_roles": 2, "image_token_count": 1}


def test_corrupt_image_and_overlong_at_load_time(env, tmp_path):
    corrupt = {**good(env, 1), "id": "broken", "image": "corrupt.png"}
    long = {"id": "long", "image": env["good"], "conversations": [
        {"from": "human", "value": "<image>\n" + "word " * 300}, {"from": "gpt", "value": "yes"}]}
    ds = make(env, tmp_path, [corrupt, long, good(env, 2)])
    with pytest.raises(InvalidRecord, match="record 'broken'.*cannot be read"):
        ds[0]
    with pytest.raises(InvalidRecord, match="record 'long'.*--model_max_length 256"):
        ds[1]
    skipping = make(env, tmp_path, [corrupt, long, good(env, 2)], skip_invalid=True)
    item = skipping[0]  # replaced by the next good record
    assert int((item["input_ids"] == IMAGE_TOKEN_INDEX).sum()) == 1
    assert skipping.stats.skipped == {"corrupt image": 1, "too long": 1}
    skipping[1]  # counted once, not per visit
    assert sum(skipping.stats.skipped.values()) == 2
    eager = make(env, tmp_path, [corrupt, long, good(env, 2)], skip_invalid=True, lazy=False)
    assert len(eager) == 1 and len(eager.modality_lengths) == 1 and eager.stats.skipped == {"corrupt image": 1, "too long": 1}


def test_jsonl_and_malformed_files(env, tmp_path):
    ds = make(env, tmp_path, [good(env, 0), text(0)], name="d.jsonl")
    assert len(ds) == 2
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match="broken.json: malformed JSON in record 0"):
        LazySupervisedDataset(str(tmp_path / "broken.json"), env["tok"], "phi")
    with pytest.raises(FileNotFoundError, match="--data_path"):
        LazySupervisedDataset(str(tmp_path / "none.json"), env["tok"], "phi")


def test_item_and_collated_batch(env, tmp_path):
    ds = make(env, tmp_path, [good(env, 0), text(3), good(env, 1)], lazy=False)
    item = ds[0]
    assert item["images"].shape == (1, 3, 32, 32)
    collate = DataCollatorForSupervisedDataset(env["tok"], (3, 32, 32))
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["images"].shape == (2, 3, 32, 32)  # one per marker, none for the text record
    lengths = [len(ds[i]["input_ids"]) for i in range(3)]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, n in enumerate(lengths):
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
    text_batch = collate([ds[1]])
    assert text_batch["images"].shape == (0, 3, 32, 32)  # the tower still runs on every rank


def test_modality_grouped_sampler():
    lengths = [10 + i for i in range(13)] + [-(5 + i) for i in range(7)]
    order = modality_grouped_indices(lengths, 4, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(20))
    full_groups = [order[i:i + 4] for i in range(0, 12 + 4, 4)][:4]  # 3 image + 1 text full groups come first
    for group in full_groups:
        signs = {lengths[i] > 0 for i in group}
        assert len(signs) == 1
        assert [abs(lengths[i]) for i in group] == sorted((abs(lengths[i]) for i in group), reverse=True)
    sampler = ModalityLengthGroupedSampler(lengths, 4, seed=1)
    sampler.set_epoch(2)
    first = list(sampler)
    sampler.set_epoch(2)
    assert list(sampler) == first
    sampler.set_epoch(3)
    assert list(sampler) != first
