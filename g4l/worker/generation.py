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


@dataclass(frozen=True)
class Result:
    """A finished generation in the client's format. For a continue/retry whose source
    could be copied byte for byte, ``kept`` is that part of the source and ``new_wav``
    the model's audio as a WAV; the file is their splice (:meth:`wav`), built only when
    needed (the web node can build it from its own copy of the source)."""

    new_wav: bytes
    frames: int
    kept: memoryview | None = None
    fmt: ClientFormat | None = None
    drop_frames: int = 0

    def wav(self) -> bytes:
        """The whole result file."""
        if self.kept is None or self.fmt is None:
            return self.new_wav
        return wav_splice.splice(self.kept, self.new_wav, sample_rate=self.fmt.sample_rate,
                                 channels=self.fmt.channels, subtype=audio.wav_subtype(self.fmt.subtype))


def build_result(kind: str, output: np.ndarray, engine_rate: int, fmt: ClientFormat,
                 source_wav: bytes | None, prompt_seconds: float) -> Result:
    """The file the client gets back, at its own rate, channel count and sample format.
    For a continue/retry the kept part of the source is copied byte for byte when its
    format allows (:mod:`g4l.wav_splice`), else decoded and joined."""
    new = audio.to_channels(audio.resample(output, engine_rate, fmt.sample_rate), fmt.channels)
    subtype = audio.wav_subtype(fmt.subtype)
    if kind == "bang" or source_wav is None:
        return Result(audio.encode_wav(new, fmt.sample_rate, subtype), new.shape[1])
    drop = int(round(prompt_seconds * fmt.sample_rate))
    kept = None
    if subtype == fmt.subtype:
        kept = wav_splice.without_tail(source_wav, channels=fmt.channels, subtype=subtype, drop_frames=drop)
    if kept is not None:
        block = wav_splice.SAMPLE_BYTES[subtype] * fmt.channels
        return Result(audio.encode_wav(new, fmt.sample_rate, subtype), len(kept) // block + new.shape[1],
                      kept=kept, fmt=fmt, drop_frames=drop)
    source = audio.decode_wav(source_wav, max_seconds=1e9).samples
    joined = audio.concat(audio.drop_tail(source, fmt.sample_rate, prompt_seconds), new)
    return Result(audio.encode_wav(joined, fmt.sample_rate, subtype), joined.shape[1])


def result_wav(kind: str, output: np.ndarray, engine_rate: int, fmt: ClientFormat,
               source_wav: bytes | None, prompt_seconds: float) -> tuple[bytes, int]:
    """:func:`build_result` as the whole file and its length in frames."""
    result = build_result(kind, output, engine_rate, fmt, source_wav, prompt_seconds)
    return result.wav(), result.frames
