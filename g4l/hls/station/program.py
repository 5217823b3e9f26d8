"""The program: whether a station is on the air, and the stored audio decoded into its
stream while it is.

The buffer's health (:mod:`g4l.services.stations.policy`) decides: DEPLETED takes the
station off the air (the queued audio fades out, the slate loops, nothing is lost: the
unheard audio stays stored), and it comes back once ``resume_s`` is buffered. On the air,
at most ``G4L_STATION_MEMORY_S`` is decoded into the stream's memory, in pieces,
seamlessly: pieces of one chunk are butted; chunks join by their lead-in, a silent break
or a crossfade. Where each chunk starts in the stream (``chunk_starts``) and when a new
prompt is heard (``rotations``) go into the station's record for the dashboard.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from g4l.hls.buffer import CHANNELS, RATE
from g4l.hls.slate import slate_loop
from g4l.hls.station.accounting import Accounting, Piece
from g4l.hls.station.parts import StationParts
from g4l.hls.stream import to_stream_format
from g4l.services.stations.policy import DEPLETED, BufferPolicy
from g4l.store.stations import StationRecord

#: Audio is decoded into memory at most this much at a time.
PIECE_S = 10.0
MAX_ROTATIONS_KEPT = 50
#: Where the last chunks start in the stream (``chunk_starts``), newest last.
STARTS_KEPT = 20


class Program:
    """A station's program in its stream.

    :param parts: the station's stores, stream and stored buffer.
    :param accounting: the pieces in memory.
    :param on_error: ``(message, code)`` when stored audio could not be played.
    """

    def __init__(self, parts: StationParts, accounting: Accounting, on_error: Callable[[str, str], None]) -> None:
        self.settings = parts.ctx.settings
        self.station_id, self.stream, self.chunks = parts.station_id, parts.stream, parts.chunks
        self.store, self.log = parts.store, parts.log
        self.accounting = accounting
        self.on_error = on_error
        #: The next audio to decode: chunk seq and seconds into it (None: not on the air).
        self.cursor: tuple[int, float] | None = None
        #: Pieces this packager decoded (0: its program has not started yet).
        self.pieces_fed = 0

    @property
    def on_air(self) -> bool:
        return self.cursor is not None

    # ------------------------------------------------------------ on and off the air
    def decide(self, st: StationRecord, policy: BufferPolicy, state: str, buffered: float) -> dict[str, object]:
        """On the air unless DEPLETED; back on once ``resume_s`` is buffered (hysteresis).
        Returns the station fields a change of air sets, for the caller to write with the
        buffer figures it publishes in the same update: a status never shows the program on
        the air beside the buffer from before the chunk that put it there."""
        if self.on_air and state == DEPLETED:
            dropped = self.stream.buffer.interrupt(slate_loop())
            self.accounting.forget()
            self.cursor = None
            seq, offset = self.chunks.position()
            self.log.warning("station off the air: buffer depleted", buffered_s=round(buffered, 2),
                             emergency_s=policy.emergency_s, resume_s=policy.resume_s, play_seq=seq,
                             play_offset_s=round(offset, 2), unheard_s=round(dropped / RATE, 2))
            return {"on_air": False, "off_air_at": time.time()}
        if not self.on_air and buffered >= policy.resume_s:
            self.stream.buffer.resume()
            self.cursor = self.chunks.position()
            self.log.info("station on the air", buffered_s=round(buffered, 2), resume_s=policy.resume_s,
                          resumed=st.ever_on_air)
            return {"on_air": True, "ever_on_air": True, "on_air_at": time.time()}
        return {}

    def went_on_air(self) -> None:
        """The station is on the air with audio that was not decoded from storage (a
        stretch streamed while it is generated)."""
        self.store.update(self.station_id, on_air=True, ever_on_air=True, on_air_at=time.time())

    def went_off_air(self) -> None:
        """What is queued plays out, then the slate."""
        self.stream.buffer.interrupt(slate_loop())
        self.store.update(self.station_id, on_air=False, off_air_at=time.time())

    # ------------------------------------------------------------ decoding
    def feed(self) -> None:
        """Decode stored audio into the stream until ``G4L_STATION_MEMORY_S`` is ahead."""
        while self.cursor is not None and self.stream.buffer.buffered_seconds < self.settings.station_memory_s:
            seq, offset = self.cursor
            entry = self.chunks.find(seq)
            if entry is None:
                head = self.chunks.entries(0, 0)
                if head and int(head[0]["seq"]) > seq:  # that chunk is gone: go on with the next one
                    self.cursor = (int(head[0]["seq"]), 0.0)
                    continue
                return  # nothing more stored yet
            seconds = float(entry["seconds"])
            if offset >= seconds - 1e-3:
                self.cursor = (seq + 1, 0.0)
                continue
            try:
                self._feed_piece(entry, offset, min(PIECE_S, seconds - offset))
            except KeyError:
                self.on_error("a stored chunk of the buffer was not found", "INTERNAL")
                self.cursor = (seq + 1, 0.0)

    def _feed_piece(self, entry: dict[str, Any], offset: float, seconds: float) -> None:
        buffer = self.stream.buffer
        seq = int(entry["seq"])
        lead = float(entry.get("lead_in_s") or 0.0)
        join, join_s = entry.get("join") or "continue", float(entry.get("join_s") or 0.0)
        first = offset <= 1e-6
        if first and join == "continue" and lead:
            decoded = self.chunks.read(entry, 0.0, lead + seconds)  # the lead-in crossfades over the last chunk
        else:
            decoded = self.chunks.read(entry, lead + offset, seconds)
        x = to_stream_format(decoded.samples, decoded.sample_rate)
        tags = {"prompt": entry.get("prompt") or "", "prompt_index": int(entry.get("prompt_index") or 0),
                "job_id": entry.get("job_id"), "audio_start_s": float(entry.get("audio_start_s") or 0),
                "chunk": seq}
        # A break or crossfade is made against the previous chunk still in memory.
        continuing = self.accounting.continues(seq)
        if not first:
            frame = buffer.append(x, meta=tags, join="butt")
        elif join == "break" and continuing:
            buffer.append(np.zeros((CHANNELS, int(round(join_s * RATE))), np.float32), join="fade")
            frame = buffer.append(x, meta=tags, join="fade")
        elif join == "crossfade" and continuing:
            frame = buffer.append(x, overlap_frames=int(round(join_s * RATE)), meta=tags)
        else:
            buffer.append(x, overlap_frames=int(round(lead * RATE)) if first else 0, meta=tags)
            frame = buffer.last_new_frame
        self.stream.last_audio = time.time()
        self.accounting.pieces.append(Piece(seq, offset, offset + seconds, frame))
        if first:
            self.record_start(seq, frame, streamed=False)
        if not self.pieces_fed:  # where this packager's program starts (after a restart: the saved position)
            self.store.update(self.station_id, feed_started={"seq": seq, "offset_s": offset, "at": time.time()})
            self.log.info("station program from storage", chunk=seq, offset_s=round(offset, 3))
        self.pieces_fed += 1
        self.cursor = (seq, offset + seconds)
        if first and entry.get("rotated"):
            self._record_rotation(entry, frame)

    # ------------------------------------------------------------ for the dashboard
    def record_start(self, seq: int, frame: int, *, streamed: bool) -> None:
        """Note where chunk ``seq``'s first new frame plays in the stream (``stream_s``:
        seconds of the stream's audio, as its segments count them): the program's joins,
        for the dashboard and for checking that nothing plays twice or leaves a gap."""
        start = {"seq": seq, "stream_s": round((frame + self.stream.encoder.prefill_frames) / RATE, 4),
                 "streamed": streamed}
        self.store.append(self.station_id, "chunk_starts", [start], STARTS_KEPT)

    def _record_rotation(self, entry: dict[str, Any], frame: int) -> None:
        """Note when the listeners hear the new prompt (``plays_at``: wall clock)."""
        buffer = self.stream.buffer
        rotation = {"index": int(entry.get("prompt_index") or 0), "prompt": entry.get("prompt") or "",
                    "scheduled_audio_s": entry.get("scheduled_audio_s"),
                    "audio_s": entry.get("audio_start_s"), "chunk": entry["seq"],
                    "transition": entry.get("join"), "transition_s": entry.get("join_s") or 0.0,
                    "stream_s": round((frame + self.stream.encoder.prefill_frames) / RATE, 3),
                    "plays_at": round(time.time() + (frame - buffer.position) / RATE, 3)}
        self.store.append(self.station_id, "rotations", [rotation], MAX_ROTATIONS_KEPT)
        self.log.info("station prompt rotated", prompt_index=entry.get("prompt_index"),
                      scheduled_audio_s=entry.get("scheduled_audio_s"), transition=entry.get("join"))
