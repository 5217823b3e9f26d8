"""A station's RTMP(S) outputs: its program pushed to YouTube Live, Twitch or any RTMP server.

The web process records what an operator asked for (:class:`OutputStore`, called through
:class:`g4l.services.stations.StationService`); the packager process that runs the
station's stream runs one long-lived ffmpeg per live output (:mod:`g4l.hls.outputs`) and
writes each output's state back into the same Redis hash, so any web process can report
it. Everything survives a packager restart: the outputs, their counters and their keys
are in Redis, an uploaded visual in GridFS.

Stream keys are secrets: kept in a key of their own (:func:`g4l.keys.station_output_secret`)
that only the packager reads, deleted when the output stops, never returned after the
create call and never logged. :func:`redact` scrubs them from anything ffmpeg says.
"""

from __future__ import annotations

import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from g4l import keys
from g4l.context import Context
from g4l.errors import InvalidRequest, OutputNotFound, OutputsFull
from g4l.log import get_logger
from g4l.media import MediaError, Visual, probe_visual
from g4l.store.retention import expire_indexed

log = get_logger(__name__)

SCHEMES = ("rtmp", "rtmps")
#: Output states (the packager moves an output between the first three).
CONNECTING, CONNECTED, RECONNECTING, STOPPED = "connecting", "connected", "reconnecting", "stopped"
#: Stopped outputs still listed in a station's status.
KEEP_STOPPED = 10
MAX_KEY_CHARS = 512

# KEYS[1]=live outputs, KEYS[2]=all outputs; ARGV: output id, max live, created -> OK | FULL.
# Counted and taken in one step, so racing creates cannot overshoot the limit.
_TAKE_OUTPUT = """
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 'FULL' end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 'OK'
"""

# KEYS[1]=live outputs, KEYS[2]=the output's hash; ARGV: output id, then field/value pairs.
# The packager's status only lands while the output is live: a DELETE's "stopped" stays.
_PUBLISH = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
return 1
"""


def display_url(url: str) -> str:
    """``url`` checked and normalised for display and storage: ``rtmp(s)://host[:port]/path``,
    without user info, query or fragment (those could carry secrets too).

    :raises InvalidRequest: not an ``rtmp://`` or ``rtmps://`` URL with a host and an
        application path.
    """
    raw = (url or "").strip()
    try:
        parts = urllib.parse.urlsplit(raw)
        port = parts.port
    except ValueError:
        raise InvalidRequest("url is not a valid URL") from None
    if parts.scheme.lower() not in SCHEMES:
        raise InvalidRequest("url must start with rtmp:// or rtmps:// (e.g. rtmp://a.rtmp.youtube.com/live2)")
    if not parts.hostname:
        raise InvalidRequest("url has no host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidRequest("url must not carry credentials, a query or a fragment: send the key as stream_key")
    path = parts.path.rstrip("/")
    if not path.strip("/"):
        raise InvalidRequest("url needs the server's application path (e.g. /live2 or /app)")
    if any(ch.isspace() or ord(ch) < 32 for ch in raw):
        raise InvalidRequest("url must not contain spaces or control characters")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{parts.scheme.lower()}://{host}{f':{port}' if port else ''}{path}"


def check_stream_key(stream_key: str) -> str:
    """The stream key, trimmed. :raises InvalidRequest: empty, too long or with spaces."""
    key = (stream_key or "").strip()
    if not key:
        raise InvalidRequest("stream_key is empty: send the key the platform gave you")
    if len(key) > MAX_KEY_CHARS or any(ch.isspace() or ord(ch) < 32 for ch in key):
        raise InvalidRequest(f"stream_key must be at most {MAX_KEY_CHARS} characters without spaces")
    return key


def publish_url(url: str, stream_key: str) -> str:
    """The URL ffmpeg publishes to: the server URL and the key as its last path element."""
    return f"{url.rstrip('/')}/{stream_key}"


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (and its URL-quoted form) replaced by ``***``."""
    for secret in secrets:
        if secret:
            for form in {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote(secret)}:
                text = text.replace(form, "***")
    return text


def describe(r: Any, station_id: str) -> list[dict[str, Any]]:
    """What a station's status says about its outputs, oldest first (no stream key, ever)."""
    now = time.time()
    found = []
    live = r.smembers(keys.station_outputs_live(station_id))
    for output_id in r.zrange(keys.station_outputs(station_id), 0, -1):
        h = r.hgetall(keys.station_output(station_id, output_id))
        if not h:
            continue
        state = h.get("state") or CONNECTING
        if output_id not in live:
            state = STOPPED
        since = float(h.get("connected_since") or 0)
        connected = state == CONNECTED and since > 0
        found.append({
            "output_id": output_id, "url": h.get("url") or "", "visual": h.get("visual") or "card",
            "state": state, "created": float(h.get("created") or 0),
            "connected_since": since if connected else None,
            "uptime_s": round(now - since, 1) if connected else 0.0,
            "bitrate_kbps": round(float(h.get("bitrate_kbps") or 0), 1) if connected else 0.0,
            "sent_bytes": int(h.get("sent_bytes") or 0),
            "reconnects": int(h.get("reconnects") or 0),
            "failed_attempts": int(h.get("failed_attempts") or 0),
            "last_error": h.get("last_error") or None,
            "last_error_at": float(h.get("last_error_at") or 0) or None,
            "stopped_at": float(h.get("stopped_at") or 0) or None,
        })
    return found


class OutputStore:
    """Adds, stops and describes a station's outputs in Redis (the visual in GridFS).

    :param ctx: stores and settings.
    :param probe: looks at an uploaded visual (ffmpeg's ffprobe, a separate process);
        :raises MediaError: when it is no picture or video.
    """

    def __init__(self, ctx: Context, probe: Callable[[bytes], Visual] = probe_visual) -> None:
        self.ctx = ctx
        self.r = ctx.redis
        self.settings = ctx.settings
        self.probe = probe
        self._take = ctx.redis.register_script(_TAKE_OUTPUT)
        self._publish = ctx.redis.register_script(_PUBLISH)

    def add(self, station_id: str, *, url: str, stream_key: str, visual: bytes | None = None) -> dict[str, Any]:
        """Start pushing the station to ``url`` with ``stream_key`` (the packager connects
        within a tick). ``visual``: an image or short video looped under the audio; none:
        a card with the station's name and the prompt playing.

        :raises InvalidRequest: a bad URL, key or visual.
        :raises OutputsFull: the station already has ``station_max_outputs`` live outputs.
        """
        shown = display_url(url)
        key = check_stream_key(stream_key)
        visual_kind, blob = "card", ""
        if visual is not None:
            visual_kind = self._check_visual(visual)
        output_id = uuid.uuid4().hex
        created = time.time()
        taken = self._take(keys=[keys.station_outputs_live(station_id), keys.station_outputs(station_id)],
                           args=[output_id, self.settings.station_max_outputs, created])
        if taken == "FULL":
            raise OutputsFull(f"this station already pushes to {self.settings.station_max_outputs} output(s), "
                              "its most; stop one first")
        try:
            if visual is not None:
                blob = self.ctx.blobs.put(visual, session_id=station_id, kind="visual", output_id=output_id)
            with self.r.pipeline() as p:
                p.set(keys.station_output_secret(station_id, output_id), key)
                p.hset(keys.station_output(station_id, output_id), mapping={
                    "id": output_id, "station_id": station_id, "url": shown, "visual": visual_kind,
                    "visual_blob": blob, "created": created, "state": CONNECTING, "reconnects": 0,
                    "failed_attempts": 0, "connections": 0})
                p.execute()
        except Exception:
            self.r.srem(keys.station_outputs_live(station_id), output_id)
            self.r.zrem(keys.station_outputs(station_id), output_id)
            raise
        self._trim(station_id)
        log.info("station output added", station_id=station_id, output_id=output_id, url=shown, visual=visual_kind)
        return {"output_id": output_id, "station_id": station_id, "url": shown, "visual": visual_kind,
                "state": CONNECTING}

    def _check_visual(self, data: bytes) -> str:
        limit = self.settings.rtmp_visual_mb * 1024 * 1024
        if not data:
            raise InvalidRequest("visual is empty")
        if len(data) > limit:
            raise InvalidRequest(f"visual is {len(data)} bytes; the limit is {self.settings.rtmp_visual_mb} MB")
        try:
            found = self.probe(data)
        except MediaError as exc:
            raise InvalidRequest(f"visual must be an image (PNG, JPEG, WebP) or a short video: {exc}") from None
        if found.kind == "video" and found.duration_s > self.settings.rtmp_visual_max_s:
            raise InvalidRequest(f"visual is a {found.duration_s:.0f} s video; at most "
                                 f"{self.settings.rtmp_visual_max_s:g} s (it loops)")
        return found.kind

    def stop(self, station_id: str, output_id: str, reason: str = "stopped") -> dict[str, Any]:
        """Stop one output (the packager ends its ffmpeg within a tick); its key is forgotten.

        :raises OutputNotFound: no such output on this station.
        """
        if not keys.valid_id(output_id) or self.r.zscore(keys.station_outputs(station_id), output_id) is None:
            raise OutputNotFound(f"no output {output_id} on this station" if keys.valid_id(output_id)
                                 else "no such output")
        with self.r.pipeline() as p:
            p.srem(keys.station_outputs_live(station_id), output_id)
            p.hset(keys.station_output(station_id, output_id), mapping={
                "state": STOPPED, "stopped_at": time.time(), "stopped_reason": reason, "bitrate_kbps": 0})
            p.delete(keys.station_output_secret(station_id, output_id))
            p.execute()
        log.info("station output stopped", station_id=station_id, output_id=output_id, reason=reason)
        return {"output_id": output_id, "station_id": station_id, "state": STOPPED}

    def stop_all(self, station_id: str, reason: str) -> None:
        """Stop every output of a stopped station; its records expire with the station."""
        for output_id in self.r.smembers(keys.station_outputs_live(station_id)):
            self.stop(station_id, output_id, reason)
        expire_indexed(self.r, keys.station_outputs(station_id),
                       lambda output_id: keys.station_output(station_id, output_id), self.settings.retention_seconds)

    def _trim(self, station_id: str) -> None:
        """Forget the oldest stopped outputs beyond :data:`KEEP_STOPPED`."""
        live = self.r.smembers(keys.station_outputs_live(station_id))
        stopped = [o for o in self.r.zrange(keys.station_outputs(station_id), 0, -1) if o not in live]
        for output_id in stopped[:-KEEP_STOPPED] if len(stopped) > KEEP_STOPPED else []:
            blob = self.r.hget(keys.station_output(station_id, output_id), "visual_blob") or ""
            self.r.zrem(keys.station_outputs(station_id), output_id)
            self.r.delete(keys.station_output(station_id, output_id))
            if blob:
                self.ctx.blobs.delete(blob)

    def describe(self, station_id: str) -> list[dict[str, Any]]:
        return describe(self.r, station_id)

    # ------------------------------------------------------------ the packager's side
    def live(self, station_id: str) -> set[str]:
        """Ids of the outputs that should be pushing now."""
        return set(self.r.smembers(keys.station_outputs_live(station_id)))

    def config(self, station_id: str, output_id: str) -> tuple[dict[str, str], str]:
        """(the output's hash, its stream key) for the packager."""
        return (self.r.hgetall(keys.station_output(station_id, output_id)),
                self.r.get(keys.station_output_secret(station_id, output_id)) or "")

    def publish(self, station_id: str, output_id: str, fields: dict[str, Any]) -> bool:
        """Write the packager's view of an output, unless it was stopped meanwhile."""
        flat: list[Any] = [output_id]
        for name, value in fields.items():
            flat += [name, value]
        return bool(self._publish(keys=[keys.station_outputs_live(station_id), keys.station_output(station_id,
                                                                                                    output_id)],
                                  args=flat))
