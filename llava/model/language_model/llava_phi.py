"""Phi-2 backbone (microsoft/phi-2 and other PhiForCausalLM checkpoints)."""

from torch import nn
from transformers import PhiConfig, PhiForCausalLM, PhiModel

from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from llava.model.registry import register_backbone
from llava.model.offline_tokenizers import gpt2_family_tokenizer


class LlavaPhiConfig(PhiConfig):
    model_type = "llava_phi"


class LlavaPhiModel(LlavaMetaModel, PhiModel):
    config_class = LlavaPhiConfig


def tiny_config(hidden_size=64, num_layers=2):
    # Phi-2 rotates 40 % of each head; keep the rotated width even so any hidden size works.
    head_dim = hidden_size // 4
    rotary_dim = max(2, int(head_dim * 0.4) // 2 * 2)
    return PhiConfig(
        vocab_size=51200,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        partial_rotary_factor=rotary_dim / head_dim,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )


def tiny_tokenizer():
    # Phi-2 has no pad token; LLaVA-Phi recipes pad with <|endoftext|>, which is also EOS.
    return gpt2_family_tokenizer(pad_token="<|endoftext|>")


@register_backbone(
    "phi",
    config_class=LlavaPhiConfig,
    base_model_types=("phi",),
    conv_template="phi",
    tiny_config=tiny_config,
    tiny_tokenizer=tiny_tokenizer,
)
class LlavaPhiForCausalLM(LlavaMetaForCausalLM, PhiForCausalLM):
    config_class = LlavaPhiConfig
    # Packed rows: PhiModel builds a block-diagonal causal mask from restarting position_ids.
    packing_unsupported = None

    def __init__(self, config):
        super(PhiForCausalLM, self).__init__(config)
        self.model = LlavaPhiModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.post_init()
