"""Encoding finished audio into other containers with ffmpeg (a separate process, so a
web greenlet waits on a pipe, never on the CPU work)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

#: AAC at this rate is transparent for generated music and a sixth of the WAV's size.
MP4_BITRATE_KBPS = 192
ENCODE_TIMEOUT_S = 300


class MediaError(RuntimeError):
    """ffmpeg could not encode the audio (its last words are in the message)."""


def wav_to_mp4(wav: bytes, bitrate_kbps: int = MP4_BITRATE_KBPS) -> bytes:
    """An MP4 (AAC-LC) file of a WAV, with its index at the front (``+faststart``) so a
    player starts before the download ends. ``faststart`` rewrites the file, which needs a
    seekable output: ffmpeg writes to a temporary file, not a pipe.

    :raises MediaError: not decodable, or ffmpeg failed or took over ``ENCODE_TIMEOUT_S``.
    """
    with tempfile.TemporaryDirectory(prefix="g4l-mp4-") as tmp:
        out = Path(tmp) / "out.mp4"
        try:
            proc = subprocess.run(
                ["ffmpeg", "-v", "error", "-nostdin", "-f", "wav", "-i", "pipe:0", "-vn", "-c:a", "aac",
                 "-b:a", f"{bitrate_kbps}k", "-movflags", "+faststart", "-f", "mp4", str(out)],
                input=wav, capture_output=True, timeout=ENCODE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MediaError(f"ffmpeg did not run: {exc}") from None
        if proc.returncode != 0 or not out.exists():
            raise MediaError(f"ffmpeg failed: {proc.stderr.decode(errors='replace')[-300:]}")
        return out.read_bytes()
