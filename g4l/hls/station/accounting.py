"""Buffer accounting: which stored audio of a station is decoded into its stream, and how
much of it the listeners have heard.

Every piece decoded into the stream (:class:`Piece`) is remembered until the listeners
are past it; each tick the play position (the chunk playing and the seconds of it heard)
is saved in the station's record, and a chunk wholly heard leaves the stored buffer
(:meth:`g4l.hls.station.chunks.ChunkQueue.pop_played`) with its audio, so a restarted
packager goes on exactly where the listeners were.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from g4l.hls.buffer import RATE
from g4l.hls.station.parts import StationParts

#: Chunk seqs heard lately, newest last (their order shows none was lost or repeated).
PLAYED_KEPT = 50


@dataclass
class Piece:
    """Audio of chunk ``seq`` from ``from_s`` to ``to_s`` (chunk seconds, lead-in not
    counted) decoded into the stream; ``from_s`` plays at stream frame ``frame``."""

    seq: int
    from_s: float
    to_s: float
    frame: int


class Accounting:
    """The pieces of a station in its stream's memory, oldest first (the audio of heard
    chunks is deleted from GridFS).

    :param parts: the station's stores, stream and stored buffer.
    """

    def __init__(self, parts: StationParts) -> None:
        self.ctx = parts.ctx
        self.station_id = parts.station_id
        self.stream = parts.stream
        self.chunks = parts.chunks
        self.store = parts.store
        #: What is decoded into the stream and not yet wholly heard, oldest first.
        self.pieces: deque[Piece] = deque()

    def account(self, generating_seq: int | None) -> None:
        """Save where the listeners are; drop (and delete) chunks they have wholly heard.
        ``generating_seq``: the chunk being streamed while it is generated (not stored
        yet: only the position is saved)."""
        position = self.stream.buffer.position
        while self.pieces:
            piece = self.pieces[0]
            if piece.seq == generating_seq:
                if position >= piece.frame:
                    self.chunks.save_position(piece.seq, (position - piece.frame) / RATE)
                break
            end = piece.frame + int(round((piece.to_s - piece.from_s) * RATE))
            later = self.pieces[1] if len(self.pieces) > 1 else None
            if position < end:
                if position >= piece.frame:
                    self.chunks.save_position(piece.seq, piece.from_s + (position - piece.frame) / RATE)
                break
            self.pieces.popleft()
            if later is None or later.seq != piece.seq:
                self._played(piece.seq)  # its last piece is heard
            elif position < later.frame:
                self.chunks.save_position(piece.seq, piece.to_s)

    def _played(self, seq: int) -> None:
        entry = self.chunks.pop_played(seq)
        if entry is None:
            return
        self.store.append(self.station_id, "played", [seq], PLAYED_KEPT)
        if entry["blob"] != self.store.fields(self.station_id, "last_blob")["last_blob"]:
            self.ctx.blobs.delete(entry["blob"])  # the newest chunk is the next one's prompt: kept

    def forget(self, seq: int | None = None) -> None:
        """Forget the pieces of chunk ``seq`` (all of them when None): they will not be
        heard (the program went off the air, or a streamed stretch ended unstored)."""
        if seq is None:
            self.pieces.clear()
        else:
            self.pieces = deque(p for p in self.pieces if p.seq != seq)

    def continues(self, seq: int) -> bool:
        """Whether the newest piece in memory is of chunk ``seq - 1`` (a join is made
        against it)."""
        return bool(self.pieces) and self.pieces[-1].seq == seq - 1
