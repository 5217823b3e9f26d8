"""Records a station's program into files of ``G4L_RECORDING_SECONDS``, in the packager.

One ffmpeg per recorded station: the program audio (tapped from the stream's encoder,
exactly what listeners hear) on its stdin, AAC in MP4 files cut by the segment muxer at
``recording_seconds`` on AAC frame bounds. ffmpeg names each file on its stdout once it
is closed; the recorder stores it in GridFS (:class:`g4l.services.recordings.RecordingStore`)
and deletes the local copy. The files are written under ``<hls dir>/.recordings/<station>/``,
not in the stream's (public) folder. If ffmpeg dies it is started again (a new file).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

from g4l.context import Context
from g4l.hls.buffer import CHANNELS, RATE
from g4l.hls.encoder import ffmpeg_binary
from g4l.hls.playlist import aac_segment_seconds
from g4l.hls.stream import LiveStream
from g4l.hls.tap import PcmQueue
from g4l.log import get_logger
from g4l.services.recordings import RecordingStore

log = get_logger(__name__)

QUEUE_S = 5.0
EXPIRE_EVERY_S = 30.0


class StationRecorder:
    """Records one station stream until :meth:`close`.

    :param ctx: stores and settings.
    :param station_id: the station.
    :param stream: its running stream (the audio is tapped from its encoder).
    """

    def __init__(self, ctx: Context, station_id: str, stream: LiveStream) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.station_id = station_id
        self.stream = stream
        self.store = RecordingStore(ctx)
        self.directory = self.settings.hls_path / ".recordings" / station_id
        self.log = log.bind(station_id=station_id)
        self._queue = PcmQueue(QUEUE_S)
        self._stop = threading.Event()
        self._last_expire = 0.0
        self._thread = threading.Thread(target=self._run, name=f"rec-{station_id[:8]}", daemon=True)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stream.encoder.taps.append(self._queue.put)
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
        if self._queue.put in self.stream.encoder.taps:
            self.stream.encoder.taps.remove(self._queue.put)
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
                "-segment_format_options", "movflags=+faststart", "-reset_timestamps", "1",
                "-segment_list", "pipe:1", "-segment_list_type", "csv", f"{prefix}_%06d.m4a"]

    def _run(self) -> None:
        while not self._stop.is_set():
            prefix = f"rec_{int(time.time() * 1000)}"
            with open(self.directory / ".ffmpeg.log", "ab") as errors:
                proc = subprocess.Popen(self._command(prefix), cwd=self.directory, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=errors, bufsize=0)
            began = time.time()
            reader = threading.Thread(target=self._store_files, args=(proc, began), daemon=True)
            reader.start()
            stdin = proc.stdin
            assert stdin is not None
            try:
                while not self._stop.is_set() and proc.poll() is None:
                    for block in self._queue.take(0.2):
                        stdin.write(block)
            except (BrokenPipeError, OSError, ValueError):
                pass
            finally:
                try:
                    stdin.close()
                except OSError:
                    pass
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                reader.join(60)
            if not self._stop.is_set():
                self.log.error("recorder exited; restarting it", code=proc.returncode)
                self._stop.wait(2.0)

    def _store_files(self, proc: subprocess.Popen, began: float) -> None:
        """Each line ``name,start,end`` names a finished file: store it, then delete it."""
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                name, start, end = raw.decode().strip().rsplit(",", 2)
                start_s, end_s = float(start), float(end)
            except ValueError:
                continue
            path = self.directory / Path(name).name
            try:
                data = path.read_bytes()
                self.store.add(self.station_id, data, started_at=began + start_s, duration_s=end_s - start_s)
                path.unlink(missing_ok=True)
            except Exception:
                self.log.exception("a recording could not be stored; the file is kept", file=str(path))
