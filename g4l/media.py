"""Encoding finished audio into other containers with ffmpeg (a separate process, so a
web greenlet waits on a pipe, never on the CPU work)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: AAC at this rate is transparent for generated music and a sixth of the WAV's size.
MP4_BITRATE_KBPS = 192
ENCODE_TIMEOUT_S = 300
PROBE_TIMEOUT_S = 30
#: Container/codec names ffprobe gives still images (everything else with a video stream
#: and a duration is a video).
_IMAGE_CODECS = {"png", "mjpeg", "jpegls", "webp", "bmp", "tiff", "gif"}


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


@dataclass(frozen=True)
class Visual:
    """What ffprobe found in an uploaded picture or clip."""

    kind: str  # "image" | "video"
    width: int
    height: int
    duration_s: float  # 0 for an image


def probe_visual(data: bytes) -> Visual:
    """Look at an uploaded image or short video with ffprobe (a temporary file: an MP4
    with its index at the end cannot be probed from a pipe).

    :raises MediaError: not a picture or video ffmpeg can read.
    """
    with tempfile.TemporaryDirectory(prefix="g4l-visual-") as tmp:
        path = Path(tmp) / "visual"
        path.write_bytes(data)
        try:
            proc = subprocess.run(
                ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                 "stream=codec_name,width,height,nb_frames:format=duration,format_name", "-of", "json", str(path)],
                capture_output=True, timeout=PROBE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MediaError(f"ffprobe did not run: {exc}") from None
    if proc.returncode != 0:
        raise MediaError("not an image or video ffmpeg can read")
    doc = json.loads(proc.stdout or b"{}")
    streams = doc.get("streams") or []
    if not streams or not streams[0].get("width"):
        raise MediaError("no picture in it")
    stream, fmt = streams[0], doc.get("format") or {}
    still = stream.get("codec_name") in _IMAGE_CODECS and str(stream.get("nb_frames") or "1") in ("1", "N/A")
    still = still or "image2" in str(fmt.get("format_name") or "") or fmt.get("format_name", "").endswith("_pipe")
    try:
        duration = float(fmt.get("duration") or 0.0)
    except ValueError:
        duration = 0.0
    if not still and duration <= 0:
        raise MediaError("a video without a duration")
    return Visual("image" if still else "video", int(stream["width"]), int(stream["height"]),
                  0.0 if still else duration)
