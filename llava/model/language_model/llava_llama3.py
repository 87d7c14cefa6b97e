"""Llama-3.x backbone (meta-llama/Llama-3.*): LLaMA's class, its own tokenizer family and template.

A Llama-3 checkpoint is a plain `llama` one; its tokenizer's <|start_header_id|> tells it from LLaMA-2's.
"""

from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from llava.model.offline_tokenizers import gpt2_family_tokenizer
from llava.model.registry import register_backbone


class LlavaLlama3Config(LlamaConfig):
    model_type = "llava_llama3"


class LlavaLlama3Model(LlavaMetaModel, LlamaModel):
    config_class = LlavaLlama3Config


def tiny_config(hidden_size=64, num_layers=2):
    return LlamaConfig(
        vocab_size=50304, hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    )  # fmt: skip


def tiny_tokenizer():
    # Byte-level BPE (as Llama-3's tiktoken vocabulary) with BOS on, no pad and no UNK, as Llama-3's.
    return gpt2_family_tokenizer(
        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", unk_token=None, add_bos_token=True,
        additional_special_tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                   "<|eot_id|>", "<|finetune_right_pad_id|>"],
    )  # fmt: skip


@register_backbone(
    "llama3",
    config_class=LlavaLlama3Config,
    base_model_types=("llama",),
    conv_template="llava_llama_3",
    tiny_config=tiny_config,
    tiny_tokenizer=tiny_tokenizer,
    pad_token="<|finetune_right_pad_id|>",  # Llama-3.1's reserved pad; else EOS
    tokenizer_marker="<|start_header_id|>",
)
class LlavaLlama3ForCausalLM(LlavaMetaForCausalLM, LlamaForCausalLM):
    config_class = LlavaLlama3Config
    packing_unsupported = None  # LlamaModel builds a block-diagonal mask from restarting position_ids

    def __init__(self, config):
        super(LlamaForCausalLM, self).__init__(config)
        self.model = LlavaLlama3Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
