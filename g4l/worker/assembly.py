"""How a device session's result file is made from the model's output.

bang:      the model's 30 s (the re-decoded prompt included), in the client's format.
continue:  the input minus its last ``prompt_duration`` s + the model's 30 s (which
           starts with the re-decoded prompt), so the file grows by 30 - prompt seconds.
retry:     a continue re-run from the input the last continue used.

The kept part of a continue's input is copied byte for byte when its format allows
(:mod:`g4l.wav_splice`), else decoded and joined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from g4l import audio, wav_splice
from g4l.jobs.spec import Assembly, AudioFormat, GenerationSpec


@dataclass(frozen=True)
class SessionResult:
    """A finished generation in the client's format. For a continue/retry whose source
    could be copied byte for byte, ``kept`` is that part of the source and ``new_wav``
    the model's audio as a WAV; the file is their splice (:meth:`wav`), built only when
    needed (the web node can build it from its own copy of the source)."""

    new_wav: bytes
    frames: int
    fmt: AudioFormat
    kept: memoryview | None = None
    drop_frames: int = 0

    def wav(self) -> bytes:
        """The whole result file."""
        if self.kept is None:
            return self.new_wav
        return wav_splice.splice(self.kept, self.new_wav, sample_rate=self.rate, channels=self.channels,
                                 subtype=self.subtype)

    @property
    def rate(self) -> int:
        assert self.fmt.sample_rate is not None
        return self.fmt.sample_rate

    @property
    def channels(self) -> int:
        assert self.fmt.channels is not None
        return self.fmt.channels

    @property
    def subtype(self) -> str:
        return audio.wav_subtype(self.fmt.subtype)


def build_result(spec: GenerationSpec, output: np.ndarray, engine_rate: int, source_wav: bytes | None
                 ) -> SessionResult:
    """The file the client gets back, at its own rate, channel count and sample format
    (``spec.output``), assembled as ``spec.assembly`` says."""
    fmt = spec.output
    assert fmt.sample_rate is not None and fmt.channels is not None
    rate, channels, subtype = fmt.sample_rate, fmt.channels, audio.wav_subtype(fmt.subtype)
    new = audio.to_channels(audio.resample(output, engine_rate, rate), channels)
    if spec.assembly is not Assembly.SPLICE or source_wav is None:
        return SessionResult(audio.encode_wav(new, rate, subtype), new.shape[1], fmt)
    prompt_s = spec.prompt.seconds if spec.prompt else 0.0
    drop = int(round(prompt_s * rate))
    kept = None
    if subtype == fmt.subtype:
        kept = wav_splice.without_tail(source_wav, channels=channels, subtype=subtype, drop_frames=drop)
    if kept is not None:
        block = wav_splice.SAMPLE_BYTES[subtype] * channels
        return SessionResult(audio.encode_wav(new, rate, subtype), len(kept) // block + new.shape[1], fmt,
                             kept=kept, drop_frames=drop)
    source = audio.decode_wav(source_wav, max_seconds=1e9).samples
    joined = audio.concat(audio.drop_tail(source, rate, prompt_s), new)
    return SessionResult(audio.encode_wav(joined, rate, subtype), joined.shape[1], fmt)
