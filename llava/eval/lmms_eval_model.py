"""lmms-eval model `llava_checkpoint`: run any lmms-eval task on a checkpoint of ours.

    pip install -e ".[lmms]"          # or see docs/evaluation.md for a light install
    python -m lmms_eval --model llava_checkpoint \
        --model_args pretrained=checkpoints/llava-phi --batch_size 8 --tasks pope,mme --output_path logs/

`pretrained` is anything `llava.model.builder.load_pretrained_model` loads (full, LoRA with
`model_base=...`, stage-1 projector); also `conv_mode`, `load_4bit`, `load_8bit` and
`max_new_tokens` (the default when a task sets none); `--batch_size` and `--device` are lmms-eval's. Prompts are built as
`model_vqa` builds them: the checkpoint's conversation template with `<image>\\n` before the task's
text. One image per question, as LLaVA-1.5 (a task that gives several, or video, is refused with
its name). The registration is the `lmms_eval.models` entry point in pyproject.toml; see
`llava.eval.lmms_eval_plugin`.
"""

from __future__ import annotations

import json

import torch

try:
    from lmms_eval.api.model import lmms
except ImportError as exc:  # the adapter is only imported by lmms-eval itself, or by a user who has it
    raise ImportError("llava.eval.lmms_eval_model needs lmms-eval: pip install -e \".[lmms]\"") from exc
from tqdm import tqdm

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.inference import GenerationSettings, InferenceEngine, Prepared


def _flag(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


class LlavaCheckpoint(lmms):
    def __init__(
        self,
        pretrained: str,
        model_base: str | None = None,
        conv_mode: str | None = None,
        load_4bit=False,
        load_8bit=False,
        device: str | None = None,
        batch_size=1,
        max_new_tokens=128,
        max_batch_size=None,  # lmms-eval passes it to every model; batches here are --batch_size exactly
        **kwargs,
    ) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(f"llava_checkpoint: unknown model_args {sorted(kwargs)}")
        self.engine = InferenceEngine.from_pretrained(
            pretrained, model_base, conv_mode, load_4bit=_flag(load_4bit), load_8bit=_flag(load_8bit), device=device
        )
        if str(batch_size).startswith("auto"):
            raise ValueError("llava_checkpoint: give --batch_size a number (automatic batch sizes are not supported)")
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)

    # -- requests -> prepared prompts ------------------------------------------------------------
    def _image(self, doc_to_visual, doc_id, task, split):
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
        visuals = [v for v in (visuals or []) if v is not None]
        if len(visuals) > 1 or any(isinstance(v, str) for v in visuals):
            raise ValueError(
                f"task {task!r} doc {doc_id}: {len(visuals)} visual(s) ({type(visuals[0]).__name__}); "
                "llava_checkpoint answers about one image per question (no video, no multi-image)"
            )
        return visuals[0] if visuals else None

    def _conversation(self, context: str, has_image: bool):
        conv = self.engine.new_conversation()
        # Tasks written for other models sometimes put the image marker in the text; ours adds its own.
        self.engine.add_user_turn(conv, context.replace(DEFAULT_IMAGE_TOKEN, "").strip() if has_image else context, has_image)
        return conv

    # -- lmms-eval's interface -------------------------------------------------------------------
    def generate_until(self, requests) -> list[str]:
        answers: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):  # one generate() call per batch of equal settings
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        bar = tqdm(total=len(requests), desc="llava_checkpoint", disable=self.rank != 0)
        for key, indices in groups.items():
            gen_kwargs = dict(requests[indices[0]].args[1])
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            settings = GenerationSettings(
                temperature=float(gen_kwargs.get("temperature", 0) or 0),
                top_p=gen_kwargs.get("top_p"),
                num_beams=int(gen_kwargs.get("num_beams", 1) or 1),
                max_new_tokens=int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
            )
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                prepared = []
                for i in batch:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    image = self._image(doc_to_visual, doc_id, task, split)
                    prepared.append(self.engine.prepare(self._conversation(context, image is not None), image))
                for i, text in zip(batch, self.engine.generate(prepared, settings)):
                    for stop in until:
                        if stop and stop in text:
                            text = text[: text.index(stop)]
                    answers[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(batch))
        bar.close()
        return answers

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """Log-probability of each continuation as the assistant's answer, and whether greedy decoding gives it."""
        results = []
        for request in tqdm(requests, desc="llava_checkpoint loglikelihood", disable=self.rank != 0):
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            continuation = continuation(doc) if callable(continuation) else continuation
            image = self._image(doc_to_visual, doc_id, task, split)
            prompt = self.engine.prepare(self._conversation(context, image is not None), image)
            target = torch.tensor(self.engine.tokenizer(continuation, add_special_tokens=False)["input_ids"], dtype=torch.long)
            if len(target) == 0:
                raise ValueError(f"task {task!r} doc {doc_id}: the continuation {continuation!r} tokenises to nothing")
            item = Prepared(torch.cat([prompt.input_ids, target]), prompt.image, prompt.prompt + continuation)
            batch = self.engine._batch([item])
            with torch.inference_mode():
                logits = self.engine.model(**batch).logits[0, -len(target) - 1 : -1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            target = target.to(logprobs.device)
            results.append((float(logprobs.gather(1, target[:, None]).sum()), bool((logits.argmax(-1) == target).all())))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("llava_checkpoint answers single-round tasks; multi-round tasks are not supported")

