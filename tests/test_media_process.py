"""One ffmpeg life cycle (g4l.media.FfmpegProcess), with the real ffmpeg: fed on stdin it
finishes when its input ends; one that will not stop is killed at the deadline; one that
fails says why in its own words, secrets redacted."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import IO

import numpy as np
import soundfile as sf

from g4l.media import FfmpegProcess, ffmpeg_binary

RATE = 48_000


def test_fed_pcm_comes_out_whole_and_a_closed_input_ends_it_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    lines: list[bytes] = []

    def read(stdout: IO[bytes]) -> None:
        lines.extend(stdout)

    proc = FfmpegProcess([ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-f", "s16le", "-ar", str(RATE),
                          "-ac", "2", "-i", "pipe:0", "-progress", "pipe:1", "-y", str(out)],
                         name="test-wav", stderr_log=tmp_path / "ffmpeg.log", read_stdout=read)
    proc.start()
    tone = (np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE) * 8000).astype("<i2")
    blocks = [np.repeat(tone, 2).tobytes()]  # one second, stereo interleaved
    stop = threading.Event()

    def take() -> list[bytes]:
        if not blocks:
            stop.set()
            return []
        return [blocks.pop()]

    proc.pump(take, stop)
    assert proc.stop(deadline_s=10, join_s=5) == 0 and not proc.killed
    samples, rate = sf.read(out, dtype="int16")
    assert rate == RATE and samples.shape == (RATE, 2)  # the second fed, whole
    assert np.array_equal(samples[:, 0], tone)
    assert any(line.startswith(b"progress=end") for line in lines)
    assert proc.exit_reason() == "ffmpeg exited with code 0"


def test_an_ffmpeg_that_does_not_stop_is_killed_at_the_deadline(tmp_path: Path) -> None:
    # Reads a generated tone, never its stdin: closing the input does not end it.
    proc = FfmpegProcess([ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
                          "sine=frequency=440:duration=600", "-f", "null", "-"], name="test-kill")
    proc.start()
    assert proc.running
    assert proc.stop(deadline_s=0.5, join_s=2) != 0
    assert proc.killed and not proc.running


def test_a_failing_ffmpeg_says_why_with_the_secret_redacted(tmp_path: Path) -> None:
    secret = "live_1234_secretkey"
    proc = FfmpegProcess([ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-f", "s16le", "-i", "pipe:0",
                          "-f", "flv", f"/nonexistent-dir/{secret}.flv"], name="test-fail",
                         redact=lambda line: line.replace(secret, "***"))
    proc.start()
    stop = threading.Event()
    proc.pump(lambda: [bytes(4096)], stop)  # until ffmpeg exits (its output cannot be opened)
    code = proc.stop(deadline_s=10, join_s=5)
    assert code not in (0, None)
    reason = proc.exit_reason()
    assert "***" in reason and secret not in reason and "ffmpeg exited with code" not in reason
