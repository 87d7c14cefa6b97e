"""Gemma 3 text backbone (google/gemma-3-1b-*, model_type `gemma3_text`; Gemma3ForCausalLM)."""

from torch import nn
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Gemma3TextModel

from llava.model.language_model.llava_gemma2 import tiny_tokenizer
from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from llava.model.registry import register_backbone


class LlavaGemma3Config(Gemma3TextConfig):
    model_type = "llava_gemma3"


class LlavaGemma3Model(LlavaMetaModel, Gemma3TextModel):
    config_class = LlavaGemma3Config


def tiny_config(hidden_size=64, num_layers=2):
    head_dim = hidden_size // 4
    return Gemma3TextConfig(
        vocab_size=32064, hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, query_pre_attn_scalar=head_dim,
        sliding_window=64, max_position_embeddings=2048, tie_word_embeddings=True,
    )  # fmt: skip


@register_backbone(
    "gemma3",
    config_class=LlavaGemma3Config,
    base_model_types=("gemma3_text",),
    conv_template="gemma_instruct",
    tiny_config=tiny_config,
    tiny_tokenizer=tiny_tokenizer,  # Gemma 3's chat tokens are Gemma 2's
)
class LlavaGemma3ForCausalLM(LlavaMetaForCausalLM, Gemma3ForCausalLM):
    config_class = LlavaGemma3Config
    packing_unsupported = None  # Gemma3TextModel builds a block-diagonal mask from restarting position_ids

    def __init__(self, config):
        super(Gemma3ForCausalLM, self).__init__(config)
        self.model = LlavaGemma3Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
