"""Records a station's program into files of ``G4L_RECORDING_SECONDS``, in the packager.

One ffmpeg per recorded station: the program audio (tapped from the stream's encoder,
exactly what listeners hear) on its stdin, AAC in MP4 files cut by the segment muxer at
``recording_seconds`` on AAC frame bounds. ffmpeg names each file on its stdout once it
is closed; the recorder rewrites it as a plain MP4 (index first, stream copied), stores it
in GridFS (:class:`g4l.services.stations.recordings.RecordingStore`) and deletes the local copy. The
files are written under ``<hls dir>/.recordings/<station>/``, not in the stream's (public)
folder. If ffmpeg dies it is started again (a new file).

Crash-safe: ffmpeg writes *fragmented* MP4, a fragment a second, each flushed to the file,
so a file cut short (the packager, or ffmpeg with it, killed mid-file) still holds every
whole second before the cut and plays. A packager stores such leftovers on its next start
and then every ``RECOVER_EVERY_S`` (:func:`recover_leftovers`): each is rewritten as a plain
MP4, listed in the archive like any finished file, and deleted.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

from g4l.context import Context
from g4l.hls.buffer import CHANNELS, RATE
from g4l.hls.playlist import aac_segment_seconds
from g4l.hls.stream import LiveStream
from g4l.hls.tap import PcmQueue, StationTap
from g4l.log import get_logger
from g4l.media import FfmpegProcess, ffmpeg_binary
from g4l.services.stations.recordings import RecordingStore
from g4l.store.stations import StationStore

log = get_logger(__name__)

QUEUE_S = 5.0
EXPIRE_EVERY_S = 30.0
#: How often a packager looks for files a killed recorder left behind.
RECOVER_EVERY_S = 30.0
#: A leftover untouched for this long is nobody's file in progress (a live one grows every second).
LEFTOVER_QUIET_S = 5.0
#: ffmpeg's mp4 muxer writes fragments of 1 s, each flushed: what a kill leaves plays.
FRAGMENTED = "movflags=+empty_moov+default_base_moof:frag_duration=1000000:flush_packets=1"
LEFTOVER_NAME = re.compile(r"rec_(\d+)_(\d+)\.m4a")
#: File name prefixes of this process's running recorders (their files are theirs to store).
_live_prefixes: set[str] = set()
_live_lock = threading.Lock()


def whole_boxes(data: bytes) -> int:
    """How many leading bytes of an MP4 are whole top-level boxes, less a last ``moof``
    whose ``mdat`` was cut off: where a file cut short by a kill ends being playable (its
    last fragment's index would name samples that were never written)."""
    at, end, last_start, last_kind = 0, 0, 0, b""
    while at + 8 <= len(data):
        size, kind = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8]
        if size == 1 and at + 16 <= len(data):
            size = int.from_bytes(data[at + 8:at + 16], "big")  # a 64-bit size
        elif size == 0:
            size = len(data) - at  # "to the end of the file"
        if size < 8 or at + size > len(data):
            break  # cut off here
        last_start, last_kind = at, kind
        at = end = at + size
    return last_start if last_kind == b"moof" else end


def plain_mp4(path: Path) -> tuple[bytes, float]:
    """The (fragmented, maybe cut short) MP4 at ``path`` as a plain MP4 with its index first,
    stream copied, and its duration in seconds; ``(b"", 0.0)`` when it holds no whole frame.
    A file cut short keeps its whole fragments (:func:`whole_boxes`).

    :raises subprocess.CalledProcessError: ffmpeg could not read it at all.
    """
    data = path.read_bytes()
    whole = whole_boxes(data)
    source = path
    if whole < len(data):
        source = path.with_name(path.name + ".whole")
        source.write_bytes(data[:whole])
    del data
    out = path.with_name(path.name + ".plain")
    try:
        subprocess.run([ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(source), "-map", "0:a",
                        "-c", "copy", "-movflags", "+faststart", "-f", "mp4", str(out)],
                       check=True, capture_output=True, timeout=300)
        probed = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                                 str(out)], capture_output=True, timeout=60, text=True)
        try:
            duration = float(probed.stdout.strip() or 0)
        except ValueError:
            duration = 0.0
        return (out.read_bytes(), duration) if duration > 0 else (b"", 0.0)
    finally:
        out.unlink(missing_ok=True)
        if source != path:
            source.unlink(missing_ok=True)


def recover_leftovers(ctx: Context, root: Path) -> int:
    """Store every recording file a killed recorder left under ``root/<station>/``: rewritten
    as a plain MP4 (all it holds up to its last whole fragment), listed in the station's
    archive with the start its name implies, then deleted. Files of this process's running
    recorders, and any touched in the last ``LEFTOVER_QUIET_S``, are left alone. Returns how
    many were stored."""
    store = RecordingStore(ctx)
    seconds = aac_segment_seconds(ctx.settings.recording_seconds)
    with _live_lock:
        live = set(_live_prefixes)
    stored = 0
    for path in sorted(root.glob("*/rec_*.m4a")):
        match = LEFTOVER_NAME.fullmatch(path.name)
        station_id = path.parent.name
        try:
            if not match or f"rec_{match.group(1)}" in live or time.time() - path.stat().st_mtime < LEFTOVER_QUIET_S:
                continue
            data, duration = plain_mp4(path)
        except FileNotFoundError:
            continue  # stored meanwhile by whoever wrote it
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("a recording left by a stopped recorder is unreadable; deleting it", station_id=station_id,
                        file=path.name, error=str(exc)[-200:])
            path.unlink(missing_ok=True)
            continue
        if not data:
            log.warning("a recording left by a stopped recorder holds no audio; deleting it", station_id=station_id,
                        file=path.name)
            path.unlink(missing_ok=True)
            continue
        started_at = int(match.group(1)) / 1000 + int(match.group(2)) * seconds
        try:
            store.add(station_id, data, started_at=started_at, duration_s=duration)
        except Exception:
            log.exception("a recovered recording could not be stored; the file is kept", station_id=station_id,
                          file=path.name)
            continue
        if StationStore(ctx.redis).fields(station_id, "status")["status"] != "running":
            store.keep_for(station_id, ctx.settings.retention_seconds)  # as its recorder would have
        path.unlink(missing_ok=True)
        stored += 1
        log.warning("recording left by a stopped recorder recovered", station_id=station_id, file=path.name,
                    duration_s=round(duration, 3), bytes=len(data))
    return stored


class StationRecorder(StationTap):
    """Records one station stream until :meth:`close` (see :class:`StationTap` for the
    parameters)."""

    def __init__(self, ctx: Context, station_id: str, stream: LiveStream) -> None:
        super().__init__(ctx, station_id, stream)
        self.store = RecordingStore(ctx)
        self.directory = self.settings.hls_path / ".recordings" / station_id
        self.log = log.bind(station_id=station_id)
        self._queue = PcmQueue(QUEUE_S)
        self._stop = threading.Event()
        self._last_expire = 0.0
        self._thread = threading.Thread(target=self._run, name=f"rec-{station_id[:8]}", daemon=True)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.attach(self._queue.put)
        self._thread.start()
        self.log.info("station recording started", file_seconds=self.settings.recording_seconds)

    def tick(self) -> None:
        """Called every packager tick: delete recordings past their retention."""
        if time.monotonic() - self._last_expire >= EXPIRE_EVERY_S:
            self._last_expire = time.monotonic()
            self.store.expire(self.station_id, self.settings.recording_retention_hours * 3600)

    def close(self, *, stopped: bool) -> None:
        """Stop recording; ffmpeg finishes the file in progress, which is stored too (in
        the background). ``stopped``: the station stopped, its records expire with it."""
        self.detach(self._queue.put)
        self._stop.set()
        self._queue.wake()

        def finish() -> None:
            self._thread.join(60)
            if stopped:
                self.store.keep_for(self.station_id, self.settings.retention_seconds)
                shutil.rmtree(self.directory, ignore_errors=True)

        threading.Thread(target=finish, daemon=True).start()

    def _command(self, prefix: str) -> list[str]:
        seconds = aac_segment_seconds(self.settings.recording_seconds)
        return [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-f", "s16le", "-ar", str(RATE),
                "-ac", str(CHANNELS), "-i", "pipe:0", "-c:a", "aac", "-b:a", f"{self.settings.recording_bitrate_kbps}k",
                "-f", "segment", "-segment_time", f"{seconds:.6f}", "-segment_format", "mp4",
                "-segment_format_options", FRAGMENTED, "-reset_timestamps", "1",
                "-segment_list", "pipe:1", "-segment_list_type", "csv", f"{prefix}_%06d.m4a"]

    def _run(self) -> None:
        while not self._stop.is_set():
            prefix = f"rec_{int(time.time() * 1000)}"
            with _live_lock:
                _live_prefixes.add(prefix)
            began = time.time()
            proc = FfmpegProcess(self._command(prefix), name=f"rec-{self.station_id[:8]}", cwd=self.directory,
                                 stderr_log=self.directory / ".ffmpeg.log",
                                 read_stdout=functools.partial(self._store_files, began=began))
            try:
                proc.start()
                proc.pump(lambda: self._queue.take(0.2), self._stop)
            finally:
                proc.stop(deadline_s=30, join_s=60)
                with _live_lock:
                    _live_prefixes.discard(prefix)
            if not self._stop.is_set():
                self.log.error("recorder exited; restarting it", code=proc.returncode)
                self._stop.wait(2.0)

    def _store_files(self, stdout: IO[bytes], began: float) -> None:
        """Each line ``name,start,end`` names a finished file: store it, then delete it."""
        for raw in stdout:
            try:
                name, start, end = raw.decode().strip().rsplit(",", 2)
                start_s, end_s = float(start), float(end)
            except ValueError:
                continue
            path = self.directory / Path(name).name
            try:
                data = plain_mp4(path)[0] or path.read_bytes()
                self.store.add(self.station_id, data, started_at=began + start_s, duration_s=end_s - start_s)
                path.unlink(missing_ok=True)
            except Exception:
                self.log.exception("a recording could not be stored; the file is kept", file=str(path))
