"""MPT backbone (mosaicml/mpt-*; ALiBi positions, eager attention only)."""

from torch import nn
from transformers import MptConfig, MptForCausalLM, MptModel

from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from llava.model.registry import register_backbone
from llava.model.offline_tokenizers import gpt2_family_tokenizer


class LlavaMptConfig(MptConfig):
    model_type = "llava_mpt"


class LlavaMptModel(LlavaMetaModel, MptModel):
    config_class = LlavaMptConfig


def tiny_config(hidden_size=64, num_layers=2):
    return MptConfig(
        vocab_size=50432,
        d_model=hidden_size,
        n_heads=4,
        n_layers=num_layers,
        expansion_ratio=4,
        max_seq_len=2048,
    )


def tiny_tokenizer():
    # MPT: <|endoftext|> is BOS/EOS/UNK, no pad; chat models add ChatML markers.
    return gpt2_family_tokenizer(additional_special_tokens=["<|im_start|>", "<|im_end|>"])


@register_backbone(
    "mpt",
    config_class=LlavaMptConfig,
    base_model_types=("mpt",),
    conv_template="mpt",
    tiny_config=tiny_config,
    tiny_tokenizer=tiny_tokenizer,
    attn_implementation="eager",  # transformers' MPT has no sdpa path
)
class LlavaMptForCausalLM(LlavaMetaForCausalLM, MptForCausalLM):
    config_class = LlavaMptConfig
    packing_unsupported = (
        "MPT positions tokens with ALiBi and takes no position_ids, so it cannot tell where a packed sample "
        "starts; train MPT unpacked (--train_sampling_strategy group_by_length keeps padding low)"
    )

    def __init__(self, config):
        super(MptForCausalLM, self).__init__(config)
        self.transformer = LlavaMptModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
