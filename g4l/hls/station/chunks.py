"""A station's stored buffer: the chunks it generated and has not wholly played yet.

Each chunk is one generation's audio, stored in GridFS (24-bit FLAC) by the worker; the
queue itself is a Redis list (:func:`g4l.keys.station_chunks`) of small JSON entries in
play order, and the play position is two fields of the station's record
(:class:`g4l.store.stations.StationRecord`): ``play_seq`` (the chunk playing) and
``play_offset_s`` (seconds of it already heard). ``queue_s`` (the sum
of the entries' seconds) makes the buffer's length one read:
``buffered = queue_s - play_offset_s``. All of it survives a restart of any process.

Entry fields: ``seq`` (1, 2, ...), ``blob``, ``seconds`` (new audio, without the lead-in),
``lead_in_s`` (leading seconds that re-state the previous chunk's end), ``prompt``,
``prompt_index``, ``audio_start_s`` (on the station's music timeline), ``join``
(``continue`` | ``break`` | ``crossfade``) and ``join_s``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from g4l import audio, keys
from g4l.context import Context
from g4l.store.stations import StationStore


class ChunkQueue:
    """The stored chunks of station ``station_id``."""

    def __init__(self, ctx: Context, station_id: str) -> None:
        self.ctx = ctx
        self.r = ctx.redis
        self.station_id = station_id
        self.key = keys.station_chunks(station_id)
        self.store = StationStore(ctx.redis)
        self._cached: tuple[str, bytes] | None = None

    # ------------------------------------------------------------ queue
    def push(self, entry: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
        """Append ``entry`` (its ``seq`` is assigned here) and set ``changes`` on the
        station's record, in one transaction."""
        seq = self.store.next_seq(self.station_id, "chunk_seq")
        entry = {**entry, "seq": seq}
        with self.r.pipeline() as p:
            p.rpush(self.key, json.dumps(entry))
            self.store.add(self.station_id, "queue_s", float(entry["seconds"]), p)
            self.store.update(self.station_id, p, **changes)
            p.execute()
        return entry

    def entries(self, start: int = 0, stop: int = -1) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.r.lrange(self.key, start, stop)]

    def find(self, seq: int) -> dict[str, Any] | None:
        """The entry ``seq`` (it is at index ``seq - head seq``)."""
        head = self.entries(0, 0)
        if not head:
            return None
        index = seq - int(head[0]["seq"])
        found = self.entries(index, index) if index >= 0 else []
        return found[0] if found and int(found[0]["seq"]) == seq else None

    def pop_played(self, seq: int) -> dict[str, Any] | None:
        """Drop the head entry if it is ``seq`` (wholly played); the position moves to the
        start of the next one. Its blob is the caller's to delete."""
        head = self.entries(0, 0)
        if not head or int(head[0]["seq"]) != seq:
            return None
        with self.r.pipeline() as p:
            p.lpop(self.key)
            self.store.add(self.station_id, "queue_s", -float(head[0]["seconds"]), p)
            self.store.update(self.station_id, p, play_seq=seq + 1, play_offset_s=0)
            p.execute()
        return head[0]

    def position(self) -> tuple[int, float]:
        """(chunk seq playing, seconds of it heard); seq 0 before anything was stored."""
        at = self.store.fields(self.station_id, "play_seq", "play_offset_s")
        return at["play_seq"], at["play_offset_s"]

    def save_position(self, seq: int, offset_s: float) -> None:
        self.store.update(self.station_id, play_seq=seq, play_offset_s=round(offset_s, 4))

    def buffered_s(self) -> float:
        """Seconds stored and not yet heard (what is decoded in memory included)."""
        at = self.store.fields(self.station_id, "queue_s", "play_offset_s")
        return max(0.0, at["queue_s"] - at["play_offset_s"])

    def blobs(self) -> list[str]:
        return [e["blob"] for e in self.entries()]

    def clear(self) -> list[str]:
        """Forget every entry (a stopped station); returns their blobs to delete."""
        blobs = self.blobs()
        with self.r.pipeline() as p:
            p.delete(self.key)
            self.store.update(self.station_id, p, queue_s=0, play_offset_s=0)
            p.execute()
        return blobs

    # ------------------------------------------------------------ audio
    def read(self, entry: dict[str, Any], start_s: float, seconds: float) -> audio.Audio:
        """``seconds`` of chunk ``entry`` from ``start_s`` of its file (lead-in included).
        The compressed chunk being played is kept (one at a time), pieces are decoded from
        it by seeking. :raises KeyError: the blob is gone."""
        blob = entry["blob"]
        if self._cached is None or self._cached[0] != blob:
            self._cached = None
            self._cached = (blob, self.ctx.blobs.get(blob))
        return audio.read_span(self._cached[1], start_s, seconds)
