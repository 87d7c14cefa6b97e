"""Interleaved multi-image records and videos (sampled frames, pooled) through records, dataset, collator,
feature cache, model, inference engine and the demos."""

from __future__ import annotations

import io
import json
import os

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from helpers import shapes_video
from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.builder import ensure_pad_token
from llava.model.llava_arch import anyres_for, pool_frames, video_for
from llava.model.registry import get_backbone
from llava.preprocess import preprocess, sequence_lengths
from llava.records import InvalidRecord
from llava.train import feature_cache
from llava.train.collator import DataCollatorForSupervisedDataset
from llava.train.dataset import LazySupervisedDataset
from llava.video import VideoSettings, frame_indices, load_frames, pooled_side

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}


def turns(*texts):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    """Single-image, interleaved multi-image, video and text-only records (what the end-to-end runs train on)."""
    root = tmp_path_factory.mktemp("mixed-data")
    folder = root / "media"
    (folder / "clips").mkdir(parents=True)
    for name, rgb in COLOURS.items():
        Image.new("RGB", (40, 32), rgb).save(folder / f"{name}.png")
    shapes_video(str(folder / "clips" / "red.mp4"), frames=6, color=COLOURS["red"])
    shapes_video(str(folder / "clips" / "blue.mp4"), frames=3, color=COLOURS["blue"])
    records = []
    for i, (name, _) in enumerate(COLOURS.items()):
        records.append({"id": f"single-{name}", "image": f"{name}.png",
                        "conversations": turns("<image>\nWhat colour is it?", name)})
    records.append({"id": "pair", "image": ["red.png", "green.png"],
                    "conversations": turns("First <image>. What colour?", "red", "And <image>?", "green")})
    records.append({"id": "three", "image": ["blue.png", "red.png", "green.png"],
                    "conversations": turns("<image> <image> <image>\nName the colours.", "blue, red, green")})
    records.append({"id": "video-red", "video": "clips/red.mp4",
                    "conversations": turns("<image>\nWhat colour moves?", "red")})
    records.append({"id": "video-blue", "video": "clips/blue.mp4",
                    "conversations": turns("What colour moves?", "blue")})
    records.append({"id": "text", "conversations": turns("Say hi.", "Hi.")})
    (root / "train.json").write_text(json.dumps(records))
    return {"root": root, "data": str(root / "train.json"), "folder": str(folder), "records": records}


def tiny_model(tiny_llm, tiny_clip, aspect="pad", merge="flat", pool_mode="bilinear", stride=2, frames=4):
    torch.manual_seed(0)
    model = get_backbone("phi").model_class.from_pretrained(tiny_llm("phi"), dtype=torch.float32)
    model.get_model().initialize_vision_modules(tiny_clip, "mlp2x_gelu", -2, "patch", mm_patch_merge_type=merge)
    model.config.image_aspect_ratio = aspect
    model.config.image_grid_pinpoints = "(1x1),...,(2x2)" if aspect.startswith("anyres") else None
    model.config.tokenizer_model_max_length = 1024
    model.config.mm_spatial_pool_mode, model.config.mm_spatial_pool_stride = pool_mode, stride
    model.config.frames_upbound = frames
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm("phi"))
    ensure_pad_token(tokenizer)
    return model, tokenizer


def dataset(model, tokenizer, data, cache=None, **kwargs):
    tower = model.get_vision_tower()
    return LazySupervisedDataset(
        data["data"], tokenizer, "phi", image_folder=data["folder"], image_processor=tower.load_image_processor(),
        model_config=model.config, max_length=1024, image_tokens=tower.num_patches, feature_cache=cache,
        anyres=anyres_for(model.config, tower), video=video_for(model.config, tower), **kwargs)


def collate(model, tokenizer, **kwargs):
    tower = model.get_vision_tower()
    shapes = {"feature_shape": kwargs.pop("feature_shape")} if "feature_shape" in kwargs else {"image_shape": tower.pixel_shape}
    return DataCollatorForSupervisedDataset(tokenizer, image_tokens=tower.num_patches, **shapes, **kwargs)


def merged_length(model, batch) -> int:
    with torch.no_grad():
        merged = model.prepare_inputs_labels_for_multimodal(
            batch["input_ids"], None, batch["attention_mask"], None, batch["labels"], batch.get("images"),
            batch.get("image_sizes"), image_features=batch.get("image_features"), video_frames=batch.get("video_frames"))
    return (merged[4] if merged[4] is not None else batch["input_ids"]).shape[1]


# -- frames and pooling ------------------------------------------------------------------------------
def test_frame_sampling_is_even_and_bounded():
    assert frame_indices(10, 4) == [0, 3, 6, 9]
    assert frame_indices(3, 8) == [0, 1, 2]  # a short video: all its frames
    assert frame_indices(3, 5, force_sample=True) == [0, 0, 1, 2, 2]  # forced: exactly the bound
    assert frame_indices(0, 4) == []


@pytest.mark.parametrize("mode, side, stride, expected", [
    ("average", 4, 2, 2), ("max", 5, 2, 2), ("bilinear", 5, 2, 3), ("bilinear", 24, 2, 12), ("average", 4, 1, 4)])
def test_pooled_grid_sizes_match_the_pooling(mode, side, stride, expected):
    video = VideoSettings(pool_stride=stride, pool_mode=mode, side=side)
    assert pooled_side(side, stride, mode) == expected
    features = torch.randn(3, side * side, 8)
    pooled = pool_frames(features, video)
    assert pooled.shape == (3, expected * expected, 8) == (3, video.frame_tokens, 8)
    if mode == "average" and stride == 2:  # each pooled patch is the mean of its 2 x 2 block
        grid = features.view(3, side, side, 8)
        assert torch.allclose(pooled[:, 0], grid[:, :2, :2].mean(dim=(1, 2)), atol=1e-6)


def test_videos_decode_to_the_sampled_frames_and_bad_ones_are_named(tmp_path):
    path = shapes_video(str(tmp_path / "v.mp4"), frames=7)
    frames = load_frames(path, 4)
    assert len(frames) == 4 and frames[0].size == (48, 48)
    assert frames[0].getpixel((5, 24))[0] > 180 and frames[-1].getpixel((5, 24))[0] < 160  # the square moved
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="junk.mp4 cannot be read"):
        load_frames(str(tmp_path / "junk.mp4"), 4)
    empty = shapes_video(str(tmp_path / "empty.mp4"), frames=0)
    with pytest.raises(ValueError, match="empty.mp4 has no frames"):
        load_frames(empty, 4)


# -- records, token counts and the merge --------------------------------------------------------------
def test_marker_mismatches_name_the_record(tiny_llm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm("phi"))
    with pytest.raises(InvalidRecord, match=r"record 'pair': 1 <image> markers but 2 image\(s\)"):
        preprocess(turns("<image> and?", "A"), tokenizer, "phi", record_id="pair", num_images=2)
    with pytest.raises(InvalidRecord, match=r"record 'clip': 2 <image> markers but 1 image\(s\)/video"):
        preprocess(turns("<image><image>", "A"), tokenizer, "phi", record_id="clip", num_images=1)


def test_interleaved_images_sit_at_their_markers_in_order(tiny_llm, tiny_clip, mixed_data):
    """Each image's features replace its own marker, in any turn: the merged sequence holds image k's
    projected patches exactly where marker k was."""
    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    model.eval()
    data = dataset(model, tokenizer, mixed_data)
    item = data[3]  # "pair": one marker in each human turn
    ids = item["input_ids"]
    markers = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
    assert len(markers) == 2 and item["images"].shape[0] == 2
    assert markers[1] - markers[0] > 5  # the second image sits in the second human turn, after the first answer
    batch = collate(model, tokenizer)([item])
    with torch.no_grad():
        embeds = model.prepare_inputs_labels_for_multimodal(batch["input_ids"], None, batch["attention_mask"], None,
                                                            batch["labels"], batch["images"])[4][0]
        features = model.encode_images(item["images"])
    patches = features.shape[1]
    first = markers[0]
    second = markers[1] + patches - 1  # the first image's patches moved everything after it
    assert torch.allclose(embeds[first : first + patches], features[0], atol=1e-6)
    assert torch.allclose(embeds[second : second + patches], features[1], atol=1e-6)
    text = model.get_model().get_input_embeddings()(ids[first + 1 : markers[1]])
    assert torch.allclose(embeds[first + patches : second], text, atol=1e-6)


@pytest.mark.parametrize("aspect, merge, mode", [("pad", "flat", "bilinear"), ("square", "flat", "average"),
                                                 ("pad", "flat", "max"), ("anyres", "spatial_unpad", "bilinear")])
def test_counted_lengths_equal_what_the_model_builds(aspect, merge, mode, tiny_llm, tiny_clip, mixed_data):
    """Length grouping's exact counts, packing's and the model's merged sequence agree for single, multi-image,
    video and text-only records; a video fills frames x pooled patches (+ one newline with spatial_unpad)."""
    model, tokenizer = tiny_model(tiny_llm, tiny_clip, aspect, merge, mode)
    model.eval()
    data = dataset(model, tokenizer, mixed_data)
    video = video_for(model.config, model.get_vision_tower())
    counted = [abs(n) for n in data.modality_token_lengths]
    assert [n > 0 for n in data.modality_token_lengths] == [True] * 7 + [False]
    collator = collate(model, tokenizer)
    for i in range(len(data)):
        item = data[i]
        assert collator.positions(item) == counted[i], mixed_data["records"][i]["id"]
        assert merged_length(model, collator([item])) == counted[i], mixed_data["records"][i]["id"]
    red, blue = data[5], data[6]
    assert red["video_frames"] == [4] and blue["video_frames"] == [3]  # at most frames_upbound; all of a short one
    assert red["image_tokens"] == [4 * video.frame_tokens + (merge == "spatial_unpad")]
    # One batch of everything: the markers line up with their images, tiles and frames.
    everything = collator([data[i] for i in range(len(data))])
    assert everything["video_frames"].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 4, 3]
    assert merged_length(model, everything) == max(counted)


def test_packing_never_splits_a_video_and_counts_its_frames(tiny_llm, tiny_clip, mixed_data):
    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    data = dataset(model, tokenizer, mixed_data)
    counted = [abs(n) for n in data.modality_token_lengths]
    collator = collate(model, tokenizer,
                                                packing=True, max_length=max(counted) + 20)
    items = [data[i] for i in range(len(data))]
    batch = collator(items)
    assert batch["input_ids"].shape[0] < len(items)  # packed
    model.train()
    packed_loss = model(**batch).loss
    plain = collate(model, tokenizer)(items)
    assert torch.allclose(packed_loss, model(**plain).loss, atol=1e-5)


def test_a_video_is_never_cut(tiny_llm, tiny_clip, mixed_data):
    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    data = dataset(model, tokenizer, mixed_data)
    data.max_length = 20  # the video's 4 x 4 positions end past it
    with pytest.raises(InvalidRecord, match="record 'video-red'.*would cut into the images"):
        data[5]


def test_unusable_videos_are_errors_naming_the_record(tiny_llm, tiny_clip, tmp_path):
    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 100)
    shapes_video(str(tmp_path / "empty.mp4"), frames=0)
    for name, message in [("junk", "junk.mp4 cannot be read"), ("empty", "empty.mp4 has no frames")]:
        (tmp_path / f"{name}.json").write_text(json.dumps(
            [{"id": f"clip-{name}", "video": f"{name}.mp4", "conversations": turns("<image>\nQ", "A")}]))
        data = dataset(model, tokenizer, {"data": str(tmp_path / f"{name}.json"), "folder": str(tmp_path)})
        with pytest.raises(InvalidRecord, match=f"record 'clip-{name}': video .*{message}"):
            data[0]
    (tmp_path / "missing.json").write_text(json.dumps(
        [{"id": "clip-missing", "video": "nope.mp4", "conversations": turns("<image>\nQ", "A")}]))
    with pytest.raises(InvalidRecord, match="record 'clip-missing': video .*nope.mp4 does not exist"):
        dataset(model, tokenizer, {"data": str(tmp_path / "missing.json"), "folder": str(tmp_path)})
    (tmp_path / "both.json").write_text(json.dumps(
        [{"id": "both", "video": "junk.mp4", "image": "a.png", "conversations": turns("<image>\nQ", "A")}]))
    with pytest.raises(InvalidRecord, match="record 'both': has both 'image' and 'video'"):
        dataset(model, tokenizer, {"data": str(tmp_path / "both.json"), "folder": str(tmp_path)})


# -- the feature cache ---------------------------------------------------------------------------------
def test_cached_frames_give_the_same_loss_and_follow_the_video_and_its_sampling(tiny_llm, tiny_clip, mixed_data,
                                                                                tmp_path):
    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    tower = model.get_vision_tower()
    video = video_for(model.config, tower)
    plain = dataset(model, tokenizer, mixed_data)

    def cache_with(settings):
        return feature_cache.ensure(str(tmp_path / "cache"), tower, tower.load_image_processor(), "pad",
                                    plain.image_files(), videos=plain.video_files(), video=settings)

    cache = cache_with(video)
    assert cache.array.shape[0] == 3 + 4 + 3  # three images (listed once each), then 4 + 3 frames
    assert cache.frames(os.path.join(mixed_data["folder"], "clips", "red.mp4")) == 4
    cached = dataset(model, tokenizer, mixed_data, cache=cache)
    assert cached.modality_token_lengths == plain.modality_token_lengths
    items = list(range(len(plain)))
    pixels = collate(model, tokenizer)([plain[i] for i in items])
    features = collate(model, tokenizer, feature_shape=cache.feature_shape)([cached[i] for i in items])
    assert torch.equal(pixels["video_frames"], features["video_frames"])
    model.train()
    assert torch.allclose(model(**pixels).loss, model(**features).loss, atol=1e-6)

    assert cache_with(video).key == cache.key  # reused
    fewer = cache_with(VideoSettings(frames_upbound=2, side=video.side))
    assert fewer.key != cache.key and fewer.frames(os.path.join(mixed_data["folder"], "clips", "red.mp4")) == 2
    clip = os.path.join(mixed_data["folder"], "clips", "blue.mp4")
    shapes_video(clip, frames=5, color=COLOURS["blue"])  # edited: re-read although the key is the same
    try:
        assert cache_with(VideoSettings(frames_upbound=2, side=video.side)).frames(clip) == 2
        assert cache_with(video).frames(clip) == 4
    finally:
        shapes_video(clip, frames=3, color=COLOURS["blue"])


# -- inference ------------------------------------------------------------------------------------------
def test_engine_answers_with_several_images_or_a_video_batched_like_alone(tiny_llm, tiny_clip, mixed_data):
    from llava.inference import GenerationSettings, InferenceEngine

    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    model.eval()
    engine = InferenceEngine(tokenizer, model, model.get_vision_tower().load_image_processor(), 1024, "phi")
    folder = mixed_data["folder"]
    requests = [
        ([os.path.join(folder, "red.png"), os.path.join(folder, "green.png")], None, "Is <image> like <image>?"),
        ([os.path.join(folder, "blue.png")], None, "What colour?"),
        ([], os.path.join(folder, "clips", "red.mp4"), "What moves?"),
        ([], None, "Say hi."),
    ]
    items = []
    for images, video, text in requests:
        conv = engine.new_conversation()
        visuals = [engine.process_video(video)] if video else [engine.process_image(i) for i in images]
        engine.add_user_turn(conv, text, has_image=len(visuals))
        item = engine.prepare(conv, visuals)
        assert int((item.input_ids == IMAGE_TOKEN_INDEX).sum()) == max(len(images), bool(video))
        items.append(item)
    assert items[0].prompt.count("<image>") == 2 and not items[0].prompt.startswith("<image>\n<image>")
    settings = GenerationSettings(max_new_tokens=4)
    greedy = engine.generate(items, settings)
    assert greedy == [engine.generate([item], settings)[0] for item in items]
    with pytest.raises(ValueError, match="3 <image> markers but 1 image"):
        conv = engine.new_conversation()
        engine.add_user_turn(conv, "<image> and <image>?", has_image=1)
        engine.prepare(conv, [engine.process_image(os.path.join(folder, "red.png"))])


def test_cli_takes_several_images_or_a_video(tiny_llm, tiny_clip, mixed_data, tmp_path):
    from llava.inference import InferenceEngine
    from llava.serve.cli import chat

    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    engine = InferenceEngine(tokenizer, model.eval(), model.get_vision_tower().load_image_processor(), 1024, "phi")
    folder = mixed_data["folder"]
    from llava.inference import GenerationSettings

    settings = GenerationSettings(max_new_tokens=3)
    out = io.StringIO()
    images = [os.path.join(folder, "red.png"), os.path.join(folder, "blue.png")]
    assert chat(engine, images, settings, stdin=io.StringIO("Same colour?\nWhy?\n"), stdout=out) == 2
    assert chat(engine, [], settings, stdin=io.StringIO("What moves?\n"), stdout=io.StringIO(),
                video_file=os.path.join(folder, "clips", "red.mp4")) == 1
    with pytest.raises(SystemExit, match="--video-file: video .*junk.mp4"):
        (tmp_path / "junk.mp4").write_bytes(b"junk")
        chat(engine, [], settings, stdin=io.StringIO("Q\n"), stdout=io.StringIO(), video_file=str(tmp_path / "junk.mp4"))


def test_web_demo_takes_several_pictures_or_a_video(tiny_llm, tiny_clip, mixed_data, tmp_path):
    pytest.importorskip("gradio")
    from llava.inference import GenerationSettings, InferenceEngine
    from llava.serve import web

    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    engine = InferenceEngine(tokenizer, model.eval(), model.get_vision_tower().load_image_processor(), 1024, "phi")
    settings = GenerationSettings(max_new_tokens=3)
    folder = mixed_data["folder"]

    def ask(upload, question):
        *_, (history, session, _, _, status) = web.respond(engine, settings, None, 2**20, upload, question, None, [],
                                                           web.new_session())
        return history, session, status

    pair = [os.path.join(folder, "red.png"), os.path.join(folder, "blue.png")]
    history, session, status = ask(pair, "Is <image> redder than <image>?")
    assert len(session["pixels"]) == 2 and not status.startswith("⚠️")
    assert session["conv"].get_prompt().count("<image>") == 2 and history[-1]["role"] == "assistant"
    history, session, status = ask([os.path.join(folder, "clips", "red.mp4")], "What moves?")
    assert "⚠️" not in status and len(session["pixels"][0].pixels) == 4
    _, session, status = ask([os.path.join(folder, "clips", "red.mp4"), pair[0]], "What moves?")
    assert "A video goes alone" in status
    (tmp_path / "junk.mp4").write_bytes(b"junk")
    _, session, status = ask([str(tmp_path / "junk.mp4")], "What moves?")
    assert status.startswith("⚠️") and "junk.mp4" in status and "cannot be read" in status


# -- end to end -----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("zero", ["2", "3"])
def test_two_processes_train_mixed_records_and_answer(zero, tiny_llm, tiny_clip, mixed_data, tmp_path):
    """Single-image, multi-image, video and text-only records train under ZeRO-2 (frames from the feature cache,
    packed rows) and ZeRO-3 (pixels) on 2 processes through the launcher (grouped by modality, as the launcher does), save, and answer
    model_vqa's questions with several images or a video."""
    import subprocess

    from helpers import read_jsonl, write_questions
    from llava.eval.model_vqa import main as model_vqa
    from test_train_run import REPO

    out = tmp_path / "ft"
    env = {**os.environ, "MODEL_PATH": tiny_llm("phi"), "VISION_TOWER": tiny_clip, "DATA_PATH": mixed_data["data"],
           "IMAGE_FOLDER": mixed_data["folder"], "RUN_NAME": "test", "OUTPUT_DIR": str(out), "MAX_STEPS": "3",
           "SAVE_STEPS": "3", "BATCH_SIZE": "2", "NUM_GPUS": "2", "ZERO": zero,
           "EXTRA_ARGS": "--frames_upbound 3 --mm_spatial_pool_mode average --model_max_length 512"
                         # ZeRO-2 reads the frames from the feature cache (the main process builds it) and packs
                         + (f" --vision_feature_cache {tmp_path / 'cache'} --packing True" if zero == "2" else "")}
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "finetune.sh")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=400, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"ZeRO-{zero}" in log and f"checkpoint in {out}" in log and "0 skipped" in log
    if zero == "2":
        cache = feature_cache.FeatureCache(str(tmp_path / "cache"))
        assert cache.frames(os.path.join(mixed_data["folder"], "clips", "red.mp4")) == 3
    config = json.loads((out / "config.json").read_text())
    assert (config["frames_upbound"], config["mm_spatial_pool_mode"], config["mm_spatial_pool_stride"]) == (3, "average", 2)

    questions = write_questions(str(tmp_path / "q.jsonl"), [
        {"question_id": "pair", "image": ["red.png", "green.png"], "text": "Is <image> like <image>?"},
        {"question_id": "video", "video": "clips/red.mp4", "text": "What colour moves?"},
        {"question_id": "single", "image": "blue.png", "text": "What colour is it?"},
        {"question_id": "text", "text": "Say hi."}])
    answers = tmp_path / "answers.jsonl"
    model_vqa(["--model-path", str(out), "--question-file", questions, "--image-folder", mixed_data["folder"],
               "--answers-file", str(answers), "--max_new_tokens", "3", "--batch-size", "4"])
    assert [r["question_id"] for r in read_jsonl(str(answers))] == ["pair", "video", "single", "text"]


def test_video_settings_this_code_cannot_reproduce_are_refused_naming_the_field(tiny_llm, tiny_clip):
    model, _ = tiny_model(tiny_llm, tiny_clip)
    tower = model.get_vision_tower()
    for field, value, message in [("mm_newline_position", "grid", "mm_newline_position 'grid'"),
                                  ("add_faster_video", True, "add_faster_video"),
                                  ("mm_spatial_pool_mode", "median", "mm_spatial_pool_mode 'median'"),
                                  ("frames_upbound", -1, "frames_upbound -1")]:
        saved = getattr(model.config, field, None)
        setattr(model.config, field, value)
        with pytest.raises(ValueError, match=message):
            video_for(model.config, tower)
        setattr(model.config, field, saved)


def test_the_blank_ablation_blanks_video_frames_as_it_blanks_images(tiny_llm, tiny_clip, mixed_data):
    from llava.eval import model_vqa
    from llava.inference import InferenceEngine

    model, tokenizer = tiny_model(tiny_llm, tiny_clip)
    engine = InferenceEngine(tokenizer, model.eval(), model.get_vision_tower().load_image_processor(), 1024, "phi")
    question = [{"question_id": "v", "video": "clips/red.mp4", "text": "What colour moves?"}]
    real, = model_vqa.prepare_batch(engine, question, mixed_data["folder"])
    blank, = model_vqa.prepare_batch(engine, question, mixed_data["folder"], ablation="blank")
    frames, shown = blank.image, real.image  # (frames, C, H, W)
    assert blank.video_frames == real.video_frames and real.video_frames[0] == frames.shape[0] > 1
    assert frames.shape == shown.shape and shown.flatten(1).std(dim=1).max() > 0.1  # the real frames have content
    assert frames.abs().max() < 0.02  # every blank frame is the processor's mean colour, normalised to ~0
