"""What a station's RTMP(S) output's ffmpeg is told: its command line (the program audio
on stdin, a video from a card, an image or a looped clip, H.264 + AAC in FLV), the option
file that carries the stream key (never in the command line: see :mod:`g4l.hls.outputs`)
and the card's texts. Pure functions: the process itself is run by
:class:`g4l.hls.outputs.RtmpOutput` through :class:`g4l.media.FfmpegProcess`."""

from __future__ import annotations

import textwrap
import urllib.parse
from pathlib import Path

from g4l.hls.buffer import CHANNELS, RATE
from g4l.media import ffmpeg_binary
from g4l.settings import Settings

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
FONT_BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
CARD_COLOR = "0x15151d"
TITLE_FILE = "card-title.txt"
PROMPT_FILE = "card-prompt.txt"


def _font(path: str) -> str:
    # Debian's fonts-dejavu-core (scripts/install.sh); else whatever fontconfig calls Sans.
    return f"fontfile={path}" if Path(path).exists() else "font=Sans"


def video_filter(kind: str, width: int, height: int, fps: int) -> str:
    """The filter graph from input 0 to ``[v]``: the card's two texts, or the visual fitted
    (letterboxed) into the frame."""
    if kind == "card":
        title, prompt = height // 12, height // 26
        return (f"[0:v]drawtext={_font(FONT_BOLD)}:textfile={TITLE_FILE}:reload=1:expansion=none:fontcolor=white:"
                f"fontsize={title}:x=(w-text_w)/2:y=h*0.30,"
                f"drawtext={_font(FONT)}:textfile={PROMPT_FILE}:reload=1:expansion=none:fontcolor=0xc8c8d0:fontsize={prompt}:"
                f"line_spacing={prompt // 3}:x=(w-text_w)/2:y=h*0.50,format=yuv420p[v]")
    return (f"[0:v]scale={width}:{height}:force_original_aspect_ratio=decrease,"
            f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,fps={fps},format=yuv420p[v]")


def key_options(url: str, stream_key: str) -> bytes:
    """The option file ffmpeg reads the key from (``-fpre``: one ``option=value`` a line):
    the RTMP application (``url``'s path, as ffmpeg would take it from ``url/key``) and the
    key as the stream to publish. Keys never hold whitespace (``check_stream_key``)."""
    app = urllib.parse.urlsplit(url).path.strip("/")
    return f"rtmp_app={app}\nrtmp_playpath={stream_key}\n".encode()


def ffmpeg_command(url: str, kind: str, visual_file: str, settings: Settings, key_file: str) -> list[str]:
    """ffmpeg's arguments for one output (run in the stream's folder: the card's text files
    and the visual are named relative to it). ``url`` is the server's, without the key;
    ``key_file`` is where ffmpeg reads :func:`key_options` (a ``/dev/fd/N`` pipe)."""
    width, height = (int(v) for v in settings.rtmp_video_size.split("x"))
    fps, kbps = settings.rtmp_fps, settings.rtmp_video_kbps
    if kind == "card":
        video_in = ["-re", "-f", "lavfi", "-i", f"color=c={CARD_COLOR}:s={width}x{height}:r={fps}"]
    elif kind == "image":
        video_in = ["-re", "-loop", "1", "-framerate", str(fps), "-i", visual_file]
    else:
        video_in = ["-re", "-stream_loop", "-1", "-i", visual_file]
    return [
        ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-nostats", "-progress", "pipe:1",
        "-stats_period", "1", *video_in,
        "-thread_queue_size", "512", "-f", "s16le", "-ar", str(RATE), "-ac", str(CHANNELS), "-i", "pipe:0",
        "-filter_complex", video_filter(kind, width, height, fps), "-map", "[v]", "-map", "1:a",
        "-c:v", "libx264", "-preset", settings.rtmp_x264_preset,
        *(["-tune", "stillimage"] if kind in ("card", "image") else []),
        "-pix_fmt", "yuv420p", "-r", str(fps), "-g", str(2 * fps), "-keyint_min", str(2 * fps),
        "-sc_threshold", "0", "-b:v", f"{kbps}k", "-maxrate", f"{kbps}k", "-bufsize", f"{2 * kbps}k",
        "-x264-params", "nal-hrd=cbr",
        "-c:a", "aac", "-b:a", f"{settings.rtmp_audio_kbps}k", "-ar", str(RATE), "-ac", str(CHANNELS),
        # -shortest: when the packager dies, ffmpeg's audio input ends and so does the
        # stream (the looped picture alone would keep it publishing, orphaned, forever).
        "-shortest", "-f", "flv", "-flvflags", "no_duration_filesize",
        "-rw_timeout", str(int(settings.rtmp_stall_s * 1e6)), "-fpre", key_file, url,
    ]


def card_text(text: str, width_px: int, font_px: int, max_lines: int = 4) -> str:
    """``text`` wrapped to the card's width (drawtext does not wrap), at most ``max_lines``."""
    per_line = max(10, int(width_px * 0.85 / (font_px * 0.55)))
    lines = textwrap.wrap(" ".join(text.split()), per_line) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: per_line - 1].rstrip() + "\u2026"
    return "\n".join(lines)
