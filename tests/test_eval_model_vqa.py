"""model_vqa: official file formats, batched = unbatched under greedy decoding, resume, missing images."""

from __future__ import annotations

import json
import os

import pytest

from helpers import cached_checkpoint, read_jsonl, write_questions
from llava.eval import model_vqa


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_llm, tiny_clip):
    return cached_checkpoint(tmp_path_factory, tiny_llm, tiny_clip, "phi")


@pytest.fixture(scope="module")
def questions(demo_data, tmp_path_factory):
    """The demo eval questions with padding words of different lengths, so left padding is exercised."""
    records = read_jsonl(demo_data["eval_questions_jsonl"])[:8]  # one question per eval image
    for i, record in enumerate(records):
        record["text"] = " ".join(["please"] * (i % 4) + [record["text"]])
    path = str(tmp_path_factory.mktemp("questions") / "questions.jsonl")
    return write_questions(path, records)


def run(checkpoint, questions, demo_data, answers, *extra):
    return model_vqa.main(
        [
            "--model-path", checkpoint,
            "--question-file", questions,
            "--image-folder", demo_data["image_folder"],
            "--answers-file", answers,
            "--max_new_tokens", "5",
            *extra,
        ]
    )


def test_batched_answers_equal_unbatched_and_files_follow_official_format(checkpoint, questions, demo_data, tmp_path):
    single, batched = str(tmp_path / "b1.jsonl"), str(tmp_path / "b3.jsonl")
    run(checkpoint, questions, demo_data, single, "--batch-size", "1")
    summary = run(checkpoint, questions, demo_data, batched, "--batch-size", "3")  # 8 questions: batches 3, 3, 2
    assert summary["answered"] == 8

    one, many = read_jsonl(single), read_jsonl(batched)
    expected_ids = [q["question_id"] for q in read_jsonl(questions)]
    assert [a["question_id"] for a in many] == expected_ids
    assert [a["text"] for a in one] == [a["text"] for a in many]
    assert len({a["text"] for a in many}) > 1, "answers should vary per image for this test to mean anything"
    for answer, question in zip(many, read_jsonl(questions)):
        assert set(answer) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
        assert answer["prompt"] == question["text"]
        assert answer["model_id"] == os.path.basename(checkpoint)
        assert "<|endoftext|>" not in answer["text"]  # phi template's stop string is stripped
    assert len({a["answer_id"] for a in many}) == 8


def test_resume_skips_answered_ids_and_drops_a_half_written_line(checkpoint, questions, demo_data, tmp_path):
    answers = str(tmp_path / "answers.jsonl")
    done = [{"question_id": q["question_id"], "prompt": q["text"], "text": "kept", "answer_id": f"old{i}",
             "model_id": os.path.basename(checkpoint), "metadata": {}} for i, q in enumerate(read_jsonl(questions)[:3])]
    with open(answers, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in done)
        f.write('{"question_id": "half-writ')  # a run killed mid-write
    summary = run(checkpoint, questions, demo_data, answers, "--batch-size", "4")
    assert summary["answered"] == 5 and summary["already_done"] == 3
    records = read_jsonl(answers)
    assert [r["answer_id"] for r in records[:3]] == ["old0", "old1", "old2"]
    assert sorted(r["question_id"] for r in records) == sorted(q["question_id"] for q in read_jsonl(questions))
    # A second run has nothing left to do.
    assert run(checkpoint, questions, demo_data, answers)["answered"] == 0


def test_missing_image_is_an_error_naming_the_question_or_a_counted_skip(checkpoint, questions, demo_data, tmp_path):
    records = read_jsonl(questions)[:3]
    records[1]["image"] = "no_such_image.png"
    broken = write_questions(str(tmp_path / "q.jsonl"), records)
    with pytest.raises(SystemExit, match=rf"question {records[1]['question_id']!r}.*--skip-missing-images"):
        run(checkpoint, broken, demo_data, str(tmp_path / "a.jsonl"))
    summary = run(checkpoint, broken, demo_data, str(tmp_path / "a.jsonl"), "--skip-missing-images")
    assert summary["answered"] == 2 and summary["skipped_missing_image"] == 1


def test_chunks_partition_the_questions():
    items = list(range(10))
    chunks = [model_vqa.get_chunk(items, 3, k) for k in range(3)]
    assert chunks == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="--chunk-idx"):
        model_vqa.get_chunk(items, 3, 3)


def test_lora_and_4bit_checkpoints_load_through_model_vqa(tmp_path, tiny_llm, tiny_clip, questions, demo_data):
    from helpers import make_lora_checkpoint

    records = read_jsonl(questions)[:3]
    few = write_questions(str(tmp_path / "few.jsonl"), records)
    lora = make_lora_checkpoint(str(tmp_path / "lora"), tiny_llm("phi"), tiny_clip, merged_dir=str(tmp_path / "merged"))
    run(lora, few, demo_data, str(tmp_path / "lora.jsonl"), "--model-base", tiny_llm("phi"))
    run(str(tmp_path / "merged"), few, demo_data, str(tmp_path / "merged.jsonl"))
    assert [a["text"] for a in read_jsonl(str(tmp_path / "lora.jsonl"))] == [
        a["text"] for a in read_jsonl(str(tmp_path / "merged.jsonl"))
    ]
    summary = run(str(tmp_path / "merged"), few, demo_data, str(tmp_path / "q4.jsonl"), "--load-4bit")
    assert summary["answered"] == 3 and all(a["text"] for a in read_jsonl(str(tmp_path / "q4.jsonl")))


def test_over_long_prompt_is_an_error_naming_the_question(checkpoint, questions, demo_data, tmp_path):
    records = read_jsonl(questions)[:2]
    records[1]["text"] = "why " * 600  # past tokenizer_model_max_length=512
    long = write_questions(str(tmp_path / "long.jsonl"), records)
    with pytest.raises(SystemExit, match=rf"question {records[1]['question_id']!r}: the prompt is \d+ tokens"):
        run(checkpoint, long, demo_data, str(tmp_path / "a.jsonl"))


def test_prompts_follow_official_llava_and_default_to_the_backbones_template():
    from types import SimpleNamespace

    from llava.inference import InferenceEngine

    def engine(conv_mode=None, **config):
        model = SimpleNamespace(config=SimpleNamespace(**config))
        return InferenceEngine(None, model, None, 2048, conv_mode)

    assert engine(model_type="llava_llama").conv_mode == "llava_llama_2"
    assert engine(model_type="llava_mpt").conv_mode == "mpt"
    with pytest.raises(ValueError, match="unknown conversation template 'nope'"):
        engine("nope", model_type="llava_phi")

    plain = engine("v1", model_type="llava_phi", mm_use_im_start_end=False)
    conv = plain.new_conversation()
    plain.add_user_turn(conv, "What is it?", has_image=True)
    assert conv.get_prompt().endswith("USER: <image>\nWhat is it? ASSISTANT:")

    wrapped = engine("v1", model_type="llava_phi", mm_use_im_start_end=True)
    conv = wrapped.new_conversation()
    wrapped.add_user_turn(conv, "What is it?", has_image=True)
    assert "USER: <im_start><image><im_end>\nWhat is it? ASSISTANT:" in conv.get_prompt()


def _engine_and_items(checkpoint, questions, demo_data, n=3):
    from llava.inference import InferenceEngine

    engine = InferenceEngine.from_pretrained(checkpoint)
    items = []
    for record in read_jsonl(questions)[:n]:
        conv = engine.new_conversation()
        engine.add_user_turn(conv, record["text"], has_image=True)
        items.append(engine.prepare(conv, os.path.join(demo_data["image_folder"], record["image"])))
    return engine, items


def test_prompt_forward_computes_only_the_last_positions_logits(checkpoint, questions, demo_data):
    """generate() asks for the last position's logits only (logits_to_keep), the same numbers as the full forward's."""
    import torch

    engine, items = _engine_and_items(checkpoint, questions, demo_data)
    model = engine.model
    assert model._supports_logits_to_keep()
    batch = engine._batch(items)
    with torch.no_grad():
        full = model(**batch).logits
        last = model(**batch, logits_to_keep=1).logits
    assert last.shape == (len(items), 1, full.shape[-1])
    assert torch.allclose(last, full[:, -1:], atol=1e-5)


def test_single_token_stop_string_ends_rows_inside_generate_with_unchanged_answers(checkpoint, questions, demo_data):
    """A one-token stop string is an extra EOS id (no per-step decoding); answers equal the keyword criterion's,
    and generation ends as soon as every row has produced it."""
    import torch

    from llava.inference import GenerationSettings
    from llava.mm_utils import KeywordsStoppingCriteria

    engine, items = _engine_and_items(checkpoint, questions, demo_data)
    settings = GenerationSettings(max_new_tokens=8)
    first = engine._batch(items[:1])
    with torch.no_grad():
        tokens = engine.model.generate(**first, max_new_tokens=8, do_sample=False)[0].tolist()
    # A token the model emits mid-answer that is a token of its own when tokenised alone: the stop string.
    step, stop = next((k, engine.tokenizer.decode([t])) for k, t in enumerate(tokens)
                      if k >= 2 and engine._single_token_id(engine.tokenizer.decode([t])) == t and t not in tokens[:k])

    kwargs = engine._generate_kwargs(first, settings, stop)
    assert "stopping_criteria" not in kwargs and tokens[step] in kwargs["eos_token_id"]
    with torch.no_grad():
        out = engine.model.generate(**kwargs)
    assert out.shape[1] == step + 1 < 8  # stopped at the stop token, not at max_new_tokens

    fast = engine.generate(items, settings, stop_str=stop)
    engine._single_token_id = lambda text: None  # force the decoding criterion
    assert isinstance(engine._generate_kwargs(first, settings, stop)["stopping_criteria"][0], KeywordsStoppingCriteria)
    assert engine.generate(items, settings, stop_str=stop) == fast
    assert stop.strip() not in fast[0]


def test_a_batchs_images_are_processed_together_exactly_as_one_by_one(checkpoint, questions, demo_data):
    import torch

    from llava.inference import InferenceEngine

    engine = InferenceEngine.from_pretrained(checkpoint)
    paths = [os.path.join(demo_data["image_folder"], r["image"]) for r in read_jsonl(questions)[:3]]
    together = engine.process_images(paths)
    assert together.shape[0] == 3
    assert torch.equal(together, torch.stack([engine.process_image(p) for p in paths]))
    prepared = model_vqa.prepare_batch(engine, read_jsonl(questions)[:3], demo_data["image_folder"])
    assert all(torch.equal(item.image, pixels) for item, pixels in zip(prepared, together))


@pytest.mark.parametrize("backbone", ["phi", "llama"])
def test_prompts_tokenised_together_get_the_ids_of_one_by_one(backbone, tiny_llm):
    import torch
    from transformers import AutoTokenizer

    from llava.mm_utils import tokenizer_image_token, tokenizer_image_tokens

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm(backbone))
    prompts = ["USER: <image>\nWhat colour? ASSISTANT:", "no image here", "<image>", "a <image> b <image>\nc", ""]
    together = tokenizer_image_tokens(prompts, tokenizer)
    assert len(together) == len(prompts)
    for prompt, ids in zip(prompts, together):
        assert torch.equal(ids, tokenizer_image_token(prompt, tokenizer, return_tensors="pt"))


def test_an_answers_file_of_another_model_is_refused_or_started_over(checkpoint, questions, demo_data, tmp_path):
    import shutil

    few = write_questions(str(tmp_path / "few.jsonl"), read_jsonl(questions)[:3])
    other = str(tmp_path / "llava-other")
    shutil.copytree(checkpoint, other)
    answers = str(tmp_path / "answers.jsonl")
    run(checkpoint, few, demo_data, answers)
    with pytest.raises(SystemExit, match=r"answers\.jsonl:1 was answered by .*llava-phi.*--overwrite-answers"):
        run(other, few, demo_data, answers)
    assert [a["metadata"]["model_path"] for a in read_jsonl(answers)] == [os.path.abspath(checkpoint)] * 3
    with pytest.raises(SystemExit, match="unknown conversation template 'nope'"):  # a failed start keeps the file
        run(other, few, demo_data, answers, "--overwrite-answers", "--conv-mode", "nope")
    assert len(read_jsonl(answers)) == 3
    summary = run(other, few, demo_data, answers, "--overwrite-answers")
    assert summary["answered"] == 3 and summary["already_done"] == 0
    assert [a["metadata"]["model_path"] for a in read_jsonl(answers)] == [os.path.abspath(other)] * 3


def _questions_with_own_images(questions, demo_data, tmp_path, n=4):
    """`n` questions whose images are copies in a folder of their own, free to damage."""
    import shutil

    folder = tmp_path / "images"
    folder.mkdir()
    by_image = {}
    for record in read_jsonl(demo_data["eval_questions_jsonl"]):
        by_image.setdefault(record["image"], record)
    records = list(by_image.values())[:n]
    for record in records:
        shutil.copy(os.path.join(demo_data["image_folder"], record["image"]), folder / record["image"])
    return records, write_questions(str(tmp_path / "q.jsonl"), records), {"image_folder": str(folder)}


def test_an_unreadable_image_stops_the_run_before_generation_or_is_recorded_as_failed(checkpoint, questions,
                                                                                     demo_data, tmp_path):
    records, path, folder = _questions_with_own_images(questions, demo_data, tmp_path)
    (tmp_path / "images" / records[2]["image"]).write_bytes(b"not an image at all")
    answers = str(tmp_path / "answers.jsonl")
    with pytest.raises(SystemExit, match=rf"1 question\(s\) have an image that cannot be read, e\.g\. question "
                                         rf"{records[2]['question_id']!r}.*--skip-bad-images"):
        run(checkpoint, path, folder, answers)
    assert not os.path.exists(answers)  # found before the model was even loaded
    summary = run(checkpoint, path, folder, answers, "--skip-bad-images", "--batch-size", "2")
    assert summary["answered"] == 3 and summary["failed_image"] == 1
    by_id = {a["question_id"]: a for a in read_jsonl(answers)}
    assert sorted(by_id) == sorted(r["question_id"] for r in records)
    failed = by_id[records[2]["question_id"]]
    assert failed["text"] == "" and "cannot decode image" in failed["metadata"]["error"]
    assert all(a["text"] and "error" not in a["metadata"] for q, a in by_id.items() if q != records[2]["question_id"])


def test_an_image_damaged_past_its_header_is_found_at_its_batch_and_skipped_when_asked(checkpoint, questions,
                                                                                      demo_data, tmp_path):
    records, path, folder = _questions_with_own_images(questions, demo_data, tmp_path)
    damaged = tmp_path / "images" / records[3]["image"]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # the header reads, the pixels do not
    answers = str(tmp_path / "answers.jsonl")
    with pytest.raises(SystemExit, match=rf"question {records[3]['question_id']!r}: .*--skip-bad-images"):
        run(checkpoint, path, folder, answers, "--batch-size", "2")
    assert [a["question_id"] for a in read_jsonl(answers)] == [r["question_id"] for r in records[:2]]
    summary = run(checkpoint, path, folder, answers, "--batch-size", "2", "--skip-bad-images")
    assert summary["answered"] == 1 and summary["failed_image"] == 1 and summary["already_done"] == 2
    last = read_jsonl(answers)[-2:]
    assert {a["question_id"]: bool(a["text"]) for a in last} == {records[2]["question_id"]: True,
                                                                 records[3]["question_id"]: False}


def test_repeated_question_ids_are_answered_with_a_warning_naming_them(checkpoint, questions, demo_data, tmp_path,
                                                                      caplog):
    records = read_jsonl(questions)[:3]
    path = write_questions(str(tmp_path / "q.jsonl"), records + [records[0], records[0]])
    with caplog.at_level("WARNING"):
        summary = run(checkpoint, path, demo_data, str(tmp_path / "a.jsonl"))
    assert summary["answered"] == 5
    warnings = [r.getMessage() for r in caplog.records if "more than once" in r.getMessage()]
    assert len(warnings) == 1 and f"1 question id(s) appear more than once ({records[0]['question_id']!r} x3)" in warnings[0]
