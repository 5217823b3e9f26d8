#!/usr/bin/env python3
"""Seconds per 30 s MelodyFlow edit (terry), euler (25 steps, regularised inversion) and
midpoint (64 steps), batch 1, random weights, no download.

Shapes: ``tiny`` (the debug model, written in the released layout and loaded through
``load_engine``) and ``real`` (the released DiT's size: dim 1536, 24 layers, 24 heads,
128-dim latents; built in memory, as a 3.6 GB checkpoint round trip measures nothing
here). Both use the tiny VAE (the released VAE's exact size is not known offline) and a
lookup-table text conditioner instead of T5-base: the figures are the DiT's cost plus a
tiny codec's.

Modes:
* full (default): runs the whole edit and times it.
* ``--quick``: runs the edit with 2 solver steps, times each solver iteration through the
  progress callback, and extrapolates: fixed cost (codec, resampling, text) + 25 (or 64)
  steps at the measured per-step cost of each pass. The line says "extrapolated".
  On CPU the real shape defaults to ``--quick`` (one full euler edit is ~125 DiT passes).

Prints one line per shape and solver:
``<shape> <solver> <device> threads=N: X.XX s per 30 s edit (measured|extrapolated ...)``;
on CPU it adds the CPU seconds the process got per wall second (below the thread count:
the box was shared and the wall figure is pessimistic by about that factor).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from g4l.engine.base import TransformParams  # noqa: E402

SOLVER_STEPS = {"euler": 25, "midpoint": 64}


def build(shape: str, device: str, directory: str | None = None):
    """The engine of ``shape``; the tiny one is written to ``directory`` (else a new temporary one)."""
    from omegaconf import OmegaConf

    from g4l.engine.melodyflow import load_engine, write_debug_checkpoint
    from g4l.engine.melodyflow.checkpoint import build_models, debug_config
    from g4l.engine.melodyflow.engine import MelodyFlowEngine

    if shape == "tiny":
        written = write_debug_checkpoint(directory or tempfile.mkdtemp(prefix="bench-terry-"))
        return load_engine("debug-melodyflow", str(written), device)
    torch.manual_seed(0)
    vae, dit = build_models(OmegaConf.create(debug_config(device, shape)))
    return MelodyFlowEngine(f"random-{shape}", vae.to(device), dit.to(device), device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def edit_seconds(engine, audio: np.ndarray, solver: str, steps: int, device: str) -> tuple[float, list[float]]:
    ticks: list[float] = []

    def progress(done: int, total: int) -> None:
        sync(device)
        ticks.append(time.perf_counter())

    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    engine.transform(audio, 48000, TransformParams(text="synthwave, retro", solver=solver, steps=steps, seed=0),
                     progress)
    sync(device)
    end = time.perf_counter()
    busy[0] = (time.process_time() - cpu) / (end - start)
    return end - start, [start] + ticks + [end]


#: CPU seconds per wall second of the last edit: under 1 x threads, the box was shared.
busy = [1.0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=["tiny", "real", "both"], default="both")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU (default 1)")
    ap.add_argument("--quick", action="store_true", help="2 solver steps, extrapolated (default for real on CPU)")
    ap.add_argument("--full", action="store_true", help="run every step even for the real shape on CPU")
    ap.add_argument("--solvers", default="euler,midpoint")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    shapes = ["tiny", "real"] if args.shape == "both" else [args.shape]
    audio = (0.3 * np.sin(2 * np.pi * 220 * np.arange(30 * 48000) / 48000))[None].repeat(2, 0).astype(np.float32)
    for shape in shapes:
        t0 = time.perf_counter()
        engine = build(shape, args.device)
        print(f"# {shape}: built in {time.perf_counter() - t0:.1f} s "
              f"({sum(p.numel() for p in engine.dit.parameters()) / 1e6:.1f} M DiT parameters)", flush=True)
        quick = args.quick or (shape == "real" and args.device == "cpu" and not args.full)
        for solver in args.solvers.split(","):
            full_steps = SOLVER_STEPS[solver]
            edit_seconds(engine, audio[:, : 2 * 48000], solver, 2, args.device)  # warm-up
            if not quick:
                seconds, _ = edit_seconds(engine, audio, solver, full_steps, args.device)
                how = f"measured, {full_steps} steps"
            else:
                steps = 2
                seconds_q, marks = edit_seconds(engine, audio, solver, steps, args.device)
                gaps = np.diff(marks)  # gaps[k]: up to progress call k (gaps[0] includes encoding)
                iters = 2 if solver == "euler" else 1  # progress calls per inversion step
                inv_step = float(gaps[iters: 2 * iters].sum())  # the second inversion step, whole
                gen = gaps[steps * iters: steps * iters + steps]
                gen_step = float(gen.mean())
                fixed = seconds_q - steps * (inv_step + gen_step)  # codec, resampling, text, join
                seconds = fixed + full_steps * (inv_step + gen_step)
                how = (f"extrapolated from {steps} steps: fixed {fixed:.2f} s + {full_steps} x "
                       f"(inversion {inv_step:.2f} s + generation {gen_step:.2f} s)")
            threads = f" threads={torch.get_num_threads()}" if args.device == "cpu" else ""
            share = f"; this process got {busy[0]:.2f} CPU s per wall s" if args.device == "cpu" else ""
            print(f"{shape} {solver} {args.device}{threads}: {seconds:.2f} s per 30 s edit ({how}{share})",
                  flush=True)
        del engine


if __name__ == "__main__":
    main()
