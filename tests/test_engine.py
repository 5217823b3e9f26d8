"""The generation engine on real AudioCraft code: a tiny random-weight MusicGen, no mocks.

Nothing here downloads weights: the debug model is built locally and the "production"
path loads a checkpoint directory written by ``save_debug_checkpoint``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from g4l.engine import (
    Cancelled,
    Engine,
    GenerationParams,
    ModelCache,
    ModelLoadError,
    build_debug_musicgen,
    save_debug_checkpoint,
)
from g4l.errors import ModelNotAllowed

SR = 32000


@pytest.fixture(scope="module")
def engine() -> Engine:
    """One debug engine for the module: building is cheap, importing AudioCraft is not."""
    from g4l.engine import MusicGenEngine

    return MusicGenEngine(build_debug_musicgen(seed=0))


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_debug_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-musicgen")


def _prompt(seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((channels, int(seconds * SR)))).astype(np.float32)


class Recorder:
    """An on_progress callback that records calls and can cancel after N steps."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.cancel_after = cancel_after

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))
        if self.cancel_after is not None and done >= self.cancel_after:
            raise Cancelled()


def test_continue_30s_from_6s_prompt_with_progress(engine: Engine) -> None:
    assert (engine.sample_rate, engine.channels, engine.model_id) == (SR, 1, "debug")
    progress = Recorder()
    out = engine.continue_audio(_prompt(6.0), GenerationParams(duration=30.0, seed=1), progress)
    assert out.dtype == np.float32 and out.ndim == 2 and out.shape[0] == 1
    assert abs(out.shape[1] / SR - 30.0) < 0.05  # full output: prompt (re-decoded) + continuation
    assert np.isfinite(out).all() and np.abs(out).max() > 0
    done = [d for d, _ in progress.calls]
    totals = {t for _, t in progress.calls}
    assert len(totals) == 1
    total = totals.pop()
    assert done == sorted(done) and len(set(done)) == len(done)  # strictly increasing
    assert done[-1] == total
    # ~24 s left to generate at 50 steps/s (plus the delay pattern's few extra steps).
    assert 24 * 50 <= total <= 24 * 50 + 10


def test_cancel_from_progress_callback_stops_early(engine: Engine) -> None:
    progress = Recorder(cancel_after=20)
    with pytest.raises(Cancelled):
        engine.continue_audio(_prompt(2.0), GenerationParams(duration=10.0, seed=1), progress)
    assert progress.calls[-1][0] == 20 and progress.calls[-1][1] > 20
    # The engine (lock, streaming state, callback) is usable right after a cancel.
    out = engine.continue_audio(_prompt(2.0), GenerationParams(duration=3.0, seed=1))
    assert out.shape == (1, 3 * SR)


def test_same_seed_same_output_and_params_accepted(engine: Engine) -> None:
    prompt = _prompt(1.0)
    params = GenerationParams(top_k=50, top_p=0.0, temperature=0.7, cfg_coef=5.0,
                              description="dark rolling drum and bass", duration=3.0, seed=42)
    a = engine.continue_audio(prompt, params)
    b = engine.continue_audio(prompt, params)
    np.testing.assert_array_equal(a, b)
    other_seed = engine.continue_audio(prompt, GenerationParams(
        top_k=50, temperature=0.7, cfg_coef=5.0, description="dark rolling drum and bass",
        duration=3.0, seed=43))
    assert not np.array_equal(a, other_seed)
    nucleus = engine.continue_audio(prompt, GenerationParams(top_p=0.9, duration=2.0, seed=1))
    assert nucleus.shape == (1, 2 * SR)


def test_description_changes_output_for_fixed_seed(engine: Engine) -> None:
    prompt = _prompt(1.0)
    unguided = engine.continue_audio(prompt, GenerationParams(duration=3.0, seed=7))
    blank = engine.continue_audio(prompt, GenerationParams(description="   ", duration=3.0, seed=7))
    guided = engine.continue_audio(prompt, GenerationParams(description="liquid dnb", duration=3.0, seed=7))
    np.testing.assert_array_equal(unguided, blank)  # blank description == unguided
    assert not np.array_equal(unguided, guided)


def test_prompt_channels_are_converted(engine: Engine) -> None:
    stereo = engine.continue_audio(_prompt(1.0, channels=2), GenerationParams(duration=2.0, seed=3))
    assert stereo.shape == (1, 2 * SR)
    mono_1d = engine.continue_audio(_prompt(1.0)[0], GenerationParams(duration=2.0, seed=3))
    assert mono_1d.shape == (1, 2 * SR)


def test_bad_prompts_are_rejected(engine: Engine) -> None:
    with pytest.raises(ValueError, match="shorter"):
        engine.continue_audio(_prompt(3.0), GenerationParams(duration=3.0))
    with pytest.raises(ValueError, match="empty"):
        engine.continue_audio(np.zeros((1, 0), np.float32), GenerationParams(duration=3.0))
    bad = _prompt(1.0)
    bad[0, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        engine.continue_audio(bad, GenerationParams(duration=3.0))


def test_generate_without_prompt(engine: Engine) -> None:
    progress = Recorder()
    out = engine.generate(GenerationParams(description="techno", duration=2.0, seed=5), progress)
    assert out.shape == (1, 2 * SR) and out.dtype == np.float32
    assert progress.calls[-1][0] == progress.calls[-1][1]
    unconditional = engine.generate(GenerationParams(duration=1.0, seed=5))
    assert unconditional.shape == (1, SR)


def test_debug_model_is_deterministic_for_a_seed() -> None:
    import torch

    a, b, c = build_debug_musicgen(seed=3), build_debug_musicgen(seed=3), build_debug_musicgen(seed=4)
    sa, sb, sc = a.lm.state_dict(), b.lm.state_dict(), c.lm.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert (a.sample_rate, a.frame_rate, a.audio_channels) == (SR, 50, 1)


def test_generation_params_validation() -> None:
    assert GenerationParams() == GenerationParams(
        top_k=250, top_p=0.0, temperature=1.0, cfg_coef=3.0, description=None, duration=30.0, seed=None)
    for bad in ({"top_k": -1}, {"top_p": 1.5}, {"temperature": 0.0}, {"duration": 0.0},
                {"cfg_coef": float("nan")}, {"seed": -1}, {"top_k": 2.5}):
        with pytest.raises(ValueError):
            GenerationParams(**bad)  # type: ignore[arg-type]


def test_checkpoint_dir_loads_through_production_path(checkpoint_dir: Path) -> None:
    import torch
    from audiocraft.models import MusicGen

    assert sorted(p.name for p in checkpoint_dir.iterdir()) == [
        "compression_state_dict.bin", "state_dict.bin"]
    # The release layout: what audiocraft.models.loaders reads (weights_only torch.load).
    pkg = torch.load(checkpoint_dir / "state_dict.bin", map_location="cpu")
    assert {"xp.cfg", "best_state"} <= set(pkg)
    assert isinstance(pkg["xp.cfg"], str)

    cache = ModelCache([f"  {checkpoint_dir}  ", "debug"], device="cpu")
    engine = cache.get(str(checkpoint_dir))
    assert isinstance(engine.model, MusicGen)
    assert engine.model.name == str(checkpoint_dir)  # named by get_pretrained, not "debug"
    assert engine.model.lm.cfg.lm_model == "transformer_lm"  # built from xp.cfg by builders
    assert engine.model.max_duration == 30.0
    out = engine.continue_audio(_prompt(1.0), GenerationParams(duration=2.0, seed=1, description="x"))
    assert out.shape == (1, 2 * SR)
    # Same weights as the in-process debug model of the same seed.
    ref = build_debug_musicgen(seed=0)
    loaded = engine.model.lm.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in ref.lm.state_dict().items())
    assert cache.get(f"{checkpoint_dir} ") is engine
    assert cache.loaded() == [str(checkpoint_dir)]


def test_cache_allowlist_caching_and_errors(tmp_path: Path) -> None:
    cache = ModelCache(["debug", " facebook/musicgen-small ", str(tmp_path / "missing")], device="cpu")
    # "debug" allows the tiny model of every family (jerry's and terry's too).
    assert cache.allowlist == ["debug", "debug-stable-audio", "debug-melodyflow", "facebook/musicgen-small",
                               str(tmp_path / "missing")]
    with pytest.raises(ModelNotAllowed) as info:
        cache.get("facebook/musicgen-large")
    assert info.value.code == "MODEL_NOT_ALLOWED"
    assert cache.loaded() == []

    # Two threads asking at once get one load and the same engine.
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(" debug"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] is results[1]
    assert cache.get("debug") is results[0]
    assert cache.loaded() == ["debug"]

    with pytest.raises(ModelLoadError, match="missing"):
        cache.get(str(tmp_path / "missing"))
    assert cache.loaded() == ["debug"]
