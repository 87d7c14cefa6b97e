"""GPU suite: a Phi-2-sized LLaVA stage-2 step (tokens/s, MFU, peak memory) and QLoRA peak memory.

Models are random-init at the real sizes (no download): the LLM from PhiConfig with Phi-2's
sizes (hidden 2560, 32 layers, 32 heads, intermediate 10240, vocab 51200) and a CLIP-L/336-sized
tower (hidden 1024, 24 layers, 16 heads, intermediate 4096, patch 14, 336 px -> 576 tokens).

- `full_<attn>`: stage-2 full fine-tune step (LLM + projector train, tower frozen) in bf16 with
  SDPA, and with flash_attention_2 when the flash-attn package imports. Weights, gradients and
  AdamW (fused) state are bf16. MFU = model FLOPs per second / the card's dense bf16 peak.
  Model FLOPs count useful work only: 6 x params x tokens for the LLM body and projector, 2 x
  params x tokens for the frozen tower (forward only), 6 x hidden x vocab per *label* token for the
  LM head (label_logits_only applies it nowhere else), and causal attention scores as
  6 x layers x seq^2 x hidden per sample (forward 2 matmuls at half the square, backward twice that).
- `qlora`: the training recipe's QLoRA (llava/train/recipes.py pieces): 4-bit NF4 LLM, LoRA r=64 on
  every LLM linear, projector trainable, gradient checkpointing, batch 8; peak memory target
  <= 12 GiB.

`--tiny` runs the same code at toy sizes on CPU in fp32 (what the tests exercise; no MFU unless
--peak-tflops is given). Without CUDA and without --tiny the suite refuses to run.

    python -m benchmarks.gpu --repeats 3 [--peak-tflops 989]
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

import torch

from benchmarks.common import (
    benchmark_main,
    build_model,
    llava_config,
    make_row,
    make_step,
    peak_rss_mib,
    reset_peak_rss,
    save_checkpoint,
    seconds_per_call,
    tokenizer_for,
)
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

NAME = "gpu"
GIB = 1 << 30
# Dense bf16 tensor-core peak (no sparsity), TFLOPS, matched against torch.cuda.get_device_name().
# Longest key first wins ("H100 PCIe" before "H100").
PEAK_BF16_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # SXM
    "H200": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A10G": 125.0,
    "L40S": 362.0,
    "L4": 121.0,
}
MFU_TARGET = ">= 0.45"
QLORA_MEMORY_TARGET = "<= 12"


@dataclasses.dataclass
class Setup:
    llm_hidden: int = 2560
    llm_layers: int = 32
    llm_heads: int = 32
    llm_intermediate: int = 10240
    vocab: int = 51200
    vision_hidden: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_intermediate: int = 4096
    image_size: int = 336
    patch_size: int = 14
    batch_size: int = 4
    qlora_batch_size: int = 8
    text_tokens: int = 256
    answer_fraction: float = 0.3
    lora_r: int = 64

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


TINY = Setup(
    llm_hidden=64, llm_layers=2, llm_heads=4, llm_intermediate=256, vision_hidden=32, vision_layers=2,
    vision_heads=1, vision_intermediate=128, image_size=32, patch_size=8, batch_size=2, qlora_batch_size=2,
    text_tokens=32, lora_r=8,
)


def peak_tflops_for(device_name: str) -> float | None:
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_BF16_TFLOPS[key]
    return None


def configs(setup: Setup):
    from transformers import CLIPVisionConfig, PhiConfig

    text = PhiConfig(
        vocab_size=setup.vocab,
        hidden_size=setup.llm_hidden,
        intermediate_size=setup.llm_intermediate,
        num_hidden_layers=setup.llm_layers,
        num_attention_heads=setup.llm_heads,
        partial_rotary_factor=0.4,  # Phi-2's
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    tower = CLIPVisionConfig(
        hidden_size=setup.vision_hidden,
        intermediate_size=setup.vision_intermediate,
        num_hidden_layers=setup.vision_layers,
        num_attention_heads=setup.vision_heads,
        image_size=setup.image_size,
        patch_size=setup.patch_size,
        projection_dim=768,
    )
    return text, tower


def device_map_target(device: torch.device):
    """What `from_pretrained(device_map={"": ...})` wants: a CUDA index, or "cpu"."""
    return (device.index if device.index is not None else torch.cuda.current_device()) if device.type == "cuda" else "cpu"


def make_batch(setup: Setup, batch_size: int, device, dtype, seed: int = 0) -> dict:
    """One <image> after a short prefix, then text; the last `answer_fraction` of the text is labelled."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50000, (batch_size, setup.text_tokens), generator=gen)
    labels = torch.full_like(ids, IGNORE_INDEX)
    answer = max(1, int(setup.text_tokens * setup.answer_fraction))
    labels[:, -answer:] = ids[:, -answer:]
    ids[:, 4] = IMAGE_TOKEN_INDEX
    labels[:, 4] = IGNORE_INDEX
    pixels = torch.randn(batch_size, 3, setup.image_size, setup.image_size, generator=gen)
    return dict(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device), labels=labels.to(device),
                images=pixels.to(device=device, dtype=dtype))


def model_flops_per_step(model, setup: Setup, batch: dict) -> float:
    """Useful FLOPs of one forward + backward (see the module docstring)."""
    labels = int((batch["labels"] != IGNORE_INDEX).sum())
    n = batch["input_ids"].shape[0]
    seq = setup.text_tokens - 1 + setup.image_tokens
    tokens = n * seq
    tower = model.get_vision_tower()
    head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    tower_params = sum(p.numel() for p in tower.parameters())
    projector_params = sum(p.numel() for p in model.get_model().mm_projector.parameters())
    body_params = sum(p.numel() for p in model.parameters()) - tower_params - projector_params
    body_params -= head.weight.numel() + embed.weight.numel()  # lookups are free; the head is counted below
    image_tokens = n * setup.image_tokens
    return (
        6 * body_params * tokens
        + 6 * projector_params * image_tokens
        + 2 * tower_params * image_tokens
        + 6 * head.weight.numel() * labels
        + 6 * setup.llm_layers * seq * seq * setup.llm_hidden * n
    )


class Memory:
    """Peak memory of a block: CUDA allocator peak on GPU, resident high-water mark on CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def reset(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak_rss()

    def peak_gib(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / GIB
        return peak_rss_mib() / 1024


def full_finetune(setup: Setup, attn: str, device, dtype, repeats: int, steps: int, peak_tflops: float | None) -> list[dict]:
    text, tower = configs(setup)
    memory = Memory(device)
    memory.reset()
    with device:  # initialise on the card: a Phi-2-sized model is slow to build on the host
        model = build_model(llava_config(text, "phi", tower), dtype=dtype).train()
    model.set_attn_implementation(attn)
    model.label_logits_only = True
    model.requires_grad_(True)
    model.get_vision_tower().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    batch = make_batch(setup, setup.batch_size, device, dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    step = make_step(model, batch, optimizer)
    step()  # warm-up: optimizer state, kernels, allocator
    seconds = [seconds_per_call(step, steps, sync) for _ in range(repeats)]
    peak = memory.peak_gib()
    flops = model_flops_per_step(model, setup, batch)
    tokens = setup.batch_size * (setup.text_tokens - 1 + setup.image_tokens)
    config = {**dataclasses.asdict(setup), "attn_implementation": attn, "dtype": str(dtype).replace("torch.", ""),
              "tokens_per_step": tokens, "model_tflop_per_step": flops / 1e12, "steps_per_repeat": steps,
              "trainable_params": sum(p.numel() for p in params), "peak_tflops": peak_tflops}
    case = f"full_{attn}"
    rows = [
        make_row(NAME, case, "tokens_per_s", [tokens / s for s in seconds], "tok/s", config),
        make_row(NAME, case, "peak_memory", [peak], "GiB", config),
    ]
    if peak_tflops:
        rows.append(make_row(NAME, case, "mfu", [flops / s / (peak_tflops * 1e12) for s in seconds], "fraction",
                             config, target=MFU_TARGET))
    return rows


def qlora(setup: Setup, device, dtype, repeats: int, workdir: str) -> list[dict]:
    """QLoRA as llava/train/recipes.py builds it, over a random-init checkpoint written to `workdir`."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    from llava.model.quantization import bnb_config
    from llava.train.recipes import lora_target_modules, set_trainable

    text, tower = configs(setup)
    with device:
        built = build_model(llava_config(text, "phi", tower), dtype=dtype)
    path = save_checkpoint(built, tokenizer_for("phi"), os.path.join(workdir, "phi2-sized"))
    del built
    if device.type == "cuda":
        torch.cuda.empty_cache()
    memory = Memory(device)
    memory.reset()
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, quantization_config=bnb_config(4, dtype), device_map={"": device_map_target(device)},
        attn_implementation="sdpa",
    )
    model.config.use_cache = False
    model.label_logits_only = True
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    model.get_vision_tower().to(dtype=dtype)
    model = get_peft_model(model, LoraConfig(r=setup.lora_r, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=lora_target_modules(model), task_type="CAUSAL_LM"))
    set_trainable(model, frozenset({"lora", "projector"}))
    model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4)
    batch = make_batch(setup, setup.qlora_batch_size, device, dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    step = make_step(model, batch, optimizer)
    step()
    untrained = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if untrained:  # e.g. checkpointed blocks cut off from the graph: the figure would be of a wrong run
        raise RuntimeError(f"QLoRA step left {len(untrained)} trainable tensors without gradients: {untrained[:3]}")
    seconds = [seconds_per_call(step, 1, sync) for _ in range(repeats)]
    peak = memory.peak_gib()
    tokens = setup.qlora_batch_size * (setup.text_tokens - 1 + setup.image_tokens)
    config = {**dataclasses.asdict(setup), "batch_size": setup.qlora_batch_size, "quantization": "nf4 double-quant",
              "gradient_checkpointing": True, "trainable_params": sum(p.numel() for p in params),
              "dtype": str(dtype).replace("torch.", "")}
    rows = [make_row(NAME, "qlora", "tokens_per_s", [tokens / s for s in seconds], "tok/s", config)]
    # The 12 GiB target is for the GPU; a CPU run reports its resident set without a target.
    target = QLORA_MEMORY_TARGET if device.type == "cuda" else None
    rows.append(make_row(NAME, "qlora", "peak_memory", [peak], "GiB", config, target=target))
    return rows


def run(suite: str = "gpu", repeats: int = 3, tiny: bool = False, peak_tflops: float | None = None,
        steps: int = 3, skip_qlora: bool = False) -> list[dict]:
    if tiny:
        device, dtype, setup = torch.device("cpu"), torch.float32, TINY
    else:
        if not torch.cuda.is_available():
            raise SystemExit(
                "benchmarks.gpu needs a CUDA GPU (torch.cuda.is_available() is False). "
                "Use --tiny to run the same code at toy sizes on the CPU."
            )
        device, dtype, setup = torch.device("cuda"), torch.bfloat16, Setup()
        if peak_tflops is None:
            peak_tflops = peak_tflops_for(torch.cuda.get_device_name())
            if peak_tflops is None:
                print(f"no bf16 peak known for {torch.cuda.get_device_name()!r}; pass --peak-tflops for MFU")
    attns = ["sdpa"]
    if not tiny:
        from transformers.utils import is_flash_attn_2_available

        if is_flash_attn_2_available():
            attns.append("flash_attention_2")
    rows = []
    for attn in attns:
        rows += full_finetune(setup, attn, device, dtype, repeats, steps if not tiny else 1, peak_tflops)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the previous case's model and optimizer are gone; hand their blocks back
    if not skip_qlora:
        workdir = tempfile.mkdtemp(prefix="bench-gpu-")
        try:
            rows += qlora(setup, device, dtype, repeats, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return rows


def add_arguments(parser) -> None:
    parser.add_argument("--tiny", action="store_true", help="toy sizes on CPU in fp32 (exercises the code; for tests)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the card's dense bf16 peak in TFLOPS for MFU (default: looked up by device name)")
    parser.add_argument("--steps", type=int, default=3, help="training steps timed per repeat")
    parser.add_argument("--skip-qlora", action="store_true", help="only the full fine-tune cases")


if __name__ == "__main__":
    benchmark_main(NAME, run, add_arguments=add_arguments)
