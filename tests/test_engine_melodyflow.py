"""MelodyFlow engine (terry): the tiny random-weight model written in the released layout and
loaded by the production loader, run for real on one torch thread."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from g4l.engine.base import Cancelled, TransformParams
from g4l.engine.melodyflow import load_engine, write_debug_checkpoint
from g4l.engine.melodyflow.checkpoint import DIT_FILE, VAE_FILE, build_models, debug_config
from g4l.engine.melodyflow.codec import match_weight_norm_names
from g4l.engine.melodyflow.params import resolve
from g4l.engine.melodyflow.regularize import patch_kl, regularize_velocity
from g4l.engine.melodyflow.solver import schedule
from g4l.engine.melodyflow.windows import (
    crossfade_gains,
    fade_regions,
    join_windows,
    plan_windows,
    seam_report,
)

#: A join passes when it looks like the rest of the audio: no flux or sample-step spike
#: above 1.5x the loudest elsewhere (99th / 99.9th percentile), level within 1 dB.
MAX_FLUX_RATIO = 1.5
MAX_STEP_RATIO = 1.5
MAX_LEVEL_DEV_DB = 1.0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # More OpenMP threads than cores makes a tiny model 40x slower on a shared box.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_debug_checkpoint(tmp_path_factory.mktemp("melodyflow"), seed=0)


@pytest.fixture(scope="module")
def engine(checkpoint):
    return load_engine("debug-melodyflow", str(checkpoint), "cpu")


def tone(seconds: float, rate: int, channels: int = 2, seed: int = 0) -> np.ndarray:
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.5 * t))
    noise = 0.02 * np.random.default_rng(seed).standard_normal((channels, n))
    return (x[None].repeat(channels, 0) + noise).astype(np.float32)


# ---------------------------------------------------------------- loading
def test_loads_the_released_layout_strictly(checkpoint, engine):
    assert (engine.family, engine.sample_rate, engine.channels) == ("melodyflow", 48000, 2)
    assert (engine.window_s, engine.frame_rate) == (30.0, 25.0)
    for name, model in ((DIT_FILE, engine.dit), (VAE_FILE, engine.vae)):
        pkg = torch.load(checkpoint / name, map_location="cpu", weights_only=True)
        assert set(pkg) >= {"xp.cfg", "best_state"}
        saved, loaded = pkg["best_state"], model.state_dict()
        assert set(saved) == set(loaded)
        assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    names = set(engine.dit.state_dict())
    # the released DiT's naming: flow-step MLP, U-ViT skips, cross-attention, latent statistics
    assert {"timestep_embedder.mlp.0.weight", "timestep_embedder.mlp.2.weight", "in_proj.weight",
            "out_proj.weight", "out_norm.weight", "latent_mean", "latent_std",
            "transformer.skip_projections.0.weight", "transformer.layers.0.self_attn.in_proj_weight",
            "transformer.layers.0.cross_attention.in_proj_weight", "transformer.layers.0.norm_cross.weight",
            "condition_provider.conditioners.description.embed.weight"} <= names
    assert len([n for n in names if n.startswith("transformer.skip_projections.")]) == (4 - 1) // 2
    vae_names = set(engine.vae.state_dict())
    assert "encoder.model.1.block.0.alpha" in vae_names  # snake activations, per channel
    assert engine.vae.encoder.dimension == 2 * engine.dit.latent_dim  # mean | scale


def test_model_cache_serves_the_debug_id_through_this_loader(tmp_path):
    from g4l.engine.cache import ModelCache
    from g4l.engine.melodyflow.engine import MelodyFlowEngine

    cache = ModelCache(["debug"], device="cpu", debug_dir=tmp_path)
    engine = cache.get("debug-melodyflow")
    assert isinstance(engine, MelodyFlowEngine) and engine.model_id == "debug-melodyflow"
    (written,) = tmp_path.glob("debug-melodyflow-*")  # one directory per version of the engine's code
    assert {p.name for p in written.iterdir()} >= {DIT_FILE, VAE_FILE}
    assert engine.transform(tone(1.0, 44100), 44100, TransformParams(text="x", steps=2, seed=0)).shape == (2, 44100)


def test_weight_norm_spelling_does_not_matter(checkpoint):
    from omegaconf import OmegaConf

    vae, _ = build_models(OmegaConf.create(debug_config()))
    state = torch.load(checkpoint / VAE_FILE, map_location="cpu", weights_only=True)["best_state"]
    renamed = {k.replace("weight_g", "parametrizations.weight.original0")
               .replace("weight_v", "parametrizations.weight.original1"): v for k, v in state.items()}
    assert renamed != state
    vae.load_state_dict(match_weight_norm_names(renamed, vae), strict=True)


def test_missing_or_foreign_files_are_refused(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match="compression_state_dict.bin"):
        load_engine("x", str(tmp_path), "cpu")
    (tmp_path / DIT_FILE).write_bytes((checkpoint / DIT_FILE).read_bytes())
    torch.save({"weights": 1}, tmp_path / VAE_FILE)
    with pytest.raises(ValueError, match="not an AudioCraft export"):
        load_engine("x", str(tmp_path), "cpu")


# ---------------------------------------------------------------- lengths and channels
@pytest.mark.parametrize(("rate", "channels"), [(44100, 2), (48000, 2), (32000, 2), (44100, 1)])
def test_exact_length_stereo_out(engine, rate, channels):
    x = tone(10.0, rate, channels)[:, : 10 * rate + 123]  # not a whole latent frame
    y = engine.transform(x, rate, TransformParams(text="steel drums", steps=4, seed=1))
    assert y.shape == (2, x.shape[1]) and y.dtype == np.float32
    assert np.isfinite(y).all() and float(np.abs(y).max()) > 0


@pytest.mark.parametrize("solver,steps,calls", [("euler", None, 25 * 2 + 25), ("midpoint", 8, 8 + 8)])
def test_solvers_report_every_step(engine, solver, steps, calls):
    seen: list[tuple[int, int]] = []
    y = engine.transform(tone(4.0, 48000), 48000, TransformParams(text="chiptune", solver=solver, steps=steps,
                                                                     seed=2), lambda d, t: seen.append((d, t)))
    assert y.shape == (2, 4 * 48000)
    assert seen == [(i, calls) for i in range(1, calls + 1)]


def test_cancelled_propagates_and_engine_stays_usable(engine):
    def stop(done: int, total: int) -> None:
        if done == 3:
            raise Cancelled()

    with pytest.raises(Cancelled):
        engine.transform(tone(2.0, 48000), 48000, TransformParams(text="x", steps=4, seed=1), stop)
    assert engine.transform(tone(2.0, 48000), 48000, TransformParams(text="x", steps=2, seed=1)).shape == (2, 96000)


def test_seed_gives_the_same_edit(engine):
    x = tone(3.0, 44100)
    a = engine.transform(x, 44100, TransformParams(text="lofi", steps=4, seed=7))
    b = engine.transform(x, 44100, TransformParams(text="lofi", steps=4, seed=7))
    c = engine.transform(x, 44100, TransformParams(text="lofi", steps=4, seed=8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_text_steers_the_edit(engine):
    x = tone(3.0, 48000)
    a = engine.transform(x, 48000, TransformParams(text="jungle breaks", steps=4, seed=7))
    b = engine.transform(x, 48000, TransformParams(text="music box", steps=4, seed=7))
    assert not np.array_equal(a, b)


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize("flowstep", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_flowstep_out_of_bounds_is_refused(flowstep):
    with pytest.raises(ValueError, match="flowstep"):
        resolve(TransformParams(text="x", flowstep=flowstep))


def test_bad_solver_steps_and_audio_are_refused(engine):
    with pytest.raises(ValueError, match="solver"):
        TransformParams(text="x", solver="rk4")
    with pytest.raises(ValueError, match="even"):
        resolve(TransformParams(text="x", solver="midpoint", steps=7))
    ok = TransformParams(text="x", steps=2)
    for bad in (np.zeros((2, 0), np.float32), np.zeros((3, 100), np.float32),
                np.full((2, 100), np.nan, np.float32)):
        with pytest.raises(ValueError):
            engine.transform(bad, 48000, ok)
    with pytest.raises(ValueError, match="rate"):
        engine.transform(tone(1.0, 48000), 0, ok)


# ---------------------------------------------------------------- solver pieces
def test_schedule_runs_between_its_ends_monotonically():
    up = schedule(25, 0.12, 1.0)
    down = schedule(25, 1.0, 0.12)
    assert up[0] == pytest.approx(0.12) and up[-1] == pytest.approx(1.0)
    assert down[0] == pytest.approx(1.0) and down[-1] == pytest.approx(0.12)
    assert all(b > a for a, b in zip(up, up[1:], strict=False))
    assert all(b < a for a, b in zip(down, down[1:], strict=False))


def test_regularisation_pulls_the_velocity_toward_the_reference():
    g = torch.Generator().manual_seed(0)
    v = 3.0 * torch.randn(1, 8, 64, generator=g) + 1.0
    ref = torch.randn(1, 8, 64, generator=g)
    out = regularize_velocity(v, ref, 0.2)
    assert patch_kl(out, ref) < 0.9 * patch_kl(v, ref)  # 4 small clipped steps: measured -25 %
    assert torch.equal(regularize_velocity(v, ref, 0.0), v)


# ---------------------------------------------------------------- long inputs and the seam
def test_window_plan_covers_the_input_with_overlaps():
    sr = 48000
    assert plan_windows(30 * sr, 30 * sr, 4 * sr) == [(0, 30 * sr)]
    spans = plan_windows(75 * sr, 30 * sr, 4 * sr)
    assert spans[0][0] == 0 and spans[-1][1] == 75 * sr
    assert all(e - s == 30 * sr for s, e in spans)
    assert all(a[1] - b[0] >= 4 * sr for a, b in zip(spans, spans[1:], strict=False))


def test_crossfade_keeps_power_for_any_correlation():
    for rho in (0.0, 0.5, 1.0):
        a, b = crossfade_gains(1000, rho)
        power = a.astype(np.float64) ** 2 + b ** 2 + 2 * rho * a * b
        assert np.allclose(power, 1.0, atol=1e-5)


def _two_different_edits() -> tuple[list[np.ndarray], list[tuple[int, int]], int]:
    """Two overlapping "edited windows" that differ (330 Hz vs 495 Hz, own noise)."""
    sr, n = 48000, 14 * 48000
    spans = plan_windows(n, 8 * sr, 2 * sr)
    rng = np.random.default_rng(0)
    pieces = []
    for (start, end), (freq, phase) in zip(spans, ((330.0, 0.0), (495.0, 1.3)), strict=True):
        t = np.arange(start, end) / sr
        pieces.append((0.3 * np.sin(2 * np.pi * freq * t + phase)[None].repeat(2, 0)
                       + 0.02 * rng.standard_normal((2, end - start))).astype(np.float32))
    return pieces, spans, n


def _report(audio: np.ndarray, spans: list[tuple[int, int]], fade: int | None = None):
    regions = fade_regions(spans, fade)
    return seam_report(audio, 48000, [(s + e) // 2 for s, e in regions], regions)


def test_join_of_identical_windows_is_the_signal_for_any_plan():
    # Three 8 s windows over 15 s overlap by 4.5 s (> half a window: the first and last
    # overlap too); the bounded crossfades still give every sample a weight summing to 1.
    signal = np.random.default_rng(1).standard_normal((2, 15 * 1000)).astype(np.float32)
    for total, fade in ((15 * 1000, 2 * 1000), (15 * 1000, None), (20 * 1000, 1000)):
        spans = plan_windows(total, 8 * 1000, 2 * 1000)
        x = signal[:, :total] if total <= signal.shape[1] else np.tile(signal, 2)[:, :total]
        pieces = [x[:, s:e] for s, e in spans]
        if fade is None and len(spans) > 2 and spans[0][1] > spans[2][0]:
            with pytest.raises(ValueError, match="crossfades overlap"):
                join_windows(pieces, spans, total, fade=fade)
            continue
        assert np.allclose(join_windows(pieces, spans, total, fade=fade), x, atol=1e-5)


def _passes(report) -> bool:
    return (report.flux_ratio < MAX_FLUX_RATIO and report.step_ratio < MAX_STEP_RATIO
            and report.level_dev_db < MAX_LEVEL_DEV_DB)


def test_seam_measure_fails_a_hard_cut_and_a_level_dip_and_passes_the_join():
    pieces, spans, n = _two_different_edits()
    cut = _report(join_windows(pieces, spans, n, "cut"), spans)
    linear = _report(join_windows(pieces, spans, n, "linear"), spans)
    joined = _report(join_windows(pieces, spans, n), spans)
    assert cut.flux_ratio > 3 * MAX_FLUX_RATIO and cut.step_ratio > MAX_STEP_RATIO and not _passes(cut)
    assert linear.level_dev_db > 2.0 and not _passes(linear)  # uncorrelated: -3 dB in the middle
    assert _passes(joined), joined


@pytest.mark.slow
def test_45_seconds_in_windows_exact_length_and_no_seam(engine):
    x = tone(45.0, 48000)
    params = TransformParams(text="synthwave", steps=4, seed=3)
    seen: list[tuple[int, int]] = []
    pieces, spans = engine.edit_windows(x, params, lambda d, t: seen.append((d, t)))
    assert len(spans) == 2 and seen[-1] == (2 * (4 * 2 + 4), 2 * (4 * 2 + 4))
    fade = engine.fade_samples
    joined_audio = join_windows(pieces, spans, x.shape[1], fade=fade)
    joined = _report(joined_audio, spans, fade)
    assert _passes(joined), joined
    # The same windows joined by the plain cos/sin fade bump +3 dB: these edits correlate.
    plain = _report(join_windows(pieces, spans, x.shape[1], "plain_equal_power", fade=fade), spans, fade)
    assert plain.level_dev_db > 2.0 and not _passes(plain)
    y = engine.transform(x, 48000, params)
    assert np.array_equal(y, joined_audio)  # transform is this join (48 kHz in and out)
    assert engine.transform(x[:, :-77], 48000, params).shape == (2, 45 * 48000 - 77)
