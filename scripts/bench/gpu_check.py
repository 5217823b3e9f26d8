#!/usr/bin/env python3
"""The GPU check: every figure a GPU run owes, in one run of at most 8 minutes on one H100.

Sections (each prints its own lines, and a section that cannot run says why and the run
goes on):

1. ``engine``: MusicGen-small and -medium shapes (random weights built by AudioCraft's
   builders, :func:`g4l.engine.build_debug_musicgen`), decoding steps/s at batch 1, 8 and
   32, for fp16 and bf16, three ways:
     * ``loop``: the worker's own decoding loop (``DecodeLoop``: SDPA attention, autocast to
       the dtype over fp32 weights, the KV cache in the dtype), rows sampled on the host
       every step as in production;
     * ``static``: the step with fixed shapes (``static_step.StaticStep``: weights cast to
       the dtype, attention over the whole preallocated cache under a mask, codes sampled
       and fed back on the device), eager;
     * ``graph``: the same step replayed as a CUDA graph (``--compile`` adds
       ``torch.compile``; off by default: its compile time eats the budget).
   Before timing, the static step's logits are compared with the engine's
   (``max |diff|`` is printed).
2. ``e2e`` (run last): t(8)/t(1) for 8 device clients banging at once against the whole server (one
   worker), as ``scripts/bench_concurrency`` measures it: on CUDA with a MusicGen-small-shaped
   random checkpoint written for the run (``save_debug_checkpoint(shape='small')``), on CPU
   with the tiny debug model.
3. ``jerry``: Stable Audio Open Small at its published shape (random weights built by
   stable-audio-tools, ``scripts/bench/jerry.py``'s ``real`` shape), milliseconds per clip at
   batch 1 and batched (8), float32 and float16 weights (stable-audio-tools' ``model_half``
   cast), against the anchor: about 75 ms per clip on an H100 (issue 19).
4. ``terry``: MelodyFlow at the released DiT's shape (``scripts/bench/terry.py``'s ``real``),
   one 30 s euler edit (25 steps) and one midpoint edit (64 steps), batch 1, the engine's
   own bf16 autocast over fp32 weights, against the anchor: 6.6 s per 30 s euler edit on a
   laptop RTX 5070 (issue 19).
   On CPU with ``--quick`` both use the tiny debug models (one run each, a 5 s edit).
5. ``e2e`` (last: it has its own reserve of the budget).

Every section before the last keeps :data:`RESERVE_S` of the budget for those after it.
A section whose library is missing says so and counts as skipped, not failed.

The last lines are ``gpu_check: ...`` summaries (the test in tests/test_gpu_check.py runs
``--device cpu --quick`` and looks for them). ``scripts/gpu_check`` installs what this needs
first (wheels carried in ``.whl/``) on a machine without the project's venv.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT)]

SR = 32000
FRAME_RATE = 50


@dataclass
class Check:
    """What the run was asked for and what it found (the summary lines read it)."""

    device: str
    quick: bool
    budget_s: float
    started: float = field(default_factory=time.monotonic)
    summary: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)


def say(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------- 1. engine
def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _timed(step: Callable[[], Any], device: str, warmup: int, steps: int) -> float:
    """Steps per second of ``step`` over ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps / (time.perf_counter() - t)


def _submit_rows(engine: Any, batch: int, prompt: Any, frames: int) -> None:
    from g4l.engine import GenerationParams

    for i in range(batch):
        engine.submit(prompt, GenerationParams(duration=frames / FRAME_RATE, seed=i))
    engine.loop.step()  # every prefill, then one step of all rows


def engine_section(check: Check, args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from static_step import check_against_engine, from_loop

    from g4l.engine import build_debug_musicgen
    from g4l.engine.batched_musicgen import BatchedMusicGen

    cuda = check.device == "cuda"
    shapes = args.shapes.split(",") if args.shapes else (["tiny"] if check.quick and not cuda else ["small", "medium"])
    batches = [int(b) for b in args.batches.split(",")]
    dtype_names = args.dtypes.split(",") if args.dtypes else (["float16", "bfloat16"] if cuda else ["bfloat16"])
    warmup, steps = (5, args.steps or 100) if cuda else (1, args.steps or (4 if check.quick else 8))
    prompt_s = args.prompt or (6.0 if cuda else 1.0)
    modes = ["loop", "static"] + (["graph"] if cuda else []) + (["compile"] if args.compile else [])
    say(f"[engine] {check.device}; shapes {','.join(shapes)}; batches {','.join(map(str, batches))}; "
        f"dtypes {','.join(dtype_names)}; modes {','.join(modes)}; prompt {prompt_s:g} s; {steps} steps timed "
        f"after {warmup}")
    rng = np.random.default_rng(0)
    prompt = (0.1 * rng.standard_normal((1, int(prompt_s * SR)))).astype(np.float32)
    prompt_frames = int(prompt_s * FRAME_RATE)
    # Room for every timed step of the static modes (they advance the same rows' positions).
    frames = prompt_frames + len(modes) * (warmup + steps) + 16
    reserve = reserve_after("engine", check, args)
    best: dict[tuple[str, int], tuple[float, str]] = {}
    for shape in shapes:
        if check.left() < reserve + 20:
            say(f"  {shape}: skipped (time budget)")
            continue
        t = time.perf_counter()
        model = build_debug_musicgen(seed=0, device=check.device, shape=shape)
        params = sum(p.numel() for p in model.lm.parameters()) / 1e6
        say(f"  musicgen-{shape} shape: LM {params:.0f} M parameters, built in {time.perf_counter() - t:.1f} s")
        for dtype_name in dtype_names:
            dtype = getattr(torch, dtype_name)
            for batch in batches:
                if check.left() < reserve + 10:
                    say(f"  {shape} {dtype_name} batch {batch}: skipped (time budget)")
                    continue
                figures: dict[str, float] = {}
                notes: list[str] = []
                try:
                    # The production loop: fp32 weights under autocast, cache in the dtype.
                    model.lm.float()
                    autocast = (lambda d=dtype: torch.autocast(device_type="cuda", dtype=d)) if cuda else \
                        (lambda d=dtype: torch.autocast(device_type="cpu", dtype=d))
                    engine = BatchedMusicGen(model, max_batch=batch, attention="sdpa", autocast=autocast,
                                             cache_dtype=dtype)
                    _submit_rows(engine, batch, prompt, frames)
                    figures["loop"] = batch * _timed(engine.loop.step, check.device, warmup, steps)
                    del engine
                    _free(check.device)
                    # The static step: weights in the dtype, no autocast.
                    model.lm.to(dtype)
                    engine = BatchedMusicGen(model, max_batch=batch, attention="sdpa", autocast=nullcontext,
                                             row_multiple=1)
                    _submit_rows(engine, batch, prompt, frames)
                    static = from_loop(engine.loop)
                    notes.append(f"static vs engine logits max |diff| {check_against_engine(static):.3g}")
                    figures["static"] = batch * _timed(static.step, check.device, warmup, steps)
                    if "graph" in modes:
                        static.capture()
                        figures["graph"] = batch * _timed(static.step, check.device, warmup, steps)
                    if "compile" in modes:
                        static._graph = None
                        static.forward = torch.compile(static.forward, mode="max-autotune-no-cudagraphs")  # type: ignore[method-assign]
                        t = time.perf_counter()
                        static.step()
                        notes.append(f"compiled in {time.perf_counter() - t:.0f} s")
                        figures["compile"] = batch * _timed(static.step, check.device, warmup, steps)
                    del engine, static
                except Exception as exc:  # one configuration failing is a finding, not the end
                    notes.append(f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                    if args.verbose:
                        traceback.print_exc()
                finally:
                    model.lm.float()
                    _free(check.device)
                line = ", ".join(f"{m} {v:8.1f}" for m, v in figures.items())
                say(f"  {shape:6s} {dtype_name:8s} batch {batch:2d}: steps/s total: {line or '-'}"
                    + (f" (per stream: {', '.join(f'{m} {v / batch:.1f}' for m, v in figures.items())})"
                       if batch > 1 and figures else "")
                    + (f"; {'; '.join(notes)}" if notes else ""))
                for mode, value in figures.items():
                    key = (shape, batch)
                    if value / batch > best.get(key, (0.0, ""))[0]:
                        best[key] = (value / batch, f"{dtype_name} {mode}")
        del model
        _free(check.device)
    for (shape, batch), (per_stream, how) in sorted(best.items()):
        if batch == 1:
            check.summary.append(f"gpu_check: musicgen-{shape} on {check.device}: batch 1 {per_stream:.1f} steps/s "
                                 f"(best: {how})")


# ---------------------------------------------------------------- 2. end to end
def e2e_section(check: Check, args: argparse.Namespace) -> None:
    import common  # re-execs under the venv where there is one; starts the stores
    import concurrency

    from g4l.engine.debug_model import save_debug_checkpoint

    cuda = check.device == "cuda"
    n = args.e2e_clients
    # The shipped defaults (G4L_MAX_BATCH=8...), one worker on the device.
    env = {"G4L_WORKERS": "1", "G4L_DEVICE": check.device}
    if n > 8:
        env["G4L_MAX_BATCH"] = str(n)
    model_name = "debug"
    tmp = None
    if cuda:
        shape = args.e2e_shape
        tmp = tempfile.TemporaryDirectory(prefix="g4l-gpu-ckpt-")
        t = time.perf_counter()
        save_debug_checkpoint(tmp.name, seed=0, shape=shape)
        model_name = f"random-{shape}"
        env.update({"G4L_MODELS": model_name, "G4L_MODEL_PATHS": f"{model_name}={tmp.name}"})
        say(f"[e2e] musicgen-{shape}-shaped random checkpoint written in {time.perf_counter() - t:.1f} s")
    duration = args.e2e_duration or (15.0 if cuda else 10.0)
    say(f"[e2e] {n} device clients bang at once on one worker ({check.device}, model {model_name}, "
        f"{duration:g} s each)")
    wav = common.make_wav(4)
    try:
        with common.Server(extra_env=env, ready_timeout=300) as server:
            concurrency.one_round(server.url, 1, wav, model_name, duration)  # model loaded, loop started
            totals = {}
            for clients in (1, n):
                seen = len(concurrency._log_records(server))
                total, firsts, dones = concurrency.one_round(server.url, clients, wav, model_name, duration)
                totals[clients] = total
                say(f"  N={clients}: last result after {total:6.2f} s; first progress median "
                    f"{sorted(firsts)[len(firsts) // 2]:.2f} s; result median {sorted(dones)[len(dones) // 2]:.2f} s")
                breakdown = concurrency._worker_breakdown(concurrency._log_records(server)[seen:])
                if breakdown:
                    say(f"  N={clients} worker: {breakdown}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    ratio = totals[n] / totals[1]
    check.summary.append(f"gpu_check: e2e on {check.device}: t({n})/t(1) = {ratio:.2f} "
                         f"({totals[1]:.2f} s and {totals[n]:.2f} s)")


# ---------------------------------------------------------------- 3. jerry
#: jerry's anchor (issue 19): milliseconds per clip of Stable Audio Open Small on an H100.
JERRY_ANCHOR_MS = 75.0
#: terry's anchor (issue 19): seconds per 30 s euler edit of MelodyFlow on a laptop RTX 5070.
TERRY_ANCHOR_S = 6.6


def _library_missing(name: str, exc: ImportError) -> None:
    """A section whose library is missing says which and why, and the run goes on."""
    say(f"[{name}] skipped: {type(exc).__name__}: {exc} (install it, or carry its wheel: "
        "scripts/bench/gpu_wheels.py)")


def jerry_section(check: Check, args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    cuda = check.device == "cuda"
    shape = args.jerry_shape or ("real" if cuda or not check.quick else "tiny")
    batches = [1, args.jerry_batch or (8 if cuda else 2)]
    dtype_names = args.jerry_dtypes.split(",")
    runs = 3 if cuda else 1  # after one warm-up run when more than one
    reserve = reserve_after("jerry", check, args)
    say(f"[jerry] Stable Audio Open Small, {shape} shape, random weights; {check.device}; batches "
        f"{','.join(map(str, batches))}; weights {','.join(dtype_names)}; median of {runs} run(s) per figure")
    work = tempfile.TemporaryDirectory(prefix="g4l-gpu-jerry-")  # the tiny checkpoint, the T5 directory
    try:
        import jerry

        t = time.perf_counter()
        engine = jerry._engine(shape, check.device, Path(work.name) / shape)
        say(f"  built in {time.perf_counter() - t:.1f} s (on the CPU, then moved to {check.device})")
    except ImportError as exc:
        work.cleanup()
        _library_missing("jerry", exc)
        check.summary.append(f"gpu_check: jerry on {check.device}: skipped ({exc})")
        return
    per_clip: dict[tuple[str, int], float] = {}
    try:
        for dtype_name in dtype_names:
            # stable-audio-tools' model_half: the whole model cast (the engine follows the DiT's dtype).
            engine.model.to(getattr(torch, dtype_name))
            alone = None
            for batch in batches:
                if check.left() < reserve + 15:
                    say(f"  {dtype_name} batch {batch}: skipped (time budget)")
                    continue
                seconds, out = jerry._time(engine, batch, runs)
                per_clip[(dtype_name, batch)] = seconds
                note = "" if all(bool(np.isfinite(clip).all()) for clip in out) else "; NOT FINITE"
                if batch == 1:
                    alone = out[0]
                elif alone is not None:
                    diff = float(np.max(np.abs(alone - out[0])))
                    note += f"; first item vs its batch-1 run: max |diff| {diff:.1e}"
                say(f"  {shape} {dtype_name:8s} batch {batch:2d}: {seconds * 1e3:9.1f} ms/clip "
                    f"({seconds * batch * 1e3:.1f} ms a batch){note}")
            _free(check.device)
    finally:
        work.cleanup()
    del engine
    _free(check.device)
    if not per_clip:
        check.summary.append(f"gpu_check: jerry {shape} on {check.device}: no figure (time budget)")
        return
    best = min(per_clip.items(), key=lambda kv: kv[1])
    figures = ", ".join(f"{d} batch {b} {s * 1e3:.1f}" for (d, b), s in per_clip.items())
    anchor = (f" = {best[1] * 1e3 / JERRY_ANCHOR_MS:.2f} x the anchor ({JERRY_ANCHOR_MS:.0f} ms/clip, H100)"
              if shape == "real" else " (the tiny model: no anchor)")
    check.summary.append(f"gpu_check: jerry {shape} on {check.device}: ms/clip {figures}; best "
                         f"{best[1] * 1e3:.1f} ({best[0][0]} batch {best[0][1]}){anchor}")


# ---------------------------------------------------------------- 4. terry
def terry_section(check: Check, args: argparse.Namespace) -> None:
    import numpy as np

    cuda = check.device == "cuda"
    shape = args.terry_shape or ("real" if cuda or not check.quick else "tiny")
    seconds = 5 if check.quick and not cuda else 30
    reserve = reserve_after("terry", check, args)
    try:
        import terry
    except ImportError as exc:
        _library_missing("terry", exc)
        check.summary.append(f"gpu_check: terry on {check.device}: skipped ({exc})")
        return
    how = "bf16 autocast over fp32 weights (the engine's own)" if cuda else "float32"
    say(f"[terry] MelodyFlow, {shape} DiT shape, random weights (tiny VAE, lookup-table text); {check.device}; "
        f"batch 1; {how}; one {seconds} s edit per solver after a 2 s, 2-step warm-up")
    try:
        t = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="g4l-gpu-terry-") as work:  # the tiny checkpoint, loaded whole
            engine = terry.build(shape, check.device, work)
    except ImportError as exc:
        _library_missing("terry", exc)
        check.summary.append(f"gpu_check: terry on {check.device}: skipped ({exc})")
        return
    params = sum(p.numel() for p in engine.dit.parameters()) / 1e6
    say(f"  built in {time.perf_counter() - t:.1f} s ({params:.1f} M DiT parameters)")
    audio = (0.3 * np.sin(2 * np.pi * 220 * np.arange(seconds * 48000) / 48000))[None].repeat(2, 0)
    audio = audio.astype(np.float32)
    terry.edit_seconds(engine, audio[:, : 2 * 48000], "euler", 2, check.device)  # warm-up
    figures: dict[str, float] = {}
    for solver in ("euler", "midpoint"):
        steps = terry.SOLVER_STEPS[solver]
        # A midpoint edit costs about 2.6 euler edits (64 steps of 2 passes vs 25 of 2 + regularisation).
        needed = 2.6 * figures["euler"] if "euler" in figures else 5.0
        if check.left() < reserve + needed:
            say(f"  {solver}: skipped (time budget: {check.left():.0f} s left, {reserve:.0f} s reserved)")
            continue
        figures[solver], _ = terry.edit_seconds(engine, audio, solver, steps, check.device)
        say(f"  {shape} {solver:8s} ({steps} steps) batch 1: {figures[solver]:7.2f} s per {seconds} s edit")
    del engine
    _free(check.device)
    line = ", ".join(f"{solver} {value:.2f} s" for solver, value in figures.items()) or "no figure (time budget)"
    anchor = (f"; euler = {figures['euler'] / TERRY_ANCHOR_S:.2f} x the anchor ({TERRY_ANCHOR_S} s per 30 s "
              "euler edit, laptop RTX 5070)") if "euler" in figures and seconds == 30 and shape == "real" \
        else "" if shape == "real" else " (the tiny model: no anchor)"
    check.summary.append(f"gpu_check: terry {shape} on {check.device}: per {seconds} s edit: {line}{anchor}")


SECTIONS: dict[str, Callable[[Check, argparse.Namespace], None]] = {
    "engine": engine_section,
    "jerry": jerry_section,
    "terry": terry_section,
    "e2e": e2e_section,
}


def reserve_after(name: str, check: Check, args: argparse.Namespace) -> float:
    """Seconds of the budget that the sections run after ``name`` keep for themselves."""
    order = args.sections.split(",")
    later = order[order.index(name) + 1:] if name in order else []
    cuda = check.device == "cuda"
    reserve_s = {"e2e": args.e2e_reserve_s, "jerry": 60.0 if cuda else 20.0, "terry": 75.0 if cuda else 25.0}
    return sum(reserve_s.get(section, 0.0) for section in later)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="tiny shapes and few steps (the test suite's CPU run)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {','.join(SECTIONS)}")
    ap.add_argument("--shapes", default=None, help="default small,medium (cpu --quick: tiny)")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--dtypes", default=None, help="default float16,bfloat16 (cpu: bfloat16)")
    ap.add_argument("--steps", type=int, default=None, help="steps timed per figure (cuda 100, cpu 8, quick 4)")
    ap.add_argument("--prompt", type=float, default=None, help="prompt seconds (cuda 6, cpu 1)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the static step")
    ap.add_argument("--e2e-clients", type=int, default=8)
    ap.add_argument("--e2e-shape", default="small", help="the e2e checkpoint's shape on cuda")
    ap.add_argument("--e2e-duration", type=float, default=None, help="seconds per bang (cuda 15, cpu 10)")
    ap.add_argument("--e2e-reserve-s", type=float, default=None,
                    help="seconds of the budget kept for the e2e section (cuda 200, cpu 60)")
    ap.add_argument("--jerry-shape", default=None, choices=["real", "tiny"], help="default real (cpu --quick: tiny)")
    ap.add_argument("--jerry-batch", type=int, default=None, help="the batched run's size (cuda 8, cpu 2)")
    ap.add_argument("--jerry-dtypes", default="float32,float16", help="jerry's weight dtypes, in this order")
    ap.add_argument("--terry-shape", default=None, choices=["real", "tiny"], help="default real (cpu --quick: tiny)")
    ap.add_argument("--budget-s", type=float, default=470.0, help="the whole run's time budget")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores but one)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        say("gpu_check: --device cuda but torch sees no GPU")
        return 2
    if device == "cpu":
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) - 1))
        from g4l.engine.musicgen import disable_mkldnn

        disable_mkldnn()  # as the workers run on CPU
    if args.e2e_reserve_s is None:
        args.e2e_reserve_s = 200.0 if device == "cuda" else 60.0
    check = Check(device, args.quick, args.budget_s)
    where = torch.cuda.get_device_name() if device == "cuda" else f"{torch.get_num_threads()} torch threads"
    say(f"gpu_check on {device} ({where}); torch {torch.__version__}, python {sys.version.split()[0]}; "
        f"budget {args.budget_s:.0f} s")
    failed = 0
    for name in args.sections.split(","):
        section = SECTIONS.get(name)
        if section is None:
            say(f"[{name}] unknown section (known: {', '.join(SECTIONS)})")
            failed += 1
            continue
        t = time.monotonic()
        try:
            section(check, args)
        except Exception as exc:
            failed += 1
            say(f"[{name}] failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            traceback.print_exc()
        say(f"[{name}] {time.monotonic() - t:.0f} s")
    for line in check.summary:
        say(line)
    say(f"gpu_check: done in {time.monotonic() - check.started:.0f} s, {failed} section(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
