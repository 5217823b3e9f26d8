"""What the parts of a running station's driver share: its stores, its stream, its stored
buffer and its log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from g4l.context import Context
from g4l.hls.station.chunks import ChunkQueue
from g4l.hls.stream import LiveStream
from g4l.store.stations import StationStore


@dataclass
class StationParts:
    """Station ``station_id`` as its driver's parts see it.

    :param ctx: stores, queue and settings.
    :param station_id: the station.
    :param stream: its running stream.
    :param chunks: its stored buffer.
    :param store: the station records.
    :param log: bound to the station.
    """

    ctx: Context
    station_id: str
    stream: LiveStream
    chunks: ChunkQueue
    store: StationStore
    log: Any
