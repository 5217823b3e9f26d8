"""Continuous batching on real AudioCraft code (the tiny random-weight MusicGen, no mocks).

The claim under test: a row's codes depend on its own prompt, description, parameters and
seed only, never on who shares its batch, when it joined or who left. All comparisons are
exact (``torch.equal``) on CPU, sampled rows included: rows draw from their own generators,
and in batches of two rows or more the forward pass pads its lines so that the BLAS kernels
round the same way for every batch size (see ``g4l/engine/batching.py``). A lone row runs
stock AudioCraft's own 2-line kernel: bit for bit stock's output, and within the last bits
of its batched twin's logits (same codes in every case here; measured below).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from g4l.engine import Cancelled, GenerationParams, build_debug_musicgen, memory
from g4l.engine.batched_musicgen import BatchedMusicGen
from g4l.engine.batching import DecodeLoop, RowHandle
from g4l.engine.kv_cache import CacheShape
from g4l.engine.sampling import SamplingParams, new_generator, sample_rows
from g4l.errors import GpuOutOfMemory

SR = 32000


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    from g4l.engine.musicgen import disable_mkldnn

    disable_mkldnn()  # as the worker runs it
    # One thread, as a worker on this 2-core box (G4L_TORCH_THREADS): the tiny model's ops
    # are too small to split, and two spinning OpenMP threads on a busy machine made each
    # step 20-100 times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_debug_musicgen(seed=0)
    torch.set_num_threads(threads)


def _prompt(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((1, int(seconds * SR)))).astype(np.float32)


# Four jobs that differ in everything a job can differ in.
JOBS: list[tuple[float | None, GenerationParams]] = [
    (2.0, GenerationParams(duration=4.0, seed=7)),
    (3.0, GenerationParams(duration=3.5, seed=3, top_k=50, temperature=0.8, cfg_coef=1.0, description="dub")),
    (None, GenerationParams(duration=2.5, seed=5, top_p=0.9, description="ambient pads")),
    (0.5, GenerationParams(duration=4.0, seed=11, top_k=1, cfg_coef=5.0)),
]


def _submit(engine: BatchedMusicGen, job: tuple[float | None, GenerationParams], **kw: object) -> RowHandle:
    seconds, params = job
    prompt = None if seconds is None else _prompt(seconds, seed=int(seconds * 10))
    return engine.submit(prompt, params, **kw)  # type: ignore[arg-type]


def _alone(engine: BatchedMusicGen, job: tuple[float | None, GenerationParams]) -> torch.Tensor:
    handle = _submit(engine, job)
    engine.loop.run_until_idle()
    return handle.result()


def _greedy(params: GenerationParams) -> GenerationParams:
    return GenerationParams(top_k=1, temperature=params.temperature, cfg_coef=params.cfg_coef,
                            description=params.description, duration=params.duration, seed=params.seed)


def _stock(model, prompt: np.ndarray | None, params: GenerationParams) -> torch.Tensor:  # type: ignore[no-untyped-def]
    model.set_generation_params(use_sampling=True, top_k=params.top_k, top_p=params.top_p,
                                temperature=params.temperature, duration=params.duration, cfg_coef=params.cfg_coef)
    torch.manual_seed(params.seed or 0)
    with torch.inference_mode():
        if prompt is None:
            _, codes = model.generate([params.text], return_tokens=True)
        else:
            _, codes = model.generate_continuation(torch.from_numpy(prompt), SR, descriptions=[params.text],
                                                   return_tokens=True)
    return codes[0]


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_a_lone_continuation_is_stock_audiocraft_bit_for_bit(model, attention: str) -> None:  # type: ignore[no-untyped-def]
    """Same seed, top-k 250 sampling: the loop reproduces generate_continuation's codes and audio."""
    prompt, params = _prompt(2.0, seed=1), GenerationParams(duration=4.0, seed=42, description="warm")
    stock_codes = _stock(model, prompt, params)
    engine = BatchedMusicGen(model, attention=attention)
    handle = engine.submit(prompt, params)
    engine.loop.run_until_idle()
    codes = handle.result()
    assert codes.shape == stock_codes.shape == (4, 200)
    assert torch.equal(codes, stock_codes)
    with torch.inference_mode():
        stock_audio = model.compression_model.decode(stock_codes[None], None)[0].numpy()
    assert np.array_equal(engine.decode(codes), stock_audio)


def test_a_lone_generation_without_prompt_is_stock_generate(model) -> None:  # type: ignore[no-untyped-def]
    params = GenerationParams(duration=2.0, seed=9, top_p=0.8, temperature=1.3, description="techno")
    engine = BatchedMusicGen(model)
    handle = engine.submit(None, params)
    engine.loop.run_until_idle()
    assert torch.equal(handle.result(), _stock(model, None, params))


def test_greedy_rows_are_the_same_alone_and_batched_with_other_lengths_and_params(model) -> None:  # type: ignore[no-untyped-def]
    engine = BatchedMusicGen(model)
    jobs = [(seconds, _greedy(params)) for seconds, params in JOBS]
    alone = [_alone(engine, job) for job in jobs]
    handles = [_submit(engine, job) for job in jobs]
    engine.loop.run_until_idle()
    assert engine.loop.prefills == 2 * len(jobs)
    for solo, handle in zip(alone, handles, strict=True):
        assert torch.equal(handle.result(), solo)
    # The rows really differ (different prompts, lengths, guidance): not a trivial equality.
    assert len({tuple(a[0, -20:].tolist()) for a in alone}) == len(jobs)


def test_sampled_rows_are_the_same_alone_and_batched(model) -> None:  # type: ignore[no-untyped-def]
    """With top-k/top-p sampling too: measured exact on CPU (each row its own generator)."""
    engine = BatchedMusicGen(model)
    alone = [_alone(engine, job) for job in JOBS]
    for batch in (JOBS, JOBS[::-1]):  # and in another slot order
        handles = [_submit(engine, job) for job in batch]
        engine.loop.run_until_idle()
        results = [h.result() for h in handles]
        if batch is not JOBS:
            results = results[::-1]
        for solo, got in zip(alone, results, strict=True):
            assert torch.equal(got, solo)


def _logits_alone_and_batched(engine: BatchedMusicGen, jobs: list[tuple[float | None, GenerationParams]],
                              ) -> tuple[list[list[torch.Tensor]], list[RowHandle]]:
    alone = []
    for job in jobs:
        handle = _submit(engine, job)
        engine.loop.run_until_idle()
        alone.append(handle.logits)
    handles = [_submit(engine, job) for job in jobs]
    engine.loop.run_until_idle()
    return alone, handles


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_padded_a_rows_logits_are_bit_for_bit_the_same_alone_and_batched(model) -> None:  # type: ignore[no-untyped-def]
    """Stronger than equal codes: every step's guided logits, with the lone row padded too."""
    engine = BatchedMusicGen(model, pad_lone_row=True, record_logits=True)
    alone, handles = _logits_alone_and_batched(engine, JOBS)
    assert all(_same(solo, h.logits) for solo, h in zip(alone, handles, strict=True))


def test_by_default_a_lone_row_differs_from_its_batched_twin_in_the_last_bits_only(model) -> None:  # type: ignore[no-untyped-def]
    """Default: a lone row (and a row left alone when its mates finish) runs stock's 2-line
    kernel, faster alone, which rounds the last bits differently from a batch's padded lines:
    measured here as a logit drift above 0 and below 1e-3, with the same codes."""
    engine = BatchedMusicGen(model, record_logits=True)
    alone, in_four = _logits_alone_and_batched(engine, JOBS)
    assert not all(_same(solo, h.logits) for solo, h in zip(alone, in_four, strict=True))
    drift = max((a - b).abs().max().item() for solo, h in zip(alone, in_four, strict=True)
                for a, b in zip(solo, h.logits, strict=True))
    assert 0 < drift < 1e-3  # rounding, not another computation
    for solo, handle in zip(alone, in_four, strict=True):
        assert len(solo) == len(handle.logits)
    codes_alone = [_alone(engine, job) for job in JOBS]
    assert all(torch.equal(c, h.result()) for c, h in zip(codes_alone, in_four, strict=True))


def test_a_row_that_joins_mid_loop_gets_what_it_gets_alone(model) -> None:  # type: ignore[no-untyped-def]
    engine = BatchedMusicGen(model)
    alone = [_alone(engine, job) for job in JOBS[:3]]
    first = _submit(engine, JOBS[0])
    for _ in range(37):
        engine.loop.step()
    second = _submit(engine, JOBS[1])
    for _ in range(23):
        engine.loop.step()
    assert engine.loop.active == 2
    third = _submit(engine, JOBS[2])
    engine.loop.run_until_idle()
    for solo, handle in zip(alone, (first, second, third), strict=True):
        assert torch.equal(handle.result(), solo)


def test_cancelling_one_row_leaves_the_others_identical(model) -> None:  # type: ignore[no-untyped-def]
    engine = BatchedMusicGen(model)
    alone = [_alone(engine, job) for job in JOBS]
    seen: list[int] = []

    def cancel_at_30(done: int, total: int) -> None:
        seen.append(done)
        if done >= 30:
            raise Cancelled()

    handles = [_submit(engine, JOBS[0]), _submit(engine, JOBS[3], on_progress=cancel_at_30),
               _submit(engine, JOBS[1]), _submit(engine, JOBS[2])]
    for _ in range(10):
        engine.loop.step()
    handles[0].cancel()  # the first row, from outside, between steps
    engine.loop.run_until_idle()
    for cancelled in handles[:2]:
        with pytest.raises(Cancelled):
            cancelled.result()
    assert seen[-1] == 30  # no step after the cancel
    assert torch.equal(handles[2].result(), alone[1])
    assert torch.equal(handles[3].result(), alone[2])


def test_a_failing_progress_callback_fails_its_row_only(model) -> None:  # type: ignore[no-untyped-def]
    engine = BatchedMusicGen(model)
    solo = _alone(engine, JOBS[2])

    def broken(done: int, total: int) -> None:
        if done == 5:
            raise RuntimeError("listener went away")

    bad = _submit(engine, JOBS[0], on_progress=broken)
    good = _submit(engine, JOBS[2])
    engine.loop.run_until_idle()
    with pytest.raises(RuntimeError, match="listener went away"):
        bad.result()
    assert torch.equal(good.result(), solo)


def test_progress_counts_each_rows_own_steps_like_stock(model) -> None:  # type: ignore[no-untyped-def]
    engine = BatchedMusicGen(model)
    calls: dict[int, list[tuple[int, int]]] = {0: [], 1: []}
    handles = [_submit(engine, JOBS[i], on_progress=lambda d, t, i=i: calls[i].append((d, t))) for i in (0, 1)]
    engine.loop.run_until_idle()
    stock_calls: list[tuple[int, int]] = []
    model.set_custom_progress_callback(lambda d, t: stock_calls.append((d, t)))
    try:
        seconds, params = JOBS[0]
        model.set_generation_params(duration=params.duration)
        with torch.inference_mode():
            model.generate_continuation(torch.from_numpy(_prompt(2.0, 20)), SR, progress=True)
    finally:
        model.set_custom_progress_callback(None)
    assert calls[0] == stock_calls  # (1, 103) ... (103, 103): same numbers as AudioCraft
    for row in calls.values():
        done = [d for d, _ in row]
        assert done == list(range(1, len(done) + 1)) and done[-1] == row[-1][1]
    assert calls[0][-1][1] != calls[1][-1][1]  # each its own total
    assert all(h.done() for h in handles)


def test_a_full_batch_admits_by_priority_then_arrival(model) -> None:  # type: ignore[no-untyped-def]
    engine = BatchedMusicGen(model, max_batch=1)
    joined: list[str] = []

    def track(name: str):  # type: ignore[no-untyped-def]
        def on_progress(done: int, total: int) -> None:
            if done == 1:
                joined.append(name)
        return on_progress

    params = GenerationParams(duration=1.0, seed=1)
    engine.submit(None, params, on_progress=track("first"))
    engine.loop.step()
    engine.submit(None, params, on_progress=track("station"), priority=0)
    engine.submit(None, params, on_progress=track("interactive"), priority=1)
    engine.submit(None, params, on_progress=track("station-2"), priority=0)
    engine.loop.run_until_idle()
    assert joined == ["first", "interactive", "station", "station-2"]


def test_the_kv_budget_holds_rows_back_and_changes_nothing(model) -> None:  # type: ignore[no-untyped-def]
    engine = BatchedMusicGen(model)
    alone = [_alone(engine, job) for job in JOBS[:3]]
    cache = engine.loop.cache
    # Four half-row slots of 256 positions: two rows (the lines are padded to 4 anyway).
    two_rows = cache.bytes_for(cache.padded(CacheShape(4, 200, 1)))
    budgeted = BatchedMusicGen(model, kv_budget_bytes=two_rows)
    handles = [_submit(budgeted, job) for job in JOBS[:3]]
    most = 0
    while not budgeted.loop.idle():
        budgeted.loop.step()
        most = max(most, budgeted.loop.active)
        assert budgeted.loop.cache.nbytes <= two_rows
    assert most == 2  # the third waited for a row to leave
    for solo, handle in zip(alone, handles, strict=True):
        assert torch.equal(handle.result(), solo)


def test_a_row_put_back_in_the_queue_resumes_where_it_was(model) -> None:  # type: ignore[no-untyped-def]
    """What an out-of-memory error does to the latest row: it leaves with its codes and
    generator and resumes with a prefill of everything it has. Greedy: same codes."""
    engine = BatchedMusicGen(model)
    jobs = [(seconds, _greedy(params)) for seconds, params in (JOBS[0], JOBS[3])]
    alone = [_alone(engine, job) for job in jobs]
    handles = [_submit(engine, job) for job in jobs]
    for _ in range(40):
        engine.loop.step()
    engine.loop.evict_latest()
    assert engine.loop.active == 1 and engine.loop.waiting == 1
    engine.loop.run_until_idle()
    for solo, handle in zip(alone, handles, strict=True):
        assert torch.equal(handle.result(), solo)


def test_cross_attention_padding_is_masked(model) -> None:  # type: ignore[no-untyped-def]
    """Rows with conditions of different lengths share a padded cross-attention cache."""
    engine = BatchedMusicGen(model)
    solo = _alone(engine, JOBS[1])
    padded = BatchedMusicGen(model)
    padded.loop.cache.reserve(CacheShape(4, 256, 9))  # room for a 9-token condition
    handle = _submit(padded, JOBS[1])
    padded.loop.run_until_idle()
    assert padded.loop.cache.cross_len[:2] == [1, 1] and padded.loop.cache.shape.cross_length == 9
    assert torch.equal(handle.result(), solo)


def test_concurrent_callers_share_the_loop_thread(model) -> None:  # type: ignore[no-untyped-def]
    engine = BatchedMusicGen(model)
    alone = [engine.decode(_alone(engine, job)) for job in JOBS]
    engine.start()
    try:
        out: dict[int, np.ndarray] = {}

        def call(i: int) -> None:
            seconds, params = JOBS[i]
            prompt = None if seconds is None else _prompt(seconds, seed=int(seconds * 10))
            out[i] = engine.generate(prompt, params, timeout=60)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(JOBS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        engine.stop()
    for i, audio in enumerate(alone):
        assert np.array_equal(out[i], audio)
        assert abs(audio.shape[1] / SR - JOBS[i][1].duration) < 0.05


def test_whole_decodes_run_on_the_models_few_decode_threads(model) -> None:  # type: ignore[no-untyped-def]
    # Rows that end together do not decode side by side in their jobs' threads (each
    # decode's activations in another thread's heap): at most ``decode_slots`` at once,
    # on the same threads every time, and the audio is the same.
    engine = BatchedMusicGen(model, decode_slots=2)
    alone = [engine.decode(_alone(engine, job)) for job in JOBS]
    seen: list[tuple[str, int]] = []
    running = [0]
    lock = threading.Lock()
    decode = engine.decode

    def watched(codes: torch.Tensor) -> np.ndarray:
        with lock:
            running[0] += 1
            seen.append((threading.current_thread().name, running[0]))
        try:
            time.sleep(0.05)  # long enough for the other callers' decodes to be waiting
            return decode(codes)
        finally:
            with lock:
                running[0] -= 1

    engine.decode = watched  # type: ignore[method-assign]
    engine.start()
    out: dict[int, np.ndarray] = {}
    try:
        for _ in range(2):
            threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, engine.generate(
                None if JOBS[i][0] is None else _prompt(JOBS[i][0], seed=int(JOBS[i][0] * 10)), JOBS[i][1],
                timeout=60))) for i in range(len(JOBS))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            for i, audio in enumerate(alone):
                assert np.array_equal(out.pop(i), audio)
    finally:
        engine.stop()
    assert len(seen) == 2 * len(JOBS)
    assert max(n for _, n in seen) <= 2
    names = {name for name, _ in seen}
    assert len(names) <= 2 and all(name.startswith("encodec-decode") for name in names), names


def test_prompts_that_do_not_fit_are_refused_at_submit(model) -> None:  # type: ignore[no-untyped-def]
    engine = BatchedMusicGen(model)
    with pytest.raises(ValueError, match="shorter"):
        engine.submit(_prompt(3.0, 1), GenerationParams(duration=2.0))
    with pytest.raises(ValueError, match="window"):
        engine.submit(None, GenerationParams(duration=31.0))
    assert engine.loop.idle()


def test_unsupported_models_are_refused_clearly(model) -> None:  # type: ignore[no-untyped-def]
    from g4l.engine.batch_lm import UnsupportedModel

    model.lm.train()
    try:
        with pytest.raises(UnsupportedModel, match="eval"):
            DecodeLoop(model.lm)
    finally:
        model.lm.eval()


@pytest.mark.parametrize("params", [SamplingParams(top_k=250), SamplingParams(top_k=50, temperature=0.8),
                                    SamplingParams(top_k=1), SamplingParams(top_p=0.9, temperature=1.2),
                                    SamplingParams(top_k=0)])
def test_sample_rows_draws_what_multinomial_draws(params: SamplingParams) -> None:
    """Rows sampled together in one pass draw, bit for bit, what each draws alone through
    AudioCraft's own helpers (softmax, ``sample_top_k``/``sample_top_p``, ``torch.multinomial``
    after ``torch.manual_seed(seed)``), and leave each generator where that draw leaves
    torch's; for the tiny and the released vocabularies."""
    from audiocraft.utils import utils as ac  # importable: g4l.engine prepared it

    saved = torch.get_rng_state()
    try:
        for card in (256, 2048):
            logits = 4 * torch.randn(5, 4, card, generator=torch.Generator().manual_seed(card))
            generators = [new_generator(seed, torch.device("cpu")) for seed in range(5)]
            stock: dict[int, torch.Tensor] = {}
            for seed in range(5):
                torch.manual_seed(seed)
                stock[seed] = torch.get_rng_state()
            for _ in range(3):  # consecutive draws: each generator advances as torch's does
                together = sample_rows(logits.clone(), params, generators)
                for seed in range(5):
                    torch.set_rng_state(stock[seed])
                    probs = torch.softmax(logits[seed] / params.temperature, dim=-1)
                    if params.top_p > 0:
                        alone = ac.sample_top_p(probs, params.top_p)
                    elif params.top_k > 0:
                        alone = ac.sample_top_k(probs, params.top_k)
                    else:
                        alone = ac.multinomial(probs, num_samples=1)
                    stock[seed] = torch.get_rng_state()
                    assert torch.equal(together[seed], alone[:, 0]), (card, seed)
                    assert torch.equal(generators[seed].get_state(), stock[seed])
                logits = logits.roll(1, dims=-1)
    finally:
        torch.set_rng_state(saved)


def test_sample_rows_refuses_what_multinomial_refuses() -> None:
    """NaN logits fail the draw, as ``torch.multinomial`` does, rather than pick a token."""
    logits = torch.zeros(2, 4, 256)
    logits[1, 2, 7] = float("nan")
    with pytest.raises(RuntimeError, match="inf, nan"):
        sample_rows(logits, SamplingParams(), [new_generator(0, torch.device("cpu")) for _ in range(2)])


def test_generate_reports_progress_and_cancels_from_the_callers_thread(model) -> None:  # type: ignore[no-untyped-def]
    """``BatchedMusicGen.generate`` calls its progress callback in the calling thread (a
    worker's callback talks to Redis: never on the shared loop thread), with its own row's
    growing step counts; a ``Cancelled`` the callback raises drops that row, raised to the
    caller, while a batch mate's codes stay what they are alone."""
    engine = BatchedMusicGen(model)
    mate_alone = _alone(engine, JOBS[0])
    long = GenerationParams(duration=30.0, seed=9)
    engine.start()
    try:
        mate = _submit(engine, JOBS[0])
        threads: set[int] = set()
        steps: list[tuple[int, int]] = []

        def progress(done: int, total: int) -> None:
            threads.add(threading.get_ident())
            steps.append((done, total))

        audio = engine.generate(None, long, on_progress=progress, timeout=120)
        assert abs(audio.shape[1] / SR - 30.0) < 0.05
        assert threads == {threading.get_ident()}
        assert len(steps) >= 2 and len({total for _, total in steps}) == 1
        assert all(a[0] < b[0] for a, b in zip(steps, steps[1:], strict=False))
        assert steps[-1][0] <= steps[-1][1]

        def cancel(done: int, total: int) -> None:
            raise Cancelled()

        before = engine.loop.steps
        with pytest.raises(Cancelled):
            engine.generate(None, long, on_progress=cancel, timeout=120)
        assert torch.equal(mate.result(60), mate_alone)
        deadline = time.monotonic() + 30
        while not engine.loop.idle():  # the cancelled row leaves at the loop's next step
            assert time.monotonic() < deadline, "the cancelled row stayed in the loop"
            time.sleep(0.01)
        assert engine.loop.steps - before < 1500  # it did not run to its end (1503 steps)
    finally:
        engine.stop()


# ---------------------------------------------------------------- out of memory
def test_a_batch_that_runs_out_of_memory_is_split_and_every_row_completes(model, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A forward pass over more than two rows runs out of memory (the test-only fault at the
    engine boundary, as a GPU would): the batch is split and retried, and every row ends
    with the codes it gets alone (greedy: a resumed row's prefill recomputes its cache)."""
    jobs = [(seconds, _greedy(params)) for seconds, params in JOBS]
    engine = BatchedMusicGen(model)
    alone = [_alone(engine, job) for job in jobs]
    monkeypatch.setattr(memory, "TEST_ONLY_OOM_ABOVE_ROWS", 2)
    split = BatchedMusicGen(model)
    handles = [_submit(split, job) for job in jobs]
    split.loop.run_until_idle()
    assert split.loop.out_of_memory >= 2  # four rows, then three, did not fit
    for solo, handle in zip(alone, handles, strict=True):
        assert torch.equal(handle.result(), solo)


def test_a_row_that_does_not_fit_alone_fails_with_gpu_out_of_memory_and_the_loop_goes_on(  # type: ignore[no-untyped-def]
        model, monkeypatch) -> None:
    """Every forward pass runs out of memory: the row retries its prefill in smaller chunks,
    then fails alone with GPU_OUT_OF_MEMORY; the loop thread serves the next row as usual."""
    seconds, params = JOBS[0]
    prompt = _prompt(seconds, seed=int(seconds * 10))
    engine = BatchedMusicGen(model)
    solo = engine.decode(_alone(engine, JOBS[0]))
    engine.start()
    try:
        monkeypatch.setattr(memory, "TEST_ONLY_OOM_ABOVE_ROWS", 0)
        with pytest.raises(GpuOutOfMemory) as failed:
            engine.generate(prompt, params, timeout=60)
        assert failed.value.code == "GPU_OUT_OF_MEMORY"
        assert engine.loop.out_of_memory > 1  # smaller prefill chunks were tried first
        monkeypatch.setattr(memory, "TEST_ONLY_OOM_ABOVE_ROWS", None)
        again = engine.generate(prompt, params, timeout=60)
    finally:
        engine.stop()
    assert np.array_equal(again, solo)
    assert engine.loop.prefill_chunk is None  # the next row prefills whole again


def test_the_stock_engine_fails_a_generation_that_does_not_fit_with_gpu_out_of_memory(  # type: ignore[no-untyped-def]
        model, monkeypatch) -> None:
    from g4l.engine.musicgen import MusicGenEngine

    engine = MusicGenEngine(model)
    monkeypatch.setattr(memory, "TEST_ONLY_OOM_ABOVE_ROWS", 0)
    with pytest.raises(GpuOutOfMemory):
        engine.generate(GenerationParams(duration=1.0, seed=1))
    monkeypatch.setattr(memory, "TEST_ONLY_OOM_ABOVE_ROWS", None)
    assert engine.generate(GenerationParams(duration=1.0, seed=1)).shape[1] == SR


# ---------------------------------------------------------------- each generation its own generator
def test_a_seeded_stock_generation_is_what_audiocraft_gives_after_manual_seed(model) -> None:  # type: ignore[no-untyped-def]
    """The stock engine draws from a generator of its own now, seeded as torch.manual_seed
    seeds the global one: a seed gives the audio it gave before."""
    from g4l.engine.musicgen import MusicGenEngine

    params = GenerationParams(duration=2.0, seed=7, description="dub")
    ours = MusicGenEngine(model).generate(params)
    model.set_generation_params(use_sampling=True, top_k=params.top_k, top_p=params.top_p,
                                temperature=params.temperature, duration=params.duration, cfg_coef=params.cfg_coef)
    torch.manual_seed(7)
    with torch.inference_mode():
        stock = model.generate([params.text])[0].numpy()
    assert np.array_equal(ours, stock)


def test_same_seed_same_audio_past_the_window_beside_another_models_generation(model) -> None:  # type: ignore[no-untyped-def]
    """Two models in one worker, each generating past its 30 s window on the stock engine
    (AudioCraft's windowed extension) in its own job thread: the seeded one gives the audio
    it gives alone, although the other (unseeded) draws and seeds all the while."""
    from g4l.engine.musicgen import MusicGenEngine

    ours, other = MusicGenEngine(model), MusicGenEngine(build_debug_musicgen(seed=1))
    params = GenerationParams(duration=31.0, seed=7, description="dub")
    alone = ours.generate(params)
    assert alone.shape[1] == pytest.approx(31.0 * SR, abs=SR * 0.05)
    done = threading.Event()
    others: list[np.ndarray] = []

    def beside() -> None:
        while not done.is_set():
            others.append(other.generate(GenerationParams(duration=31.0, description="ambient")))

    thread = threading.Thread(target=beside, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # the other generation is under way first
        together = ours.generate(params)
    finally:
        done.set()
        thread.join(120)
    assert others or thread.is_alive()  # it ran beside ours
    assert np.array_equal(together, alone)


def test_a_cache_that_cannot_grow_stays_what_it_was() -> None:
    """Growing the KV cache fails part-way (its first layer's self-attention grown, then a
    cross-attention allocation no allocator can give): every layer keeps its old shape
    and content, and a later growth that fits works on top of it."""
    from g4l.engine.kv_cache import KVCache

    cache = KVCache(2, 2, 4, True, torch.device("cpu"), torch.float32)
    cache.reserve(CacheShape(4, 10, 3))
    for tensors in (cache.k, cache.v, cache.ck, cache.cv):
        for t in tensors:
            t.normal_()
    before = [[t.clone() for t in ts] for ts in (cache.k, cache.v, cache.ck, cache.cv)]
    shape = cache.shape
    with pytest.raises(RuntimeError):
        cache.reserve(CacheShape(4, 300, 2**40))  # cross-attention of 2**40 positions: terabytes
    assert cache.shape == shape
    for old, now in zip(before, (cache.k, cache.v, cache.ck, cache.cv), strict=True):
        assert all(torch.equal(a, b) for a, b in zip(old, now, strict=True))
    cache.reserve(CacheShape(8, 300, 3))
    assert cache.k[0].shape[2] == 512 and cache.k[1].shape[0] == 8
    assert torch.equal(cache.k[1][:4, :, :shape.length], before[0][1])
    assert torch.equal(cache.ck[0][:4, :, :shape.cross_length], before[2][0])


def test_the_steps_direct_calls_are_the_modules_own_and_anything_else_is_called() -> None:
    """batch_lm._direct: a module's forward without __call__ only where it is that very
    function (same bits); a subclass with a forward of its own, and dropout while training,
    are still called as modules."""
    from g4l.engine.batch_lm import _direct, _direct_embedding, _identity

    torch.manual_seed(0)
    x = torch.randn(3, 5, 16)
    norm, linear, emb = torch.nn.LayerNorm(16), torch.nn.Linear(16, 7), torch.nn.Embedding(11, 16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.1, 0.1)
    assert torch.equal(_direct(norm)(x), norm(x)) and _direct(norm) is not norm
    assert torch.equal(_direct(linear)(x), linear(x)) and _direct(linear) is not linear
    tokens = torch.randint(0, 11, (3, 4))
    assert torch.equal(_direct_embedding(emb)(tokens), emb(tokens)) and _direct_embedding(emb) is not emb
    assert _direct(torch.nn.Identity()) is _identity
    dropout = torch.nn.Dropout(0.5)
    assert _direct(dropout.eval()) is _identity and _direct(dropout.train()) is dropout

    class Doubled(torch.nn.Linear):
        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(inp)

    doubled = Doubled(16, 7)
    assert _direct(doubled) is doubled  # its own forward: called, not bypassed
