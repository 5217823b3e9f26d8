"""terry with the tiny MelodyFlow model (``G4L_MODELS=debug``) over every way clients reach it,
against the running server: the device's Socket.IO flow with Node's socket.io-client
(tests/device/terry.mjs), gary4juce's transform / poll / undo over HTTP as the plugin sends
and reads them, ``/api/v1`` and the CLI. Every result is the input's length and format;
undo brings back, byte for byte, what the last transform started from, also after a
continue; refusals carry the clients' texts and change nothing."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import soundfile as sf
from conftest import make_wav, wait_until, wav_info
from test_cli import Shell
from test_juce_client import Plugin, b64, with_junk

from g4l.services import presets

DEVICE = Path(__file__).resolve().parent / "device"


def _history(url: str, sid: str) -> dict:
    return requests.get(f"{url}/api/v1/sessions/{sid}/history", timeout=10).json()


def test_the_device_transforms_twice_continues_undoes_and_continues(server, tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node is not None and (DEVICE / "node_modules" / "socket.io-client").is_dir()
    (tmp_path / "in.wav").write_bytes(make_wav(12))
    proc = subprocess.run([node, str(DEVICE / "terry.mjs"), server.url, str(tmp_path / "in.wav"), str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = {s["step"]: s for s in map(json.loads, proc.stdout.splitlines())}
    audio = {name: Path(s["file"]).read_bytes() for name, s in steps.items() if "file" in s}
    sid = steps["bang"]["session_id"]
    for name in ("transform1", "transform2"):
        step = steps[name]
        # The device's events, in order: received, queue status, progress as the solver steps, the audio.
        names = [e for e in step["events"] if e in ("transform_audio_received", "queue_status", "progress_update",
                                                   "audio_transformed")]
        # (The previous result's "ready" queue_status may come first, this one's after.)
        names = names[names.index("transform_audio_received"):names.index("audio_transformed") + 1]
        assert names[1] == "queue_status" and names[-2] == "progress_update", names
        assert step["progress"][-1] == 100 and step["progress"] == sorted(step["progress"]), step["progress"]
        assert step["session_id"] == sid
        info, source = wav_info(audio[name]), wav_info(audio["bang"])
        # Exactly the input's length, in its format; and rewritten, not handed back.
        assert (info.frames, info.samplerate, info.channels, info.subtype) == \
            (source.frames, 48_000, 2, "PCM_16"), name
    assert steps["transform1"]["variation"] == "lofi_chill" and steps["transform2"]["variation"] == "synth_retro"
    assert audio["transform1"] != audio["bang"] and audio["transform2"] != audio["transform1"]
    assert wav_info(audio["continue"]).duration == pytest.approx(54.0, abs=0.05)
    # undo_transform after a continue: the audio the LAST transform started from (upstream
    # would hand back the continue's input instead).
    assert audio["undo"] == audio["transform1"] and steps["undo"]["version"] == 2
    assert wav_info(audio["continue_after_undo"]).duration == pytest.approx(54.0, abs=0.05)
    assert steps["unknown_preset"]["message"] == "Unknown variation: polka_metal"
    assert steps["unknown_preset"]["session_id"] == sid
    assert steps["bad_solver"]["message"].startswith("Invalid solver")
    tree = {v["version"]: (v["parent"], v["operation"]) for v in steps["history"]["versions"]}
    assert tree == {1: (None, "bang"), 2: (1, "transform"), 3: (2, "transform"), 4: (3, "continue"),
                    5: (2, "continue")}
    assert steps["history"]["current"] == 5  # the refusals changed nothing
    params = {v["version"]: v["params"] for v in steps["history"]["versions"]}
    assert params[3]["variation"] == "synth_retro" and params[3]["solver"] == "midpoint"
    assert params[2]["flowstep"] == pytest.approx(0.13) and params[2]["model"] == "debug-melodyflow"
    assert steps["cleanup"]["session_id"] == sid


def test_gary4juce_transforms_polls_and_undoes(server) -> None:
    plugin = Plugin(server.url)
    source = with_junk(make_wav(8, rate=44_100))
    fields = {"audio_data": b64(source), "variation": "boom_bap", "flowstep": 0.12, "solver": "euler", "seed": -1}
    status, reply = plugin.post("/api/juce/transform_audio", fields)
    assert status == 200 and reply["success"] is True and reply["message"], reply
    sid, seed = reply["session_id"], reply["seed"]
    assert isinstance(seed, int) and 0 <= seed <= 99_999
    first = plugin.http.get(f"{server.url}/api/juce/poll_status/{sid}", timeout=8).json()
    wav, done, polls = plugin.wait(sid, poll_s=0.2)
    assert first["transform_in_progress"] is True or first["status"] == "completed", first
    assert done["transform_in_progress"] is False and done["status"] == "completed"
    got, sent = sf.info(io.BytesIO(wav)), sf.info(io.BytesIO(source))
    assert (got.frames, got.samplerate, got.channels, got.subtype) == (sent.frames, 44_100, 2, "PCM_16")
    assert wav != source and done["seed"] == seed

    # The plugin's custom prompt rides beside the default preset.
    status, again = plugin.post("/api/juce/transform_audio", {**fields, "audio_data": b64(wav),
                                                              "variation": "accordion_folk",
                                                              "custom_prompt": "a choir of kazoos", "seed": 5})
    assert status == 200 and again["success"] is True and again["seed"] == 5, again
    second, _, _ = plugin.wait(again["session_id"], poll_s=0.2)
    assert sf.info(io.BytesIO(second)).frames == sent.frames

    status, undone = plugin.post("/api/juce/undo_transform", {"session_id": sid})
    assert status == 200 and undone["success"] is True and undone["session_id"] == sid, undone
    assert base64.b64decode(undone["audio_data"]) == source  # the upload, byte for byte
    status, nothing = plugin.post("/api/juce/undo_transform", {"session_id": sid})
    assert status == 400 and nothing == {"success": False, "error": "No previous audio found to undo to",
                                         "code": "NOTHING_TO_UNDO", "session_id": sid}
    status, unknown = plugin.post("/api/juce/undo_transform", {"session_id": "no-such-session"})
    assert status == 404 and unknown["success"] is False and isinstance(unknown["error"], str)


@pytest.mark.parametrize(("fields", "error"), [
    ({"variation": "polka_metal"}, "Unknown variation: polka_metal"),
    ({"variation": "celtic", "solver": "rk4"}, "Invalid solver"),
    ({"variation": "celtic", "flowstep": 0.0}, "flowstep must be more than 0"),
    ({"variation": "celtic", "flowstep": -0.5}, "flowstep must be more than 0"),
    ({"variation": "celtic", "steps": 12.0}, "steps must be a whole number"),
    ({"variation": "celtic", "steps": 251}, "steps must be a whole number from 1 to 250"),
    ({"variation": "celtic", "audio_data": b64(make_wav(1, rate=8000))}, "sample rate 8000 Hz is not supported"),
    ({"variation": "celtic", "audio_data": b64(make_wav(1, channels=6))}, "6 channels"),
    ({"variation": "celtic", "audio_data": b64(make_wav(1, channels=1))}, "this WAV is mono"),
    ({"variation": "celtic", "audio_data": b64(b"OggS" + bytes(2000))}, "not a WAV file"),
])
def test_gary4juce_refusals_are_plain_strings_and_change_nothing(server, fields, error) -> None:
    plugin = Plugin(server.url)
    status, made = plugin.post("/api/v1/sessions", {"audio_data": b64(make_wav(2))})
    sid = made["session_id"]
    before = _history(server.url, sid)
    body = {"audio_data": b64(make_wav(2)), "session_id": sid, **fields}
    status, reply = plugin.post("/api/juce/transform_audio", body)
    assert status == 400 and reply["success"] is False and isinstance(reply["error"], str), reply
    assert error in reply["error"], reply
    assert _history(server.url, sid) == before


def test_variations_are_listed(server) -> None:
    for path in ("/variations", "/api/juce/variations", "/api/v1/variations"):
        listing = requests.get(server.url + path, timeout=10).json()
        names = [v["name"] for v in listing["variations"]]
        assert names == list(presets.PRESETS) and listing["count"] == 33, path
        assert all(v["text"] and v["flowstep"] == 0.12 and v["steps"] == {"euler": 25, "midpoint": 64}
                   for v in listing["variations"])
    doc = requests.get(server.url + "/api/v1/openapi.json", timeout=10).json()
    assert {"/api/v1/sessions/{session_id}/transform", "/api/v1/sessions/transform", "/api/v1/variations"} \
        <= set(doc["paths"])


def test_api_v1_transform_is_a_job_of_the_session(server) -> None:
    http = requests.Session()
    take = make_wav(5, rate=32_000, freq=330.0)
    made = http.post(f"{server.url}/api/v1/sessions", json={"audio_data": b64(take)}, timeout=30).json()
    sid = made["session_id"]
    resp = http.post(f"{server.url}/api/v1/sessions/{sid}/transform",
                     json={"variation": "music_box", "solver": "midpoint", "steps": 6, "seed": 11}, timeout=30)
    assert resp.status_code == 202, resp.text
    accepted = resp.json()
    assert accepted["kind"] == "transform" and accepted["seed"] == 11 and accepted["session_id"] == sid
    job = wait_until(lambda: (j := http.get(f"{server.url}/api/v1/jobs/{accepted['job_id']}", timeout=10).json())
                     ["status"] in ("completed", "failed") and j, 300, "the transform job")
    assert job["status"] == "completed" and job["kind"] == "transform", job
    wav = http.get(f"{server.url}/api/v1/sessions/{sid}/audio", timeout=30).content
    info, sent = wav_info(wav), wav_info(take)
    # The take keeps its format (and its length, frame for frame).
    assert (info.frames, info.samplerate, info.channels) == (sent.frames, 32_000, 2)
    tree = _history(server.url, sid)
    assert [(v["parent"], v["operation"]) for v in tree["versions"]] == [(None, "crop"), (1, "transform")]
    assert tree["versions"][1]["params"]["steps"] == 6
    busy = http.post(f"{server.url}/api/v1/sessions/nonexistent/transform", json={"variation": "celtic"}, timeout=10)
    assert busy.status_code == 404
    undo = http.post(f"{server.url}/api/v1/sessions/{sid}/undo", timeout=30).json()
    assert undo["version"]["version"] == 1


def test_the_cli_transforms_with_a_progress_bar_and_undoes(server, tmp_path: Path) -> None:
    shell = Shell(server.url, tmp_path)
    shell.env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])  # this checkout's g4l, not the venv's
    (tmp_path / "in.wav").write_bytes(make_wav(6))
    done = shell.json("crop", "in.wav")
    sid = done["session_id"]
    result = shell.json("transform", "--variation", "lofi_chill", "--solver", "euler", "--flowstep", "0.1", "-o",
                        "out.wav")
    assert result["session_id"] == sid and result["command"] == "transform"
    assert wav_info((tmp_path / "out.wav").read_bytes()).frames == wav_info(make_wav(6)).frames
    bar = shell.ok("--progress", "transform", "--variation", "chiptune", "-o", "out2.wav")
    assert "transform" in bar.stderr and "100%" in bar.stderr, bar.stderr
    refused = shell.run("transform", "--variation", "polka_metal")
    assert refused.returncode != 0 and "Unknown variation: polka_metal" in refused.stderr
    listing = shell.ok("variations").stdout
    assert "lofi_chill" in listing and presets.PRESETS["lofi_chill"].text in listing
    undone = shell.json("undo")
    assert undone["version"] == 2 and undone["operation"] == "transform"


def test_the_listen_link_plays_the_transformed_take(server, redis_client) -> None:
    http = requests.Session()
    sid = http.post(f"{server.url}/api/v1/sessions", json={"audio_data": b64(make_wav(6))}, timeout=30).json()[
        "session_id"]
    link = http.post(f"{server.url}/api/v1/sessions/{sid}/listen", timeout=10).json()
    token = link["playlist_url"].split("/")[2]

    def joins() -> list[float]:
        return json.loads(redis_client.hget(f"g4l:listen:{token}", "joins") or "[]")

    wait_until(lambda: joins(), 30, "the stream's preroll (the session's take)")
    before = len(joins())
    accepted = http.post(f"{server.url}/api/v1/sessions/{sid}/transform", json={"variation": "gamelan_fusion"},
                         timeout=30).json()
    wait_until(lambda: http.get(f"{server.url}/api/v1/jobs/{accepted['job_id']}", timeout=10).json()["status"]
               == "completed", 300, "the transform")
    # The transformed take is appended to the stream, whole (it replaced the session's audio).
    wait_until(lambda: len(joins()) > before, 30, "the transformed take on the listen stream")
    playlist = http.get(server.url + link["playlist_url"], timeout=10)
    assert playlist.status_code == 200 and "#EXTINF" in playlist.text
