"""Qwen3 backbone (Qwen/Qwen3-*; q/k RMS-normed per head, ChatML)."""

from torch import nn
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

from llava.model.language_model.llava_qwen2 import tiny_tokenizer
from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from llava.model.registry import register_backbone


class LlavaQwen3Config(Qwen3Config):
    model_type = "llava_qwen3"


class LlavaQwen3Model(LlavaMetaModel, Qwen3Model):
    config_class = LlavaQwen3Config


def tiny_config(hidden_size=64, num_layers=2):
    return Qwen3Config(
        vocab_size=50304, hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden_size // 4, max_position_embeddings=2048,
        tie_word_embeddings=True,
    )  # fmt: skip


@register_backbone(
    "qwen3",
    config_class=LlavaQwen3Config,
    base_model_types=("qwen3",),
    conv_template="qwen_1_5",
    tiny_config=tiny_config,
    tiny_tokenizer=tiny_tokenizer,  # Qwen3 keeps Qwen2's vocabulary and chat tokens
    pad_token="<|endoftext|>",
)
class LlavaQwen3ForCausalLM(LlavaMetaForCausalLM, Qwen3ForCausalLM):
    config_class = LlavaQwen3Config
    packing_unsupported = None  # Qwen3Model builds a block-diagonal mask from restarting position_ids

    def __init__(self, config):
        super(Qwen3ForCausalLM, self).__init__(config)
        self.model = LlavaQwen3Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
