"""ffmpeg, the one tool every audio and video conversion goes through (a separate process,
so a web greenlet or a packager thread waits on a pipe, never on the CPU work).

- :func:`wav_to_mp4` and :func:`probe_visual`: one-shot runs over finished files;
- :class:`FfmpegProcess`: the life cycle of a long-lived ffmpeg fed on its stdin (the HLS
  encoder, a station's recorder, its RTMP outputs): start it with its arguments, feed it,
  read its stdout and keep its last words, stop it gracefully within a deadline (then kill
  it), and say why it exited.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

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


def ffmpeg_binary() -> str:
    """The ffmpeg executable (Debian's package; see scripts/install.sh).

    :raises RuntimeError: no ffmpeg on the PATH.
    """
    found = shutil.which("ffmpeg")
    if not found:
        raise RuntimeError("ffmpeg not found: run scripts/install.sh (apt-get install ffmpeg)")
    return found


class FfmpegProcess:
    """One run of a long-lived ffmpeg that reads raw audio on its stdin.

    ffmpeg's stderr goes either to ``stderr_log`` (appended; a file, because an unread
    pipe could fill up and stall ffmpeg) or, without one, to a thread that keeps its last
    ``stderr_lines`` lines (each passed through ``redact`` first, so a secret on ffmpeg's
    lips is never kept). Its stdout, when ``read_stdout`` is given, is handed to that
    function in a thread of its own (it reads until the end of the stream).

    :param args: the command line, ffmpeg's path first.
    :param name: names the reader threads (for thread dumps).
    :param cwd: the working directory (relative file names in ``args``).
    :param stderr_log: where stderr is appended; None: kept in memory.
    :param read_stdout: reads ffmpeg's stdout; None: stdout is not captured.
    :param pass_fds: descriptors ffmpeg inherits (a pipe carrying a secret option file).
    :param stderr_lines: how many lines of stderr are kept in memory.
    :param redact: applied to each stderr line before it is kept.
    """

    def __init__(self, args: Sequence[str], *, name: str, cwd: Path | None = None, stderr_log: Path | None = None,
                 read_stdout: Callable[[IO[bytes]], None] | None = None, pass_fds: Sequence[int] = (),
                 stderr_lines: int = 20, redact: Callable[[str], str] | None = None) -> None:
        self.args = list(args)
        self.name = name
        self.cwd = cwd
        self.stderr_log = stderr_log
        self.read_stdout = read_stdout
        self.pass_fds = tuple(pass_fds)
        self.redact = redact or (lambda line: line)
        self.stderr_tail: deque[str] = deque(maxlen=stderr_lines)
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed = False
        self._readers: list[threading.Thread] = []

    # ------------------------------------------------------------ start
    def start(self) -> None:
        """Start ffmpeg and its reader threads. :raises OSError: it could not be started."""
        stdout = subprocess.PIPE if self.read_stdout is not None else subprocess.DEVNULL
        if self.stderr_log is not None:
            with open(self.stderr_log, "ab") as errors:  # ffmpeg keeps its own copy
                self.proc = subprocess.Popen(self.args, cwd=self.cwd, stdin=subprocess.PIPE, stdout=stdout,
                                             stderr=errors, bufsize=0, pass_fds=self.pass_fds)
        else:
            self.proc = subprocess.Popen(self.args, cwd=self.cwd, stdin=subprocess.PIPE, stdout=stdout,
                                         stderr=subprocess.PIPE, bufsize=0, pass_fds=self.pass_fds)
            self._readers.append(threading.Thread(target=self._keep_stderr, name=f"{self.name}-err", daemon=True))
        if self.read_stdout is not None:
            self._readers.append(threading.Thread(target=self.read_stdout, args=(self.proc.stdout,),
                                                  name=f"{self.name}-out", daemon=True))
        for reader in self._readers:
            reader.start()

    def _keep_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = self.redact(raw.decode(errors="replace").rstrip())
            if line:
                self.stderr_tail.append(line[:300])

    # ------------------------------------------------------------ feed
    @property
    def running(self) -> bool:
        """Whether ffmpeg was started and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def write(self, data: bytes) -> None:
        """Hand ``data`` to ffmpeg's stdin (blocks while its pipe is full).

        :raises BrokenPipeError, OSError, ValueError: ffmpeg exited or its stdin is closed.
        """
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(data)

    def pump(self, take: Callable[[], Iterable[bytes]], stop: threading.Event) -> None:
        """Write every block ``take`` returns (it waits a little for them) until ``stop`` is
        set or ffmpeg exits; a closed pipe ends it quietly (:meth:`exit_reason` says why)."""
        try:
            while not stop.is_set() and self.running:
                for block in take():
                    self.write(block)
        except (BrokenPipeError, OSError, ValueError):
            pass

    # ------------------------------------------------------------ stop
    def stop(self, deadline_s: float, join_s: float) -> int | None:
        """End ffmpeg's input so that it finishes what it holds and exits; killed if it is
        still running after ``deadline_s``. Its readers get ``join_s`` each to finish.
        Returns its exit code."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(deadline_s)
        except subprocess.TimeoutExpired:
            self.kill()
            proc.wait()
        for reader in self._readers:
            reader.join(join_s)
        return proc.returncode

    def kill(self) -> None:
        """Kill ffmpeg now if it runs (a stalled connection, a stop past its grace)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            self.killed = True
            proc.kill()

    # ------------------------------------------------------------ why it ended
    def last_words(self, max_bytes: int = 500) -> str:
        """The end of what ffmpeg said: the last non-blank line kept in memory, or the last
        ``max_bytes`` of its log file."""
        if self.stderr_log is None:
            return next((line for line in reversed(self.stderr_tail) if line.strip()), "")
        try:
            with open(self.stderr_log, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - max_bytes))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def exit_reason(self) -> str:
        """Why it ended, for a status or a log line: its last words, else its exit code."""
        said = self.last_words()
        if said:
            return said
        return f"ffmpeg exited with code {self.returncode}"
