"""Padding and train throughput of four batching strategies over a LLaVA-Instruct-like length mix.

Strategies: `random` (HF's default sampler), `modality` (official LLaVA's
--group_by_modality_length), `group_by_length` (--train_sampling_strategy group_by_length) and
`packing` (--packing True over random batches). Every batch comes from the real dataset, sampler
and collator. Padding is counted over a whole epoch, in the positions the LLM processes (image
patches included: rows x the longest row, after image expansion). Throughput is real training
steps (forward, backward, AdamW) of a small Phi + CLIP on an evenly spaced sample of each
strategy's batches, in non-padding positions per second.

    python -m benchmarks.length_mix [--repeats 3] [--suite cpu|gpu] [--json rows.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import tempfile
import time

import torch

NAME = "length_mix"
STRATEGIES = ("random", "modality", "group_by_length", "packing")
PADDING_TARGET = 0.03
SPEEDUP_TARGET = 1.5

SUITES = {
    # 64 image tokens per image (64 px, 8 px patches), 2048 context, a few thousand records. A random
    # batch of 16 is ~15,000 positions, so the model is 128 wide and 6 batches per strategy are timed
    # (~4 minutes on 2 shared cores). One thread: on cores shared with other jobs, two threads spend
    # more time waiting for each other than computing (a step measured 3-5x slower).
    "cpu": dict(records=3000, batch_size=16, timed_batches=6, hidden=128, layers=2, image_size=64, patch=8, threads=1),
    # CLIP-L/336's 576 image tokens and a wider model.
    "gpu": dict(records=8000, batch_size=16, timed_batches=20, hidden=1024, layers=8, image_size=336, patch=14,
                threads=None),
}
CONTEXT = 2048
WORDS = (
    "the a man woman dog cat bus car table street sign image shows large small two three people "
    "standing sitting near behind red white blue green train window building sky tree water"
).split()


# -- the data ------------------------------------------------------------------------------
def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(1, n)))  # about one GPT-2 token a word


def instruct_like_records(n: int, seed: int = 0) -> list[dict]:
    """Records shaped like LLaVA-Instruct-150K: questions of 10-60 tokens; answers mostly 1-60
    tokens with a long tail past 120 (log-normal, median 25); 60 % one question, the rest 2-8
    turns as in its conversation subset; about 7 % text-only."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        turns = []
        for _ in range(1 if rng.random() < 0.6 else rng.randint(2, 8)):
            answer = min(400, int(rng.lognormvariate(math.log(25), 0.9)))
            turns += [{"from": "human", "value": _words(rng, rng.randint(10, 60)) + "?"},
                      {"from": "gpt", "value": _words(rng, answer) + "."}]
        record = {"id": f"mix-{i}", "conversations": turns}
        if rng.random() >= 0.07:
            record["image"] = "image.png"
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
        records.append(record)
    return records


def word_tokenizer(workdir: str):
    """A word-level tokenizer over the mix's words and the phi template's text (about 60 entries).

    Phi-2's real vocabulary (51,200) would make a small model's LM head most of its step, which
    padding does not touch; in a real 2.7B model it is a few percent. A tiny vocabulary keeps the
    small model's cost where the real one's is: in the layers every position, padding included, runs.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from llava.conversation import get_conv_template

    conv = get_conv_template("phi")
    conv.append_message(conv.roles[0], "question")
    conv.append_message(conv.roles[1], "answer")
    split = pre_tokenizers.Whitespace()
    pieces = {piece for piece, _ in split.pre_tokenize_str(conv.get_prompt().replace("<|endoftext|>", " "))}
    specials = ["<|endoftext|>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(pieces | set(WORDS) | {"?", "."}))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = split
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(workdir)
    return tokenizer


def save_small_phi(workdir: str, tokenizer, hidden: int, layers: int) -> str:
    from transformers import AutoModelForCausalLM

    from llava.model.registry import get_backbone

    config = get_backbone("phi").tiny_config(hidden_size=hidden, num_layers=layers)
    config.vocab_size = len(tokenizer)
    config.max_position_embeddings = CONTEXT
    config.eos_token_id = config.pad_token_id = tokenizer.eos_token_id
    config.bos_token_id = None
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(workdir)
    return workdir


class Setup:
    """A dataset of the mix, its collated samples, and a small model (all built in a temp folder)."""

    def __init__(self, workdir: str, records: int, hidden: int, layers: int, image_size: int, patch: int, **_):
        from PIL import Image

        from llava.model.registry import get_backbone
        from llava.model.tiny import save_tiny_vision_tower
        from llava.train.dataset import LazySupervisedDataset

        self.tokenizer = word_tokenizer(os.path.join(workdir, "phi"))
        llm = save_small_phi(os.path.join(workdir, "phi"), self.tokenizer, hidden, layers)
        clip = save_tiny_vision_tower(os.path.join(workdir, "clip"), image_size=image_size, patch_size=patch)
        Image.new("RGB", (image_size, image_size), (120, 40, 200)).save(os.path.join(workdir, "image.png"))
        data = os.path.join(workdir, "mix.json")
        with open(data, "w") as f:
            json.dump(instruct_like_records(records), f)

        torch.manual_seed(0)
        self.model = get_backbone("phi").model_class.from_pretrained(llm)
        self.model.get_model().initialize_vision_modules(clip, mm_projector_type="mlp2x_gelu")
        self.model.config.tokenizer_model_max_length = CONTEXT
        self.model.config.use_cache = False
        self.model.label_logits_only = True  # the training default
        tower = self.model.get_vision_tower()
        self.image_tokens = tower.num_patches
        self.image_shape = (3, image_size, image_size)
        self.dataset = LazySupervisedDataset(
            data, self.tokenizer, "phi", image_folder=workdir, image_processor=tower.load_image_processor(),
            model_config=self.model.config, max_length=CONTEXT, image_tokens=self.image_tokens,
        )
        self.items = [self.dataset[i] for i in range(len(self.dataset))]
        shared = next(item["images"] for item in self.items if "images" in item)
        for item in self.items:  # every record shows the same picture: keep one copy of its pixels
            if "images" in item:
                item["images"] = shared

    def order(self, strategy: str, batch_size: int, epoch: int = 0) -> list[int]:
        from llava.train.sampler import (
            ModalityLengthGroupedSampler,
            TokenLengthGroupedSampler,
        )

        if strategy == "modality":  # the group official LLaVA uses: batch x world size x accumulation
            sampler = ModalityLengthGroupedSampler(self.dataset.modality_lengths, batch_size, seed=0)
        elif strategy == "group_by_length":
            sampler = TokenLengthGroupedSampler(self.dataset.modality_token_lengths, batch_size, seed=0)
        else:
            return torch.randperm(len(self.items), generator=torch.Generator().manual_seed(epoch)).tolist()
        sampler.set_epoch(epoch)
        return list(sampler)

    def batches(self, strategy: str, batch_size: int):
        """The epoch's batches, as functions that collate one on demand (all at once would not fit on the gpu suite)."""
        from llava.train.collator import DataCollatorForSupervisedDataset

        collate = DataCollatorForSupervisedDataset(
            self.tokenizer, self.image_shape, packing=strategy == "packing", max_length=CONTEXT,
            image_tokens=self.image_tokens,
        )
        order = self.order(strategy, batch_size)
        starts = range(0, len(order), batch_size)
        return [lambda s=s: collate([self.items[i] for i in order[s : s + batch_size]]) for s in starts]

    def positions(self, batch: dict) -> tuple[int, int]:
        """(real, processed) positions of a collated batch once its images are expanded."""
        per_row = batch["attention_mask"].sum(1) + (batch["input_ids"] == -200).sum(1) * (self.image_tokens - 1)
        return int(per_row.sum()), int(per_row.max()) * len(per_row)


def padding_fraction(setup: Setup, batches: list) -> float:
    real, processed = map(sum, zip(*(setup.positions(make()) for make in batches)))
    return 1 - real / processed


def train_throughput(setup: Setup, batches: list, timed: int, repeats: int, device: str) -> list[float]:
    """Non-padding positions per second of real train steps over `timed` evenly spaced batches."""
    model = setup.model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    sample = [batches[round(i * (len(batches) - 1) / max(1, timed - 1))]() for i in range(timed)]
    real = sum(setup.positions(b)[0] for b in sample)

    def step(batch):
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(min(sample, key=lambda b: b["input_ids"].numel()))  # warm-up (allocations, kernels)
    rates = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in sample:
            step(batch)
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(real / (time.perf_counter() - start))
    return rates


def run(suite: str = "cpu", repeats: int = 3, **overrides) -> list[dict]:
    """Rows per the benchmark contract; `overrides` change the suite's sizes (tests use toy ones)."""
    config = {**SUITES[suite], **overrides}
    device = "cuda" if suite == "gpu" and torch.cuda.is_available() else "cpu"
    threads = torch.get_num_threads()
    if config["threads"]:
        torch.set_num_threads(config["threads"])
    with tempfile.TemporaryDirectory(prefix="length-mix-") as workdir:
        setup = Setup(workdir, **config)
        batches = {s: setup.batches(s, config["batch_size"]) for s in STRATEGIES}
        padding = {s: padding_fraction(setup, b) for s, b in batches.items()}
        rates = {s: train_throughput(setup, b, config["timed_batches"], repeats, device) for s, b in batches.items()}
    torch.set_num_threads(threads)
    info = {**config, "context": CONTEXT, "image_tokens": setup.image_tokens, "device": device}
    rows = []
    for s in STRATEGIES:
        row = _row(s, "padding_fraction", [padding[s]], "fraction", info)
        if s in ("group_by_length", "packing"):
            row.update(target=f"<= {PADDING_TARGET}", met=padding[s] <= PADDING_TARGET)
        rows.append(row)
    for s in STRATEGIES:
        rows.append(_row(s, "train_tokens_per_s", rates[s], "non-pad positions/s", info))
    for s in STRATEGIES[1:]:
        ratios = [a / b for a, b in zip(rates[s], rates["random"])]
        row = _row(f"{s}_vs_random", "ratio", ratios, "x", info)
        if s in ("group_by_length", "packing"):
            row.update(target=f">= {SPEEDUP_TARGET}", met=row["value"] >= SPEEDUP_TARGET)
        rows.append(row)
    return rows


def _row(case: str, metric: str, values: list[float], unit: str, config: dict) -> dict:
    return {"benchmark": NAME, "case": case, "metric": metric, "value": statistics.median(values), "unit": unit,
            "values": values, "config": config}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--records", type=int, help="records in the mix (default: the suite's)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    overrides = {"records": args.records} if args.records else {}
    rows = run(args.suite, args.repeats, **overrides)
    print(f"{'case':<28}{'metric':<22}{'value':>12}  {'unit':<22}target")
    for row in rows:
        target = f"{row['target']} ({'met' if row['met'] else 'NOT met'})" if "target" in row else ""
        print(f"{row['case']:<28}{row['metric']:<22}{row['value']:>12.4g}  {row['unit']:<22}{target}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
