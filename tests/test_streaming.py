"""Streamed generation, below the server: the windowed decode on the tiny MusicGen, the
batched engine handing pieces out while a row decodes, and the packager's feed joining
pieces on a live stream's buffer without a seam. (End to end: ``tests/test_hls.py``.)

Measured here (tiny model, 500 random frames, the same context on both sides): with 5
frames (0.1 s) the joined windows equal the whole decode exactly (max |diff| 0.0); with 3
frames 1.9e-3 (56 dB SNR), 1 frame 5.2e-3 (45 dB), none 0.17 (29 dB, peak 0.19): the tiny
decoder's receptive field is a few frames. The defaults are 25 before, 5 after
(docs/engine-batching.md, "Streamed decoding").
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import soxr
import torch

from g4l.engine import GenerationParams, build_debug_musicgen
from g4l.engine.base import PartialAudio
from g4l.engine.batched_musicgen import BatchedMusicGen
from g4l.engine.streaming import LEFT_CONTEXT_FRAMES, RIGHT_CONTEXT_FRAMES, WindowedDecoder
from g4l.hls.buffer import RATE
from g4l.hls.partial import PartialFeed, whole_output
from g4l.hls.stream import LiveStream
from g4l.jobs.partials import Piece
from g4l.settings import Settings

SR = 32000
HOP = 640


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    from g4l.engine.musicgen import disable_mkldnn

    disable_mkldnn()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_debug_musicgen(seed=0)
    torch.set_num_threads(threads)


def _decoder(model):  # type: ignore[no-untyped-def]
    def decode(codes: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return model.compression_model.decode(codes[None], None)[0].numpy()
    return decode


def _windowed(model, codes: torch.Tensor, left: int, right: int  # type: ignore[no-untyped-def]
              ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    decode = _decoder(model)
    whole = decode(codes)
    windows = WindowedDecoder(decode, HOP, chunk_frames=50, left=left, right=right)
    pieces, joins = [], []
    for n in range(1, codes.shape[1] + 1):  # frames become final one at a time
        piece = windows.feed(codes[:, :n])
        if piece is not None:
            pieces.append(piece)
            joins.append(windows.emitted_samples)
    pieces.append(windows.rest(whole))
    return np.concatenate(pieces, axis=1), whole, joins[:-1]


def test_joined_windows_equal_the_whole_decode(model) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    codes = torch.randint(0, model.lm.card, (model.lm.num_codebooks, 500))
    joined, whole, joins = _windowed(model, codes, LEFT_CONTEXT_FRAMES, RIGHT_CONTEXT_FRAMES)
    assert joined.shape == whole.shape and len(joins) >= 8
    assert float(np.abs(joined - whole).max()) <= 1e-6  # measured: 0.0
    # The context is what makes it so: without it the joins differ audibly.
    bare, _, joins = _windowed(model, codes, 0, 0)
    at_joins = np.concatenate([np.abs(bare - whole)[:, j - HOP:j + HOP] for j in joins], axis=1)
    assert float(at_joins.max()) > 1e-2


def test_the_batched_engine_hands_pieces_out_while_the_row_decodes(model) -> None:  # type: ignore[no-untyped-def]
    engine = BatchedMusicGen(model, max_batch=4)
    engine.start()
    try:
        steps: list[int] = []
        pieces: list[tuple[PartialAudio, int]] = []
        prompt = (0.1 * np.random.default_rng(1).standard_normal((1, 2 * SR))).astype(np.float32)
        params = GenerationParams(duration=6.0, seed=3)
        out = engine.generate(prompt, params, on_progress=lambda done, total: steps.append(done),
                              on_audio=lambda piece: pieces.append((piece, len(steps))), chunk_s=1.0)
        plain = engine.generate(prompt, params)
    finally:
        engine.stop()
    np.testing.assert_array_equal(out, plain)  # streaming changes nothing of the result
    assert [p.final for p, _ in pieces] == [False] * (len(pieces) - 1) + [True]
    assert all(p.prompt_samples == 2 * SR and p.sample_rate == SR for p, _ in pieces)
    assert [p.start for p, _ in pieces] == [0] + [p.end for p, _ in pieces[:-1]]  # contiguous
    joined = np.concatenate([p.samples for p, _ in pieces], axis=1)
    assert float(np.abs(joined - out).max()) <= 1e-6
    # Pieces of new audio came while the row still had steps to take.
    total = steps[-1]
    early = [p for p, seen in pieces if not p.final and p.end > p.prompt_samples and seen < total]
    assert len(early) >= 2


def _stream(tmp_path) -> LiveStream:  # type: ignore[no-untyped-def]
    return LiveStream("t" * 32, "session", "s", Settings(hls_dir=tmp_path))


def _drain(stream: LiveStream, frames: int) -> np.ndarray:
    out = [stream.buffer.take(4800) for _ in range(frames // 4800 + 1)]
    return np.concatenate(out, axis=1)


def test_a_feed_joins_pieces_on_the_stream_sample_for_sample(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    # A band-limited test signal at the model's rate, cut into uneven pieces.
    output = np.cumsum(rng.standard_normal((1, 4 * SR)), axis=1).astype(np.float32)
    output = (0.5 * output / np.abs(output).max()).astype(np.float32)
    cuts = [0, 12_000, 40_000, 41_000, 80_000, 4 * SR]
    spans = list(zip(cuts, cuts[1:], strict=False))
    pieces = [Piece("j", "s", i, a, b, 0, SR, 1, b == cuts[-1]) for i, (a, b) in enumerate(spans)]
    stream = _stream(tmp_path)
    feed = PartialFeed(stream, "j", whole_output)
    threads = [threading.Thread(target=feed.offer, args=(p, output[:, p.start:p.end]))
               for p in reversed(pieces)]  # handed over out of order
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert feed.done.is_set()
    expected = soxr.resample(output[0].astype(np.float32), SR, RATE, quality="HQ")
    played = _drain(stream, expected.shape[0])
    xf = stream.buffer.crossfade_frames
    # The stream fades the first piece in (a join like any other) and plays on as one signal.
    body = played[0, xf:expected.shape[0] - xf]
    ref = expected[xf:expected.shape[0] - xf]
    assert float(np.abs(body - ref).max()) <= 1e-5


def test_a_feed_missing_pieces_takes_the_rest_from_the_result(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    output = np.cumsum(rng.standard_normal((1, 4 * SR)), axis=1).astype(np.float32)
    output = (0.5 * output / np.abs(output).max()).astype(np.float32)
    cuts = [0, 32_000, 64_000, 96_000, 4 * SR]
    pieces = [Piece("j", "s", i, a, b, 0, SR, 1, b == cuts[-1])
              for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False))]
    stream = _stream(tmp_path)
    feed = PartialFeed(stream, "j", whole_output)
    for p in (pieces[0], pieces[1], pieces[3]):  # piece 2 was lost
        feed.offer(p, output[:, p.start:p.end])
    assert not feed.done.is_set()
    assert feed.rest_from(output, SR) and feed.done.is_set()
    feed.offer(pieces[2], output[:, pieces[2].start:pieces[2].end])  # late: ignored
    expected = soxr.resample(output[0], SR, RATE, quality="HQ")
    played = _drain(stream, expected.shape[0])
    xf = stream.buffer.crossfade_frames
    # Streamed part and rest meet without a seam (two resamplings of one signal agree).
    diff = np.abs(played[0, xf:expected.shape[0] - xf] - expected[xf:-xf])
    assert float(diff.max()) <= 1e-5  # measured 6e-8


def test_a_job_that_runs_again_goes_on_from_where_its_first_run_stopped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A station stretch that gave way: its new run numbers its pieces from 0 again; the
    successor feed plays it from where the first run's audio ended (nothing twice)."""
    rng = np.random.default_rng(2)
    output = np.cumsum(rng.standard_normal((1, 4 * SR)), axis=1).astype(np.float32)
    output = (0.5 * output / np.abs(output).max()).astype(np.float32)
    cuts = [0, 32_000, 64_000, 96_000, 4 * SR]
    pieces = [Piece("j", "s", i, a, b, 0, SR, 1, b == cuts[-1])
              for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False))]
    stream = _stream(tmp_path)
    feed = PartialFeed(stream, "j", whole_output)
    for p in pieces[:2]:  # the first run gave way after two pieces
        feed.offer(p, output[:, p.start:p.end])
    queued = feed.queued_frames
    successor = feed.follow_on()
    assert feed.done.is_set() and feed.latest() is successor and not successor.done.is_set()
    for p in pieces:  # the new run, the same audio (same seed), from piece 0
        successor.offer(p, output[:, p.start:p.end])
    assert successor.finished and successor.start_frame is not None
    expected = soxr.resample(output[0], SR, RATE, quality="HQ")
    # The new run's audio starts where the first run's ended (less its one crossfade's lead).
    xf = stream.buffer.crossfade_frames
    assert abs(successor.start_frame - (feed.start_frame or 0) - queued) <= 1
    played = _drain(stream, expected.shape[0] + RATE)
    music = np.flatnonzero(np.abs(played[0]) > 1e-4)
    assert abs(int(music[-1]) + 1 - expected.shape[0]) <= xf  # as long as the output once: no repeat
    # Before and after the join it is the output itself (after it, through a second
    # resampler started mid-signal: measured 3e-3 at worst on this 0.5-peak signal, -44 dB).
    before, after = slice(xf, queued - xf), slice(queued + xf, expected.shape[0] - 2 * xf)
    assert float(np.abs(played[0, before] - expected[before]).max()) <= 1e-5
    assert float(np.abs(played[0, after] - expected[after]).max()) <= 1e-2
