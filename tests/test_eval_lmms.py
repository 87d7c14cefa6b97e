"""lmms-eval runs local tasks on a tiny checkpoint of ours: through our adapter (`llava_checkpoint`,
generation and log-likelihood tasks) and through the HF export with lmms-eval's own `llava_hf`.

lmms-eval is an optional extra; CI installs it (see docs/evaluation.md), so there a missing
lmms-eval is a failure, elsewhere a skip."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from helpers import cached_checkpoint, read_jsonl

if os.environ.get("CI"):
    import lmms_eval  # noqa: F401  (CI must have it: a skipped test here would hide a broken install)
else:
    pytest.importorskip("lmms_eval")

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "lmms_eval", "llava_demo_utils.py")

GENERATE_TASK = """\
task: llava_demo_vqa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  temperature: 0
  until: ["\\n"]
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
  - metric: answered
    aggregation: mean
    higher_is_better: true
"""

@pytest.fixture(scope="module")
def tasks(demo_data, tmp_path_factory):
    """The demo eval questions as a local JSON dataset, and two lmms-eval tasks over it."""
    folder = tmp_path_factory.mktemp("lmms-tasks")
    answers = {a["question_id"]: a["answers"][0]["answer"] for a in json.load(open(demo_data["eval_annotations"]))["annotations"]}
    docs = [{"question_id": q["question_id"], "image": os.path.join(demo_data["image_folder"], q["image"]),
             "question": q["text"], "answer": answers[q["question_id"]]} for q in read_jsonl(demo_data["eval_questions_jsonl"])]
    yes_no = [d for d in docs if d["answer"] in ("yes", "no")][:3]
    docs = docs[:6]
    assert yes_no, "the demo data should have presence (yes/no) questions"
    (folder / "vqa.json").write_text(json.dumps(docs))
    shutil.copy(FIXTURE, folder / "utils.py")
    (folder / "llava_demo_vqa.yaml").write_text(GENERATE_TASK.format(data=folder / "vqa.json"))
    return {"folder": str(folder), "docs": docs, "yes_no": yes_no}


def _answers(samples, tasks) -> dict:
    """question id -> the model's answer, from lmms-eval's logged samples."""
    return {tasks["docs"][s["doc_id"]]["question_id"]: s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"]
            for s in samples}


def evaluate(model, tasks, names, **kwargs):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return simple_evaluate(model=model, tasks=names, task_manager=TaskManager(include_path=tasks["folder"]),
                           log_samples=True, **kwargs)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_llm, tiny_clip):
    return cached_checkpoint(tmp_path_factory, tiny_llm, tiny_clip, "phi")


@pytest.mark.slow
def test_adapter_runs_a_local_task_and_answers_as_model_vqa(checkpoint, tasks, tmp_path):
    from llava.eval import model_vqa
    from llava.eval.lmms_eval_model import LlavaCheckpoint

    model = LlavaCheckpoint(pretrained=checkpoint, batch_size=4)
    out = evaluate(model, tasks, ["llava_demo_vqa"])
    vqa = out["results"]["llava_demo_vqa"]
    assert 0.0 <= vqa["exact_match,none"] <= 1.0 and vqa["answered,none"] == 1.0
    samples = out["samples"]["llava_demo_vqa"]
    assert len(samples) == len(tasks["docs"])

    # The same questions through model_vqa give the same answers (same prompt, same greedy decoding).
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question_id": d["question_id"], "image": os.path.basename(d["image"]),
                                             "text": d["question"]}) + "\n" for d in tasks["docs"]))
    model_vqa.main(["--model-path", checkpoint, "--question-file", str(questions), "--answers-file", str(tmp_path / "a.jsonl"),
                    "--image-folder", os.path.dirname(tasks["docs"][0]["image"]), "--max_new_tokens", "4"])
    ours = {a["question_id"]: a["text"].split("\n")[0] for a in read_jsonl(tmp_path / "a.jsonl")}
    assert _answers(samples, tasks) == ours


def test_adapter_loglikelihood_is_the_continuation_log_probability(checkpoint, tasks):
    """Multiple-choice tasks rank options by this. (lmms-eval 0.7.3's evaluator turns (float, bool)
    results into strings before its multiple_choice scoring, for every model, so this is checked here
    on the adapter itself.)"""
    import torch
    from lmms_eval.api.instance import Instance

    from llava.constants import IGNORE_INDEX
    from llava.eval.lmms_eval_model import LlavaCheckpoint
    from utils_loader import load_task_utils

    utils = load_task_utils(FIXTURE)
    model = LlavaCheckpoint(pretrained=checkpoint)
    model.task_dict = {"demo": {"test": tasks["yes_no"]}}
    requests = [Instance("loglikelihood", (d["question"], option, utils.doc_to_visual, i, "demo", "test"), idx=0,
                         metadata={"task": "demo", "doc_id": i, "repeats": 1})
                for i, d in enumerate(tasks["yes_no"]) for option in ("yes", "no")]
    results = model.loglikelihood(requests)
    assert len(results) == len(requests)
    engine = model.engine
    for request, (logprob, greedy) in zip(requests, results):
        context, option, _, doc_id, _, _ = request.args
        # Independent route: the model's own loss over the option's tokens (labels mask everything else).
        prompt = engine.prepare(model._conversation(context, True), utils.doc_to_visual(tasks["yes_no"][doc_id])[0])
        target = torch.tensor(engine.tokenizer(option, add_special_tokens=False)["input_ids"])
        input_ids = torch.cat([prompt.input_ids, target])[None]
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        labels[0, -len(target):] = target
        with torch.inference_mode():
            out = engine.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                               images=prompt.image[None].to(engine.model.get_vision_tower().dtype), labels=labels)
        assert logprob == pytest.approx(-float(out.loss) * len(target), rel=1e-4, abs=1e-4)
        assert logprob < 0 and isinstance(greedy, bool)
    pairs = list(zip(results[::2], results[1::2]))
    assert any(yes[0] != no[0] for yes, no in pairs)


def test_entry_point_manifest_names_the_adapter():
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    from llava.eval.lmms_eval_plugin import MODEL_ID, manifests

    registry = ModelRegistryV2()
    for manifest in manifests():
        registry.register_manifest(manifest)
    from llava.eval.lmms_eval_model import LlavaCheckpoint

    assert registry.get_model_class(MODEL_ID) is LlavaCheckpoint


@pytest.mark.slow
def test_hf_export_runs_in_lmms_evals_own_llava_hf(checkpoint, tasks, tmp_path):
    """The other route: llava.export.hf, then lmms-eval's `llava_hf` model; same answers as our adapter."""
    from llava.eval.lmms_eval_model import LlavaCheckpoint
    from llava.export.hf import export

    export(checkpoint, str(tmp_path / "hf"))
    hf = evaluate("llava_hf", tasks, ["llava_demo_vqa"],
                  model_args=f"pretrained={tmp_path / 'hf'},device=cpu,device_map=cpu,dtype=float32")
    ours = evaluate(LlavaCheckpoint(pretrained=checkpoint), tasks, ["llava_demo_vqa"])
    assert hf["results"]["llava_demo_vqa"]["answered,none"] == 1.0
    # llava_hf keeps the space the tokenizer decodes before the first word; the words are the same.
    strip = lambda answers: {k: v.strip() for k, v in answers.items()}  # noqa: E731
    assert strip(_answers(hf["samples"]["llava_demo_vqa"], tasks)) == strip(_answers(ours["samples"]["llava_demo_vqa"], tasks))
