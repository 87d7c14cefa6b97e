"""LLaMA / LLaMA-2 backbone (also Vicuna, SmolLM and other LlamaForCausalLM checkpoints)."""

from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from llava.model.registry import register_backbone
from llava.model.offline_tokenizers import llama_family_tokenizer


class LlavaLlamaConfig(LlamaConfig):
    model_type = "llava_llama"


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaLlamaConfig


def tiny_config(hidden_size=64, num_layers=2):
    return LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )


@register_backbone(
    "llama",
    config_class=LlavaLlamaConfig,
    base_model_types=("llama",),
    conv_template="llava_llama_2",
    tiny_config=tiny_config,
    tiny_tokenizer=llama_family_tokenizer,
)
class LlavaLlamaForCausalLM(LlavaMetaForCausalLM, LlamaForCausalLM):
    config_class = LlavaLlamaConfig
    # Packed rows: LlamaModel builds a block-diagonal causal mask from restarting position_ids.
    packing_unsupported = None

    def __init__(self, config):
        super(LlamaForCausalLM, self).__init__(config)
        self.model = LlavaLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
