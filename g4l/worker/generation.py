"""One generation path for bang, continue and retry: prompt window in, result file out.

bang:      result = the model's 30 s, continuing the FIRST ``prompt_duration`` seconds.
continue:  result = input minus its last ``prompt_duration`` s + the model's 30 s (which
           starts with the re-decoded prompt), so the file grows by 30 - prompt seconds.
retry:     a continue re-run from the input the last continue used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from g4l import audio, wav_splice
from g4l.engine.base import Engine, GenerationParams, ProgressCallback


@dataclass(frozen=True)
class ClientFormat:
    """How the client's audio is shaped; results go back in the same shape."""

    sample_rate: int
    channels: int
    subtype: str


def prompt_window(samples: np.ndarray, rate: int, kind: str, seconds: float) -> np.ndarray:
    """The part of the input the model continues: the head for a bang, else the tail."""
    if kind == "bang":
        return audio.head(samples, rate, seconds)
    return audio.tail(samples, rate, seconds)


def model_prompt(window: np.ndarray, rate: int, engine_rate: int) -> np.ndarray:
    """The prompt window at the model's rate (channels are the engine's business)."""
    return audio.resample(window, rate, engine_rate)


def generate(engine: Engine, prompt: np.ndarray, params: GenerationParams,
             on_progress: ProgressCallback | None) -> tuple[np.ndarray, float]:
    """Run the model; returns its output (prompt included) and the seconds it took."""
    started = time.perf_counter()
    output = engine.continue_audio(prompt, params, on_progress)
    return output, time.perf_counter() - started


def result_wav(kind: str, output: np.ndarray, engine_rate: int, fmt: ClientFormat,
               source_wav: bytes | None, prompt_seconds: float) -> tuple[bytes, int]:
    """The file the client gets back, at its own rate, channel count and sample format,
    and its length in frames. For a continue/retry the kept part of the source is copied
    byte for byte when its format allows (:mod:`g4l.wav_splice`), else decoded and joined."""
    new = audio.to_channels(audio.resample(output, engine_rate, fmt.sample_rate), fmt.channels)
    subtype = audio.wav_subtype(fmt.subtype)
    if kind == "bang" or source_wav is None:
        return audio.encode_wav(new, fmt.sample_rate, subtype), new.shape[1]
    drop = int(round(prompt_seconds * fmt.sample_rate))
    kept = None
    if subtype == fmt.subtype:
        kept = wav_splice.without_tail(source_wav, channels=fmt.channels, subtype=subtype, drop_frames=drop)
    if kept is not None:
        block = wav_splice.SAMPLE_BYTES[subtype] * fmt.channels
        wav = wav_splice.splice(kept, audio.encode_wav(new, fmt.sample_rate, subtype),
                                sample_rate=fmt.sample_rate, channels=fmt.channels, subtype=subtype)
        return wav, len(kept) // block + new.shape[1]
    source = audio.decode_wav(source_wav, max_seconds=1e9).samples
    joined = audio.concat(audio.drop_tail(source, fmt.sample_rate, prompt_seconds), new)
    return audio.encode_wav(joined, fmt.sample_rate, subtype), joined.shape[1]
