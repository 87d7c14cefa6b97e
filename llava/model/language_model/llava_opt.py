"""OPT backbone (facebook/opt-*): its own class, not a fall-through to LLaMA."""

from torch import nn
from transformers import OPTConfig, OPTForCausalLM, OPTModel

from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from llava.model.registry import register_backbone
from llava.model.offline_tokenizers import gpt2_family_tokenizer


class LlavaOPTConfig(OPTConfig):
    model_type = "llava_opt"


class LlavaOPTModel(LlavaMetaModel, OPTModel):
    config_class = LlavaOPTConfig


def tiny_config(hidden_size=64, num_layers=2):
    return OPTConfig(
        vocab_size=50272,
        hidden_size=hidden_size,
        word_embed_proj_dim=hidden_size,
        ffn_dim=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        max_position_embeddings=2048,
    )


def tiny_tokenizer():
    # OPT: BOS and EOS are both </s>, prepended to every sequence; a separate <pad>.
    return gpt2_family_tokenizer(
        bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", add_bos_token=True
    )


@register_backbone(
    "opt",
    config_class=LlavaOPTConfig,
    base_model_types=("opt",),
    conv_template="opt",
    tiny_config=tiny_config,
    tiny_tokenizer=tiny_tokenizer,
)
class LlavaOPTForCausalLM(LlavaMetaForCausalLM, OPTForCausalLM):
    config_class = LlavaOPTConfig
    packing_unsupported = (
        "OPT builds its causal mask without looking at position_ids, so packed samples would attend to each "
        "other; train OPT unpacked (--train_sampling_strategy group_by_length keeps padding low)"
    )

    def __init__(self, config):
        super(OPTForCausalLM, self).__init__(config)
        self.model = LlavaOPTModel(config)
        # OPT's embeddings may be narrower than its hidden size (opt-350m); lm_head follows the embeddings.
        self.lm_head = nn.Linear(config.word_embed_proj_dim, config.vocab_size, bias=False)
        self.post_init()
