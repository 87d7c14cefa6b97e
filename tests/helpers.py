"""Test helpers: build a "trained" LLaVA checkpoint directly, without the training code.

The checkpoint is laid out as `train.py` writes it (save_pretrained dir with the LLaVA config
fields, tokenizer and image processor), so evaluation, serving and export tests go through
`load_pretrained_model` exactly as a user's checkpoint would.
"""

from __future__ import annotations

import json
import os

import torch
from PIL import Image


def make_llava_checkpoint(
    out_dir: str,
    llm_path: str,
    clip_path: str,
    backbone: str = "phi",
    projector: str = "mlp2x_gelu",
    select_feature: str = "patch",
    select_layer: int = -2,
    image_aspect_ratio: str = "square",
    mm_use_im_start_end: bool = False,
    projector_scale: float = 8.0,
    seed: int = 0,
) -> str:
    """Save a random-init LLaVA model built from a tiny LLM + a tiny tower (CLIP, or any family at `clip_path`) to `out_dir`.

    `projector_scale` enlarges the projector's weights so image features dominate the tiny
    LLM's hidden states: greedy answers then differ from image to image, which is what
    batched-vs-unbatched and export-parity tests need to be meaningful.
    """
    from transformers import AutoTokenizer

    from llava.model.builder import ensure_pad_token
    from llava.model.registry import get_backbone

    torch.manual_seed(seed)
    model = get_backbone(backbone).model_class.from_pretrained(llm_path, dtype=torch.float32)
    model.get_model().initialize_vision_modules(
        vision_tower=clip_path,
        mm_projector_type=projector,
        mm_vision_select_layer=select_layer,
        mm_vision_select_feature=select_feature,
    )
    tokenizer = AutoTokenizer.from_pretrained(llm_path)
    ensure_pad_token(tokenizer)
    model.initialize_vision_tokenizer(tokenizer, mm_use_im_start_end=mm_use_im_start_end)
    with torch.no_grad():
        for param in model.get_model().mm_projector.parameters():
            param.mul_(projector_scale)
    model.config.image_aspect_ratio = image_aspect_ratio
    model.config.tokenizer_model_max_length = 512
    model.config.tokenizer_padding_side = "right"
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    model.get_vision_tower().load_image_processor().save_pretrained(out_dir)
    return out_dir


def write_questions(path: str, records: list[dict]) -> str:
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def solid_image(path: str, color=(200, 30, 30), size=(40, 32)) -> str:
    Image.new("RGB", size, color).save(path)
    return path


def grey_png(path: str, width: int, height: int, complete: bool = True) -> str:
    """An all-black 8-bit grey PNG of any size, written without holding its pixels.

    `complete=False` keeps only the first row of data (a decompression bomb's header, as small as
    it gets): readers that check the header refuse it the same; decoding it would fail.
    """
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = height if complete else 1
    block = b"\0" * ((width + 1) * min(rows, 256))  # a filter byte and a zero byte per pixel, 256 rows at a time
    packer = zlib.compressobj(1)
    data = b"".join(packer.compress(block[: (width + 1) * min(256, rows - start)]) for start in range(0, rows, 256))
    data += packer.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


_CHECKPOINTS: dict[tuple, str] = {}


def cached_checkpoint(tmp_path_factory, tiny_llm, tiny_clip, backbone: str = "phi", **options) -> str:
    """`make_llava_checkpoint` once per test session for each (backbone, options)."""
    key = (backbone, tuple(sorted(options.items())))
    if key not in _CHECKPOINTS:
        out = str(tmp_path_factory.mktemp(f"llava-{backbone}"))
        _CHECKPOINTS[key] = make_llava_checkpoint(out, tiny_llm(backbone), tiny_clip, backbone=backbone, **options)
    return _CHECKPOINTS[key]


def tone_wav(path: str, seconds: float = 1.0, rate: int = 8000) -> str:
    """A 440 Hz tone as 16-bit WAV (resampled to 16 kHz by the transcriber)."""
    import numpy as np
    from scipy.io import wavfile

    t = np.linspace(0, seconds, int(seconds * rate), endpoint=False)
    wavfile.write(path, rate, (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16))
    return path


def make_lora_checkpoint(out_dir: str, llm_path: str, clip_path: str, merged_dir: str | None = None, seed: int = 0) -> str:
    """A Phi LoRA checkpoint laid out as official LLaVA's LoRA runs write it.

    adapter files + `non_lora_trainables.bin` (projector, peft-prefixed keys) + the LLaVA
    `config.json` + tokenizer, to be loaded over `llm_path` as `--model-base`. With `merged_dir`,
    the same weights merged into a full checkpoint are saved there too (the reference answers).
    """
    from peft import LoraConfig, get_peft_model

    full = make_llava_checkpoint(out_dir + "-full-tmp", llm_path, clip_path, backbone="phi", seed=seed)
    from transformers import AutoTokenizer

    from llava.model.registry import get_backbone

    model = get_backbone("phi").model_class.from_pretrained(full, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(full)
    lora = LoraConfig(
        r=4, lora_alpha=8, init_lora_weights=False,  # non-zero B: the adapter really changes the answers
        target_modules=r"model\.layers\.\d+\.(self_attn\.(q_proj|v_proj)|mlp\.fc1)",
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(out_dir)
    projector = {
        f"base_model.model.model.mm_projector.{k}": v.clone()
        for k, v in model.get_model().mm_projector.state_dict().items()
    }
    torch.save(projector, os.path.join(out_dir, "non_lora_trainables.bin"))
    model.config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if merged_dir:
        merged = peft_model.merge_and_unload()
        merged.save_pretrained(merged_dir)
        tokenizer.save_pretrained(merged_dir)
    import shutil

    shutil.rmtree(full)
    return out_dir


def train_in_work_folder(root, llm_path: str, clip_path: str, args: list[str]):
    """A training run made from `root` as the launchers make it: the tiny LLM and tower copied to
    `root/checkpoints/tiny-phi` and `root/checkpoints/tiny-clip`, and `args` naming them by those relative paths."""
    import shutil

    from llava.train.train import train

    (root / "checkpoints").mkdir(exist_ok=True)
    shutil.copytree(llm_path, root / "checkpoints" / "tiny-phi")
    shutil.copytree(clip_path, root / "checkpoints" / "tiny-clip")
    here = os.getcwd()
    os.chdir(root)
    try:
        train(["--model_name_or_path", "checkpoints/tiny-phi", "--vision_tower", "checkpoints/tiny-clip",
               "--report_to", "none", "--save_strategy", "no", "--model_max_length", "256", *args])
    finally:
        os.chdir(here)
    return root


def soft_capped(logits, hf_model):
    """transformers' Llava skips the text model's final logit soft-cap (Gemma 2); apply it as vLLM's Gemma 2 does."""
    cap = getattr(hf_model.config.text_config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def exported_logits_diff(checkpoint: str, exported: str, model_base: str | None = None) -> float:
    """max |logits| difference between our checkpoint and its transformers Llava export, on an image prompt."""
    from transformers import LlavaForConditionalGeneration

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    tokenizer, ours, _, _ = load_pretrained_model(str(checkpoint), model_base, device="cpu")
    theirs = LlavaForConditionalGeneration.from_pretrained(str(exported)).eval()
    ids = tokenizer_image_token("Look: <image>\nWhat is it?", tokenizer, return_tensors="pt")
    tower = ours.get_vision_tower()
    image_id = theirs.config.image_token_id
    expanded = torch.cat([torch.full((tower.num_patches,), image_id) if t == IMAGE_TOKEN_INDEX else t.view(1) for t in ids])
    torch.manual_seed(0)
    image = torch.randn(1, *tower.pixel_shape)
    with torch.no_grad():
        a = ours(input_ids=ids[None], images=image).logits
        b = soft_capped(theirs(input_ids=expanded[None], pixel_values=image).logits, theirs)[..., : a.shape[-1]]
    return (a - b).abs().max().item()


def launcher_env(tiny_llm, tiny_clip, demo_data, root, **env) -> dict:
    """Environment for scripts/*.sh: the session's tiny checkpoints and demo data, a few small steps, 2 processes."""
    return {
        **os.environ,
        "MODEL_PATH": tiny_llm("phi"), "VISION_TOWER": tiny_clip,
        "DATA_DIR": os.path.dirname(demo_data["pretrain"]), "IMAGE_FOLDER": demo_data["image_folder"],
        "RUN_NAME": "test", "MAX_STEPS": "2", "SAVE_STEPS": "1", "BATCH_SIZE": "2",
        "NUM_GPUS": "2", "TORCH_EXTENSIONS_DIR": str(root / "torch_extensions"), **env,
    }


def shapes_video(path: str, frames: int = 6, size: int = 48, color=(220, 30, 30), fps: int = 4) -> str:
    """A short MPEG-4 clip of a `color` square moving over a grey field (one position per frame), made with PyAV."""
    import av
    import numpy as np

    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        container.start_encoding()  # the header, also for a clip of no frame
        for i in range(frames):
            pixels = np.full((size, size, 3), 128, dtype=np.uint8)
            x = (i * (size // 2)) // max(frames - 1, 1)
            pixels[size // 4 : size // 4 + size // 2, x : x + size // 2] = color
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
