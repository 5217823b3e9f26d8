"""The real text path (issue 10, item 5): a checkpoint in the released layout whose
``description`` conditioner is AudioCraft's ``T5Conditioner``, as ``facebook/musicgen-*``
and their fine-tunes are, with a tiny random T5, a locally trained SentencePiece tokenizer
and a tiny ``facebook/encodec_32khz``, resolved offline from a Hugging Face cache directory
(``tests/t5_checkpoint.py``).

It runs through stock AudioCraft, through g4l's decode loop (rows with descriptions of
different token lengths in one batch), through g4l's model loading (``ModelCache`` with a
checkpoint directory, a hub id from the cache, and an id mapped to the directory by
``G4L_MODEL_PATHS``; a missing T5 or codec named in the reason; a T5 cache left by
transformers 4) and through real server jobs. Measured figures: docs/engine-batching.md,
"The text path".
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
import torch
from conftest import read_wav, start_server
from pydantic import ValidationError
from t5_checkpoint import (
    ENCODEC_NAME,
    T5_NAME,
    T5_WIDTH,
    build_encodec_cache,
    build_t5_cache,
    offline_hub,
    offline_hub_env,
    put_in_hub_cache,
    save_t5_musicgen_checkpoint,
)

from g4l import embedded
from g4l.engine import GenerationParams
from g4l.engine._compat import prepare_audiocraft_import
from g4l.engine.batched_engine import BatchedEngine
from g4l.engine.batched_musicgen import BatchedMusicGen
from g4l.engine.batching import RowHandle
from g4l.engine.cache import ModelCache, ModelLoadError
from g4l.settings import Settings

prepare_audiocraft_import()

from audiocraft.models import MusicGen  # noqa: E402
from audiocraft.models.encodec import HFEncodecCompressionModel  # noqa: E402
from audiocraft.modules.conditioners import T5Conditioner  # noqa: E402

SR = 32000
HUB_ID = "g4l-test/musicgen-t5-tiny"  # in the hub cache
LOCAL_ID = "studio/musicgen-t5-local"  # not in the cache: G4L_MODEL_PATHS maps it to the directory

# Descriptions of different token lengths (the loop pads their cross-attention keys).
LONG = "warm dub bass with a slow groove and bright piano chords"
SHORT = "jazz"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:  # type: ignore[no-untyped-def]
    """A hub cache holding the tiny ``t5-base`` and the checkpoint (also as a directory)."""
    root = tmp_path_factory.mktemp("t5")
    hf_home = root / "hf"
    hf_home.mkdir()
    build_t5_cache(hf_home)
    build_encodec_cache(hf_home)
    checkpoint = save_t5_musicgen_checkpoint(root / "musicgen-t5-tiny", hf_home)
    put_in_hub_cache(hf_home, HUB_ID, checkpoint)
    return SimpleNamespace(hf_home=hf_home, checkpoint=checkpoint)


@pytest.fixture(scope="module")
def model(files):  # type: ignore[no-untyped-def]
    from g4l.engine.musicgen import disable_mkldnn

    disable_mkldnn()  # as the worker runs it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the worker's rule on this 2-core box (see test_engine_batching)
    with offline_hub(files.hf_home):
        yield MusicGen.get_pretrained(str(files.checkpoint), device="cpu")
    torch.set_num_threads(threads)


def _prompt(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((1, int(seconds * SR)))).astype(np.float32)


def _stock_codes(model, texts: list[str | None], seed: int, duration: float,  # type: ignore[no-untyped-def]
                 prompt: np.ndarray | None = None) -> torch.Tensor:
    model.set_generation_params(use_sampling=True, top_k=250, duration=duration, cfg_coef=3.0)
    torch.manual_seed(seed)
    with torch.inference_mode():
        if prompt is None:
            _, codes = model.generate(texts, return_tokens=True)  # type: ignore[arg-type]
        else:
            wav = torch.from_numpy(np.repeat(prompt[None], len(texts), axis=0))
            _, codes = model.generate_continuation(wav, SR, descriptions=texts, return_tokens=True)
    return codes


def test_the_checkpoint_has_the_released_layout_and_conditions_on_local_t5(files, model) -> None:  # type: ignore[no-untyped-def]
    assert sorted(p.name for p in files.checkpoint.iterdir()) == ["compression_state_dict.bin", "state_dict.bin"]
    pkg = torch.load(files.checkpoint / "state_dict.bin", map_location="cpu")
    assert f"name: {T5_NAME}" in pkg["xp.cfg"]
    assert torch.load(files.checkpoint / "compression_state_dict.bin")["pretrained"] == ENCODEC_NAME
    # The codec the checkpoint names came from the cache too: the tiny one, wrapped as released models are.
    assert isinstance(model.compression_model, HFEncodecCompressionModel)
    assert model.compression_model.model.config.hidden_size == 32 and model.compression_model.num_codebooks == 4
    # As released: the conditioner's output projection is saved, the frozen T5 is not.
    cond_keys = [k for k in pkg["best_state"] if k.startswith("condition_provider.")]
    assert cond_keys and all(".output_proj." in k for k in cond_keys), cond_keys
    conditioner = model.lm.condition_provider.conditioners["description"]
    assert isinstance(conditioner, T5Conditioner) and conditioner.name == T5_NAME
    # What from_pretrained('t5-base') found is the local tiny T5, not a real one.
    assert conditioner.t5.config.d_model == T5_WIDTH and conditioner.t5.config.num_layers == 1
    assert len(conditioner.t5_tokenizer) < 100
    tokens = conditioner.tokenize([LONG, SHORT, None])
    lengths = tokens["attention_mask"].sum(dim=1).tolist()
    assert lengths[0] > lengths[1] > 0 and lengths[2] == 0  # real pieces; no description: all masked
    assert (tokens["input_ids"][:2] != 2).all(), "every word of the test texts is in the vocabulary (no <unk>)"


def test_stock_audiocraft_generates_with_and_without_a_description_batched(model) -> None:  # type: ignore[no-untyped-def]
    texts: list[str | None] = [LONG, None, SHORT]
    codes = _stock_codes(model, texts, seed=3, duration=1.0)
    assert codes.shape == (3, 4, 50)
    prompt = _prompt(0.5, seed=1)
    continued = _stock_codes(model, texts, seed=3, duration=1.5, prompt=prompt)
    assert continued.shape == (3, 4, 75)
    with torch.inference_mode():
        audio = model.compression_model.decode(continued, None)
    assert audio.shape == (3, 1, 48000) and torch.isfinite(audio).all()
    # The description is what differs between these (same seed, alone).
    with_text = _stock_codes(model, [LONG], seed=5, duration=1.0)
    without = _stock_codes(model, [None], seed=5, duration=1.0)
    other = _stock_codes(model, [SHORT], seed=5, duration=1.0)
    assert torch.equal(with_text, _stock_codes(model, [LONG], seed=5, duration=1.0))
    assert not torch.equal(with_text, without) and not torch.equal(with_text, other)


# Rows that differ in description (length and presence), prompt and seed.
JOBS: list[tuple[float | None, GenerationParams]] = [
    (0.5, GenerationParams(duration=2.0, seed=7, description=LONG)),
    (None, GenerationParams(duration=1.5, seed=7)),
    (1.0, GenerationParams(duration=2.5, seed=3, description=SHORT, top_k=50, temperature=0.9)),
    (None, GenerationParams(duration=2.0, seed=11, description=LONG, top_p=0.9, cfg_coef=5.0)),
]


def _submit(engine: BatchedMusicGen, job: tuple[float | None, GenerationParams]) -> RowHandle:
    seconds, params = job
    return engine.submit(None if seconds is None else _prompt(seconds, seed=int(seconds * 10)), params)


def _alone(model, job: tuple[float | None, GenerationParams], **kw: object) -> RowHandle:  # type: ignore[no-untyped-def]
    """The row run alone in a loop of its own (a fresh cache: its keys cut to its length)."""
    engine = BatchedMusicGen(model, **kw)  # type: ignore[arg-type]
    handle = _submit(engine, job)
    engine.loop.run_until_idle()
    return handle


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_a_lone_row_with_a_t5_description_is_stock_audiocraft_bit_for_bit(model, attention: str) -> None:  # type: ignore[no-untyped-def]
    for seconds, text in ((0.5, LONG), (None, SHORT), (None, None)):
        params = GenerationParams(duration=1.5, seed=9, description=text)
        prompt = None if seconds is None else _prompt(seconds, seed=2)
        engine = BatchedMusicGen(model, attention=attention)  # its own cache: the row's own key length
        handle = engine.submit(prompt, params)
        engine.loop.run_until_idle()
        assert torch.equal(handle.result(), _stock_codes(model, [text], seed=9, duration=1.5, prompt=prompt)[0])


@pytest.mark.parametrize(("attention", "pad_lone_row"), [("math", False), ("math", True), ("sdpa", False)])
def test_the_decode_loop_with_t5_rows_of_different_lengths_gives_each_row_its_lone_result(
        model, attention: str, pad_lone_row: bool) -> None:  # type: ignore[no-untyped-def]
    """Four rows whose T5 conditions have different token counts (and one none) share one
    batch; each row alone ran in a loop of its own. By default (a lone row runs stock's
    kernel): the same codes, logits within rounding. With ``pad_lone_row``: every step's
    guided logits bit for bit."""
    lengths = model.lm.condition_provider.conditioners["description"].tokenize([LONG, SHORT])["attention_mask"].sum(1)
    assert int(lengths[0]) > int(lengths[1]) > 0  # the rows' conditions really differ in length
    options = {"attention": attention, "pad_lone_row": pad_lone_row, "record_logits": True}
    alone = [_alone(model, job, **options) for job in JOBS]
    engine = BatchedMusicGen(model, **options)  # type: ignore[arg-type]
    handles = [_submit(engine, job) for job in JOBS]
    engine.loop.run_until_idle()
    drift = 0.0
    for (_seconds, params), solo, batched in zip(JOBS, alone, handles, strict=True):
        codes = batched.result()
        assert codes.shape == (4, int(params.duration * 50))
        assert torch.equal(codes, solo.result())
        assert len(solo.logits) == len(batched.logits)
        drift = max([drift] + [(a - b).abs().max().item() for a, b in zip(solo.logits, batched.logits, strict=True)])
    if pad_lone_row:
        assert drift == 0.0
    else:
        assert drift < 1e-3  # last-bit rounding (measured about 1e-5), not another computation
    # Same seed (7), with and without the description: the text changes the codes.
    assert not torch.equal(alone[0].result()[:, :75], alone[1].result()[:, :75])


def test_a_description_longer_than_a_key_block_leaves_its_batch_mates_exact(model) -> None:  # type: ignore[no-untyped-def]
    """A row whose condition takes two key blocks (85 tokens) beside a short one: each is
    bit-for-bit its lone self (``pad_lone_row``), the short row read at 64 keys alone and 128
    in the batch."""
    very_long = " ".join(["warm dub bass with a slow groove"] * 12)
    jobs = [(None, GenerationParams(duration=1.0, seed=2, description=very_long)),
            (0.5, GenerationParams(duration=1.5, seed=2, description=SHORT))]
    alone = [_alone(model, job, pad_lone_row=True, record_logits=True) for job in jobs]
    engine = BatchedMusicGen(model, pad_lone_row=True, record_logits=True)
    handles = [_submit(engine, job) for job in jobs]
    engine.loop.run_until_idle()
    assert alone[1].result().shape == (4, 75) and engine.loop.cache.shape.cross_length == 128
    for solo, batched in zip(alone, handles, strict=True):
        assert torch.equal(solo.result(), batched.result())
        assert all(torch.equal(a, b) for a, b in zip(solo.logits, batched.logits, strict=True))


def test_the_description_changes_the_loops_output_for_a_seed(model) -> None:  # type: ignore[no-untyped-def]
    runs = {text: _alone(model, (None, GenerationParams(duration=1.0, seed=4, description=text))).result()
            for text in (LONG, SHORT, None)}
    again = _alone(model, (None, GenerationParams(duration=1.0, seed=4, description=LONG))).result()
    assert torch.equal(runs[LONG], again)
    assert not torch.equal(runs[LONG], runs[None]) and not torch.equal(runs[LONG], runs[SHORT])
    assert not torch.equal(runs[SHORT], runs[None])


def test_g4l_loads_the_checkpoint_offline_by_directory_by_hub_id_and_by_mapped_id(files) -> None:  # type: ignore[no-untyped-def]
    """What an operator configures for a real model on a server without network: the
    checkpoint directory, its hub id (in the hub cache), or the id clients know mapped to
    the directory (G4L_MODEL_PATHS) in G4L_MODELS; T5 and EnCodec from the hub cache."""
    settings = Settings(models=[str(files.checkpoint), HUB_ID, LOCAL_ID],
                        model_paths=[f" {LOCAL_ID} = {files.checkpoint} "])
    assert settings.model_path_map == {LOCAL_ID: str(files.checkpoint)}
    cache = ModelCache(settings.models, device="cpu", paths=settings.model_path_map)
    with offline_hub(files.hf_home):
        by_dir = cache.get(str(files.checkpoint))
        by_id = cache.get(HUB_ID)
        by_mapped_id = cache.get(LOCAL_ID)
    assert cache.failed() == {}
    assert by_mapped_id.model_id == LOCAL_ID  # what clients see and ask for
    for engine in (by_dir, by_id, by_mapped_id):
        assert isinstance(engine.model.lm.condition_provider.conditioners["description"], T5Conditioner)
        assert engine.sample_rate == SR and engine.channels == 1
    params = GenerationParams(duration=1.0, seed=6, description=LONG)
    out = by_dir.generate(params)
    assert out.shape == (1, SR) and out.dtype == np.float32
    assert np.array_equal(out, by_id.generate(params)) and np.array_equal(out, by_mapped_id.generate(params))
    assert not np.array_equal(out, by_dir.generate(GenerationParams(duration=1.0, seed=6)))
    continued = by_dir.continue_audio(_prompt(0.5, seed=3), GenerationParams(duration=1.5, seed=6, description=SHORT))
    assert continued.shape == (1, int(1.5 * SR))

    # The worker's batched engine over the same model: a lone job is the stock engine's.
    shared = BatchedMusicGen(by_dir.model)
    shared.start()
    try:
        batched = BatchedEngine(by_dir, shared)
        assert np.array_equal(batched.generate(params), out)
    finally:
        shared.stop()


def test_a_mapped_model_path_must_be_id_equals_directory(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not id=directory"):
        Settings(model_paths=["studio/model"])
    cache = ModelCache([LOCAL_ID], device="cpu", paths={LOCAL_ID: str(tmp_path / "missing")})
    with pytest.raises(ModelLoadError, match="no checkpoint directory at .*missing .G4L_MODEL_PATHS."):
        cache.get(LOCAL_ID)


def test_a_checkpoint_whose_t5_or_codec_is_not_cached_fails_naming_it(files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Offline, a checkpoint directory whose T5 (then, with T5 cached, whose codec) is not in
    the hub cache: the one-line reason names the missing repo and the cache directory."""
    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    for missing in (T5_NAME, ENCODEC_NAME):
        cache = ModelCache([str(files.checkpoint)], device="cpu")
        with offline_hub(hf_home), pytest.raises(ModelLoadError) as err:
            cache.get(str(files.checkpoint))
        reason = str(err.value)
        assert f"needs {missing!r}" in reason and "HF_HOME" in reason and str(hf_home / "hub") in reason, reason
        assert "\n" not in reason
        build_t5_cache(hf_home)  # T5 now there: the codec is what is missing next


def test_a_t5_cache_made_by_transformers_4_with_only_spiece_model_loads_the_same(files, model,  # type: ignore[no-untyped-def]
                                                                                 tmp_path: Path) -> None:
    """A cache filled by the transformers 4 stack (the sentencepiece ``T5Tokenizer`` fetched
    ``spiece.model`` and no ``tokenizer.json``), as an operator may copy from an older
    server: transformers 5 converts it (sentencepiece + protobuf), to the same tokens and
    the same codes."""
    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    snapshot = build_t5_cache(hf_home, tokenizer_json=False)
    build_encodec_cache(hf_home)
    assert not (snapshot / "tokenizer.json").exists() and (snapshot / "spiece.model").exists()
    with offline_hub(hf_home):
        legacy = MusicGen.get_pretrained(str(files.checkpoint), device="cpu")
    texts: list[str | None] = [LONG, SHORT, None]
    tokens = legacy.lm.condition_provider.conditioners["description"].tokenize(texts)
    expected = model.lm.condition_provider.conditioners["description"].tokenize(texts)
    assert torch.equal(tokens["input_ids"], expected["input_ids"])
    codes = _stock_codes(legacy, [LONG], seed=4, duration=1.0)
    assert torch.equal(codes, _stock_codes(model, [LONG], seed=4, duration=1.0))


@pytest.mark.slow  # the whole server
def test_server_jobs_run_on_the_t5_checkpoint_offline(files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The whole server, offline, batching on, with the hub id and a mapped id in
    G4L_MODELS: three generations on the hub id (two with descriptions, one without, two
    sharing a seed) and one on the mapped id complete with their durations; the
    description changes the audio, and the mapped id gives what the hub id gives."""
    redis_proc, mongo_proc = embedded.start_redis(None), embedded.start_mongo(None)
    server = None
    try:
        server = start_server(tmp_path, redis_url=redis_proc.url, mongo_url=mongo_proc.url,
                              G4L_MODELS=f"{HUB_ID},{LOCAL_ID}", G4L_MODEL_PATHS=f"{LOCAL_ID}={files.checkpoint}",
                              G4L_MAX_BATCH="8", **offline_hub_env(files.hf_home))
        api = server.url + "/api/v1"
        bodies = [{"prompt": LONG, "seed": 5, "model": HUB_ID}, {"seed": 5, "model": HUB_ID},
                  {"prompt": SHORT, "seed": 8, "model": HUB_ID}, {"prompt": LONG, "seed": 5, "model": LOCAL_ID}]
        ids = []
        for body in bodies:
            resp = requests.post(api + "/generate", json={**body, "duration": 2}, timeout=30)
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["job_id"])
        audio = []
        for job_id in ids:
            deadline = time.monotonic() + 120
            while (job := requests.get(f"{api}/jobs/{job_id}", timeout=30).json())["status"] not in (
                    "completed", "failed", "canceled"):
                assert time.monotonic() < deadline, job
                time.sleep(0.2)
            assert job["status"] == "completed", job
            resp = requests.get(f"{api}/jobs/{job_id}/audio", timeout=30)
            assert resp.status_code == 200
            data, rate = read_wav(resp.content)
            assert rate == SR and data.shape[0] == 2 * SR, (rate, data.shape)
            audio.append(data)
        assert not np.array_equal(audio[0], audio[1])
        assert np.array_equal(audio[0], audio[3])
    finally:
        if server is not None:
            server.stop()
        redis_proc.stop()
        mongo_proc.stop()
