"""Generative stations: endless music from a prompt (or a rotation of prompts).

A station is a Redis hash (:func:`g4l.keys.station`) plus a live stream with its own listen
token. This service creates, describes and stops stations; the packager process drives
running ones (:mod:`g4l.hls.stations`): it enqueues ``station`` jobs at background
priority whenever the buffer ahead of the listeners drops below its target, and a worker
runs them (:mod:`g4l.worker.station_job`). Everything a station needs to resume after a
restart is in Redis (state) and GridFS (its last generated audio).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any

from g4l import keys
from g4l.context import Context
from g4l.errors import G4LError, InvalidRequest, ModelNotAllowed, QueueFull
from g4l.log import get_logger
from g4l.services.listen import STATION, ListenService, buffer_health, links, new_token

log = get_logger(__name__)

MAX_PROMPT_CHARS = 500
MAX_PROMPTS = 32
MIN_ROTATE_S = 10.0


class StationNotFound(G4LError):
    """No station with that id (never created, or stopped long ago)."""

    code = "STATION_NOT_FOUND"
    http_status = 404


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{name} must be a non-empty string")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"{name} is over {MAX_PROMPT_CHARS} characters")
    return value.strip()


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"{name} must be a number")
    if not lo <= float(value) <= hi:
        raise InvalidRequest(f"{name} must be between {lo:g} and {hi:g}")
    return float(value)


def prompt_for(prompts: list[str], rotate_every_s: float, audio_s: float) -> tuple[int, str]:
    """The prompt (index, text) scheduled at ``audio_s`` seconds into the station's music."""
    if not prompts:
        return 0, ""
    if rotate_every_s <= 0 or len(prompts) == 1:
        return 0, prompts[0]
    index = int(audio_s // rotate_every_s) % len(prompts)
    return index, prompts[index]


class StationService:
    """Create, describe and stop stations."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.r = ctx.redis
        self.listen = ListenService(ctx)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Start a station from ``{prompt | genre, temperature?, model?, prompts?,
        rotate_every_s?, top_k?, cfg_coef?}``.

        :returns: ``{station_id, playlist_url, page_url, status}`` (URLs are relative).
        :raises InvalidRequest: a field of the wrong type or range.
        :raises ModelNotAllowed: a model outside the allowlist.
        :raises QueueFull: ``max_stations`` stations already run.
        """
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")
        settings = self.ctx.settings
        prompts: list[str] = []
        if body.get("prompts") is not None:
            raw = body["prompts"]
            if not isinstance(raw, list) or not raw or len(raw) > MAX_PROMPTS:
                raise InvalidRequest(f"prompts must be a list of 1-{MAX_PROMPTS} strings")
            prompts = [_text(p, "each prompt") for p in raw]
        for name in ("prompt", "genre"):
            if body.get(name) is not None:
                prompts.insert(0, _text(body[name], name))
                break
        if not prompts:
            raise InvalidRequest("send a prompt (or a genre, or a list of prompts)")
        temperature = _number(body, "temperature", 1.0, 0.05, 5.0)
        rotate = _number(body, "rotate_every_s", 0.0, 0.0, 86_400.0)
        if 0 < rotate < MIN_ROTATE_S:
            raise InvalidRequest(f"rotate_every_s must be 0 (never) or at least {MIN_ROTATE_S:g}")
        top_k = int(_number(body, "top_k", 250, 0, 10_000))
        cfg_coef = _number(body, "cfg_coef", 3.0, 0.0, 20.0)
        model = body.get("model") or settings.model_default
        if model not in settings.models:
            raise ModelNotAllowed(f"model '{model}' is not available here; choose one of: "
                                  + ", ".join(settings.models))
        if self.r.scard(keys.STATIONS) >= settings.max_stations:
            raise QueueFull(f"{settings.max_stations} stations are already running; stop one first")
        station_id = str(uuid.uuid4())
        token = new_token()
        now = time.time()
        index, first = prompt_for(prompts, rotate, 0.0)
        self.r.hset(keys.station(station_id), mapping={
            "id": station_id, "token": token, "status": "running", "model": model,
            "prompts": json.dumps(prompts), "rotate_every_s": rotate, "temperature": temperature,
            "top_k": top_k, "cfg_coef": cfg_coef, "created": now, "audio_s": 0, "generations": 0,
            "last_blob": "", "job_id": "", "generating_prompt": first, "errors": "[]", "rotations": "[]",
        })
        self.r.sadd(keys.STATIONS, station_id)
        self.listen.open_stream(token, STATION, station_id)
        log.info("station created", station_id=station_id, stream=token[:8], model=model, prompts=len(prompts),
                 rotate_every_s=rotate)
        return {"station_id": station_id, **links(token), "status": "starting"}

    def _require(self, station_id: str) -> dict[str, str]:
        info = self.r.hgetall(keys.station(station_id)) if station_id else {}
        if not info:
            raise StationNotFound(f"no station {station_id}")
        return info

    def get(self, station_id: str) -> dict[str, Any]:
        """Status: buffer (seconds, health), current prompt, listeners, rotations, errors."""
        st = self._require(station_id)
        token = st.get("token", "")
        stream = self.r.hgetall(keys.listen(token)) if token else {}
        buffered = float(stream.get("buffered_s") or 0)
        running = st.get("status") == "running"
        started = int(st.get("generations") or 0) > 0
        health = stream.get("buffer_health") or buffer_health(buffered, self.ctx.settings.station_low_buffer_s,
                                                               started)
        job_id = st.get("job_id") or ""
        job = self.ctx.jobs.get(job_id) if job_id else None
        return {
            "station_id": station_id, **links(token), "status": st.get("status"),
            "stopped_reason": st.get("stopped_reason") or None,
            "model": st.get("model"), "temperature": float(st.get("temperature") or 1.0),
            "prompts": json.loads(st.get("prompts") or "[]"),
            "rotate_every_s": float(st.get("rotate_every_s") or 0),
            "current_prompt": stream.get("playing_prompt") or st.get("generating_prompt") or None,
            "generating_prompt": st.get("generating_prompt") or None,
            "buffered_seconds": buffered if running else 0.0,
            "target_buffer_seconds": self.ctx.settings.station_buffer_s,
            "buffer_health": health if running else "stopped",
            "buffer_low": running and health in ("low", "empty"),
            "underruns": int(stream.get("underruns") or 0),
            "played_seconds": float(stream.get("position_s") or 0),
            "generated_seconds": float(st.get("audio_s") or 0),
            "generations": int(st.get("generations") or 0),
            "generating": bool(job and job.status in ("queued", "running")),
            "progress": job.progress if job and job.status == "running" else 0,
            "listeners": self.listen.listeners(token) if token else 0,
            "rotations": json.loads(st.get("rotations") or "[]"),
            "errors": json.loads(st.get("errors") or "[]"),
            "created": float(st.get("created") or 0),
        }

    def stop(self, station_id: str, reason: str = "stopped") -> dict[str, Any]:
        """Stop generating and streaming; the stream's segments are deleted."""
        st = self._require(station_id)
        with self.r.pipeline() as p:
            p.hset(keys.station(station_id), mapping={"status": "stopped", "stopped_reason": reason})
            p.srem(keys.STATIONS, station_id)
            p.expire(keys.station(station_id), self.ctx.settings.retention_seconds)
            p.execute()
        job_id = st.get("job_id") or ""
        if job_id:
            self.ctx.jobs.request_cancel(job_id)
            job = self.ctx.jobs.get(job_id)
            if job is not None and job.status == "queued" and self.ctx.queue.remove_waiting(job_id):
                from g4l.jobs import lifecycle

                lifecycle.canceled(self.ctx, job)
        if st.get("token"):
            self.listen.stop(st["token"], reason)
        log.info("station stopped", station_id=station_id, reason=reason)
        return {"station_id": station_id, "status": "stopped"}
