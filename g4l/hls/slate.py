"""The slate: what a station plays while it is off the air (its buffer DEPLETED).

A soft, unmistakable two-second loop, made here (no file to ship): a quiet 220 Hz drone
under two alternating notes (440 Hz, then 660 Hz), each note shaped by a raised cosine.
Every frequency completes whole cycles within the loop, so it repeats without a click.
Listeners hear "the station is paused", not a dead stream; a test can find its tones.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from g4l.hls.buffer import CHANNELS, RATE

LOOP_S = 2.0
DRONE_HZ = 220.0
NOTES_HZ = (440.0, 660.0)
LEVEL = 0.12  # about -18 dBFS peak: audible, never loud


@lru_cache(maxsize=1)
def slate_loop() -> np.ndarray:
    """The slate's loop: float32 ``(2, 2 s)`` at the stream's rate (read only)."""
    n = int(LOOP_S * RATE)
    t = np.arange(n) / RATE
    x = 0.35 * np.sin(2 * np.pi * DRONE_HZ * t)
    half = n // len(NOTES_HZ)
    for i, hz in enumerate(NOTES_HZ):
        part = slice(i * half, (i + 1) * half)
        envelope = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(half) / half)
        x[part] += 0.65 * envelope * np.sin(2 * np.pi * hz * t[part])
    loop = np.tile((LEVEL * x).astype(np.float32), (CHANNELS, 1))
    loop.setflags(write=False)
    return loop
