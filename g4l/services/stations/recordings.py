"""Recordings of a station's program: files of ``G4L_RECORDING_SECONDS`` each.

The packager that runs a station started with ``record: true`` encodes the program (the
same PCM its HLS encoder gets) into MP4 (AAC) files with ffmpeg's segment muxer
(:mod:`g4l.hls.recorder`); each finished file goes to GridFS and is listed here. Files
older than ``G4L_RECORDING_RETENTION_HOURS`` are deleted while the station runs; once it
stopped, its recordings follow the store's ``G4L_RETENTION_HOURS``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from g4l import keys
from g4l.context import Context
from g4l.errors import NotFound
from g4l.log import get_logger
from g4l.store.retention import expire_indexed

log = get_logger(__name__)

MEDIA_TYPE = "audio/mp4"


class RecordingStore:
    """A station's finished recordings: registered by the packager, listed and served by
    the web."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.r = ctx.redis

    def add(self, station_id: str, data: bytes, *, started_at: float, duration_s: float) -> str:
        """Store a finished file; returns its recording id."""
        recording_id = uuid.uuid4().hex
        blob = self.ctx.blobs.put(data, session_id=station_id, kind="recording", recording_id=recording_id)
        with self.r.pipeline() as p:
            p.hset(keys.station_recording(station_id, recording_id), mapping={
                "id": recording_id, "blob": blob, "started_at": round(started_at, 3),
                "duration_s": round(duration_s, 3), "bytes": len(data), "created": time.time()})
            p.zadd(keys.station_recordings(station_id), {recording_id: started_at})
            p.execute()
        log.info("station recording stored", station_id=station_id, recording_id=recording_id,
                 duration_s=round(duration_s, 3), bytes=len(data))
        return recording_id

    def list(self, station_id: str) -> list[dict[str, Any]]:
        """Every recording kept, oldest first."""
        found = []
        for recording_id in self.r.zrange(keys.station_recordings(station_id), 0, -1):
            h = self.r.hgetall(keys.station_recording(station_id, recording_id))
            if h:
                found.append({"recording_id": recording_id, "started_at": float(h.get("started_at") or 0),
                              "duration_s": float(h.get("duration_s") or 0), "bytes": int(h.get("bytes") or 0),
                              "media_type": MEDIA_TYPE})
        return found

    def blob(self, station_id: str, recording_id: str) -> str:
        """The GridFS id of a recording. :raises NotFound: no such recording (or deleted)."""
        blob = self.r.hget(keys.station_recording(station_id, recording_id), "blob") \
            if keys.valid_id(recording_id) else None
        if not blob:
            raise NotFound("no such recording (never made, or past its retention)")
        return blob

    def expire(self, station_id: str, older_than_s: float) -> int:
        """Delete recordings that started more than ``older_than_s`` ago; how many."""
        cutoff = time.time() - older_than_s
        gone = self.r.zrangebyscore(keys.station_recordings(station_id), "-inf", cutoff)
        for recording_id in gone:
            blob = self.r.hget(keys.station_recording(station_id, recording_id), "blob") or ""
            with self.r.pipeline() as p:
                p.zrem(keys.station_recordings(station_id), recording_id)
                p.delete(keys.station_recording(station_id, recording_id))
                p.execute()
            if blob:
                self.ctx.blobs.delete(blob)
            log.info("station recording deleted (retention)", station_id=station_id, recording_id=recording_id)
        return len(gone)

    def keep_for(self, station_id: str, seconds: int) -> None:
        """The station stopped: its recording records expire with it."""
        expire_indexed(self.r, keys.station_recordings(station_id),
                       lambda recording_id: keys.station_recording(station_id, recording_id), seconds)
