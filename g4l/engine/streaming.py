"""Streamed decoding: a running row's final frames decoded in overlapping windows.

EnCodec's decoder is not causal (MusicGen's SEANet decoder runs centred convolutions), so
the audio of a frame depends on frames on both sides of it. :class:`WindowedDecoder`
decodes each new stretch with ``left`` frames of context before it and ``right`` frames
after it, and keeps only the middle: joined, the pieces equal the whole decode within a
tolerance measured by ``tests/test_streaming.py`` (docs/engine-batching.md, "Streamed
decoding"). It only emits frames once ``right`` final frames follow them, so with
MusicGen's delay pattern the first audio of a row waits for ``chunk + right + K`` steps.

Pure bookkeeping around a ``decode`` function; the caller decides when to feed it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import InitVar, dataclass, field

import numpy as np
import torch

#: Frames of context after a window's new part (0.1 s at 50 Hz): they delay its audio.
#: The tiny model's decoder needs 5 for an exact join (its receptive field).
RIGHT_CONTEXT_FRAMES = 5
#: Frames of context before it (0.5 s): cheap, and EnCodec's LSTM carries state forwards
#: (MusicGen's real decoder shape, random weights: 86 dB SNR at the joins with 5, 134 dB
#: with 25; docs/engine-batching.md).
LEFT_CONTEXT_FRAMES = 25


@dataclass(eq=False)
class WindowedDecoder:
    """Turns a growing ``[K, n]`` code sequence into consecutive pieces of audio.

    :param decode: ``[K, T]`` codes to ``(channels, T * hop)`` float32 audio.
    :param hop: audio samples per frame (640 for MusicGen: 32 kHz / 50 Hz).
    :param chunk_frames: emit once at least this many new frames are final (plus ``right``).
    :param left: frames of context decoded before a window's new part.
    :param right: frames of context decoded after it (those are emitted by a later window).
    :param start_frame: frames before this one are never emitted (a continuation's prompt).
    """

    decode: Callable[[torch.Tensor], np.ndarray]
    hop: int
    chunk_frames: int = 50
    left: int = LEFT_CONTEXT_FRAMES
    right: int = RIGHT_CONTEXT_FRAMES
    start_frame: InitVar[int] = 0
    #: Frames whose audio has been handed out (the next piece starts here).
    emitted: int = field(init=False)

    def __post_init__(self, start_frame: int) -> None:
        if self.hop < 1 or self.chunk_frames < 1 or self.left < 0 or self.right < 0 or start_frame < 0:
            raise ValueError("hop and chunk_frames must be >= 1; context and start_frame >= 0")
        self.emitted = start_frame

    @property
    def emitted_samples(self) -> int:
        """Samples of the output handed out so far (from the output's start)."""
        return self.emitted * self.hop

    def ready(self, frames: int) -> bool:
        """Whether ``frames`` final frames are enough for the next piece."""
        return frames - self.right - self.emitted >= self.chunk_frames

    def feed(self, codes: torch.Tensor) -> np.ndarray | None:
        """The audio of every frame that became emittable in ``codes`` (``[K, n]``, the
        row's final frames from its start), or ``None`` when too few are new."""
        n = int(codes.shape[-1])
        if not self.ready(n):
            return None
        end = n - self.right
        begin = max(0, self.emitted - self.left)
        audio = self.decode(codes[:, begin:n])
        piece = audio[:, (self.emitted - begin) * self.hop:(end - begin) * self.hop]
        self.emitted = end
        return np.ascontiguousarray(piece)

    def rest(self, whole: np.ndarray) -> np.ndarray:
        """What of the whole decode ``whole`` was not handed out (the last piece)."""
        return np.ascontiguousarray(whole[:, min(self.emitted_samples, whole.shape[1]):])
