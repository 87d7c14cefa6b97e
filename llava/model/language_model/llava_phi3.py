"""Phi-3 / Phi-3.5 / Phi-4-mini backbone (microsoft/Phi-3*-mini-*, Phi-4-mini-*; fused qkv and gate_up)."""

from torch import nn
from transformers import Phi3Config, Phi3ForCausalLM, Phi3Model

from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from llava.model.offline_tokenizers import llama_family_tokenizer
from llava.model.registry import register_backbone


class LlavaPhi3Config(Phi3Config):
    model_type = "llava_phi3"


class LlavaPhi3Model(LlavaMetaModel, Phi3Model):
    config_class = LlavaPhi3Config


def tiny_config(hidden_size=64, num_layers=2):
    return Phi3Config(
        vocab_size=32064, hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048, original_max_position_embeddings=2048,
        tie_word_embeddings=False,
    )  # fmt: skip


def tiny_tokenizer():
    # Phi-3-mini's vocabulary is LLaMA's SentencePiece plus chat tokens from 32,000 on; <|endoftext|> pads.
    return llama_family_tokenizer(
        eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        extra_special_tokens=["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
    )  # fmt: skip


@register_backbone(
    "phi3",
    config_class=LlavaPhi3Config,
    base_model_types=("phi3",),
    conv_template="phi3",
    tiny_config=tiny_config,
    tiny_tokenizer=tiny_tokenizer,
    pad_token="<|endoftext|>",
)
class LlavaPhi3ForCausalLM(LlavaMetaForCausalLM, Phi3ForCausalLM):
    config_class = LlavaPhi3Config
    packing_unsupported = None  # Phi3Model builds a block-diagonal mask from restarting position_ids

    def __init__(self, config):
        super(Phi3ForCausalLM, self).__init__(config)
        self.model = LlavaPhi3Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
