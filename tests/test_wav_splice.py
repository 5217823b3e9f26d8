"""Byte-level WAV joining (g4l.wav_splice) and the worker's result assembly that uses it."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from conftest import make_wav, read_wav, wav_info

from g4l import audio, wav_splice
from g4l.jobs.spec import Assembly, AudioFormat, GenerationSpec, Prompt
from g4l.worker.assembly import build_result

SUBTYPES = sorted(wav_splice.SAMPLE_BYTES)


def result_wav(output: np.ndarray, engine_rate: int, rate: int, channels: int, subtype: str, source: bytes,
               prompt_s: float) -> tuple[bytes, int]:
    """A continue's result file and its length in frames."""
    spec = GenerationSpec(model="debug", prompt=Prompt(seconds=prompt_s), output_seconds=30.0,
                          output=AudioFormat(sample_rate=rate, channels=channels, subtype=subtype),
                          assembly=Assembly.SPLICE)
    result = build_result(spec, output, engine_rate, source)
    return result.wav(), result.frames


def _noise(frames: int, channels: int, seed: int = 1) -> np.ndarray:
    return (0.4 * np.random.default_rng(seed).standard_normal((channels, frames))).astype(np.float32)


@pytest.mark.parametrize("subtype", SUBTYPES)
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("frames", [0, 1, 4801])
def test_header_describes_the_samples_that_follow(subtype, channels, frames) -> None:
    reference = audio.encode_wav(_noise(frames, channels), 44_100, subtype) if frames else None
    head = wav_splice.header(44_100, channels, subtype, frames)
    payload = b""
    if reference is not None:
        start, size = wav_splice.data_span(reference)
        payload = reference[start:start + size]
    pad = b"\0" if len(payload) & 1 else b""
    info = wav_info(head + payload + pad)
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (44_100, channels, frames, subtype)
    if reference is not None:
        assert np.array_equal(read_wav(head + payload + pad)[0], read_wav(reference)[0])


@pytest.mark.parametrize("subtype", SUBTYPES)
@pytest.mark.parametrize("channels", [1, 2])
def test_splice_keeps_the_input_bytes_and_appends_the_new_samples(subtype, channels) -> None:
    rate = 48_000
    source = make_wav(2.0, rate, channels, subtype)
    drop = int(0.5 * rate)
    kept = wav_splice.without_tail(source, channels=channels, subtype=subtype, drop_frames=drop)
    assert kept is not None
    new = _noise(rate + 1, channels)
    out = wav_splice.splice(kept, audio.encode_wav(new, rate, subtype), sample_rate=rate, channels=channels,
                            subtype=subtype)
    info = wav_info(out)
    assert (info.frames, info.channels, info.samplerate, info.subtype) == (2 * rate - drop + rate + 1, channels,
                                                                           rate, subtype)
    start, _size = wav_splice.data_span(out)
    assert out[start:start + len(kept)] == bytes(kept)  # the client's samples, untouched
    got = read_wav(out)[0]
    src = read_wav(source)[0]
    assert np.array_equal(got[: 2 * rate - drop], src[: 2 * rate - drop])
    assert np.array_equal(got[2 * rate - drop:], read_wav(audio.encode_wav(new, rate, subtype))[0])


def test_only_plain_riff_files_qualify() -> None:
    plain = make_wav(0.5, 48_000, 2, "PCM_16")
    assert wav_splice.data_span(plain) is not None
    rf64 = io.BytesIO()
    sf.write(rf64, np.zeros((100, 2), np.float32), 48_000, subtype="PCM_16", format="RF64")
    w64 = io.BytesIO()
    sf.write(w64, np.zeros((100, 2), np.float32), 48_000, subtype="PCM_16", format="W64")
    for other in (rf64.getvalue(), w64.getvalue(), b"RIFX" + plain[4:], plain[:-10], b"", b"RIFF"):
        assert wav_splice.data_span(other) is None
    assert wav_splice.without_tail(plain, channels=2, subtype="ULAW", drop_frames=0) is None


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_continue_result_matches_the_decoded_join(subtype) -> None:
    """result_wav's byte path gives what decoding, joining and encoding gives (and keeps
    the kept part exact where the decode/encode round trip could not)."""
    rate, engine_rate, prompt_s = 44_100, 32_000, 1.5
    source = make_wav(3.0, rate, 2, subtype)
    output = _noise(int(2.0 * engine_rate), 1)
    wav, frames = result_wav(output, engine_rate, rate, 2, subtype, source, prompt_s)
    src = audio.decode_wav(source, max_seconds=60).samples
    new = audio.to_channels(audio.resample(output, engine_rate, rate), 2)
    expected = audio.concat(audio.drop_tail(src, rate, prompt_s), new)
    got = audio.decode_wav(wav, max_seconds=60)
    assert got.subtype == subtype and frames == expected.shape[1] == got.frames
    assert np.array_equal(got.samples[:, : src.shape[1] - int(prompt_s * rate)],
                          src[:, : src.shape[1] - int(prompt_s * rate)])
    if subtype == "FLOAT":
        assert np.array_equal(got.samples, expected)
    else:  # integer PCM: one quantisation step, and the encoder clips overs
        step = 2.0 ** -(8 * wav_splice.SAMPLE_BYTES[subtype] - 2)
        assert np.max(np.abs(got.samples - np.clip(expected, -1, 1))) <= step


def test_continue_result_of_a_file_that_cannot_be_spliced() -> None:
    """An RF64 or 8-bit signed input takes the decode path, same length and format rules."""
    rate = 22_050
    buf = io.BytesIO()
    sf.write(buf, _noise(3 * rate, 1).T, rate, subtype="PCM_16", format="RF64")
    for source, subtype in ((buf.getvalue(), "PCM_16"), (make_wav(3.0, rate, 1, "ULAW"), "ULAW")):
        wav, frames = result_wav(_noise(32_000, 1), 32_000, rate, 1, subtype, source, 1.0)
        info = wav_info(wav)
        assert info.frames == frames == 3 * rate - rate + rate
        assert info.subtype == audio.wav_subtype(subtype)
