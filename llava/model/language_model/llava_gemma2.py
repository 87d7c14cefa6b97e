"""Gemma 2 backbone (google/gemma-2-*; logit soft-capping, eager attention as Google recommends)."""

from torch import nn
from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma2Model

from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from llava.model.offline_tokenizers import llama_family_tokenizer
from llava.model.registry import register_backbone


class LlavaGemma2Config(Gemma2Config):
    model_type = "llava_gemma2"


class LlavaGemma2Model(LlavaMetaModel, Gemma2Model):
    config_class = LlavaGemma2Config


def tiny_config(hidden_size=64, num_layers=2):
    head_dim = hidden_size // 4
    return Gemma2Config(
        vocab_size=32064, hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, query_pre_attn_scalar=head_dim,
        sliding_window=64, max_position_embeddings=2048, tie_word_embeddings=True,
    )  # fmt: skip


def tiny_tokenizer():
    # SentencePiece (as Gemma's) with Gemma's own <bos>/<eos>/<pad> and turn markers.
    return llama_family_tokenizer(
        bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", extra_special_tokens=["<start_of_turn>", "<end_of_turn>"]
    )


@register_backbone(
    "gemma2",
    config_class=LlavaGemma2Config,
    base_model_types=("gemma2",),
    conv_template="gemma_instruct",
    tiny_config=tiny_config,
    tiny_tokenizer=tiny_tokenizer,
    attn_implementation="eager",  # soft-capped attention scores: sdpa would skip the capping
)
class LlavaGemma2ForCausalLM(LlavaMetaForCausalLM, Gemma2ForCausalLM):
    config_class = LlavaGemma2Config
    packing_unsupported = None  # Gemma2Model builds a block-diagonal mask from restarting position_ids

    def __init__(self, config):
        super(Gemma2ForCausalLM, self).__init__(config)
        self.model = LlavaGemma2Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
