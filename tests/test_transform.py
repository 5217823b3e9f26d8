"""terry above the engine, against real Redis and the real store (no model needed): the
presets, the spec a transform request resolves to, where its input comes from and what
undo will go back to, and every refusal of issue 19 that concerns terry, each of which
leaves the session's audio and history as they were. (The whole flow with the tiny
MelodyFlow model, over every protocol: tests/test_transform_clients.py.)"""

from __future__ import annotations

import base64
import io
import struct

import numpy as np
import pytest
import soundfile as sf
from conftest import make_wav
from pydantic import ValidationError

from g4l import keys
from g4l.engine.base import EDIT_SOLVER_STEPS
from g4l.errors import Busy, InvalidAudio, InvalidRequest, NothingToUndo, SessionNotFound, TooLarge
from g4l.jobs.records import JobStatus
from g4l.services import presets
from g4l.services.auth import Caller
from g4l.services.history import HistoryService
from g4l.services.sessions import SessionService
from g4l.services.transform import TransformService
from g4l.store.history import Operation
from g4l.worker.kinds.transform import in_input_shape
from plugin_protocol.payloads import TransformAudioRequest, UpdateCroppedAudio

ME = Caller("key:me", keyed=True)
OTHER = Caller("key:other", keyed=True)

#: The 32 names the device and gary4juce list, in their order, then the server's own.
CLIENT_NAMES = [
    "accordion_folk", "banjo_bluegrass", "piano_classical", "celtic", "strings_quartet", "synth_retro",
    "synth_modern", "synth_edm", "lofi_chill", "synth_bass", "rock_band", "cinematic_epic", "retro_rpg",
    "chiptune", "steel_drums", "gamelan_fusion", "music_box", "trap_808", "lo_fi_drums", "boom_bap",
    "percussion_ensemble", "future_bass", "synthwave_retro", "melodic_techno", "dubstep_wobble", "glitch_hop",
    "digital_disruption", "circuit_bent", "orchestral_glitch", "vapor_drums", "industrial_textures",
    "jungle_breaks",
]


def _b64(wav: bytes) -> str:
    return base64.b64encode(wav).decode()


@pytest.fixture
def services(ctx):
    sessions = SessionService(ctx, spawn=lambda fn, *a: fn(*a))
    return sessions, TransformService(sessions), HistoryService(sessions)


# ---------------------------------------------------------------- presets
def test_the_33_presets_have_the_clients_names_and_our_own_text() -> None:
    assert list(presets.PRESETS) == [*CLIENT_NAMES, "synth_ambient"]
    texts = [p.text for p in presets.PRESETS.values()]
    assert len(set(texts)) == 33 and all(len(t.split()) >= 8 for t in texts)
    listing = presets.listing()
    assert listing["count"] == 33 and listing["default"] == "accordion_folk"
    first = listing["variations"][0]
    assert first == {"name": "accordion_folk", "text": presets.PRESETS["accordion_folk"].text, "flowstep": 0.12,
                     "steps": {"euler": 25, "midpoint": 64}, "solver": "euler"}
    assert EDIT_SOLVER_STEPS == {"euler": 25, "midpoint": 64}


# ---------------------------------------------------------------- the spec
def test_a_request_resolves_to_the_presets_text_and_defaults(services) -> None:
    sessions = services[0]
    edit, text = sessions.specs.edit(variation="lofi_chill", custom_prompt=None, flowstep=None, solver=None, steps=None)
    assert (edit.variation, edit.flowstep, edit.solver, edit.steps) == ("lofi_chill", 0.12, "euler", None)
    assert text == presets.PRESETS["lofi_chill"].text
    edit, text = sessions.specs.edit(variation="accordion_folk", custom_prompt="  a kazoo choir ", flowstep=0.05,
                                     solver="midpoint", steps=10)
    assert text == "a kazoo choir" and (edit.variation, edit.flowstep, edit.solver, edit.steps) == \
        ("accordion_folk", 0.05, "midpoint", 10)
    edit, text = sessions.specs.edit(variation=None, custom_prompt="glass harmonica", flowstep=None, solver=None,
                                     steps=None)
    assert edit.variation is None and text == "glass harmonica"
    assert sessions.specs.transform_model() == "debug-melodyflow"  # G4L_MODELS=debug: the family's debug model


@pytest.mark.parametrize(("fields", "message"), [
    ({"variation": "polka_metal"}, "Unknown variation: polka_metal"),
    ({"variation": "polka_metal", "custom_prompt": "x"}, "Unknown variation: polka_metal"),
    ({}, "variation is required"),
    ({"variation": "lofi_chill", "solver": "rk4"}, "Invalid solver"),
    ({"variation": "lofi_chill", "flowstep": 0.0}, "flowstep must be more than 0"),
    ({"variation": "lofi_chill", "flowstep": -0.1}, "flowstep must be more than 0"),
    ({"variation": "lofi_chill", "flowstep": 1.0}, "flowstep must be more than 0"),
    ({"variation": "lofi_chill", "steps": 0}, "steps must be a whole number from 1 to 250"),
    ({"variation": "lofi_chill", "steps": 251}, "steps must be a whole number from 1 to 250"),
])
def test_bad_edit_parameters_get_the_clients_error_texts(services, fields, message) -> None:
    given = {"variation": None, "custom_prompt": None, "flowstep": None, "solver": None, "steps": None, **fields}
    with pytest.raises(InvalidRequest, match=message):
        services[0].specs.edit(**given)


@pytest.mark.parametrize("steps", [25.0, 12.5, True, "25"])
def test_steps_must_be_a_json_integer(steps) -> None:
    with pytest.raises(ValidationError, match="steps must be a whole number"):
        TransformAudioRequest.model_validate({"variation": "lofi_chill", "steps": steps})


def test_the_result_keeps_the_inputs_channels_and_length() -> None:
    stereo = np.random.default_rng(0).standard_normal((2, 1000)).astype(np.float32)
    assert in_input_shape(stereo, 1000, 2).shape == (2, 1000)
    mono = in_input_shape(stereo, 1000, 1)
    assert mono.shape == (1, 1000) and np.allclose(mono[0], stereo.mean(axis=0))
    assert in_input_shape(stereo, 990, 2).shape == (2, 990)  # an engine that rounded up is trimmed
    padded = in_input_shape(stereo, 1010, 2)
    assert padded.shape == (2, 1010) and not padded[:, 1000:].any()


# ---------------------------------------------------------------- queueing
def test_a_new_take_becomes_version_1_and_the_transform_its_child(services) -> None:
    sessions, transforms, _ = services
    take = make_wav(3, rate=44100)
    accepted = transforms.transform(TransformAudioRequest(audio_data=_b64(take), variation="chiptune",
                                                          solver="midpoint", seed=7), ME)
    tree = sessions.ctx.sessions.history(accepted.session_id)
    assert tree.current == 1 and tree.versions[1].operation is Operation.UPLOAD
    assert sessions.ctx.blobs.get(tree.versions[1].blob) == take
    job = sessions.ctx.jobs.get(accepted.job_id)
    assert job is not None and job.kind == "transform" and job.status is JobStatus.QUEUED
    assert job.parent_version == 1 and job.owner == ME.owner and accepted.seed == 7
    spec = job.spec
    assert spec.model == "debug-melodyflow" and spec.input_blob == tree.versions[1].blob
    assert spec.description == presets.PRESETS["chiptune"].text and spec.seed == 7
    assert spec.edit is not None and (spec.edit.variation, spec.edit.solver) == ("chiptune", "midpoint")
    assert (spec.output.sample_rate, spec.output.channels, spec.output.subtype) == (44100, 2, "PCM_16")
    assert spec.output_seconds == pytest.approx(3.0)
    session = sessions.ctx.sessions.require(accepted.session_id)
    assert session.busy and session["job_id"] == accepted.job_id and session.integer("seed") == 7
    snap = sessions.snapshot(accepted.session_id, ME)
    assert snap.transforming and snap.job_kind == "transform"
    # A second request while it waits is refused with the device's words, and changes nothing.
    with pytest.raises(Busy, match="Transform already in progress"):
        transforms.transform(TransformAudioRequest(session_id=accepted.session_id, variation="celtic"), ME)


def test_a_sessions_current_audio_is_transformed_from_its_current_version(services) -> None:
    sessions, transforms, _ = services
    sid = sessions.crop(UpdateCroppedAudio(audio_data=_b64(make_wav(2))), ME)
    sessions.crop(UpdateCroppedAudio(session_id=sid, audio_data=_b64(make_wav(4, freq=330.0))), ME)
    accepted = transforms.transform(TransformAudioRequest(session_id=sid, variation="celtic"), ME)
    job = sessions.ctx.jobs.get(accepted.job_id)
    current = sessions.ctx.sessions.history(sid).versions[2]
    assert job is not None and job.parent_version == 2 and job.spec.input_blob == current.blob
    # The result keeps the take's format and length.
    assert (job.spec.output.channels, job.spec.output_seconds) == (2, pytest.approx(4.0))


# ---------------------------------------------------------------- refusals
def _two_hour_header() -> bytes:
    wav = bytearray(make_wav(0.5, rate=44100))
    declared = 2 * 3600 * 44100 * 4
    data_at = wav.index(b"data")
    struct.pack_into("<I", wav, data_at + 4, declared)
    struct.pack_into("<I", wav, 4, declared + data_at)
    return bytes(wav)


def _zero_frames() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros((0, 2), dtype=np.float32), 48000, format="WAV")
    return buf.getvalue()


def _fifty_mb() -> bytes:
    """A real 50 MB WAV (float stereo at 48 kHz, about 130 s: under the length limit)."""
    frames = (50_000_000 - 44) // 8 + 1
    buf = io.BytesIO()
    sf.write(buf, np.zeros((frames, 2), dtype=np.float32), 48000, subtype="FLOAT", format="WAV")
    return buf.getvalue()


BAD_AUDIO = {
    "50 MB": (_fifty_mb, TooLarge, "terry takes less than 50 MB"),
    "2 hours": (_two_hour_header, InvalidAudio, "limit is 300 s"),
    "0 frames": (_zero_frames, InvalidAudio, "empty audio"),
    "8 kHz": (lambda: make_wav(2, rate=8000), InvalidAudio, "sample rate 8000 Hz is not supported"),
    "6 channels": (lambda: make_wav(1, channels=6), InvalidAudio, "6 channels"),
    "mono": (lambda: make_wav(2, channels=1), InvalidAudio, "this WAV is mono"),
    "not a WAV": (lambda: b"ID3\x04" + bytes(4000), InvalidAudio, "not a WAV file"),
}


def test_every_refusal_leaves_the_session_as_it_was(services) -> None:
    sessions, transforms, history = services
    r = sessions.ctx.redis
    sid = sessions.crop(UpdateCroppedAudio(audio_data=_b64(make_wav(2))), ME)
    sessions.crop(UpdateCroppedAudio(session_id=sid, audio_data=_b64(make_wav(3, freq=440.0))), ME)
    jobs_before = r.keys("g4l:job:*")

    def state() -> tuple[dict, dict]:
        session = {k: v for k, v in r.hgetall(keys.session(sid)).items() if k != "updated"}
        return session, r.hgetall(keys.session_versions(sid))

    before = state()
    good = _b64(make_wav(2))
    cases: list[tuple[TransformAudioRequest | dict, Caller, type[Exception], str]] = [
        ({"session_id": sid, "variation": "polka_metal"}, ME, InvalidRequest, "Unknown variation: polka_metal"),
        ({"session_id": sid, "variation": "celtic", "solver": "heun"}, ME, InvalidRequest, "Invalid solver"),
        ({"session_id": sid, "variation": "celtic", "flowstep": 0}, ME, InvalidRequest, "flowstep"),
        ({"session_id": sid, "variation": "celtic", "flowstep": -0.2}, ME, InvalidRequest, "flowstep"),
        ({"session_id": sid, "variation": "celtic", "steps": 300}, ME, InvalidRequest, "steps"),
        ({"session_id": sid, "variation": "celtic", "audio_data": good}, OTHER, SessionNotFound, "no session"),
        ({"session_id": sid, "variation": "celtic"}, OTHER, SessionNotFound, "no session"),
    ]
    for make, error, message in BAD_AUDIO.values():
        cases.append(({"session_id": sid, "variation": "celtic", "audio_data": _b64(make())}, ME, error, message))
        cases.append(({"variation": "celtic", "audio_data": _b64(make())}, ME, error, message))  # no session
    for fields, caller, error, message in cases:
        with pytest.raises(error, match=message):
            transforms.transform(TransformAudioRequest.model_validate(fields), caller)
        assert state() == before, fields.get("variation")
    # An undo with nothing to undo: no transform made this session's audio.
    with pytest.raises(NothingToUndo, match="No previous audio found to undo to"):
        history.undo_transform(sid, ME)
    assert state() == before
    assert r.keys("g4l:job:*") == jobs_before and sessions.ctx.sessions.live_ids() == {sid}


def test_a_stored_take_terry_cannot_take_is_refused(services) -> None:
    sessions, transforms, _ = services
    sid = sessions.crop(UpdateCroppedAudio(audio_data=_b64(make_wav(2, rate=8000))), ME)  # gary takes 8 kHz
    with pytest.raises(InvalidAudio, match="at 8000 Hz; terry needs at least 22050 Hz"):
        transforms.transform(TransformAudioRequest(session_id=sid, variation="celtic"), ME)
    mono = sessions.crop(UpdateCroppedAudio(audio_data=_b64(make_wav(2, channels=1))), ME)  # gary takes mono
    with pytest.raises(InvalidAudio, match="the session's audio is mono"):
        transforms.transform(TransformAudioRequest(session_id=mono, variation="celtic"), ME)
    assert not sessions.ctx.sessions.require(mono).busy
    assert not sessions.ctx.sessions.require(sid).busy
