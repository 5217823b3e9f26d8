"""A finished session result's way from the worker to the web nodes: a short-lived Redis
key (:func:`g4l.keys.result`), read before GridFS has the file.

The value is usually the whole WAV. For a continue whose input a web node still holds in
memory (:class:`g4l.services.held_inputs.HeldInputs`), the worker leaves only the new
audio and the recipe to join it: the kept part of the result is, byte for byte, the
client's own file minus its tail (:mod:`g4l.wav_splice`). On a 120 s take that is a fifth
of the bytes through Redis, a few tenths of a second less between model and client.

Every reader gets the same file (:mod:`g4l.jobs.delivery`): the web node joins the new
audio to the input it holds, any other reader to the input's GridFS copy.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass

import numpy as np
import redis

from g4l import keys, wav_splice

#: How long the hand-off outlives the job: delivery takes seconds, the GridFS write too.
RESULT_TTL_S = 120
#: Marks a spliced hand-off; a whole one is a WAV and starts with b"RIFF".
MAGIC = b"G4L-SPLICE/1\n"


@dataclass(frozen=True)
class Splice:
    """How to rebuild the result from the job's input: drop its last ``drop_frames``
    frames, append the new audio. Format fields are the input's (and the result's)."""

    input_blob: str
    drop_frames: int
    sample_rate: int
    channels: int
    subtype: str


@dataclass(frozen=True)
class HandOff:
    """What a worker left: ``data`` is the whole WAV, or with ``splice`` the new audio
    (a WAV of the result's format)."""

    data: bytes | memoryview
    splice: Splice | None = None

    def data_seconds(self) -> float | None:
        """Length of the new audio of a spliced hand-off (None for a whole one)."""
        if self.splice is None:
            return None
        span = wav_splice.data_span(self.data)
        if span is None:
            return 0.0
        block = wav_splice.SAMPLE_BYTES[self.splice.subtype] * self.splice.channels
        return span[1] // block / self.splice.sample_rate

    def assemble(self, input_wav: bytes, *, as_array: bool = False) -> bytes | np.ndarray:
        """The whole result WAV; with ``as_array`` a ``uint8`` array built without holding
        the GIL (:func:`g4l.wav_splice.splice_array`), for a web node's event loop.
        :raises ValueError: ``input_wav`` cannot be the input this hand-off was made from
        (not a plain WAV of the recorded format)."""
        if self.splice is None:
            return bytes(self.data)
        s = self.splice
        kept = wav_splice.without_tail(input_wav, channels=s.channels, subtype=s.subtype, drop_frames=s.drop_frames)
        if kept is None:
            raise ValueError("the held input is not a plain WAV; it cannot be spliced")
        join = wav_splice.splice_array if as_array else wav_splice.splice
        return join(kept, self.data, sample_rate=s.sample_rate, channels=s.channels, subtype=s.subtype)


def put_whole(r: redis.Redis, job_id: str, wav: bytes) -> None:
    """Leave the whole result WAV for the web nodes."""
    r.set(keys.result(job_id), wav, ex=RESULT_TTL_S)


def put_spliced(r: redis.Redis, job_id: str, new_wav: bytes, splice: Splice) -> None:
    """Leave only the new audio and the recipe that joins it to the job's input."""
    recipe = json.dumps(asdict(splice)).encode()
    r.set(keys.result(job_id), b"".join((MAGIC, struct.pack("<I", len(recipe)), recipe, new_wav)),
          ex=RESULT_TTL_S)


def keep(r: redis.Redis, job_id: str) -> bool:
    """GridFS does not have the result yet and will not soon (the store refuses it): keep
    the hand-off readable another :data:`RESULT_TTL_S`. Whether it was still there."""
    return bool(r.expire(keys.result(job_id), RESULT_TTL_S))


def drop(r: redis.Redis, job_id: str) -> None:
    """GridFS has the result: the hand-off is no longer needed (readers fall back to the
    stored file), so Redis holds only results still on their way, not the last two minutes'."""
    r.delete(keys.result(job_id))


def read(r: redis.Redis, job_id: str, *, piece_bytes: int | None = None) -> HandOff | None:
    """The hand-off of ``job_id``, or None once it expired (GridFS has the file then).

    :param piece_bytes: read the value in ``GETRANGE`` pieces of this size rather than one
        ``GET``. A web node's event loop reads a ``GET`` reply of tens of MB in one go
        (the bytes are already there, so no read waits and nothing else runs): 20 MB held
        every socket for about 50 ms. Between pieces the reader waits for Redis, which
        lets the other greenlets run. A value that vanishes mid-way (dropped once GridFS
        has the file) reads as None, like an expired one.
    :raises ValueError: a spliced hand-off that cannot be parsed."""
    key = keys.result(job_id)
    raw: bytes | bytearray | None
    if piece_bytes is None:
        raw = r.get(key)
    else:
        raw = _read_pieces(r, key, piece_bytes)
    if raw is None:
        return None
    if not raw.startswith(MAGIC):
        return HandOff(raw if isinstance(raw, bytes) else memoryview(raw))
    at = len(MAGIC)
    try:
        (size,) = struct.unpack_from("<I", raw, at)
        splice = Splice(**json.loads(raw[at + 4 : at + 4 + size]))
    except (struct.error, TypeError, ValueError) as exc:
        raise ValueError(f"malformed result hand-off: {exc}") from None
    return HandOff(memoryview(raw)[at + 4 + size :], splice)


def _read_pieces(r: redis.Redis, key: str, piece_bytes: int) -> bytearray | None:
    """The value of ``key`` read ``piece_bytes`` at a time into one buffer; None when it is
    missing or shrinks while being read (a hand-off is written once, never rewritten)."""
    if piece_bytes < 1:
        raise ValueError("piece_bytes must be >= 1")
    size = int(r.strlen(key))
    if size == 0:
        return None  # missing (a hand-off is never empty)
    out = bytearray(size)
    at = 0
    while at < size:
        piece = r.getrange(key, at, min(size, at + piece_bytes) - 1)
        if not piece:
            return None
        out[at:at + len(piece)] = piece
        at += len(piece)
    return out
