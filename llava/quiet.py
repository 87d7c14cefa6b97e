"""Library messages known to be harmless here, silenced one by one (installed by `import llava`).

Each entry matches one message and says why it does not apply; nothing else is filtered, so what
still prints means something. Noise we cause ourselves is fixed where it starts instead (the
CLIP image processor, the KV-cache argument name, the load report of weights loaded afterwards).
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings

# (category, message regex matched at the start, why it is harmless)
IGNORED_WARNINGS = (
    (FutureWarning, r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
     "DeepSpeed's ZeRO-2/3 call them on every step (torch 2.13 renamed them); nothing for a user to change"),
    (FutureWarning, r"`gradient_checkpointing` is deprecated and will be removed in v6",
     "--gradient_checkpointing is official LLaVA's flag; transformers < 6 (our pin) accepts it"),
    (FutureWarning, r"`(gradient_checkpointing_enable|is_gradient_checkpointing)` is deprecated and will be removed in v6",
     "peft calls transformers' old names while preparing and loading adapters"),
)

# logger name -> (message regex searched, why it is harmless)
IGNORED_LOG_MESSAGES = {
    "bitsandbytes.backends.cpu.ops": (
        # Either reason: `kernels` is not installed, or (transformers >= 5.25 installs it) it is and cannot reach
        # the hub to check the kernel's publisher ("could not verify publisher trust status").
        r"Failed to load CPU gemm_4bit_forward from kernels-community: ",
        "bitsandbytes tries, on every import on a CPU with AVX-512 bf16, an optional 4-bit matmul kernel "
        "downloaded from the Hugging Face hub at run time (never here, offline by design); its own built-in "
        "4-bit CPU matmul is used instead, with the same results",
    ),
    "kernels._internals.hf_hub": (
        r"Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
        "the same optional bitsandbytes kernel, looked up with HF_HUB_OFFLINE=1; the built-in matmul is used",
    ),
    "transformers.generation.utils": (
        r"Passing `generation_config` together with generation-related arguments=\(\{'(begin_)?suppress_tokens', "
        r"'(begin_)?suppress_tokens'\}\)",
        "Whisper's own generate() passes these (a workaround inside transformers); nothing a caller can change",
    ),
    "transformers.configuration_utils": (
        r"model of type `?(\w+)`? to instantiate a model of type `?llava_\1`?\b",
        "a plain LLM checkpoint (phi) loaded into its LLaVA class (llava_phi) is how training starts",
    ),
}


class _DropMatching(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


@contextlib.contextmanager
def dropping(logger_name: str, pattern: str):
    """Drop one message from one logger inside the block (for a call we know triggers it harmlessly)."""
    logger, dropped = logging.getLogger(logger_name), _DropMatching(pattern)
    logger.addFilter(dropped)
    try:
        yield
    finally:
        logger.removeFilter(dropped)


def install() -> None:
    for category, message, _why in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, (pattern, _why) in IGNORED_LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) for f in logger.filters):
            logger.addFilter(_DropMatching(pattern))
