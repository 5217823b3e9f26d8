"""g4l.audio on real signals: WAV flavours, resampling, slicing, fades, rejections."""

from __future__ import annotations

import io
import math
import struct
import time

import numpy as np
import pytest
import soundfile as sf

from g4l import audio
from g4l.audio import (
    Audio,
    concat,
    crossfade,
    decode_wav,
    drop_tail,
    encode_wav,
    head,
    peak_db,
    probe_wav,
    resample,
    tail,
    to_channels,
    trim_trailing_silence,
    wav_subtype,
)
from g4l.errors import InvalidAudio

LIMIT = 900.0


def sine(freq: float, rate: int, seconds: float, *, channels: int = 1, amp: float = 0.8,
         start: float = 0.0) -> np.ndarray:
    """A (channels, frames) float32 sine; ``start`` offsets the time axis (phase)."""
    t = start + np.arange(int(round(seconds * rate))) / rate
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(x[np.newaxis], channels, axis=0)


def sf_bytes(frames_by_channel: np.ndarray, rate: int, subtype: str, fmt: str = "WAV",
             **kw: object) -> bytes:
    """Write with soundfile directly (an independent encoder from encode_wav)."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(frames_by_channel).T, rate, subtype=subtype, format=fmt, **kw)
    return buf.getvalue()


def dominant_freq(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    k = int(np.argmax(spectrum))
    # Parabolic interpolation between bins: sub-bin accuracy from a short signal.
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / x.size


def decode(data: bytes, **kw: object) -> Audio:
    kw.setdefault("max_seconds", LIMIT)
    return decode_wav(data, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- round trips

# Worst-case absolute error of one encode/decode through each subtype (quantisation step,
# plus float32's own 24-bit mantissa for 32-bit PCM).
TOLERANCE = {
    "PCM_U8": 1 / 64,
    "PCM_16": 2 / 2**15,
    "PCM_24": 2 / 2**23,
    "PCM_32": 1e-6,
    "FLOAT": 0.0,
    "DOUBLE": 0.0,
}


@pytest.mark.parametrize("rate", [22050, 44100, 48000, 96000])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("subtype", sorted(TOLERANCE))
def test_every_wav_flavour_round_trips(subtype: str, channels: int, rate: int) -> None:
    rng = np.random.default_rng(rate + channels)
    x = sine(440, rate, 0.1, channels=channels, amp=0.7)
    x += rng.uniform(-0.2, 0.2, x.shape).astype(np.float32)  # full-band content, |x| < 0.9
    data = encode_wav(x, rate, subtype)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"

    info = probe_wav(data)
    assert (info.sample_rate, info.channels, info.frames, info.subtype) == (
        rate, channels, x.shape[1], subtype)
    assert info.duration == pytest.approx(0.1, abs=1 / rate)

    got = decode(data)
    assert got.samples.dtype == np.float32 and got.samples.shape == x.shape
    assert (got.sample_rate, got.subtype, got.channels, got.frames) == (
        rate, subtype, channels, x.shape[1])
    assert got.duration == pytest.approx(x.shape[1] / rate)
    assert np.max(np.abs(got.samples - x)) <= TOLERANCE[subtype]


@pytest.mark.parametrize(
    ("fmt", "kw", "magic"),
    [
        ("RF64", {}, b"RF64"),
        ("W64", {}, b"riff"),
        ("WAVEX", {}, b"RIFF"),
        ("WAV", {"endian": "BIG"}, b"RIFX"),
    ],
)
def test_other_wav_containers_decode(fmt: str, kw: dict[str, str], magic: bytes) -> None:
    x = sine(1000, 48000, 0.05, channels=2)
    data = sf_bytes(x, 48000, "PCM_24", fmt, **kw)
    assert data[:4] == magic
    got = decode(data)
    assert got.subtype == "PCM_24" and got.samples.shape == x.shape
    assert np.max(np.abs(got.samples - x)) <= TOLERANCE["PCM_24"]
    # The header's own data size is read in every container, so a cut file is noticed.
    rejected(data[: len(data) - 600], "truncated")


def test_encode_clips_integer_subtypes_instead_of_wrapping() -> None:
    x = np.array([[1.5, -1.5, 0.5, 2.0]], np.float32)
    pcm = decode(encode_wav(x, 8000, "PCM_16")).samples[0]
    assert pcm[0] == pytest.approx(1.0, abs=1e-4) and pcm[1] == pytest.approx(-1.0)
    assert pcm[3] > 0.99  # a wrapped over would come back negative
    # Float keeps overs: a DAW's float bus may legitimately exceed full scale.
    assert decode(encode_wav(x, 8000, "FLOAT")).samples[0].tolist() == [1.5, -1.5, 0.5, 2.0]


def test_encode_accepts_mono_1d_and_sanitises_non_finite() -> None:
    got = decode(encode_wav(np.array([np.nan, np.inf, -np.inf, 0.25], np.float32), 8000, "FLOAT"))
    assert got.samples.tolist() == [[0.0, 1.0, -1.0, 0.25]]


def test_subtype_fallback() -> None:
    for kept in ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"):
        assert wav_subtype(kept) == kept
    for other in ("IMA_ADPCM", "MS_ADPCM", "GSM610", "VORBIS", "ALAW", "PCM_S8", "nonsense"):
        assert wav_subtype(other) == "FLOAT"
    # A compressed source (here IMA ADPCM) decodes, and a reply in its "subtype" is FLOAT.
    src = decode(sf_bytes(sine(440, 22050, 0.2), 22050, "IMA_ADPCM"))
    assert src.subtype == "IMA_ADPCM"
    assert sf.info(io.BytesIO(encode_wav(src.samples, 22050, src.subtype))).subtype == "FLOAT"


# ---------------------------------------------------------------------------- resampling


def test_resample_keeps_frequency_and_length() -> None:
    x = sine(440, 48000, 1.0, channels=2)
    y = resample(x, 48000, 32000)
    assert y.dtype == np.float32 and y.shape == (2, 32000)
    z = resample(y, 32000, 44100)
    assert z.shape == (2, 44100)
    for ch in z:
        assert dominant_freq(ch, 44100) == pytest.approx(440, abs=0.5)
    # Level survives too (ignore the filter's edge transients).
    mid = z[:, 4410:-4410]
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(0.8 / math.sqrt(2), rel=0.01)


def test_resample_is_per_channel_and_identity_on_equal_rates() -> None:
    x = np.stack([sine(440, 44100, 0.3)[0], np.zeros(13230, np.float32)])
    y = resample(x, 44100, 32000)
    assert y.shape == (2, round(13230 * 32000 / 44100))
    assert np.all(y[1] == 0)  # silence on one channel does not pick up the other
    assert resample(x, 44100, 44100) is x
    assert resample(np.zeros((2, 0), np.float32), 48000, 32000).shape == (2, 0)


# ---------------------------------------------------------------------------- channels


def test_to_channels() -> None:
    mono = sine(440, 8000, 0.01)
    stereo = to_channels(mono, 2)
    assert stereo.shape == (2, 80) and np.array_equal(stereo[0], mono[0])
    assert np.array_equal(stereo[1], mono[0])
    lr = np.stack([mono[0], np.zeros(80, np.float32)])
    assert np.allclose(to_channels(lr, 1), mono * 0.5)
    three = np.stack([mono[0], -mono[0], mono[0] * 0.5])
    assert np.array_equal(to_channels(three, 2), three[:2])
    assert np.array_equal(to_channels(lr, 3), np.stack([lr[0], lr[1], lr[0]]))
    assert to_channels(lr, 2) is lr


# ---------------------------------------------------------------------------- slicing


def test_head_pads_with_silence_to_the_exact_length() -> None:
    x = sine(440, 32000, 1.0, channels=2)
    h = head(x, 32000, 2.5)
    assert h.shape == (2, 80000)
    assert np.array_equal(h[:, :32000], x) and not h[:, 32000:].any()
    assert head(x, 32000, 0.25).shape == (2, 8000)
    assert head(x, 44100, 1 / 3).shape[1] == round(44100 / 3)
    assert head(x, 32000, 0).shape == (2, 0)


@pytest.mark.parametrize("seconds", [0.0, 0.3, 1.0, 2.0, 5.0])
def test_tail_and_drop_tail_split_the_audio(seconds: float) -> None:
    x = np.random.default_rng(0).standard_normal((2, 64000)).astype(np.float32)  # 2 s
    t, rest = tail(x, 32000, seconds), drop_tail(x, 32000, seconds)
    assert t.shape[1] == min(round(seconds * 32000), 64000)  # shorter input: whole, no pad
    assert rest.shape[1] == 64000 - t.shape[1]
    assert np.array_equal(concat(rest, t), x)


def test_concat_checks_channels() -> None:
    a, b = sine(440, 8000, 0.1), sine(440, 8000, 0.2)
    assert concat(a, b, a).shape == (1, 3200)
    with pytest.raises(ValueError):
        concat(a, to_channels(b, 2))


# ---------------------------------------------------------------------------- crossfade


def max_jump(x: np.ndarray) -> float:
    return float(np.max(np.abs(np.diff(x, axis=-1))))


def test_crossfade_of_in_phase_sines_has_no_click() -> None:
    rate, overlap = 32000, 0.5
    a = sine(440, rate, 2.0)
    b = sine(440, rate, 2.0, start=2.0 - overlap)  # b continues a: in phase over the overlap
    own = max_jump(sine(440, rate, 1.0))

    for equal_power, bound in ((False, 1.0), (True, math.sqrt(2))):
        y = crossfade(a, b, rate, overlap, equal_power=equal_power)
        assert y.shape == (1, 64000 + 64000 - 16000)
        # Linear fades of coherent signals sum to the signal itself; equal power lifts them
        # by at most sqrt(2) (+3 dB) mid-fade. Either way no jump beyond the sine's slope.
        assert max_jump(y) <= own * bound * 1.001
    assert np.allclose(crossfade(a, b, rate, overlap, equal_power=False), sine(440, rate, 3.5),
                       atol=1e-5)

    # Sanity check of the measure: a butt join at a phase mismatch is a click.
    clicky = concat(a, sine(440, rate, 1.0, start=0.25 / 440))  # a ends at 0, this at the crest
    assert max_jump(clicky) > 5 * own


def test_crossfade_is_equal_power_for_uncorrelated_noise() -> None:
    rate = 32000
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 2 * rate)).astype(np.float32) * 0.1
    b = rng.standard_normal((2, 2 * rate)).astype(np.float32) * 0.1
    y = crossfade(a, b, rate, 1.0)
    assert y.shape == (2, 3 * rate)
    win = rate // 20  # 50 ms windows across the whole result, join included
    rms = np.sqrt(np.mean(y[:, : y.shape[1] // win * win].reshape(2, -1, win) ** 2, axis=(0, 2)))
    assert np.all(np.abs(20 * np.log10(rms / 0.1)) < 0.5)
    # A linear fade of the same noise dips about 3 dB mid-join: what equal power avoids.
    mid = crossfade(a, b, rate, 1.0, equal_power=False)[:, rate + rate // 2 - win : rate + rate // 2 + win]
    assert 20 * np.log10(np.sqrt(np.mean(mid**2)) / 0.1) == pytest.approx(-3.0, abs=0.5)


def test_crossfade_clamps_overlap_to_the_shorter_part() -> None:
    a, b = sine(440, 8000, 0.1), sine(440, 8000, 1.0)
    assert crossfade(a, b, 8000, 5.0).shape[1] == 8000  # overlap = all of a
    assert crossfade(a, b, 8000, 0.0).shape[1] == 8800


# ---------------------------------------------------------------------------- silence


def test_trim_trailing_silence() -> None:
    rate = 8000
    tone = np.full((2, rate // 2), 0.5, np.float32)
    hiss = np.random.default_rng(2).uniform(-1e-4, 1e-4, (2, rate)).astype(np.float32)  # -80 dB
    x = concat(tone, hiss)
    assert trim_trailing_silence(x, rate).shape == (2, rate // 2)
    assert trim_trailing_silence(x, rate, -90).shape[1] > rate  # -80 dB hiss now counts
    assert trim_trailing_silence(x, rate, keep_seconds=0.1).shape == (2, rate // 2 + 800)
    assert trim_trailing_silence(hiss, rate).shape == (2, 0)
    assert peak_db(tone) == pytest.approx(-6.02, abs=0.01)
    assert peak_db(np.zeros((1, 10))) == -math.inf


# ---------------------------------------------------------------------------- rejections


def rejected(data: bytes, match: str, **kw: object) -> InvalidAudio:
    with pytest.raises(InvalidAudio, match=match) as info:
        decode(data, **kw)
    assert info.value.code == "INVALID_AUDIO"
    return info.value


def test_rejects_empty_and_random_bytes() -> None:
    rejected(b"", "empty audio")
    rejected(np.random.default_rng(3).bytes(4096), "not a WAV file")
    rejected(b"RIFF\x24\x00\x00\x00AVI LIST", "not a WAV file")


def test_rejects_mp3_ogg_and_flac() -> None:
    rejected(b"ID3\x04\x00\x00\x00\x00\x00\x21" + bytes(200), r"not a WAV file \(it looks like MP3\)")
    rejected(b"\xff\xfb\x90\x64" + bytes(400), r"not a WAV file \(it looks like MP3\)")
    rejected(b"OggS\x00\x02" + bytes(100), r"looks like Ogg")
    flac = sf_bytes(sine(440, 44100, 0.1), 44100, "PCM_16", "FLAC")
    assert sf.info(io.BytesIO(flac)).frames == 4410  # a real, readable FLAC file
    rejected(flac, r"not a WAV file \(it looks like FLAC\)")


def test_rejects_zero_frames() -> None:
    empty = sf_bytes(np.zeros((1, 0), np.float32), 44100, "PCM_16")
    with pytest.raises(InvalidAudio, match="empty audio"):
        probe_wav(empty)
    rejected(empty, "empty audio")


def test_rejects_truncated_files() -> None:
    data = sf_bytes(sine(440, 44100, 0.5, channels=2), 44100, "PCM_16")
    for cut in (4, 12, 20, 30, 36):
        with pytest.raises(InvalidAudio):
            decode(data[:cut])
    rejected(data[:44], "truncated")  # header intact, no samples
    rejected(data[: len(data) // 2], r"truncated: its header declares 0\.50 s but only 0\.25 s")


def test_rejects_non_finite_float_samples() -> None:
    for subtype in ("FLOAT", "DOUBLE"):
        for bad in (np.nan, np.inf, -np.inf):
            x = sine(440, 48000, 0.1, channels=2)
            x[1, 1234] = bad
            rejected(sf_bytes(x, 48000, subtype), "audio contains NaN or infinite samples")


def test_refuses_two_hours_from_the_header_alone() -> None:
    # One second of real data, a header that declares two hours: nothing of that size is
    # ever allocated, and the refusal comes from the header before any decode.
    rate, channels = 48000, 2
    data = bytearray(sf_bytes(np.zeros((channels, rate), np.float32), rate, "PCM_16"))
    assert data[36:40] == b"data"
    declared = 7200 * rate * channels * 2
    struct.pack_into("<I", data, 4, 36 + declared)
    struct.pack_into("<I", data, 40, declared)

    started = time.perf_counter()
    info = probe_wav(bytes(data))
    assert info.duration == 7200.0 and info.truncated
    rejected(bytes(data), r"audio is 7200\.0 s long; the limit is 900 s")
    assert time.perf_counter() - started < 0.5


def test_limits_on_length_channels_and_rate() -> None:
    three = sf_bytes(sine(440, 44100, 0.1, channels=3), 44100, "PCM_16")
    rejected(three, "audio has 3 channels; at most 2 are supported")
    assert decode(three, max_channels=3).channels == 3
    rejected(sf_bytes(sine(440, 4000, 0.1), 4000, "PCM_16"), "sample rate 4000 Hz is not supported")
    rejected(sf_bytes(sine(440, 48000, 2.0), 48000, "PCM_16"), r"audio is 2\.0 s long; the limit is 1\.5 s",
             max_seconds=1.5)


def test_corrupted_bytes_never_escape_as_other_exceptions() -> None:
    rng = np.random.default_rng(4)
    good = sf_bytes(sine(440, 44100, 0.05, channels=2), 44100, "FLOAT")
    outcomes = set()
    for _ in range(300):
        data = bytearray(good)
        for pos in rng.integers(0, 60, rng.integers(1, 4)):
            data[pos] = rng.integers(0, 256)
        data = data[: rng.integers(0, len(data) + 1)] if rng.random() < 0.3 else data
        try:
            got = decode(bytes(data))
            outcomes.add("ok")
            assert got.samples.dtype == np.float32 and np.isfinite(got.samples).all()
        except InvalidAudio:
            outcomes.add("invalid")
    assert outcomes == {"ok", "invalid"}


def test_public_api() -> None:
    assert set(audio.__all__) >= {"Audio", "WavInfo", "probe_wav", "decode_wav", "encode_wav",
                                  "resample", "to_channels", "head", "tail", "drop_tail",
                                  "concat", "crossfade", "trim_trailing_silence"}
