"""SmolLM2 backbone (HuggingFaceTB/SmolLM2-*): LLaMA's class with SmolLM2's own tokenizer and ChatML.

A SmolLM2 checkpoint is a plain `llama` one; its tokenizer's <|im_start|> tells it from LLaMA-2's.
"""

from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from llava.model.offline_tokenizers import smollm2_tokenizer
from llava.model.registry import register_backbone


class LlavaSmolLM2Config(LlamaConfig):
    model_type = "llava_smollm2"


class LlavaSmolLM2Model(LlavaMetaModel, LlamaModel):
    config_class = LlavaSmolLM2Config


def tiny_config(hidden_size=64, num_layers=2):
    return LlamaConfig(
        vocab_size=49152, hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    )  # fmt: skip


@register_backbone(
    "smollm2",
    config_class=LlavaSmolLM2Config,
    base_model_types=("llama",),
    conv_template="smollm2",
    tiny_config=tiny_config,
    tiny_tokenizer=smollm2_tokenizer,  # the real one (pads with <|im_end|>)
    tokenizer_marker="<|im_start|>",
)
class LlavaSmolLM2ForCausalLM(LlavaMetaForCausalLM, LlamaForCausalLM):
    config_class = LlavaSmolLM2Config
    packing_unsupported = None  # LlamaModel builds a block-diagonal mask from restarting position_ids

    def __init__(self, config):
        super(LlamaForCausalLM, self).__init__(config)
        self.model = LlavaSmolLM2Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
