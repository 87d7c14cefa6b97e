"""LLaVA models: importing this package registers every backbone with the HF Auto classes
(the imports below load `language_model`, whose modules each register one backbone)."""

from llava.model.language_model.llava_llama import LlavaLlamaConfig, LlavaLlamaForCausalLM
from llava.model.language_model.llava_mpt import LlavaMptConfig, LlavaMptForCausalLM
from llava.model.language_model.llava_opt import LlavaOPTConfig, LlavaOPTForCausalLM
from llava.model.language_model.llava_phi import LlavaPhiConfig, LlavaPhiForCausalLM
from llava.model.registry import backbone_for_config, backbone_names, get_backbone

__all__ = [
    "LlavaLlamaConfig",
    "LlavaLlamaForCausalLM",
    "LlavaMptConfig",
    "LlavaMptForCausalLM",
    "LlavaOPTConfig",
    "LlavaOPTForCausalLM",
    "LlavaPhiConfig",
    "LlavaPhiForCausalLM",
    "backbone_for_config",
    "backbone_names",
    "get_backbone",
]
