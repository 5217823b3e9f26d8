"""Joining WAV files at the byte level, without decoding the part that is kept.

A continue returns the client's own file minus its last ``prompt_duration`` seconds,
followed by the model's new audio. For a 120 s float file that kept part is 46 MB:
decoding it to float32 and encoding it again took ~0.3 s after the model finished, and
changed nothing (or, for integer PCM, could move a sample by one step in the round trip).
Here the kept part is copied byte for byte from the client's file and only the new audio
is encoded; the result gets a canonical RIFF header.

Only plain little-endian RIFF files whose sample format is written back unchanged
qualify (see :func:`data_span`); anything else takes the decode/encode path.
"""

from __future__ import annotations

import struct

import numpy as np

#: Sample formats that are written back as they came (audio.WAV_SUBTYPES), bytes per sample.
SAMPLE_BYTES = {"PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}
_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
_WAVE_FORMAT_PCM, _WAVE_FORMAT_IEEE_FLOAT = 1, 3


def data_span(wav: bytes | memoryview) -> tuple[int, int] | None:
    """``(offset, size)`` of the sample bytes of a little-endian RIFF/WAVE file whose
    ``data`` chunk declares its size and is present in full; None otherwise (RIFX, RF64,
    Wave64, a streaming placeholder size, a cut-off file)."""
    if len(wav) < 12 or bytes(wav[:4]) != b"RIFF" or bytes(wav[8:12]) != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(wav):
        chunk_id = bytes(wav[pos : pos + 4])
        (size,) = struct.unpack_from("<I", wav, pos + 4)
        if chunk_id == b"data":
            start = pos + 8
            if size == 0xFFFFFFFF or start + size > len(wav):
                return None
            return start, size
        pos += 8 + size + (size & 1)
    return None


def header(sample_rate: int, channels: int, subtype: str, frames: int) -> bytes:
    """A canonical RIFF/WAVE header (``fmt `` [+ ``fact``] + ``data`` chunk header) for
    ``frames`` interleaved little-endian frames of ``subtype``."""
    width = SAMPLE_BYTES[subtype]
    block = width * channels
    data_size = frames * block
    is_float = subtype in _FLOAT_SUBTYPES
    fmt = struct.pack("<HHIIHH", _WAVE_FORMAT_IEEE_FLOAT if is_float else _WAVE_FORMAT_PCM, channels,
                      sample_rate, sample_rate * block, block, width * 8)
    chunks = b"fmt " + struct.pack("<I", len(fmt) + (2 if is_float else 0)) + fmt
    if is_float:  # non-PCM formats carry cbSize and a fact chunk (frame count)
        chunks += struct.pack("<H", 0) + b"fact" + struct.pack("<II", 4, frames)
    riff_size = 4 + len(chunks) + 8 + data_size + (data_size & 1)
    return b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + chunks + b"data" + struct.pack("<I", data_size)


def _pieces(kept: bytes | memoryview, new_wav: bytes | memoryview, sample_rate: int, channels: int,
            subtype: str) -> tuple[bytes | memoryview, ...]:
    span = data_span(new_wav)
    if span is None:
        raise ValueError("new_wav is not a plain RIFF/WAVE file")
    block = SAMPLE_BYTES[subtype] * channels
    if len(kept) % block:
        raise ValueError("kept bytes are not a whole number of frames")
    start, size = span
    new = memoryview(new_wav)[start : start + size - size % block]
    frames = (len(kept) + len(new)) // block
    pad = b"\0" if (len(kept) + len(new)) & 1 else b""
    return header(sample_rate, channels, subtype, frames), kept, new, pad


def splice(kept: bytes | memoryview, new_wav: bytes | memoryview, *, sample_rate: int, channels: int,
           subtype: str) -> bytes:
    """``kept`` (raw sample bytes in ``subtype``) followed by the samples of ``new_wav`` (a
    WAV of the same format, e.g. from :func:`g4l.audio.encode_wav`), as one WAV file."""
    return b"".join(_pieces(kept, new_wav, sample_rate, channels, subtype))


def splice_array(kept: bytes | memoryview, new_wav: bytes | memoryview, *, sample_rate: int, channels: int,
                 subtype: str) -> np.ndarray:
    """:func:`splice` as a ``uint8`` array, copied by numpy, which lets other threads run
    meanwhile (``bytes.join`` holds the GIL: 80 ms for 55 MB, a stall for a gevent hub)."""
    pieces = _pieces(kept, new_wav, sample_rate, channels, subtype)
    out = np.empty(sum(len(p) for p in pieces), dtype=np.uint8)
    at = 0
    for piece in pieces:
        out[at : at + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
        at += len(piece)
    return out


def without_tail(wav: bytes, *, channels: int, subtype: str, drop_frames: int) -> memoryview | None:
    """``wav``'s sample bytes minus the last ``drop_frames`` frames (all of them dropped
    if it is shorter), without copying; None when the file does not qualify for splicing
    (see :func:`data_span`)."""
    if subtype not in SAMPLE_BYTES:
        return None
    span = data_span(wav)
    if span is None:
        return None
    start, size = span
    block = SAMPLE_BYTES[subtype] * channels
    keep = max(size // block - drop_frames, 0)
    return memoryview(wav)[start : start + keep * block]
