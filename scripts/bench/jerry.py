#!/usr/bin/env python3
"""Seconds per clip of jerry's engine (``g4l.engine.stable_audio``), batch 1 vs batched.

Two shapes, both random weights built by stable-audio-tools from a ``model_config.json`` in
Stable Audio Open Small's structure (``g4l.engine.stable_audio_debug.model_config``):

* ``tiny``: the debug model (``G4L_MODELS=debug``), loaded from its released-layout
  directory by ``load_engine``;
* ``real``: the published sizes (1024-wide, 16-block DiT over 256 latent frames of 64
  channels; the 128-channel Oobleck VAE decoding 524288 frames; 8 pingpong steps,
  cfg_scale 1). Built in memory (a 1.3 GB model.safetensors is not worth the disk). Its text
  encoder is the debug model's one-layer T5 of t5-base's width, not t5-base: the real
  encoder runs once per clip over 64 tokens, next to nothing beside 8 DiT passes and the
  decoder.

Every clip renders the model's whole 11.9 s window (the answer is trimmed afterwards), so a
clip's cost does not depend on its ``seconds_total``. Each line prints the median of the
timed runs after one warm-up run. ``--quick`` times the real shape once per batch size with
the batch at 2 (about 45 s a clip on one CPU thread). It also says whether the batch's first
item came out bit-for-bit equal to that request run alone. The last line is
``real on DEVICE: batch1 A s/clip, batchN B s/clip (xR)``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def _requests(n: int):  # type: ignore[no-untyped-def]
    from g4l.engine.base import TextToAudioParams

    prompts = ["warm techno loop 120 bpm", "dark ambient pad", "funk bass groove", "jazz piano chord",
               "slow dub beat", "bright synth lead", "rain noise", "house drums loop"]
    return [TextToAudioParams(prompt=prompts[i % len(prompts)], seed=100 + i, seconds_total=11.0)
            for i in range(n)]


def _time(engine, batch: int, runs: int) -> tuple[float, list[np.ndarray]]:  # type: ignore[no-untyped-def]
    """Median seconds per clip over ``runs`` timed runs of ``batch`` requests (one warm-up)."""
    items = _requests(batch)
    out = engine.text_to_audio_batch(items) if runs > 1 else None
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = engine.text_to_audio_batch(items)
        times.append((time.perf_counter() - start) / batch)
    assert out is not None
    return statistics.median(times), out


def _engine(shape: str, device: str, work: Path):  # type: ignore[no-untyped-def]
    from g4l.engine.stable_audio import StableAudioEngine, load_engine
    from g4l.engine.stable_audio_debug import DEBUG_T5_DIR, model_config, write_debug_checkpoint, write_tiny_t5

    if shape == "tiny":
        return load_engine("debug-stable-audio", str(write_debug_checkpoint(work / "tiny")), device)
    import torch

    from g4l.engine._compat import prepare_stable_audio_import

    prepare_stable_audio_import()
    from stable_audio_tools.models.factory import create_model_from_config

    t5 = write_tiny_t5(work / DEBUG_T5_DIR)
    config = model_config("real", t5_path=str(t5))
    torch.manual_seed(0)
    model = create_model_from_config(config)
    params = sum(p.numel() for name, p in model.named_parameters())
    print(f"real shape: {params / 1e6:.0f}M parameters (DiT + VAE + projections; T5 not counted)", flush=True)
    return StableAudioEngine(model, config, "real-shape", device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--batch", type=int, default=4, help="the batched run's size")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--shape", choices=["tiny", "real", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="real shape: one run each, batch 2")
    parser.add_argument("--mkldnn", action="store_true",
                        help="keep oneDNN on (the worker turns it off process-wide: g4l/worker/__main__.py)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if not args.mkldnn:
        torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # as the worker runs
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench_jerry: --device cuda but torch sees no GPU")
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {args.threads} thread(s)"
    print(f"device: {where}; torch {torch.__version__}; oneDNN {'on' if args.mkldnn else 'off'}", flush=True)
    shapes = ["tiny", "real"] if args.shape == "both" else [args.shape]
    summary = ""
    with tempfile.TemporaryDirectory(prefix="bench-jerry-") as work:
        for shape in shapes:
            engine = _engine(shape, args.device, Path(work) / shape)
            quick = shape == "real" and args.quick and not args.device.startswith("cuda")
            batch = 2 if quick else args.batch
            runs = 1 if quick else 3
            one, alone = _time(engine, 1, runs)
            print(f"{shape}: batch 1: {one:.2f} s/clip ({runs} run(s))", flush=True)
            many, together = _time(engine, batch, runs)
            same = np.array_equal(alone[0], together[0])
            diff = float(np.max(np.abs(alone[0] - together[0])))
            print(f"{shape}: batch {batch}: {many:.2f} s/clip ({many * batch:.2f} s a batch; first item "
                  f"{'bit-for-bit equal to' if same else f'differs by {diff:.1e} from'} its single run)", flush=True)
            summary = f"{shape} on {args.device}: batch1 {one:.2f} s/clip, batch{batch} {many:.2f} s/clip " \
                      f"(x{one / many:.2f})"
            print(summary, flush=True)
            del engine


if __name__ == "__main__":
    main()
