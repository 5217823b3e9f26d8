"""A station's RTMP(S) outputs, run by the packager that runs the station's stream.

Each live output is one long-lived ffmpeg: the station's program audio (the very PCM its
HLS encoder gets, tapped from :class:`g4l.hls.encoder.SegmentEncoder`) on its stdin, a
video made from a card, an image or a looped clip, encoded to H.264 + AAC and sent as FLV
to ``<url>/<stream key>``. When the server drops the connection (or refuses it) ffmpeg
exits; the output starts it again after a backoff (0.5 s doubling up to
``G4L_RTMP_RECONNECT_MAX_S``), and one that sends nothing for ``G4L_RTMP_STALL_S`` is
killed and restarted. Its state (connecting, connected, reconnecting), uptime, bitrate,
reconnects and last error go to Redis every tick (:class:`g4l.services.stations.outputs.OutputStore`).

The stream key never appears in ffmpeg's command line (which every local user can read in
``ps`` or ``/proc/<pid>/cmdline``): ffmpeg gets the server URL without it, plus
``-fpre /dev/fd/N``, an option file it reads from a pipe this process writes and closes
(:func:`g4l.hls.rtmp.key_options`: the RTMP application and the key as ``rtmp_playpath``). Nothing is
written to disk. What ffmpeg prints is still redacted before it is kept or logged, and log
lines name the output by id and its URL without the key. Residual exposure: docs/hls.md.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import IO, Any

from g4l.context import Context
from g4l.hls.playlist import write_atomic
from g4l.hls.rtmp import PROMPT_FILE, TITLE_FILE, card_text, ffmpeg_command, key_options
from g4l.hls.stream import LiveStream
from g4l.hls.tap import PcmQueue, StationTap
from g4l.log import get_logger
from g4l.media import FfmpegProcess
from g4l.services.stations.outputs import CONNECTED, CONNECTING, RECONNECTING, OutputStore, publish_url, redact
from g4l.store.stations import StationStore

log = get_logger(__name__)

#: Audio queued for an output while its ffmpeg is (re)connecting; older audio is dropped.
QUEUE_S = 1.0
#: A connection that lasted this long resets the backoff.
STABLE_S = 10.0
FIRST_BACKOFF_S = 0.5
STOP_GRACE_S = 5.0


class RtmpOutput:
    """One output's ffmpeg, kept connected until :meth:`stop`.

    :param store: where its configuration, key and status live.
    :param station_id: the station.
    :param output_id: the output.
    :param directory: the station stream's folder (card texts, the visual's local copy).
    :param ctx: stores (GridFS for an uploaded visual) and settings.
    """

    def __init__(self, store: OutputStore, station_id: str, output_id: str, directory: Path, ctx: Context) -> None:
        self.store = store
        self.ctx = ctx
        self.settings = ctx.settings
        self.station_id, self.output_id = station_id, output_id
        self.directory = directory
        config, _key = store.config(station_id, output_id)
        self.url = config.get("url") or ""
        self.kind = config.get("visual") or "card"
        self.visual_blob = config.get("visual_blob") or ""
        self.log = log.bind(station_id=station_id, output_id=output_id, url=self.url)
        # Counters carry on across packager restarts (they are in Redis).
        self.connections = int(config.get("connections") or 0)
        self.reconnects = int(config.get("reconnects") or 0)
        self.failed_attempts = int(config.get("failed_attempts") or 0)
        self.state = RECONNECTING if self.connections else CONNECTING
        self.connected_since = 0.0
        self.bitrate_kbps = 0.0
        self.sent_bytes = 0
        self.last_error = config.get("last_error") or ""
        self.last_error_at = float(config.get("last_error_at") or 0)
        self._secrets: list[str] = []
        self._queue = PcmQueue(QUEUE_S)
        self._stop = threading.Event()
        self._proc: FfmpegProcess | None = None
        self._last_progress = time.monotonic()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ life cycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"rtmp-{self.output_id[:8]}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop pushing: ffmpeg gets the end of its input and closes the connection (killed
        after a grace period)."""
        self._stop.set()
        self._queue.wake()
        threading.Timer(STOP_GRACE_S, self._kill).start()

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None:
            proc.kill()

    def feed(self, pcm: bytes) -> None:
        """Program audio (s16le, 48 kHz stereo) as the HLS encoder gets it; never blocks."""
        if not self._stop.is_set():
            self._queue.put(pcm)

    def check(self) -> None:
        """Called every packager tick: an ffmpeg that sent nothing for ``rtmp_stall_s``
        (a connection that hangs, not one that fails) is killed and started again."""
        proc = self._proc
        if proc is None or not proc.running or self._stop.is_set():
            return
        silent = time.monotonic() - self._last_progress
        if silent > self.settings.rtmp_stall_s:
            self._error(f"nothing sent for {silent:.0f} s; reconnecting")
            proc.kill()

    def status(self) -> dict[str, Any]:
        """The fields the packager publishes into the output's Redis hash."""
        connected = self.state == CONNECTED
        return {"state": self.state, "connected_since": self.connected_since if connected else 0,
                "bitrate_kbps": round(self.bitrate_kbps, 1) if connected else 0, "sent_bytes": self.sent_bytes,
                "connections": self.connections, "reconnects": self.reconnects,
                "failed_attempts": self.failed_attempts, "last_error": self.last_error,
                "last_error_at": self.last_error_at, "updated": time.time()}

    # ------------------------------------------------------------ the supervisor
    def _await_config(self) -> bool:
        """Wait for the output's configuration: the web lists a new output before it has
        stored its visual and written the rest (a packager tick in between saw no URL and
        would push to nowhere for ever). False: stopped meanwhile."""
        while not self._stop.is_set():
            config, key = self.store.config(self.station_id, self.output_id)
            if config.get("url") and key:
                self.url = config["url"]
                self.kind = config.get("visual") or "card"
                self.visual_blob = config.get("visual_blob") or ""
                self.log = log.bind(station_id=self.station_id, output_id=self.output_id, url=self.url)
                return True
            self._stop.wait(0.2)  # a removed output is stopped by StationOutputs.sync
        return False

    def _run(self) -> None:
        failures = 0
        if not self._await_config():
            return
        try:
            visual = self._visual_file()
        except Exception as exc:
            self._error(f"the visual could not be read: {type(exc).__name__}")
            self.log.exception("output visual unavailable")
            return
        while not self._stop.is_set():
            _config, key = self.store.config(self.station_id, self.output_id)
            if not key:  # stopped (the key is deleted with it)
                return
            self._secrets = [key, publish_url(self.url, key)]
            started = time.monotonic()
            was_connected = self._attempt(key, visual)
            if self._stop.is_set():
                return
            lasted = time.monotonic() - started
            if was_connected:
                self.state = RECONNECTING
                failures = 0 if lasted >= STABLE_S else failures + 1
            else:
                self.failed_attempts += 1
                failures += 1
            delay = min(self.settings.rtmp_reconnect_max_s, FIRST_BACKOFF_S * 2 ** max(0, failures - 1))
            self.log.warning("output disconnected; reconnecting" if was_connected else "output could not connect",
                             error=self.last_error, retry_in_s=delay, failed_attempts=self.failed_attempts,
                             reconnects=self.reconnects)
            self._stop.wait(delay)

    def _visual_file(self) -> str:
        """The uploaded visual, copied from GridFS into the stream's folder once."""
        if self.kind == "card" or not self.visual_blob:
            return ""
        name = f"visual-{self.output_id}"
        path = self.directory / name
        if not path.exists():
            write_atomic(path, self.ctx.blobs.get(self.visual_blob))
        return name

    def _attempt(self, key: str, visual: str) -> bool:
        """Run ffmpeg until it exits; whether it got connected."""
        self.bitrate_kbps, self.sent_bytes = 0.0, 0
        self._last_progress = time.monotonic()
        connected = threading.Event()
        # The key goes through a pipe ffmpeg inherits (never argv, never a file): written
        # whole and closed before ffmpeg starts (it is far under the pipe's buffer).
        read_end, write_end = os.pipe()
        proc = FfmpegProcess(ffmpeg_command(self.url, self.kind, visual, self.settings, f"/dev/fd/{read_end}"),
                             name=f"rtmp-{self.output_id[:8]}", cwd=self.directory, pass_fds=(read_end,),
                             read_stdout=lambda stdout: self._read_progress(stdout, connected),
                             redact=lambda line: redact(line, self._secrets))
        try:
            try:
                os.write(write_end, key_options(self.url, key))
            finally:
                os.close(write_end)
            proc.start()
        except OSError as exc:
            self._error(f"ffmpeg did not start: {exc}")
            return False
        finally:
            os.close(read_end)  # ffmpeg has its own copy
        self._proc = proc
        try:
            proc.pump(lambda: self._queue.take(0.1), self._stop)  # a closed pipe: ffmpeg exited, its stderr says why
        finally:
            proc.stop(deadline_s=STOP_GRACE_S, join_s=2)
        if not self._stop.is_set():
            self._error(proc.exit_reason())
        return connected.is_set()

    def _read_progress(self, stdout: IO[bytes], connected: threading.Event) -> None:
        """ffmpeg's ``-progress`` blocks (one a second) arrive only once the server took the
        stream: the first one means connected; ``total_size`` gives the bitrate."""
        block: dict[str, str] = {}
        last_size, last_at = 0, time.monotonic()
        for raw in stdout:
            name, _, value = raw.decode(errors="replace").strip().partition("=")
            if name != "progress":
                block[name] = value
                continue
            now = time.monotonic()
            self._last_progress = now
            try:
                size = int(block.get("total_size") or 0)
            except ValueError:
                size = last_size
            if not connected.is_set():
                connected.set()
                self.connections += 1
                if self.connections > 1:
                    self.reconnects += 1
                self.connected_since = time.time()
                self.state = CONNECTED
                self.log.info("output connected", reconnects=self.reconnects)
            elif now > last_at:
                self.bitrate_kbps = max(0, size - last_size) * 8 / 1000 / (now - last_at)
            last_size, last_at = size, now
            self.sent_bytes = size
            block = {}

    def _error(self, message: str) -> None:
        self.last_error = redact(message, self._secrets)[:300]
        self.last_error_at = time.time()


class StationOutputs(StationTap):
    """Every output of one station stream: started, stopped and reported each tick (see
    :class:`StationTap` for the parameters)."""

    def __init__(self, ctx: Context, station_id: str, stream: LiveStream) -> None:
        super().__init__(ctx, station_id, stream)
        self.store = OutputStore(ctx)
        self.stations = StationStore(ctx.redis)
        self.running: dict[str, RtmpOutput] = {}
        self._card: tuple[str, str] | None = None
        self._lock = threading.Lock()
        self.attach(self._feed)

    def _feed(self, pcm: bytes) -> None:
        for output in list(self.running.values()):
            output.feed(pcm)

    def sync(self) -> None:
        """Start outputs that were added, stop those that were stopped, restart stalled
        ones, refresh the card and publish every output's status."""
        live = self.store.live(self.station_id)
        with self._lock:
            for output_id in sorted(live - set(self.running)):
                self._refresh_card()
                output = RtmpOutput(self.store, self.station_id, output_id, self.stream.directory, self.ctx)
                output.start()
                self.running[output_id] = output
                output.log.info("output started", visual=output.kind)
            for output_id in list(self.running):
                if output_id not in live:
                    self.running.pop(output_id).stop()
        if self.running:
            self._refresh_card()
        for output_id, output in list(self.running.items()):
            output.check()
            self.store.publish(self.station_id, output_id, output.status())

    def _refresh_card(self) -> None:
        """The card's texts: the station's name and the prompt now playing."""
        st = self.stations.fields(self.station_id, "name", "generating_prompt", "on_air", "ever_on_air")
        playing = self.stream.buffer.playing_meta() or {}
        title = st["name"] or "g4l station"
        prompt = playing.get("prompt") or st["generating_prompt"] or ""
        if st["ever_on_air"] and not st["on_air"]:  # off the air (buffer depleted): the slate plays
            prompt = "Be right back"
        if self._card == (title, prompt):
            return
        width, height = (int(v) for v in self.ctx.settings.rtmp_video_size.split("x"))
        write_atomic(self.stream.directory / TITLE_FILE, card_text(title, width, height // 12, 1).encode())
        write_atomic(self.stream.directory / PROMPT_FILE, card_text(prompt, width, height // 26).encode())
        self._card = (title, prompt)

    def close(self) -> None:
        """Stop every ffmpeg (this packager stops or lost the stream); the outputs stay live
        in Redis, so the packager that takes the stream over starts them again."""
        self.detach(self._feed)
        with self._lock:
            for output_id, output in list(self.running.items()):
                output.stop()
                self.store.publish(self.station_id, output_id, {**output.status(), "state": RECONNECTING,
                                                                 "connected_since": 0, "bitrate_kbps": 0})
            self.running.clear()
