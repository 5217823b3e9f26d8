"""What a station's stored buffer costs: chunk generation past the model's window, and the
chunk format (24-bit FLAC) against the float WAV it replaces.

Builds the tiny debug model in-process (one torch thread, no server), then prints for a
10 s, 60 s and (with --long) 300 s chunk: generation wall time (AudioCraft's extension past
30 s) and real-time factor; float WAV and FLAC sizes, FLAC encode time, and the time to
decode a 10 s piece from the middle of the chunk (what the packager does every ~10 s).

Usage: scripts/bench_station_chunks [--long]
"""

from __future__ import annotations

import sys
import time

import torch

from g4l import audio
from g4l.engine.debug_model import build_debug_musicgen


def main() -> None:
    torch.set_num_threads(1)
    model = build_debug_musicgen()
    lengths = [10, 60] + ([300] if "--long" in sys.argv else [])
    for seconds in lengths:
        model.set_generation_params(duration=seconds)
        t = time.perf_counter()
        x = model.generate(["lofi beats"])[0].numpy()
        gen = time.perf_counter() - t
        rate = model.sample_rate
        wav = audio.encode_wav(x, rate, "FLOAT")
        t = time.perf_counter()
        flac = audio.encode_flac(x, rate)
        enc = time.perf_counter() - t
        t = time.perf_counter()
        piece = audio.read_span(flac, seconds / 2, min(10.0, seconds / 2))
        dec = time.perf_counter() - t
        assert piece.frames == int(min(10.0, seconds / 2) * rate)
        print(f"{seconds:4d} s chunk: generated in {gen:6.1f} s (x{seconds / gen:4.1f} real time); float WAV "
              f"{len(wav) / 1e6:6.2f} MB, FLAC {len(flac) / 1e6:6.2f} MB ({len(flac) / len(wav):.0%}), "
              f"encoded in {enc * 1000:4.0f} ms; a 10 s piece decoded in {dec * 1000:3.0f} ms")


if __name__ == "__main__":
    main()
