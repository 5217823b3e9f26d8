"""Pure audio math: WAV probe/decode/encode, resampling, channel mapping, slicing, fades.

Every array is float32 shaped ``(channels, frames)``. Nothing here touches the network, a
store or a model: the adapters decode what a client sent with :func:`decode_wav`, the
worker resamples/slices/joins with the helpers below, and :func:`encode_wav` turns the
result back into bytes in the client's own WAV flavour.

soundfile (libsndfile) does the reading and writing: it understands every WAV flavour DAWs
produce (RIFF/WAVEX, RF64, Sony Wave64; 8/16/24/32-bit PCM, 32/64-bit float, u-law...).
torchaudio's I/O is not used on purpose: it needs TorchCodec, which this stack lacks.

Why one file of over 400 lines: it is a flat set of small pure functions over one array
convention, imported as one module by every layer; split, the helpers would only scatter.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from g4l.errors import InvalidAudio

__all__ = [
    "Audio",
    "WavInfo",
    "WAV_SUBTYPES",
    "probe_wav",
    "decode_wav",
    "encode_wav",
    "wav_subtype",
    "resample",
    "to_channels",
    "head",
    "tail",
    "drop_tail",
    "concat",
    "crossfade",
    "trim_trailing_silence",
    "peak_db",
]

#: The subtypes :func:`encode_wav` writes as-is; anything else falls back to ``FLOAT``
#: (compressed WAV codecs such as IMA ADPCM or GSM would add a second lossy pass).
WAV_SUBTYPES = frozenset({"PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"})

# The container formats libsndfile reports for WAV-family files.
_WAV_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64"})

# Bytes per sample for fixed-size encodings: lets the probe turn a header's declared data
# size into a frame count. Compressed codecs are absent (their size says little).
_SAMPLE_BYTES = {
    "PCM_U8": 1, "PCM_S8": 1, "ULAW": 1, "ALAW": 1,
    "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8,
}

_W64_RIFF = b"riff\x2e\x91\xcf\x11\xa5\xd6\x28\xdb\x04\xc1\x00\x00"
_W64_DATA = b"data\xf3\xac\xd3\x11\x8c\xd1\x00\xc0\x4f\x8e\xdb\x8a"

# Magic numbers of formats people send by mistake, to say what the file is instead.
_OTHER_FORMATS = (
    (b"fLaC", "FLAC"),
    (b"OggS", "Ogg"),
    (b"ID3", "MP3"),
    (b"FORM", "AIFF"),
    (b"caff", "CAF"),
    (b"\x1a\x45\xdf\xa3", "WebM/Matroska"),
)


@dataclass(frozen=True)
class Audio:
    """Decoded audio: float32 ``(channels, frames)`` plus the source's rate and subtype.

    ``subtype`` is soundfile's name for the source encoding ('PCM_16', 'PCM_24', 'FLOAT'...)
    so a reply can be written back in the flavour the client sent (see :func:`wav_subtype`).
    """

    samples: np.ndarray
    sample_rate: int
    subtype: str

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def frames(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate


@dataclass(frozen=True)
class WavInfo:
    """What a WAV header says, learnt without decoding a single sample.

    ``frames`` is the length the header declares; ``available_frames`` is how many of
    those the bytes really hold (fewer means the file was cut short).
    """

    sample_rate: int
    channels: int
    frames: int
    subtype: str
    duration: float
    format: str = "WAV"
    available_frames: int | None = None

    @property
    def truncated(self) -> bool:
        return self.available_frames is not None and self.available_frames < self.frames


# --------------------------------------------------------------------------------------
# Reading and writing


def _sniff(data: bytes) -> None:
    """Refuse anything that is not a WAV-family container, naming what it looks like."""
    if data[:4] in (b"RIFF", b"RIFX", b"RF64", b"BW64") and data[8:12] == b"WAVE":
        return
    if data[:16] == _W64_RIFF:
        return
    what = next((name for magic, name in _OTHER_FORMATS if data.startswith(magic)), None)
    if what is None and len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:
        what = "MP3"  # an MPEG audio frame sync without an ID3 tag
    if what is None and data[:4] == b"RIFF":
        what = f"a RIFF {data[8:12]!r} file"
    raise InvalidAudio(f"not a WAV file (it looks like {what})" if what else "not a WAV file")


def _declared_data_bytes(data: bytes) -> int | None:
    """The size of the ``data`` chunk as the header declares it, or None when unknown.

    libsndfile clamps its frame count to the bytes present, so a file whose header claims
    two hours but holds one second looks one second long to it. Reading the declared size
    ourselves lets the caller refuse an over-long file from its header alone, and notice a
    file that was cut short. Streaming writers leave 0xFFFFFFFF as a placeholder: unknown.
    """
    try:
        if data[:16] == _W64_RIFF:
            pos = 40  # riff GUID + size64 + wave GUID; chunks are 8-byte aligned
            while pos + 24 <= len(data):
                size = struct.unpack_from("<Q", data, pos + 16)[0]
                if data[pos : pos + 16] == _W64_DATA:
                    return size - 24
                if size < 24:
                    return None
                pos += (size + 7) & ~7
            return None
        big_endian = data[:4] == b"RIFX"
        fmt = ">I" if big_endian else "<I"
        ds64_data: int | None = None
        pos = 12
        while pos + 8 <= len(data):
            chunk_id = data[pos : pos + 4]
            size = struct.unpack_from(fmt, data, pos + 4)[0]
            if chunk_id == b"ds64" and size >= 16:
                ds64_data = struct.unpack_from("<Q", data, pos + 16)[0]
            elif chunk_id == b"data":
                if size == 0xFFFFFFFF:
                    return ds64_data  # RF64 keeps the real size in ds64; RIFF: placeholder
                return size
            pos += 8 + size + (size & 1)  # chunks are padded to an even length
        return None
    except struct.error:
        return None


def probe_wav(data: bytes) -> WavInfo:
    """Read only the header of a WAV file: cheap validation before any decode.

    Raises :class:`InvalidAudio` for empty bytes, non-WAV data (MP3, Ogg, FLAC, noise...),
    an unreadable or cut-off header, a header with no channels or no sample rate, and a
    file with zero frames.
    """
    if not data:
        raise InvalidAudio("empty audio (0 bytes)")
    _sniff(data)
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as exc:  # libsndfile's errors vary by version: all mean "unreadable"
        raise InvalidAudio(f"unreadable WAV file (truncated or corrupt header): {_reason(exc)}") from exc
    if info.format not in _WAV_FORMATS:
        raise InvalidAudio(f"not a WAV file (it reads as {info.format})")
    if info.channels < 1:
        raise InvalidAudio("WAV header declares no channels")
    if info.samplerate < 1:
        raise InvalidAudio("WAV header declares no sample rate")
    available = int(info.frames)
    frames = available
    declared = _declared_data_bytes(data)
    sample_bytes = _SAMPLE_BYTES.get(info.subtype)
    if declared is not None and sample_bytes is not None:
        frames = declared // (sample_bytes * info.channels)
        available = min(available, frames)
    if frames == 0:
        raise InvalidAudio("empty audio (the WAV file has no samples)")
    return WavInfo(
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        frames=frames,
        subtype=str(info.subtype),
        duration=frames / info.samplerate,
        format=str(info.format),
        available_frames=available,
    )


def decode_wav(
    data: bytes,
    *,
    max_seconds: float,
    max_channels: int = 2,
    min_rate: int = 8000,
    max_rate: int = 192_000,
) -> Audio:
    """Validate and decode a WAV file to float32 ``(channels, frames)``.

    The header is checked first (:func:`probe_wav`), so an over-long, over-wide or
    wrong-rate file is refused before a sample is decoded. Integer PCM is scaled to
    [-1, 1); float files keep their values (they may exceed 1.0) but NaN/Inf are refused.
    Every failure is an :class:`InvalidAudio` with a message a user can act on.
    """
    info = probe_wav(data)
    if info.channels > max_channels:
        raise InvalidAudio(f"audio has {info.channels} channels; at most {max_channels} are supported")
    if not min_rate <= info.sample_rate <= max_rate:
        raise InvalidAudio(
            f"sample rate {info.sample_rate} Hz is not supported; use {min_rate}-{max_rate} Hz"
        )
    if info.duration > max_seconds:
        raise InvalidAudio(f"audio is {info.duration:.1f} s long; the limit is {max_seconds:g} s")
    if info.truncated:
        raise InvalidAudio(
            f"WAV file is truncated: its header declares {info.duration:.2f} s "
            f"but only {(info.available_frames or 0) / info.sample_rate:.2f} s are present"
        )
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            # Read exactly the frames the probe vouched for, straight into float32.
            frames = f.read(info.available_frames, dtype="float32", always_2d=True)
    except Exception as exc:
        raise InvalidAudio(f"corrupt WAV file: {_reason(exc)}") from exc
    if frames.shape[0] == 0:
        raise InvalidAudio("empty audio (the WAV file has no samples)")
    if frames.shape[0] < (info.available_frames or 0):
        raise InvalidAudio("WAV file is truncated: its sample data ends early")
    # Only float encodings can hold non-finite values; skip the pass for integer PCM.
    if info.subtype in ("FLOAT", "DOUBLE") and not np.isfinite(frames).all():
        raise InvalidAudio("audio contains NaN or infinite samples")
    return Audio(np.ascontiguousarray(frames.T), info.sample_rate, info.subtype)


def wav_subtype(subtype: str) -> str:
    """The subtype to write a reply in: the source's own when plain PCM/float, else FLOAT."""
    return subtype if subtype in WAV_SUBTYPES else "FLOAT"


def encode_wav(samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> bytes:
    """Write ``(channels, frames)`` (or 1-D mono) samples as a standard RIFF WAV file.

    ``subtype`` goes through :func:`wav_subtype` (a source subtype WAV cannot hold, or a
    compressed one, becomes FLOAT). Integer subtypes are clipped to [-1, 1] first: libsndfile
    would otherwise wrap overs around. NaN becomes silence, +-Inf full scale. Files over
    4 GiB (RIFF's limit) are out of scope.
    """
    x = _as_2d(samples)
    subtype = wav_subtype(subtype)
    if not np.isfinite(x).all():
        x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    if subtype not in ("FLOAT", "DOUBLE"):
        x = np.clip(x, -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, x.T, int(sample_rate), subtype=subtype, format="WAV")
    return buf.getvalue()


def encode_flac(samples: np.ndarray, sample_rate: int) -> bytes:
    """``(channels, frames)`` samples as 24-bit FLAC: lossless at 24 bits (clipped to
    [-1, 1]), a quarter to a sixth of the size of the float WAV it replaces. Used for a
    station's stored buffer, which may hold hours of audio."""
    x = np.clip(np.nan_to_num(_as_2d(samples), nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, x.T, int(sample_rate), subtype="PCM_24", format="FLAC")
    return buf.getvalue()


def read_span(data: bytes, start_s: float = 0.0, seconds: float | None = None) -> Audio:
    """Part of a stored file our own code wrote (WAV or FLAC): ``seconds`` from
    ``start_s`` (to the end when None; a negative ``start_s`` counts from the end),
    decoded by seeking, not the whole file.
    :raises InvalidAudio: unreadable."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate = int(f.samplerate)
            first = int(round(start_s * rate))
            first = min(max(0, f.frames + first if start_s < 0 else first), f.frames)
            f.seek(first)
            count = f.frames - first if seconds is None else min(int(round(seconds * rate)), f.frames - first)
            frames = f.read(count, dtype="float32", always_2d=True)
            subtype = str(f.subtype)
    except Exception as exc:
        raise InvalidAudio(f"corrupt audio file: {_reason(exc)}") from exc
    return Audio(np.ascontiguousarray(frames.T), rate, subtype)


def _reason(exc: BaseException) -> str:
    # libsndfile messages start with "Error opening <_io.BytesIO object at 0x...>:", noise.
    text = str(exc).strip() or type(exc).__name__
    return text.split(">: ", 1)[-1]


# --------------------------------------------------------------------------------------
# Signal helpers


def _as_2d(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        return x[np.newaxis, :]
    if x.ndim != 2:
        raise ValueError(f"expected (channels, frames) samples, got shape {x.shape}")
    return x


def _frames(seconds: float, rate: int) -> int:
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"seconds must be finite and >= 0, got {seconds}")
    return int(round(seconds * rate))


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample every channel from ``from_rate`` to ``to_rate`` (soxr, HQ).

    Returns exactly ``round(frames * to_rate / from_rate)`` frames, so durations survive a
    round trip through the model's rate. Equal rates return the input (as float32).
    """
    x = _as_2d(samples)
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    if from_rate == to_rate:
        return x
    n_out = int(round(x.shape[1] * to_rate / from_rate))
    if x.shape[1] == 0:
        return np.zeros((x.shape[0], 0), np.float32)
    # soxr wants (frames, channels), C-contiguous; it filters each channel independently.
    y = soxr.resample(np.ascontiguousarray(x.T), from_rate, to_rate, quality="HQ").T
    if y.shape[1] != n_out:  # soxr may be one frame off the rounded length
        y = y[:, :n_out] if y.shape[1] > n_out else np.pad(y, ((0, 0), (0, n_out - y.shape[1])))
    return np.ascontiguousarray(y, dtype=np.float32)


def to_channels(samples: np.ndarray, channels: int) -> np.ndarray:
    """Map audio to ``channels`` channels.

    Mono -> N duplicates; N -> mono is the mean (no gain, so a full-scale mono source stays
    in range); N -> M (both > 1): fewer keeps the first M channels (WAV order puts front
    left/right first), more cycles the existing ones.
    """
    x = _as_2d(samples)
    have = x.shape[0]
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if have == channels:
        return x
    if channels == 1:
        return x.mean(axis=0, keepdims=True, dtype=np.float32)
    if have == 1:
        return np.repeat(x, channels, axis=0)
    if channels < have:
        return np.ascontiguousarray(x[:channels])
    return x[np.arange(channels) % have]


def head(samples: np.ndarray, rate: int, seconds: float) -> np.ndarray:
    """The first ``seconds``: exactly ``round(seconds * rate)`` frames, silence-padded."""
    x = _as_2d(samples)
    n = _frames(seconds, rate)
    if x.shape[1] >= n:
        return x[:, :n]
    return np.pad(x, ((0, 0), (0, n - x.shape[1])))


def tail(samples: np.ndarray, rate: int, seconds: float) -> np.ndarray:
    """The last ``seconds``. Shorter input is returned whole, NOT padded: a prompt taken
    from the end of a short clip must not start with invented silence."""
    x = _as_2d(samples)
    n = _frames(seconds, rate)
    return x[:, max(x.shape[1] - n, 0) :]


def drop_tail(samples: np.ndarray, rate: int, seconds: float) -> np.ndarray:
    """All but the last ``seconds`` (empty if shorter). ``concat(drop_tail(x), tail(x))``
    with the same arguments is ``x``."""
    x = _as_2d(samples)
    n = _frames(seconds, rate)
    return x[:, : max(x.shape[1] - n, 0)]


def concat(*parts: np.ndarray) -> np.ndarray:
    """Join parts along frames; all must have the same channel count."""
    if not parts:
        raise ValueError("concat needs at least one part")
    arrays = [_as_2d(p) for p in parts]
    if len({a.shape[0] for a in arrays}) > 1:
        raise ValueError(f"channel counts differ: {[a.shape[0] for a in arrays]}")
    return np.concatenate(arrays, axis=1)


def crossfade(
    a: np.ndarray, b: np.ndarray, rate: int, seconds: float, *, equal_power: bool = True
) -> np.ndarray:
    """Join ``a`` then ``b``, overlapping ``a``'s last and ``b``'s first ``seconds``.

    The result has ``len(a) + len(b) - overlap`` frames; the overlap is clamped to the
    shorter part. Equal-power (sin/cos) keeps loudness constant for unrelated material,
    e.g. a generated continuation over the original; it lifts perfectly correlated
    material by up to +3 dB mid-fade, for which ``equal_power=False`` (linear) is exact.
    """
    a, b = _as_2d(a), _as_2d(b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"channel counts differ: {a.shape[0]} and {b.shape[0]}")
    n = min(_frames(seconds, rate), a.shape[1], b.shape[1])
    if n == 0:
        return np.concatenate([a, b], axis=1)
    # Midpoint sampling: neither part is ever at exactly 0 or 1 inside the overlap, so the
    # ramp is symmetric and no frame is duplicated at its edges.
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    if equal_power:
        fade_in = np.sin(t * np.pi / 2)
        fade_out = np.cos(t * np.pi / 2)
    else:
        fade_in = t
        fade_out = 1.0 - t
    mixed = a[:, -n:] * fade_out.astype(np.float32) + b[:, :n] * fade_in.astype(np.float32)
    return np.concatenate([a[:, :-n], mixed, b[:, n:]], axis=1)


def trim_trailing_silence(
    samples: np.ndarray, rate: int, threshold_db: float = -60.0, *, keep_seconds: float = 0.0
) -> np.ndarray:
    """Drop trailing frames whose peak (over all channels) is below ``threshold_db`` dBFS.

    ``keep_seconds`` of the quiet tail are kept after the last loud frame so a decay is not
    cut dead. All-silent input returns zero frames.
    """
    x = _as_2d(samples)
    threshold = 10.0 ** (threshold_db / 20.0)
    loud = np.flatnonzero(np.abs(x).max(axis=0, initial=0.0) > threshold)
    end = 0 if loud.size == 0 else int(loud[-1]) + 1 + _frames(keep_seconds, rate)
    return x[:, : min(end, x.shape[1])]


def peak_db(samples: np.ndarray) -> float:
    """Peak level in dBFS (``-inf`` for silence or no samples)."""
    x = np.asarray(samples)
    peak = float(np.abs(x).max()) if x.size else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf
