"""Qwen2 / Qwen2.5 backbone (Qwen/Qwen2.5-*; biased q/k/v projections, ChatML)."""

from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Model

from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from llava.model.offline_tokenizers import gpt2_family_tokenizer
from llava.model.registry import register_backbone


class LlavaQwen2Config(Qwen2Config):
    model_type = "llava_qwen2"


class LlavaQwen2Model(LlavaMetaModel, Qwen2Model):
    config_class = LlavaQwen2Config


def tiny_config(hidden_size=64, num_layers=2):
    return Qwen2Config(
        vocab_size=50304, hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
    )  # fmt: skip


def tiny_tokenizer():
    # Qwen's byte-level BPE has no BOS; <|endoftext|> pads, <|im_end|> ends a chat turn.
    return gpt2_family_tokenizer(
        bos_token=None, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )  # fmt: skip


@register_backbone(
    "qwen2",
    config_class=LlavaQwen2Config,
    base_model_types=("qwen2",),
    conv_template="qwen_1_5",
    tiny_config=tiny_config,
    tiny_tokenizer=tiny_tokenizer,
    pad_token="<|endoftext|>",
)
class LlavaQwen2ForCausalLM(LlavaMetaForCausalLM, Qwen2ForCausalLM):
    config_class = LlavaQwen2Config
    packing_unsupported = None  # Qwen2Model builds a block-diagonal mask from restarting position_ids

    def __init__(self, config):
        super(Qwen2ForCausalLM, self).__init__(config)
        self.model = LlavaQwen2Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
