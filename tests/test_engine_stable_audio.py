"""jerry's engine on the real stable-audio-tools: a tiny random-weight model with Stable
Audio Open Small's structure, written in the released layout (model_config.json +
model.safetensors) and loaded by the production loader, from a directory and from a
Hugging Face cache (offline). No mocks, no download.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from g4l.engine.base import Cancelled, TextToAudioParams
from g4l.engine.stable_audio import StableAudioEngine, load_engine, write_debug_checkpoint
from g4l.engine.stable_audio_debug import model_config

torch = pytest.importorskip("torch")

SR = 44100


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # One thread, as a worker runs on this 2-core box (see tests/test_engine_batching.py).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_debug_checkpoint(tmp_path_factory.mktemp("sao") / "debug-stable-audio")


@pytest.fixture(scope="module")
def engine(checkpoint: Path) -> StableAudioEngine:
    return load_engine("debug-stable-audio", str(checkpoint), "cpu")


def P(prompt: str = "warm techno loop", **kw: Any) -> TextToAudioParams:  # noqa: N802 (a record maker)
    return TextToAudioParams(prompt=prompt, **kw)


class Recorder:
    """An on_progress callback that records calls and can cancel after N steps."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.cancel_after = cancel_after

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))
        if self.cancel_after is not None and done >= self.cancel_after:
            raise Cancelled()


# ------------------------------------------------------------------ layout and loading
def test_debug_checkpoint_is_in_the_released_layout(checkpoint: Path) -> None:
    assert (checkpoint / "model_config.json").is_file() and (checkpoint / "model.safetensors").is_file()
    config = json.loads((checkpoint / "model_config.json").read_text())
    assert config["model_type"] == "diffusion_cond"
    assert config["model"]["pretransform"]["config"]["encoder"]["type"] == "oobleck"
    assert config["model"]["diffusion"]["type"] == "dit"
    assert config["model"]["diffusion"]["diffusion_objective"] == "rf_denoiser"
    conditioners = {c["id"]: c for c in config["model"]["conditioning"]["configs"]}
    assert conditioners["prompt"]["type"] == "t5" and conditioners["prompt"]["config"]["t5_model_name"] == "t5-base"
    assert conditioners["prompt"]["config"]["model_path"] == "t5"  # relative: the directory can move
    assert conditioners["seconds_total"]["type"] == "number"


def _structure(value: Any) -> Any:
    """A config's keys and the type names inside it, without the sizes."""
    if isinstance(value, dict):
        return {k: _structure(v) if k in ("type", "id") or isinstance(v, (dict, list)) else None
                for k, v in value.items()}
    if isinstance(value, list):
        return [_structure(v) for v in value] if value and isinstance(value[0], dict) else None
    return value


def test_tiny_config_has_the_real_structure() -> None:
    assert _structure(model_config("tiny")) == _structure(model_config("real"))
    assert model_config("tiny")["sample_size"] == model_config("real")["sample_size"] == 524288
    with pytest.raises(ValueError, match="shape"):
        model_config("huge")


def test_loaded_from_a_directory(engine: StableAudioEngine) -> None:
    assert engine.family == "stable_audio" and engine.model_id == "debug-stable-audio"
    assert (engine.sample_rate, engine.channels, engine.max_seconds) == (SR, 2, 11.0)


def test_a_moved_checkpoint_directory_still_loads(checkpoint: Path, tmp_path: Path) -> None:
    # The model cache writes debug models into a scratch directory and renames it.
    moved = Path(shutil.copytree(checkpoint, tmp_path / "moved"))
    # A config asking for a half-precision VAE (as GPU configs may) decodes in float32 on CPU.
    config = json.loads((moved / "model_config.json").read_text())
    config["model"]["pretransform"]["model_half"] = True
    (moved / "model_config.json").write_text(json.dumps(config))
    engine = load_engine("moved", str(moved), "cpu")
    assert engine.model.pretransform.model_half is False
    assert next(engine.model.pretransform.parameters()).dtype == torch.float32
    audio = engine.text_to_audio(P(seconds_total=1.0, steps=2))
    assert audio.shape == (2, SR) and np.isfinite(audio).all()


def test_weights_that_do_not_fit_the_config_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    bad = Path(shutil.copytree(checkpoint, tmp_path / "bad"))
    config = json.loads((bad / "model_config.json").read_text())
    config["model"]["diffusion"]["config"]["embed_dim"] = 64
    (bad / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not fit"):
        load_engine("bad", str(bad), "cpu")
    (bad / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_engine("bad", str(bad), "cpu")


def test_loaded_from_the_hub_cache_offline(checkpoint: Path, engine: StableAudioEngine, tmp_path: Path) -> None:
    """A hub id through stable-audio-tools' get_pretrained_model, from a Hugging Face cache
    (HF_HUB_OFFLINE=1): the released config names its text encoder by hub id (t5-base),
    which comes from the same cache, as on a production box with a pre-filled cache."""
    from t5_checkpoint import build_t5_cache, hub_snapshot, offline_hub

    hf_home = tmp_path / "hf"
    build_t5_cache(hf_home)
    snapshot = hub_snapshot(hf_home, "stabilityai/stable-audio-open-small")
    config = json.loads((checkpoint / "model_config.json").read_text())
    del config["model"]["conditioning"]["configs"][0]["config"]["model_path"]  # the released form
    (snapshot / "model_config.json").write_text(json.dumps(config))
    shutil.copy(checkpoint / "model.safetensors", snapshot / "model.safetensors")
    with offline_hub(hf_home):
        hub = load_engine("stabilityai/stable-audio-open-small", "stabilityai/stable-audio-open-small", "cpu")
    assert (hub.sample_rate, hub.channels, hub.max_seconds) == (SR, 2, 11.0)
    audio = hub.text_to_audio(P(seconds_total=2.0, steps=2))
    assert audio.shape == (2, 2 * SR) and np.isfinite(audio).all()
    # The same DiT and autoencoder weights as the directory's model.
    dit = {k: v for k, v in hub.model.state_dict().items() if not k.startswith("conditioner.")}
    own = engine.model.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in dit.items())


# ------------------------------------------------------------------ the audio
@pytest.mark.parametrize("seconds", [11.0, 5.0, 1.0, 2.5])
def test_length_is_exact_stereo_and_peak_normalised(engine: StableAudioEngine, seconds: float) -> None:
    audio = engine.text_to_audio(P(seconds_total=seconds, seed=1))
    assert audio.dtype == np.float32
    assert audio.shape == (2, round(seconds * SR))
    assert np.isfinite(audio).all()
    assert np.max(np.abs(audio)) == pytest.approx(1.0)
    assert not np.array_equal(audio[0], audio[1]) or np.std(audio) > 0


def test_same_seed_same_audio_other_seed_other_audio(engine: StableAudioEngine) -> None:
    a = engine.text_to_audio(P(seed=7, seconds_total=2.0))
    b = engine.text_to_audio(P(seed=7, seconds_total=2.0))
    c = engine.text_to_audio(P(seed=8, seconds_total=2.0))
    d = engine.text_to_audio(P("dark ambient pad", seed=7, seconds_total=2.0))
    assert np.array_equal(a, b)
    assert not np.allclose(a, c, atol=1e-3)
    assert not np.allclose(a, d, atol=1e-3)


@pytest.mark.parametrize("sampler", ["pingpong", "euler"])
def test_same_audio_as_generate_diffusion_cond(engine: StableAudioEngine, sampler: str) -> None:
    """A single request is stable-audio-tools' own generate_diffusion_cond with that seed."""
    from stable_audio_tools.inference.generation import generate_diffusion_cond

    params = P("funk bass groove", seed=11, seconds_total=3.0, steps=4, cfg_scale=2.5,
               negative_prompt="noise", sampler_type=sampler)
    with torch.inference_mode():
        ref = generate_diffusion_cond(
            engine.model, steps=4, cfg_scale=2.5, seed=11, sample_size=engine.sample_size, device="cpu",
            conditioning=[{"prompt": "funk bass groove", "seconds_total": 3.0}],
            negative_conditioning=[{"prompt": "noise", "seconds_total": 3.0}],
            sampler_type=sampler, disable_tqdm=True)
    ref = ref[0, :, :3 * SR].float().numpy()
    ref = ref / np.max(np.abs(ref))
    assert np.array_equal(engine.text_to_audio(params), ref.astype(np.float32))


def test_progress_per_step_and_cancel(engine: StableAudioEngine) -> None:
    progress = Recorder()
    engine.text_to_audio(P(seconds_total=1.0, steps=5), progress)
    assert progress.calls == [(i, 5) for i in range(1, 6)]
    cancel = Recorder(cancel_after=2)
    with pytest.raises(Cancelled):
        engine.text_to_audio(P(seconds_total=1.0, steps=8), cancel)
    assert cancel.calls == [(1, 8), (2, 8)]
    assert engine.text_to_audio(P(seconds_total=1.0, steps=2)).shape == (2, SR)  # still usable


def test_negative_prompt(engine: StableAudioEngine) -> None:
    plain = engine.text_to_audio(P(seed=3, seconds_total=2.0, cfg_scale=4.0))
    steered = engine.text_to_audio(P(seed=3, seconds_total=2.0, cfg_scale=4.0, negative_prompt="dark noise"))
    assert steered.shape == plain.shape and not np.allclose(plain, steered, atol=1e-3)
    # cfg_scale 1 (the small model's default) runs no guidance: the negative prompt has no effect.
    one = engine.text_to_audio(P(seed=3, seconds_total=2.0))
    assert np.array_equal(one, engine.text_to_audio(P(seed=3, seconds_total=2.0, negative_prompt="dark noise")))


# ------------------------------------------------------------------ batching
def test_batch_items_equal_their_single_runs(engine: StableAudioEngine) -> None:
    """One sampler run for several requests: each item is exactly what it is alone
    (per-item generators for the starting latent and pingpong's step noise)."""
    items = [P("warm techno loop", seed=1, seconds_total=11.0),
             P("dark ambient pad", seed=2, seconds_total=5.0),
             P("jazz piano", seed=3, seconds_total=1.0),
             P("warm techno loop", seed=4, seconds_total=2.5)]
    progress = Recorder()
    batch = engine.text_to_audio_batch(items, progress)
    assert progress.calls == [(i, 8) for i in range(1, 9)]  # one sampler run
    for item, audio in zip(items, batch, strict=True):
        assert np.array_equal(audio, engine.text_to_audio(item))


def test_batch_mixing_negative_prompts_with_guidance(engine: StableAudioEngine) -> None:
    items = [P("funk bass", seed=5, seconds_total=2.0, cfg_scale=3.0, negative_prompt="noise"),
             P("slow dub", seed=6, seconds_total=2.0, cfg_scale=3.0)]
    batch = engine.text_to_audio_batch(items)
    for item, audio in zip(items, batch, strict=True):
        assert np.array_equal(audio, engine.text_to_audio(item))


def test_batch_needs_one_schedule(engine: StableAudioEngine) -> None:
    with pytest.raises(ValueError, match="same steps"):
        engine.text_to_audio_batch([P(steps=8), P(steps=4)])
    with pytest.raises(ValueError, match="at least one"):
        engine.text_to_audio_batch([])


@pytest.mark.parametrize("bad, match", [
    ({"seconds_total": 0.0}, "seconds_total"),
    ({"seconds_total": 11.5}, "seconds_total"),
    ({"seconds_total": float("nan")}, "seconds_total"),
    ({"steps": 0}, "steps"),
    ({"steps": 2.0}, "steps"),
    ({"cfg_scale": -1.0}, "cfg_scale"),
    ({"seed": -1}, "seed"),
    ({"sampler_type": "dpmpp-3m-sde"}, "sampler_type"),
    ({"prompt": "  "}, "prompt"),
])
def test_bad_params_are_refused(engine: StableAudioEngine, bad: dict[str, Any], match: str) -> None:
    fields = {"prompt": "warm techno loop", **bad}
    with pytest.raises(ValueError, match=match):
        engine.text_to_audio(TextToAudioParams(**fields))


# ------------------------------------------------------------------ import shims
def test_lightning_stand_in_is_subclassable_and_refuses_training(monkeypatch: pytest.MonkeyPatch) -> None:
    from g4l.engine import _compat

    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)  # None in sys.modules: ImportError
    monkeypatch.delitem(sys.modules, "pytorch_lightning.callbacks", raising=False)
    _compat._import_pytorch_lightning()
    pl = sys.modules["pytorch_lightning"]
    assert pl is not None

    class Checkpoint(pl.callbacks.ModelCheckpoint):  # what stable-audio-tools' LoRA callbacks do
        pass

    class Offset(pl.Callback):
        pass

    for cls in (Checkpoint, Offset):
        with pytest.raises(RuntimeError, match="pytorch_lightning is not installed"):
            cls()


def test_lightning_shim_keeps_a_real_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from g4l.engine import _compat

    real = types.ModuleType("pytorch_lightning")
    monkeypatch.setitem(sys.modules, "pytorch_lightning", real)
    _compat._import_pytorch_lightning()
    assert sys.modules["pytorch_lightning"] is real


def test_stable_audio_tools_inference_modules_import() -> None:
    from g4l.engine._compat import prepare_stable_audio_import

    prepare_stable_audio_import()
    import torchaudio.transforms  # the pure-Python part the autoencoders import
    from stable_audio_tools.inference.generation import generate_diffusion_cond
    from stable_audio_tools.models import lora

    assert callable(generate_diffusion_cond) and hasattr(lora, "LoRASafetensorsCheckpoint")
    assert hasattr(torchaudio.transforms, "Resample")


def test_the_transformers_import_time_compile_is_put_off_until_called() -> None:
    """stable-audio-tools compiles flex_attention when its transformer module is imported;
    g4l imports it with that compile put off to the first call (TorchInductor's code
    generators stay unloaded: 1.8 CPU-s of every worker start), and ``torch.compile`` is
    itself again afterwards."""
    import subprocess

    code = (
        "import sys, torch\n"
        "real = torch.compile\n"
        "from g4l.engine._compat import CompileOnFirstCall, prepare_stable_audio_import\n"
        "prepare_stable_audio_import()\n"
        "import stable_audio_tools.models.transformer as t\n"
        "assert t.flex_attention_available, 'this torch has flex_attention'\n"
        "assert isinstance(t.flex_attention_compiled, CompileOnFirstCall)\n"
        "assert 'torch._inductor.compile_fx' not in sys.modules\n"
        "assert torch.compile is real\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout[-2000:] + out.stderr[-2000:]


def test_a_put_off_compile_runs_once_at_the_first_call() -> None:
    from g4l.engine._compat import CompileOnFirstCall

    compiled: list[tuple[Any, dict]] = []

    def compile(fn: Any, **options: Any) -> Any:  # stands for torch.compile: returns a callable
        compiled.append((fn, options))
        return lambda *a, **k: ("compiled", fn(*a, **k))

    wrapped = CompileOnFirstCall(compile, lambda x, y=0: x + y, {"mode": "max-autotune-no-cudagraphs"})
    assert compiled == []
    assert wrapped(1, y=2) == ("compiled", 3) and wrapped(5) == ("compiled", 5)
    assert len(compiled) == 1 and compiled[0][1] == {"mode": "max-autotune-no-cudagraphs"}


def test_model_cache_serves_the_debug_id(tmp_path: Path) -> None:
    """The coordinator's ModelCache writes the debug model once into its debug directory
    (a scratch directory renamed into place) and loads it through load_engine."""
    from g4l.engine.cache import ModelCache

    cache = ModelCache(["debug"], device="cpu", debug_dir=tmp_path / "debug-models")
    engine = cache.get("debug-stable-audio")
    assert isinstance(engine, StableAudioEngine) and engine.model_id == "debug-stable-audio"
    (written,) = (tmp_path / "debug-models").glob("debug-stable-audio-*")  # one per version of the engine's code
    assert (written / "model.safetensors").is_file()
    assert engine.text_to_audio(P(seconds_total=1.0, steps=2)).shape == (2, SR)
