"""The REAL gary4live device script (``commentedout.js`` at the newest commit of
betweentwomidnights/gary4live, unmodified) against the whole server, under plain Node with a
stand-in for Max's ``max-api`` (tests/device/max-api). tests/device/drive_gary4live.mjs plays
the patcher: it sends the messages a musician's clicks send and reads the script's outlets and
the files it writes (C:/g4l/myOutput.wav), as Live would play them.

The script is read from the client mirror at test time, not vendored (see
tests/device/gary4live/README.md): set G4L_GARY4LIVE_SCRIPT to a copy of commentedout.js, or
G4L_GARY4LIVE_REPO (and G4L_GARY4LIVE_REF) to a clone; without either the tests skip.

gary's, jerry's and terry's parts are all served (issue 19)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import make_wav, read_wav, wav_info

from g4l import wav_splice

DEVICE = Path(__file__).resolve().parent / "device"
MIRROR = Path(os.environ.get("G4L_GARY4LIVE_REPO", "/work/.mirror/betweentwomidnights+gary4live/repo"))
RATE = 48_000
JERRY_RATE = 44_100
JERRY_FRAMES = 11 * JERRY_RATE  # 11.0 s: seconds_total's default, the device sends none
PROMPT_S = 6  # the device's default prompt_duration


# ---------------------------------------------------------------- the script and the driver
@pytest.fixture(scope="module")
def device_script(tmp_path_factory) -> Path:
    """commentedout.js, byte for byte: a given file, or the mirror's newest commit."""
    given = os.environ.get("G4L_GARY4LIVE_SCRIPT")
    if given:
        if not Path(given).is_file():
            pytest.skip(f"G4L_GARY4LIVE_SCRIPT={given} is not a file")
        return Path(given)
    ref = os.environ.get("G4L_GARY4LIVE_REF", "HEAD")
    if not (MIRROR / "HEAD").exists() and not (MIRROR / ".git").exists():
        pytest.skip(f"the gary4live device script is not vendored (see tests/device/gary4live/README.md) and "
                    f"no clone at {MIRROR}: set G4L_GARY4LIVE_SCRIPT or G4L_GARY4LIVE_REPO")
    git = ["git", "-C", str(MIRROR)]
    shown = subprocess.run([*git, "show", f"{ref}:commentedout.js"], capture_output=True, timeout=60)
    if shown.returncode != 0:
        pytest.skip(f"no commentedout.js at {ref} in {MIRROR}: {shown.stderr.decode()[-300:]}")
    commit = subprocess.run([*git, "rev-parse", ref], capture_output=True, text=True, timeout=60).stdout.strip()
    path = tmp_path_factory.mktemp("gary4live") / "commentedout.js"
    path.write_bytes(shown.stdout)
    print(f"gary4live commentedout.js at {commit}")
    return path


def drive(server_url: str, script: Path, run_dir: Path, scenario: str, timeout_s: int = 120,
          **inputs: str) -> dict[str, dict]:
    """Run the driver; its steps by name. A failing driver fails the test with its reason."""
    node = shutil.which("node")
    assert node is not None and (DEVICE / "node_modules" / "socket.io-client").is_dir(), \
        "scripts/install.sh test installs node and the device harness"
    run_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([node, str(DEVICE / "drive_gary4live.mjs"), server_url, str(script), str(run_dir), scenario,
                           json.dumps({"timeout_s": timeout_s, **inputs})],
                          capture_output=True, text=True, timeout=1500)
    steps = {s["step"]: s for s in map(json.loads, filter(None, proc.stdout.splitlines()))}
    assert proc.returncode == 0, f"{proc.stderr[-3000:]}\nlast step: {json.dumps(list(steps.values())[-1:])[:3000]}"
    return steps


def audio(step: dict) -> bytes:
    assert step.get("file"), step
    return Path(step["file"]).read_bytes()


def _data(wav: bytes) -> bytes:
    span = wav_splice.data_span(wav)
    assert span is not None, "not a plain WAV"
    return wav[span[0]:span[0] + span[1]]


def kept_equal(source: bytes, result: bytes, prompt_s: float = PROMPT_S) -> bool:
    """The result starts with the source minus its last ``prompt_s``, byte for byte."""
    info = wav_info(source)
    block = info.channels * 2  # PCM_16
    keep = len(_data(source)) - int(prompt_s * info.samplerate) * block
    return keep > 0 and _data(result)[:keep] == _data(source)[:keep]


def sent(step: dict, event: str) -> dict:
    events = [e for e in step["sent"] if e["event"] == event]
    assert len(events) == 1, (event, step["sent"])
    return events[0]


def received(step: dict, event: str) -> list[dict]:
    return [e for e in step["received"] if e["event"] == event]


def assert_generation(step: dict, request: str, answer: str) -> str:
    """Acknowledged, queue status and progress on the way, answered once; its session id."""
    assert received(step, request.replace("_request", "_received")), step["received"]
    assert received(step, "queue_status"), step["received"]
    assert step["progress_events"] >= 1 and step["max_progress"] == 100, step
    answers = received(step, answer)
    assert len(answers) == 1 and answers[0]["session_id"], step["received"]
    return answers[0]["session_id"]


def make_inputs(tmp_path: Path) -> dict[str, str]:
    files = {"buffer": make_wav(30), "crop": make_wav(40, freq=330.0),
             "leftover": make_wav(11, rate=JERRY_RATE, freq=440.0)}
    for name, data in files.items():
        (tmp_path / f"{name}.wav").write_bytes(data)
    return {name: str(tmp_path / f"{name}.wav") for name in files}


# ---------------------------------------------------------------- gary: served today
def test_device_script_plays_gary(server, device_script: Path, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path)
    steps = drive(server.url, device_script, tmp_path / "run", "gary", **inputs)
    assert steps["connect"]["outlet"] == ["backend_connection", True]

    expected = {"bang": 30.0, "continue1": 54.0, "continue2": 78.0, "retry": 78.0, "continue3": 64.0}
    answers = {"bang": ("process_audio_request", "audio_processed"), "retry": ("retry_music_request", "music_retried")}
    sid = None
    for name, seconds in expected.items():
        info = wav_info(audio(steps[name]))
        assert (info.samplerate, info.channels, info.subtype) == (RATE, 2, "PCM_16"), name
        assert info.duration == pytest.approx(seconds, abs=0.05), name
        request, answer = answers.get(name, ("continue_music_request", "music_continued"))
        request_sent = sent(steps[name], request)
        assert request_sent["model_name"] == "debug" and request_sent["prompt_duration"] == PROMPT_S
        this_sid = assert_generation(steps[name], request, answer)
        sid = sid or this_sid
        assert this_sid == sid, name
        if name != "bang":  # the script sends its session on continue and retry
            assert request_sent["session_id"] == sid, name
    assert "session_id" not in sent(steps["bang"], "process_audio_request")["keys"]
    bang, c1, c2, retry = (audio(steps[n]) for n in ("bang", "continue1", "continue2", "retry"))
    assert kept_equal(bang, c1) and kept_equal(c1, c2)
    assert kept_equal(c1, retry) and retry != c2  # the retry redid continue2 from ITS input
    # The crop: the script uploads its (edited) myOutput.wav; the next continue continues it.
    assert sent(steps["crop"], "update_cropped_audio")["session_id"] == sid
    assert received(steps["crop"], "update_cropped_audio_complete")[0]["session_id"] == sid
    assert kept_equal(Path(inputs["crop"]).read_bytes(), audio(steps["continue3"]))
    assert sent(steps["reset"], "cleanup_session_request")["session_id"] == sid

    # A fresh take with no session but a 44.1 kHz myOutput.wav (what jerry leaves): the
    # script sends continue_music_request WITHOUT session_id, carrying that audio.
    leftover = Path(inputs["leftover"]).read_bytes()
    step = steps["leftover_continue"]
    request_sent = sent(step, "continue_music_request")
    assert "session_id" not in request_sent["keys"] and request_sent["audio_bytes"] == len(leftover)
    new_sid = assert_generation(step, "continue_music_request", "music_continued")
    assert new_sid != sid
    result = audio(step)
    info = wav_info(result)
    assert (info.channels, info.subtype) == (2, "PCM_16")
    assert info.duration == pytest.approx(11.0 - PROMPT_S + 30.0, abs=0.05)
    if info.samplerate == JERRY_RATE:  # answered at the take's own rate: its kept part is the take
        assert kept_equal(leftover, result)
    assert received(steps["cleanup"], "cleanup_complete")[0]["session_id"] == new_sid


# ---------------------------------------------------------------- jerry and terry: issue 19
def check_jerry(steps: dict[str, dict]) -> None:
    """jerry's take: the device's request, its answer read as the script reads it, the file."""
    step = steps["jerry"]
    assert step["outlet"] == ["stable_audio_generated"], step["outlets"]
    (exchange,) = step["http"]
    assert (exchange["method"], exchange["path"], exchange["status"]) == ("POST", "/audio/generate", 200)
    assert exchange["body"]["prompt"] == "lofi hip hop drums 120bpm"
    assert exchange["body"]["keys"] == ["cfg_scale", "prompt", "return_format", "seed", "steps"]
    take = audio(step)
    info = wav_info(take)
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (JERRY_RATE, 2, "PCM_16", JERRY_FRAMES)
    samples, _ = read_wav(take)
    assert 0.5 < float(abs(samples).max()) <= 1.0  # peak-normalised, not silence

    # gary continues jerry's take: no session yet, the take's bytes sent as they are.
    step = steps["continue_jerry"]
    request_sent = sent(step, "continue_music_request")
    assert "session_id" not in request_sent["keys"] and request_sent["audio_bytes"] == len(take)
    assert_generation(step, "continue_music_request", "music_continued")
    info = wav_info(audio(step))
    assert info.channels == 2 and info.duration == pytest.approx(11.0 - PROMPT_S + 30.0, abs=0.05)


def check_terry(steps: dict[str, dict], start: str) -> None:
    """Two presets with both solvers, undo, continue after undo, a refused preset, cleanup;
    ``start``: the step whose take (in its session) terry starts from."""
    (started,) = received(steps[start], "music_continued")
    sid = started["session_id"]
    previous = audio(steps[start])
    for name, variation, solver in (("transform1", "lofi_chill", None), ("transform2", "piano_classical", "midpoint")):
        step = steps[name]
        request_sent = sent(step, "transform_audio_request")
        assert request_sent["variation"] == variation and request_sent["flowstep"] == pytest.approx(0.1)
        assert request_sent.get("solver") == solver  # the script adds solver only for midpoint
        assert request_sent["session_id"] == sid and request_sent["audio_bytes"] == len(previous)
        assert received(step, "transform_audio_received"), step["received"]
        assert step["progress_events"] >= 1 and step["max_progress"] == 100, step
        (answer,) = received(step, "audio_transformed")
        assert answer["session_id"] == sid and answer["variation"] == variation
        result = audio(step)
        before, after = wav_info(previous), wav_info(result)
        # Same length and rate as the input it started from, stereo, and really changed.
        assert (after.samplerate, after.frames, after.channels) == (before.samplerate, before.frames, 2), name
        assert _data(result) != _data(previous), name
        previous = result

    # Undo gives back the audio the LAST transform started from: transform1's result.
    step = steps["undo"]
    assert sent(step, "undo_transform_request")["session_id"] == sid
    (answer,) = received(step, "transform_undone")
    assert answer["session_id"] == sid
    undone, first = read_wav(audio(step)), read_wav(audio(steps["transform1"]))
    assert undone[1] == first[1] and undone[0].shape == first[0].shape and (undone[0] == first[0]).all()

    # A continue after the undo continues the restored audio in the same session.
    step = steps["continue_after_undo"]
    assert sent(step, "continue_music_request")["session_id"] == sid
    assert assert_generation(step, "continue_music_request", "music_continued") == sid
    assert kept_equal(audio(steps["undo"]), audio(step))

    # An unknown preset: a clear error the script shows, nothing transformed, audio untouched.
    step = steps["refused_preset"]
    assert step["outlet"] == ["error", "Unknown variation: not_a_preset"], step["outlets"]
    assert not received(step, "audio_transformed") and not received(step, "transform_audio_received")
    assert audio(step) == audio(steps["continue_after_undo"])
    assert received(steps["cleanup"], "cleanup_complete")[0]["session_id"] == sid


def test_device_script_plays_jerry_and_gary_continues_it(server, device_script: Path, tmp_path: Path) -> None:
    steps = drive(server.url, device_script, tmp_path / "run", "jerry", **make_inputs(tmp_path))
    check_jerry(steps)


def test_device_script_plays_terry_on_a_gary_session(server, device_script: Path, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path)
    steps = drive(server.url, device_script, tmp_path / "run", "terry", **inputs)
    # Transform before any session: the script sends the recording (myBuffer.wav) with
    # session_id null; a new session answers, the take's length kept.
    buffer = Path(inputs["buffer"]).read_bytes()
    request_sent = sent(steps["transform0"], "transform_audio_request")
    assert "session_id" in request_sent["keys"] and request_sent["session_id"] is None
    assert request_sent["audio_bytes"] == len(buffer) and "solver" not in request_sent["keys"]
    (answer,) = received(steps["transform0"], "audio_transformed")
    assert answer["session_id"] and answer["variation"] == "synth_edm"
    before, after = wav_info(buffer), wav_info(audio(steps["transform0"]))
    assert (after.samplerate, after.frames, after.channels) == (before.samplerate, before.frames, 2)
    assert sent(steps["reset"], "cleanup_session_request")["session_id"] == answer["session_id"]
    check_terry(steps, "continue1")


def test_device_script_plays_the_whole_three_model_flow(server, device_script: Path, tmp_path: Path) -> None:
    """jerry -> gary continues jerry's audio -> terry with two presets and both solvers -> undo ->
    continue after undo -> a refused preset -> cleanup (issue 19, "How it will be checked")."""
    steps = drive(server.url, device_script, tmp_path / "run", "full", **make_inputs(tmp_path))
    check_jerry(steps)
    check_terry(steps, "continue_jerry")
