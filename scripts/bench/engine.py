#!/usr/bin/env python3
"""Continuous batching vs stock AudioCraft, on the MusicGen-small and -medium shapes.

Builds each shape with random weights (``build_debug_musicgen(shape=...)``: the released
models' transformer, a lookup-table text conditioner, no download) on the device it finds
(CUDA when there is one, else CPU) and prints, for batch 1, 2, 4 and 8 of the batched loop
(``g4l.engine.batching``) and for stock ``MusicGen.generate_continuation`` one job at a
time: prefill seconds, decoding steps/s per stream and in total, the seconds a 30 s
continuation of a 6 s prompt takes, and peak memory. On CUDA it also times variants of the
step (fp32, fp16/bf16 autocast, SDPA attention) and says whether their greedy codes match
the fp32 reference.

A step's time is the median of the timed steps, and the paths take their steps in turns
(stock's ``generate_continuation`` runs in a thread held by its progress callback between
steps), so a burst of someone else's load on this shared 2-core box hits all of them alike.
A 30 s continuation is 1200+ steps; on CPU they are not
all run: the figure is the measured prefill plus 1203 steps at the measured rate (said on
the line). On CPU the prompts are 2 s (small) and 1 s (medium) so that the prefills fit the
time, and the prefill is scaled linearly to a 6 s prompt in that figure. Steps are measured
just after the prompt: later steps attend over more positions and are slower, for both
paths (more so for stock, which copies its whole cache every step). The last line is
``musicgen-small on cpu: batch1 A steps/s, batch8 B steps/s total (xR), stock batch1 C steps/s``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from g4l.engine import GenerationParams, build_debug_musicgen  # noqa: E402
from g4l.engine.batched_musicgen import BatchedMusicGen  # noqa: E402
from g4l.engine.musicgen import disable_mkldnn  # noqa: E402

SR = 32000
FRAME_RATE = 50
CONTINUATION_STEPS = 1200 + 3  # 24 s of new frames after a 6 s prompt, plus the delay pattern's 3


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak, or process RSS sampled every 10 ms."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_mb = 0.0
        self.base_mb = 0.0
        self._stop = threading.Event()

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base_mb = torch.cuda.memory_allocated() / 2**20
        else:
            self.peak_mb = self.base_mb = self._rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    @property
    def added_mb(self) -> float:
        """Peak above what was in use when the block began."""
        return max(0.0, self.peak_mb - self.base_mb)


@dataclass
class Result:
    label: str
    batch: int
    prefill_s: float  # until every row had its first token
    steps: int  # decoding steps timed (after the prefill)
    step_s: float  # seconds per decoding step (all rows together)
    peak_mb: float  # the process's peak during the run's prefill (GPU: allocator peak)
    added_mb: float  # of which added by the prefill
    kv_mb: float  # attention cache at the end of the run
    codes: list[torch.Tensor]
    rounds: list[float] = field(default_factory=list)  # each round's median step seconds

    @property
    def per_stream(self) -> float:
        return 1.0 / self.step_s

    @property
    def total(self) -> float:
        return self.batch / self.step_s

    def continuation_s(self, prefill_scale: float) -> float:
        return self.prefill_s * prefill_scale + CONTINUATION_STEPS * self.step_s


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class StockRun:
    """Stock ``generate_continuation`` in a thread, held after each step by its progress
    callback until :meth:`step` lets it take the next one: its steps can be interleaved
    with the batched loops', so every path sees the same share of this box's noisy load."""

    def __init__(self, model: Any, device: str, prompt: np.ndarray, steps: int) -> None:
        self.model, self.device, self.prompt = model, device, prompt
        self.duration = (prompt.shape[1] // 640 + steps) / FRAME_RATE
        self._go = threading.Semaphore(0)
        self._stepped = threading.Semaphore(0)
        self._ended = threading.Event()
        self.codes: torch.Tensor | None = None
        self.label, self.batch = "stock", 1
        lm = model.lm
        positions = prompt.shape[1] // 640 + steps + lm.num_codebooks
        item = next(iter(lm.parameters())).element_size()
        # Stock's streaming cache at the end: keys and values, two halves, every layer.
        self.kv_mb = 2 * 2 * len(lm.transformer.layers) * lm.dim * positions * item / 2**20

    def _on_step(self, done: int, total: int) -> None:
        sync(self.device)
        self._stepped.release()
        self._go.acquire()

    def _run(self) -> None:
        try:
            torch.manual_seed(0)
            with torch.inference_mode():
                _, codes = self.model.generate_continuation(torch.from_numpy(self.prompt).to(self.device), SR,
                                                            progress=True, return_tokens=True)
            self.codes = codes[0]
        finally:
            self._ended.set()
            self._stepped.release()

    def start(self) -> float:
        """Start; return the seconds until the first step (encode, prefill, first token)."""
        self.model.set_generation_params(use_sampling=True, top_k=250, duration=self.duration)
        self.model.set_custom_progress_callback(self._on_step)
        t = time.perf_counter()
        threading.Thread(target=self._run, daemon=True).start()
        self._stepped.acquire()
        return time.perf_counter() - t

    def done(self) -> bool:
        return self._ended.is_set()

    def step(self) -> float:
        t = time.perf_counter()
        self._go.release()
        self._stepped.acquire()
        return time.perf_counter() - t

    def finish(self) -> list[torch.Tensor]:
        while not self._ended.is_set():
            self._go.release()
            self._stepped.acquire()
        self.model.set_custom_progress_callback(None)
        assert self.codes is not None
        return [self.codes]


class BatchedRun:
    """``batch`` continuations of one prompt through one :class:`BatchedMusicGen` loop."""

    def __init__(self, model: Any, device: str, batch: int, prompt: np.ndarray, steps: int, label: str = "batched",
                 greedy: bool = False, **loop_kwargs: Any) -> None:
        self.device, self.batch, self.label, self.prompt = device, batch, label, prompt
        self.engine = BatchedMusicGen(model, max_batch=batch, **loop_kwargs)
        self.duration = (prompt.shape[1] // 640 + steps) / FRAME_RATE
        self.greedy = greedy
        self.handles: list[Any] = []
        self.kv_mb = 0.0

    def start(self) -> float:
        """Submit every row and run the first iteration (all prefills + a step); its seconds."""
        t = time.perf_counter()
        self.handles = [self.engine.submit(self.prompt, GenerationParams(duration=self.duration, seed=i,
                                                                         top_k=1 if self.greedy else 250))
                        for i in range(self.batch)]
        self.engine.loop.step()
        sync(self.device)
        return time.perf_counter() - t

    def done(self) -> bool:
        return self.engine.loop.idle()

    def step(self) -> float:
        self.kv_mb = max(self.kv_mb, self.engine.loop.cache.nbytes / 2**20)
        t = time.perf_counter()
        self.engine.loop.step()
        sync(self.device)
        return time.perf_counter() - t

    def finish(self) -> list[torch.Tensor]:
        self.engine.loop.run_until_idle()
        return [h.result() for h in self.handles]


def measure(runs: list[Any], device: str, per_turn: int = 2, rounds: int = 1) -> list[Result]:
    """Start each run (prefill timed alone), then take their steps in turns of ``per_turn``,
    rotating, until all are done. A run's steps are cut into ``rounds`` consecutive
    rounds (taken over the same minutes by every run, since the turns interleave them);
    a step's figure is the median of the per-round medians, and :attr:`Result.rounds`
    keeps each round's, for the spread and for per-round ratios."""
    prefill, durations, peaks = {}, {}, {}
    for r in runs:
        gc.collect()
        with PeakMemory(device) as mem:
            prefill[id(r)] = r.start()
        peaks[id(r)] = (mem.peak_mb, mem.added_mb)
        durations[id(r)] = []
    turn = 0
    while not all(r.done() for r in runs):
        order = runs[turn % len(runs):] + runs[:turn % len(runs)]
        for r in order:
            for _ in range(per_turn):
                if not r.done():
                    durations[id(r)].append(r.step())
        turn += 1
    results = []
    for r in runs:
        codes = r.finish()
        steps = durations[id(r)]
        per_round = [float(np.median(chunk)) for chunk in np.array_split(np.asarray(steps), rounds) if len(chunk)]
        results.append(Result(r.label, r.batch, prefill[id(r)], len(steps), float(np.median(per_round)),
                              peaks[id(r)][0], peaks[id(r)][1], r.kv_mb, codes, per_round))
    return results


def spread(values: list[float]) -> float:
    """(max - min) / median of ``values``, in percent: how far the rounds disagree."""
    if len(values) < 2:
        return 0.0
    mid = float(np.median(values))
    return 100.0 * (max(values) - min(values)) / mid if mid else float("inf")


def ratio_rounds(top: Result, base: Result) -> list[float]:
    """Per round, ``top``'s total steps/s over ``base``'s: both paths stepped in the same
    minutes of that round, so a burst of load on the box moves both alike."""
    return [(top.batch / t) / (base.batch / b) for t, b in zip(top.rounds, base.rounds, strict=False)]


def row(r: Result, device: str, prefill_scale: float, extrapolated: bool) -> str:
    how = "extrapolated" if extrapolated else "measured"
    mem = "GPU" if device == "cuda" else "RSS"
    return (f"  {r.label:7s} batch {r.batch}: prefill {r.prefill_s:6.2f} s, {r.per_stream:6.2f} steps/s per stream, "
            f"{r.total:7.2f} steps/s total (rounds spread {spread(r.rounds):4.1f}%), "
            f"30 s continuation {r.continuation_s(prefill_scale):7.1f} s "
            f"({how}; {r.batch} job{'s' if r.batch > 1 else ''} at once), peak {mem} {r.peak_mb:6.0f} MB "
            f"(+{r.added_mb:.0f} MB prefilling), KV cache {r.kv_mb:.0f} MB")


@dataclass
class ShapeResults:
    """One shape's results by label (``stock``, ``batch1``..., ``padded``) and its ratios'
    per-round values."""

    by_label: dict[str, Result]
    batch_ratio: list[float]  # per round: batch N total / batch 1
    stock_ratio: list[float]  # per round: batch 1 / stock


def bench_shape(shape: str, device: str, batches: list[int], steps: int, prompt_s: float, rounds: int,
                padded: bool = True) -> ShapeResults:
    t0 = time.perf_counter()
    model = build_debug_musicgen(seed=0, device=device, shape=shape)
    params = sum(p.numel() for p in model.lm.parameters()) / 1e6
    timed = steps * rounds
    print(f"musicgen-{shape} shape: LM {params:.0f} M parameters, built in {time.perf_counter() - t0:.1f} s "
          f"(random weights); prompt {prompt_s:g} s, {rounds} rounds of {steps} decoding steps timed per run",
          flush=True)
    rng = np.random.default_rng(0)
    prompt = (0.1 * rng.standard_normal((1, int(prompt_s * SR)))).astype(np.float32)
    warm = prompt[:, :SR // 2]
    measure([BatchedRun(model, device, 1, warm, 2), StockRun(model, device, warm, 2)], device)  # first calls
    scale = 6.0 / prompt_s  # prefill grows about linearly with the prompt at these lengths
    extrapolated = timed < CONTINUATION_STEPS
    note = "" if scale == 1 else f" (prefill scaled x{scale:g} to a 6 s prompt)"
    print(f"  30 s continuation = prefill + {CONTINUATION_STEPS} steps{note}", flush=True)
    runs: list[Any] = [StockRun(model, device, prompt, timed)]
    runs += [BatchedRun(model, device, batch, prompt, timed) for batch in batches]
    if padded and shape == "small" and 1 in batches:
        # A lone row padded like a batch's lines: bit-exact alone vs batched, on MKL's
        # 4-line kernel (the default runs a lone row on stock's 2-line kernel).
        runs.append(BatchedRun(model, device, 1, prompt, timed, label="padded", pad_lone_row=True))
    results: dict[str, Result] = {}
    # The collector's passes would land in some steps and not others: off while timing.
    gc.collect()
    gc.disable()
    try:
        measured = measure(runs, device, rounds=rounds)
    finally:
        gc.enable()
    for r in measured:
        print(row(r, device, scale, extrapolated), flush=True)
        results.setdefault(r.label if r.label != "batched" else f"batch{r.batch}", r)
    stock = results["stock"]
    one, most = results.get("batch1"), results.get(f"batch{max(batches)}")
    batch_ratio: list[float] = []
    stock_ratio = ratio_rounds(one, stock) if one else []
    if one and most:
        batch_ratio = ratio_rounds(most, one)
        print(f"  batch {most.batch} total / batch 1: x{np.median(batch_ratio):.2f} (median of {len(batch_ratio)} "
              f"rounds, spread {spread(batch_ratio):.1f}%: {', '.join(f'{x:.2f}' for x in batch_ratio)}); "
              f"batch 1 / stock: x{np.median(stock_ratio):.2f} (spread {spread(stock_ratio):.1f}%)", flush=True)
    if device == "cuda":
        cuda_variants(model, prompt, timed, max(batches))
    del model
    gc.collect()
    return ShapeResults(results, batch_ratio, stock_ratio)


def pin_threads(threads: int) -> str:
    """Fix this process's compute threads: ``threads`` torch threads, one inter-op thread,
    and (where the OS allows) the process on ``threads`` CPUs of those it may use, the
    last ones (the first usually take the interrupts), so no step migrates mid-way.
    Returns a description for the header line."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already started: only the first call may set it
        pass
    if not hasattr(os, "sched_setaffinity"):
        return f"{threads} torch threads, affinity not available"
    allowed = sorted(os.sched_getaffinity(0))
    chosen = set(allowed[-threads:]) if threads <= len(allowed) else set(allowed)
    try:
        os.sched_setaffinity(0, chosen)
    except OSError as exc:
        return f"{threads} torch threads, affinity refused ({exc.strerror})"
    return f"{threads} torch threads pinned to CPU {','.join(str(c) for c in sorted(chosen))}"


def cuda_variants(model: Any, prompt: np.ndarray, steps: int, batch: int) -> None:
    """Step variants on CUDA, each checked against the fp32 reference with greedy sampling."""
    from audiocraft.utils.autocast import TorchAutocast

    def autocast(dtype: torch.dtype | None):  # type: ignore[no-untyped-def]
        if dtype is None:
            return lambda: TorchAutocast(enabled=False)
        return lambda: TorchAutocast(enabled=True, device_type="cuda", dtype=dtype)

    variants = [
        ("fp32 math", {"autocast": autocast(None)}),
        ("fp32 sdpa", {"autocast": autocast(None), "attention": "sdpa"}),
        ("fp16 math", {"autocast": autocast(torch.float16)}),
        ("fp16 sdpa", {"autocast": autocast(torch.float16), "attention": "sdpa"}),
        ("bf16 sdpa", {"autocast": autocast(torch.bfloat16), "attention": "sdpa"}),
    ]
    print(f"  CUDA variants, batch {batch}, greedy (codes compared with fp32 math):", flush=True)
    reference: list[torch.Tensor] | None = None
    for name, kwargs in variants:
        try:
            r = measure([BatchedRun(model, "cuda", batch, prompt, steps, label=name, greedy=True, **kwargs)],
                        "cuda")[0]
        except Exception as exc:  # a variant that does not run is reported, not fatal
            print(f"    {name:10s}: failed: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
            continue
        if reference is None:
            reference = r.codes
        same = np.mean([float((a == b).float().mean()) for a, b in zip(reference, r.codes, strict=True)])
        print(f"    {name:10s}: {r.total:8.1f} steps/s total ({r.per_stream:.1f} per stream), "
              f"codes equal to fp32: {100 * same:.1f}%", flush=True)
    print("    CUDA graphs / compiled static-cache step: not implemented in this version", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=None, help="default small,medium (--quick: small)")
    ap.add_argument("--batches", default=None, help="default 1,2,4,8 (--quick: 1,8)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds of timed steps; figures are medians over rounds (default 5, cuda 3)")
    ap.add_argument("--steps", type=int, default=None,
                    help="decoding steps per round for small (default cpu 8, --quick 6, cuda 100)")
    ap.add_argument("--prompt", type=float, default=None, help="prompt seconds for small (cpu 2, --quick 1, cuda 6)")
    ap.add_argument("--medium-steps", type=int, default=None, help="per round, for medium (default cpu 4, cuda 100)")
    ap.add_argument("--medium-prompt", type=float, default=None, help="prompt seconds for medium (cpu 1, cuda 6)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: as a CPU worker, all cores but one)")
    ap.add_argument("--quick", action="store_true",
                    help="small shape, batch 1 and 8, short prompt: about a minute on the 2-core dev box")
    args = ap.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cpu = device == "cpu"
    threads = args.threads or (max(1, (os.cpu_count() or 1) - 1) if cpu else 0)
    pinned = ""
    if threads:
        # The worker's rule (g4l/worker/__main__.py): on a busy 2-core box two spinning
        # OpenMP threads made steps many times slower than one.
        pinned = pin_threads(threads)
    if cpu:
        disable_mkldnn()  # as the workers run (g4l.engine.musicgen); stock and batched alike
    batches = [int(b) for b in (args.batches or ("1,8" if args.quick else "1,2,4,8")).split(",")]
    shapes = (args.shapes or ("small" if args.quick else "small,medium")).split(",")
    rounds = args.rounds or (5 if cpu else 3)
    print(f"bench_engine on {device}"
          + (f" ({pinned or f'{torch.get_num_threads()} torch threads'}, oneDNN off)" if cpu
             else f" ({torch.cuda.get_device_name()})")
          + f"; torch {torch.__version__}", flush=True)
    started = time.perf_counter()
    results: dict[str, ShapeResults] = {}
    for shape in shapes:
        medium = shape == "medium"
        steps = (args.medium_steps if medium else args.steps) or (
            (4 if medium else (6 if args.quick else 8)) if cpu else 100)
        # On CPU the prompts are shorter than the 6 s of a real continue: the prefills (one
        # per row, 2 x prompt frames through the whole LM) would take most of the 10 minutes.
        if medium:
            prompt_s = args.medium_prompt or (1.0 if cpu else 6.0)
        else:
            prompt_s = args.prompt or ((1.0 if args.quick else 2.0) if cpu else 6.0)
        results[shape] = bench_shape(shape, device, batches, steps, prompt_s, rounds, padded=not args.quick)
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    small = results.get("small")
    top = max(batches)
    if small and "batch1" in small.by_label and f"batch{top}" in small.by_label:
        b1, bn, st = small.by_label["batch1"], small.by_label[f"batch{top}"], small.by_label["stock"]
        print(f"musicgen-small on {device}: batch1 {b1.total:.2f} steps/s, batch{top} {bn.total:.2f} steps/s total "
              f"(x{np.median(small.batch_ratio):.2f}, rounds spread {spread(small.batch_ratio):.0f}%), "
              f"stock batch1 {st.total:.2f} steps/s")


if __name__ == "__main__":
    main()
