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

A step's time is the median of the timed steps (this 2-core box is shared: a mean is
dominated by other people's bursts). A 30 s continuation is 1200+ steps; on CPU they are not
all run: the figure is the measured prefill plus 1203 steps at the measured rate (said on
the line). Steps are measured just after the prompt (positions ~300): later steps attend
over more positions and are slower, for both paths (more so for stock, which copies its
whole cache every step). The last line is
``musicgen-small on cpu: batch1 A steps/s, batch8 B steps/s total (xR), stock batch1 C steps/s``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
from dataclasses import dataclass
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
        self._stop = threading.Event()

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak_mb = self._rss_mb()
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


@dataclass
class Result:
    label: str
    batch: int
    prefill_s: float  # until every row had its first token
    steps: int  # decoding steps timed (after the prefill)
    step_s: float  # seconds per decoding step (all rows together)
    peak_mb: float
    codes: list[torch.Tensor]

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


def run_batched(model: Any, device: str, batch: int, prompt: np.ndarray, steps: int, label: str = "batched",
                greedy: bool = False, **loop_kwargs: Any) -> Result:
    """``batch`` continuations of ``prompt`` through one loop, ``steps`` decoding steps each."""
    engine = BatchedMusicGen(model, max_batch=batch, **loop_kwargs)
    duration = (prompt.shape[1] // 640 + steps) / FRAME_RATE
    gc.collect()
    with PeakMemory(device) as mem:
        handles = [engine.submit(prompt, GenerationParams(duration=duration, seed=i, top_k=1 if greedy else 250))
                   for i in range(batch)]
        sync(device)
        start = time.perf_counter()
        engine.loop.step()  # admits (prefills) every row, then the first shared step
        sync(device)
        prefilled = time.perf_counter()
        durations = []
        while not engine.loop.idle():
            t = time.perf_counter()
            engine.loop.step()
            sync(device)
            durations.append(time.perf_counter() - t)
    return Result(label, batch, prefilled - start, len(durations), float(np.median(durations)), mem.peak_mb,
                  [h.result() for h in handles])


def run_stock(model: Any, device: str, prompt: np.ndarray, steps: int) -> Result:
    """Stock ``generate_continuation``, one job; step times from its progress callback."""
    stamps: list[float] = []

    def on_step(done: int, total: int) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    duration = (prompt.shape[1] // 640 + steps) / FRAME_RATE
    model.set_generation_params(use_sampling=True, top_k=250, duration=duration)
    model.set_custom_progress_callback(on_step)
    torch.manual_seed(0)
    gc.collect()
    try:
        with PeakMemory(device) as mem, torch.inference_mode():
            sync(device)
            start = time.perf_counter()
            _, codes = model.generate_continuation(torch.from_numpy(prompt).to(device), SR, progress=True,
                                                   return_tokens=True)
    finally:
        model.set_custom_progress_callback(None)
    durations = np.diff(stamps)
    return Result("stock", 1, stamps[0] - start, len(durations), float(np.median(durations)), mem.peak_mb,
                  [codes[0]])


def row(r: Result, device: str, prefill_scale: float, extrapolated: bool) -> str:
    how = "extrapolated" if extrapolated else "measured"
    mem = "GPU peak" if device == "cuda" else "RSS peak"
    return (f"  {r.label:8s} batch {r.batch}: prefill {r.prefill_s:6.2f} s, {r.per_stream:6.2f} steps/s per stream, "
            f"{r.total:7.2f} steps/s total, 30 s continuation {r.continuation_s(prefill_scale):7.1f} s "
            f"({how}; {r.batch} job{'s' if r.batch > 1 else ''} at once), {mem} {r.peak_mb:7.0f} MB")


def bench_shape(shape: str, device: str, batches: list[int], steps: int, prompt_s: float) -> dict[str, Result]:
    t0 = time.perf_counter()
    model = build_debug_musicgen(seed=0, device=device, shape=shape)
    params = sum(p.numel() for p in model.lm.parameters()) / 1e6
    print(f"musicgen-{shape} shape: LM {params:.0f} M parameters, built in {time.perf_counter() - t0:.1f} s "
          f"(random weights); prompt {prompt_s:g} s, {steps} decoding steps timed per run", flush=True)
    rng = np.random.default_rng(0)
    prompt = (0.1 * rng.standard_normal((1, int(prompt_s * SR)))).astype(np.float32)
    warm = prompt[:, :SR // 2]
    run_batched(model, device, 1, warm, 2)  # first-call costs (allocator, kernels) out of the figures
    run_stock(model, device, warm, 2)
    scale = 6.0 / prompt_s  # prefill grows about linearly with the prompt at these lengths
    extrapolated = steps < CONTINUATION_STEPS
    note = "" if scale == 1 else f" (prefill scaled x{scale:g} to a 6 s prompt)"
    print(f"  30 s continuation = prefill + {CONTINUATION_STEPS} steps{note}", flush=True)
    results: dict[str, Result] = {}
    stock = run_stock(model, device, prompt, steps)
    print(row(stock, device, scale, extrapolated), flush=True)
    results["stock"] = stock
    for batch in batches:
        r = run_batched(model, device, batch, prompt, steps)
        print(row(r, device, scale, extrapolated), flush=True)
        results[f"batch{batch}"] = r
    if shape == "small" and 1 in batches:
        # A lone row padded like a batch's lines: bit-exact alone vs batched, on MKL's slower
        # 4-line kernel (the default runs a lone row on stock's 2-line kernel).
        exact = run_batched(model, device, 1, prompt, steps, label="padded", pad_lone_row=True)
        print(row(exact, device, scale, extrapolated), flush=True)
    one, most = results.get("batch1"), results.get(f"batch{max(batches)}")
    if one and most:
        print(f"  batch {most.batch} total / batch 1: x{most.total / one.total:.2f}; batch 1 / stock: "
              f"x{one.per_stream / stock.per_stream:.2f}", flush=True)
    if device == "cuda":
        cuda_variants(model, prompt, steps, max(batches))
    del model
    gc.collect()
    return results


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
            r = run_batched(model, "cuda", batch, prompt, steps, label=name, greedy=True, **kwargs)
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
    ap.add_argument("--shapes", default="small,medium")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--steps", type=int, default=None, help="decoding steps timed for small (default cpu 24, cuda 200)")
    ap.add_argument("--medium-steps", type=int, default=None, help="for medium (default cpu 8, cuda 200)")
    ap.add_argument("--medium-prompt", type=float, default=None, help="prompt seconds for medium (cpu 1, cuda 6)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: as a CPU worker, all cores but one)")
    args = ap.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    threads = args.threads or (max(1, (os.cpu_count() or 1) - 1) if device == "cpu" else 0)
    if threads:
        # The worker's rule (g4l/worker/__main__.py): on a busy 2-core box two spinning
        # OpenMP threads made steps many times slower than one.
        torch.set_num_threads(threads)
    if device == "cpu":
        disable_mkldnn()  # as the workers run (g4l.engine.musicgen); stock and batched alike
    cpu = device == "cpu"
    batches = [int(b) for b in args.batches.split(",")]
    shapes = args.shapes.split(",")
    print(f"bench_engine on {device}"
          + (f" ({torch.get_num_threads()} torch threads, oneDNN off)" if cpu else f" ({torch.cuda.get_device_name()})")
          + f"; torch {torch.__version__}", flush=True)
    started = time.perf_counter()
    results: dict[str, dict[str, Result]] = {}
    for shape in shapes:
        medium = shape == "medium"
        steps = (args.medium_steps if medium else args.steps) or ((8 if medium else 24) if cpu else 200)
        prompt_s = (args.medium_prompt or (1.0 if cpu else 6.0)) if medium else 6.0
        results[shape] = bench_shape(shape, device, batches, steps, prompt_s)
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    small = results.get("small")
    if small and "batch1" in small and "batch8" in small:
        b1, b8, st = small["batch1"], small["batch8"], small["stock"]
        print(f"musicgen-small on {device}: batch1 {b1.total:.2f} steps/s, batch8 {b8.total:.2f} steps/s total "
              f"(x{b8.total / b1.total:.1f}), stock batch1 {st.total:.2f} steps/s")


if __name__ == "__main__":
    main()
