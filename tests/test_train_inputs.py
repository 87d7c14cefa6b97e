"""Hostile training inputs (issue 16, part 3): each gives an error naming the file/record, or a counted skip.

Non-UTF-8 bytes, malformed JSONL lines, image paths outside --image_folder, oversized images (the
pixel bound, pixels and feature cache), unknown --version and missing model paths before anything loads.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib

import pytest
from transformers import AutoTokenizer, CLIPImageProcessor

from llava.model.builder import ensure_pad_token
from llava.records import InvalidRecord, UnreadableRecord
from llava.train import feature_cache
from llava.train.arguments import check_inputs, parse_args
from llava.train.dataset import LazySupervisedDataset
from llava.train.train import train

from test_feature_cache import tiny_model


class Cfg:
    image_aspect_ratio = "square"


def bomb_png(path, width=14000, height=14000) -> str:
    """A real 1-bit PNG of `width` x `height` (196 MP, over twice Pillow's own limit) in a few kB."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\0" + b"\0" * ((width + 7) // 8)
    pixels = zlib.compressobj(9)
    body = b"".join(pixels.compress(row) for _ in range(height)) + pixels.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return str(path)


@pytest.fixture(scope="module")
def env(tiny_llm, tiny_clip, demo_data, tmp_path_factory):
    tok = AutoTokenizer.from_pretrained(tiny_llm("phi"), padding_side="right")
    ensure_pad_token(tok)
    root = tmp_path_factory.mktemp("inputs")
    folder = root / "images"
    (folder / "sub").mkdir(parents=True)
    good = sorted(os.listdir(demo_data["image_folder"]))[0]
    shutil.copy(os.path.join(demo_data["image_folder"], good), folder / good)
    shutil.copy(os.path.join(demo_data["image_folder"], good), root / "outside.png")
    bomb_png(folder / "bomb.png")
    return dict(tok=tok, root=root, folder=str(folder), good=good, processor=CLIPImageProcessor.from_pretrained(tiny_clip))


def record(i, image=None):
    question = "<image>\nWhat shape?" if image else f"Question {i}?"
    out = {"id": f"r{i}", "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": "circle"}]}
    return {**out, "image": image} if image else out


def dataset(env, path, **kwargs):
    return LazySupervisedDataset(str(path), env["tok"], "phi", image_folder=env["folder"],
                                 image_processor=env["processor"], model_config=Cfg(), max_length=256,
                                 image_tokens=16, **kwargs)


def test_non_utf8_jsonl_line_is_named_and_skipped_when_asked(env, tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(record(i)).encode() for i in range(3)]
    lines[1] = lines[1].replace(b"Question", b"Qu\xe9stion")  # Latin-1 é
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(UnreadableRecord, match=r"data\.jsonl line 2: byte 0xe9 at column \d+ is not UTF-8.*--skip_invalid"):
        dataset(env, path)
    skipped = dataset(env, path, skip_invalid=True)
    assert [r["id"] for r in skipped.records] == ["r0", "r2"]
    assert skipped.stats.skipped == {"not_utf8": 1} and skipped.stats.total == 3


def test_non_utf8_in_a_json_list_names_line_column_and_record(env, tmp_path):
    path = tmp_path / "data.json"
    text = json.dumps([record(0), record(1), record(2)], indent=1).encode()
    path.write_bytes(text.replace(b"Question 2", b"Question \xff2"))
    with pytest.raises(UnreadableRecord, match=r"data\.json line \d+ column \d+, in record 2 \(id 'r2'\): "
                                               r"byte 0xff is not UTF-8"):
        dataset(env, path)
    skipped = dataset(env, path, skip_invalid=True)
    assert [r["id"] for r in skipped.records] == ["r0", "r1"] and skipped.stats.skipped == {"not_utf8": 1}
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(json.dumps([record(i) for i in range(200)]).replace("Question", "Qu\xe9stion").encode("latin-1"))
    with pytest.raises(ValueError, match="more than 100 bytes that are not UTF-8.*another encoding"):
        dataset(env, latin1, skip_invalid=True)


def test_malformed_jsonl_line_is_an_error_or_a_counted_skip(env, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join([json.dumps(record(0)), '{"id": "r1", "conversations": [', json.dumps(record(2))]))
    with pytest.raises(UnreadableRecord, match=r"data\.jsonl line 2 is not valid JSON.*--skip_invalid True"):
        dataset(env, path)
    skipped = dataset(env, path, skip_invalid=True)
    assert [r["id"] for r in skipped.records] == ["r0", "r2"]
    assert skipped.stats.skipped == {"malformed_json": 1} and skipped.stats.total == 3


@pytest.mark.parametrize("kind", ["absolute", "parent"])
def test_image_paths_outside_the_folder_are_refused_unless_allowed(env, tmp_path, kind):
    outside = str(env["root"] / "outside.png") if kind == "absolute" else "../outside.png"
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record(0, env["good"]), record(1, outside)]))
    with pytest.raises(InvalidRecord, match=rf"record 'r1'.*image path '{outside}' (is absolute|climbs out).*"
                                            r"--allow_outside_image_folder True"):
        dataset(env, path)
    skipped = dataset(env, path, skip_invalid=True)
    assert len(skipped) == 1 and skipped.stats.skipped == {"image outside --image_folder": 1}
    allowed = dataset(env, path, allow_outside_image_folder=True)
    assert allowed[1]["images"].shape == (1, 3, 32, 32)
    inside = tmp_path / "inside.json"  # '..' that stays inside is fine
    inside.write_text(json.dumps([record(0, f"sub/../{env['good']}")]))
    assert dataset(env, inside)[0]["images"].shape == (1, 3, 32, 32)


def test_oversized_images_name_the_record_or_are_skipped_and_counted(env, tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record(0, "bomb.png"), record(1, env["good"])]))
    data = dataset(env, path)
    with pytest.raises(InvalidRecord, match=r"record 'r0': image .*bomb\.png is too large.*--skip_invalid True"):
        data[0]
    skipping = dataset(env, path, skip_invalid=True)
    assert skipping[0]["images"].shape == (1, 3, 32, 32)  # replaced by the next good record
    assert skipping.stats.skipped == {"image too large": 1}
    bounded = dataset(env, path, skip_invalid=True, max_image_pixels=100)  # the flag's bound, not Pillow's
    with pytest.raises(RuntimeError, match="every record failed"):
        bounded[1]
    assert bounded.stats.skipped == {"image too large": 2}
    with pytest.raises(InvalidRecord, match=r"record 'r1': image .* is 32 x 32 = 1,024 pixels, over the limit of 100"
                                            r".*--max_image_pixels"):
        dataset(env, path, max_image_pixels=100)[1]


def test_the_feature_cache_applies_the_pixel_bound(env, tiny_llm, tiny_clip, tmp_path):
    model, _ = tiny_model(tiny_llm, tiny_clip)
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record(0, "bomb.png"), record(1, env["good"])]))
    paths = dataset(env, path).image_files()
    tower = model.get_vision_tower()
    cache = feature_cache.ensure(str(tmp_path / "cache"), tower, env["processor"], "square", paths)
    cached = dataset(env, path, skip_invalid=True, feature_cache=cache)
    assert cached[0]["image_features"].shape[0] == 1 and cached.stats.skipped == {"image too large": 1}
    strict = feature_cache.ensure(str(tmp_path / "cache"), tower, env["processor"], "square", paths, max_image_pixels=100)
    assert strict.key != cache.key  # the bound decides which images are refused: part of the key
    with pytest.raises(InvalidRecord, match="record 'r1'.*over the limit of 100"):
        dataset(env, path, feature_cache=strict)[1]


def args(tiny_llm, tiny_clip, demo_data, tmp_path, *extra):
    return ["--model_name_or_path", tiny_llm("phi"), "--vision_tower", tiny_clip, "--data_path", demo_data["finetune"],
            "--image_folder", demo_data["image_folder"], "--output_dir", str(tmp_path / "out"), "--report_to", "none",
            *extra]


@pytest.mark.parametrize("flags,message", [
    (["--version", "vicuna_v9"], r"--version: unknown conversation template 'vicuna_v9'; choose one of: "),
    (["--model_name_or_path", "{tmp}/checkpoints/no-such-llm"],
     r"--model_name_or_path .*checkpoints/no-such-llm: no such folder \(looked for .*checkpoints/no-such-llm\)"),
    (["--vision_tower", "{tmp}/no-tower"], r"--vision_tower .*no-tower: no such folder"),
    (["--pretrain_mm_mlp_adapter", "{tmp}/mm_projector.bin"], r"--pretrain_mm_mlp_adapter .*mm_projector.bin does not exist"),
    (["--image_folder", "{tmp}/no-images"], r"--image_folder .*no-images is not a folder"),
])
def test_bad_flags_fail_before_the_model_loads(tiny_llm, tiny_clip, demo_data, tmp_path, monkeypatch, flags, message):
    monkeypatch.setattr("llava.train.train.build_model", lambda *a: pytest.fail("the model loaded before the check"))
    monkeypatch.setattr("llava.train.train.resolve_backbone", lambda *a: pytest.fail("the config loaded first"))
    flags = [f.format(tmp=tmp_path) for f in flags]
    with pytest.raises((ValueError, OSError), match=message):
        train(args(tiny_llm, tiny_clip, demo_data, tmp_path, *flags))


def test_checked_paths_are_the_resolved_folders(tiny_llm, tiny_clip, demo_data, tmp_path, monkeypatch):
    monkeypatch.chdir(os.path.dirname(tiny_llm("phi")))
    model_args, data_args, _ = parse_args(args(tiny_llm, tiny_clip, demo_data, tmp_path, "--model_name_or_path",
                                               os.path.basename(tiny_llm("phi"))))
    check_inputs(model_args, data_args)
    assert os.path.isdir(model_args.model_name_or_path) and model_args.vision_tower == tiny_clip


def test_a_truncated_record_is_named_and_counted_once_however_often_it_is_loaded(env, tiny_llm, tiny_clip, tmp_path,
                                                                                caplog):
    long_answer = " ".join(["circle"] * 400)  # far past --model_max_length 256
    records = [record(0, env["good"]), record(1, env["good"]),
               {"id": "long-1", "image": env["good"], "conversations": [
                   {"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": long_answer}]}]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    with caplog.at_level("INFO"):
        train(["--model_name_or_path", tiny_llm("phi"), "--vision_tower", tiny_clip, "--data_path", str(path),
               "--image_folder", env["folder"], "--output_dir", str(tmp_path / "out"), "--num_train_epochs", "3",
               "--per_device_train_batch_size", "3", "--model_max_length", "256", "--report_to", "none",
               "--save_strategy", "no"])
    warnings = [r.getMessage() for r in caplog.records if "cut to --model_max_length" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("record 'long-1': ")  # loaded 3 times, said once
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train data:")]
    assert summary == ["train data: 3 records, 0 skipped (none on rank 0), 1 truncated to --model_max_length 256 "
                       "('long-1')"]


def test_duplicate_record_ids_are_trained_as_given_with_a_warning_naming_them(env, tmp_path, caplog):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record(0), record(1), record(0), record(2), record(0), record(1)]))
    with caplog.at_level("WARNING"):
        ds = dataset(env, path)
    assert len(ds) == 6  # nothing dropped: a repeat may be on purpose
    warning = [r.getMessage() for r in caplog.records if "more than once" in r.getMessage()]
    assert len(warning) == 1 and "2 record id(s) appear more than once ('r0' x3, 'r1' x2)" in warning[0]
    assert str(path) in warning[0]
