"""Spoken questions: read an audio file and transcribe it with a local Whisper checkpoint."""

from __future__ import annotations

import os

import numpy as np

WHISPER_RATE = 16_000  # Whisper's feature extractor expects 16 kHz mono
# The most tokens Whisper puts before the transcript: <|startoftranscript|>, language, task, <|notimestamps|>.
WHISPER_START_TOKENS = 4


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """(float32 mono waveform in [-1, 1], sample rate) from a WAV file (what the browser recorder writes)."""
    from scipy.io import wavfile

    if not os.path.exists(path):
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        rate, data = wavfile.read(path)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"cannot read audio file {os.path.basename(path)}: {exc}; upload a WAV recording") from None
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / np.iinfo(data.dtype).max
    data = data.astype(np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1)
    return data, int(rate)


def resample(wave: np.ndarray, rate: int, target: int = WHISPER_RATE) -> np.ndarray:
    if rate == target:
        return wave
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate, target)
    return resample_poly(wave, target // g, rate // g).astype(np.float32)


class WhisperTranscriber:
    """Speech to text with `WhisperForConditionalGeneration` loaded from a local directory (no downloads)."""

    def __init__(self, model_dir: str, max_new_tokens: int = 128):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        if not os.path.isdir(model_dir):
            raise FileNotFoundError(
                f"{model_dir} is not a directory; pass a local Whisper checkpoint (e.g. a saved openai/whisper-tiny)"
            )
        self.processor = WhisperProcessor.from_pretrained(model_dir)
        self.model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
        # generate() refuses a budget that, with its start tokens, exceeds the decoder's positions.
        limit = self.model.config.max_target_positions - WHISPER_START_TOKENS
        self.max_new_tokens = max(1, min(max_new_tokens, limit))

    def __call__(self, audio) -> str:
        """Transcribe a WAV path or a (waveform, rate) pair."""
        wave, rate = read_audio(audio) if isinstance(audio, (str, os.PathLike)) else audio
        features = self.processor(resample(wave, rate), sampling_rate=WHISPER_RATE, return_tensors="pt").input_features
        import torch

        from llava.quiet import dropping

        # Whisper's generate() sets max_length itself and then warns that max_new_tokens overrides it.
        with torch.inference_mode(), dropping("transformers.generation.utils", r"^Both `max_new_tokens`"):
            ids = self.model.generate(features.to(self.model.dtype), max_new_tokens=self.max_new_tokens)
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
