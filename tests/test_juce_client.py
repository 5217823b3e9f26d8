"""The JUCE plugin (gary4juce) and audiocraft.cpp's musicgen-server clients, as they behave
on the wire: JUCE JSON bodies (multi-line, CRLF, doubles with a decimal point), 16-bit
stereo WAVs with a JUNK chunk, one poll at a time with the plugin's stall rule, and only
the JSON body read. A whole session: health, models, bang, continue twice, retry twice, a
local crop and a continue of it, refusals; then seeds."""

from __future__ import annotations

import base64
import io
import json
import struct
import time

import numpy as np
import pytest
import requests
import soundfile as sf

from conftest import make_wav
from g4l import wav_splice

RATE = 48_000
HEALTHY = ("live", "healthy", "ok", "ready", "online")


def juce_json(obj: dict) -> str:
    """What juce::JSON::toString writes: one member a line, CRLF, doubles always with a
    decimal point (as float32 widened to double), ints as ints."""
    def value(v: object) -> str:
        if isinstance(v, float):
            return repr(float(np.float32(v)))
        return json.dumps(v)
    members = [f'  "{k}": {value(v)}' for k, v in obj.items()]
    return "{\r\n" + ",\r\n".join(members) + "\r\n}"


def with_junk(wav: bytes) -> bytes:
    """The plugin's WAVs carry a JUNK chunk before fmt (JUCE's WavAudioFormat writer)."""
    junk = b"JUNK" + struct.pack("<I", 28) + bytes(28)
    body = wav[12:]
    return b"RIFF" + struct.pack("<I", 4 + len(junk) + len(body)) + b"WAVE" + junk + body


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Plugin:
    """The plugin's calls and its reading of the replies (PluginEditor.cpp)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()

    def post(self, path: str, fields: dict) -> tuple[int, dict]:
        resp = self.http.post(self.url + path, data=juce_json(fields).encode(),
                              headers={"Content-Type": "application/json"}, timeout=60)
        return resp.status_code, resp.json()

    def params(self, audio: bytes, **extra: object) -> dict:
        return {"model_name": "debug", "prompt_duration": 6, "audio_data": b64(audio), "top_k": 250,
                "temperature": 1.0, "cfg_coef": 3.3, "description": "", "seed": -1, **extra}

    def wait(self, session_id: str, poll_s: float = 0.5) -> tuple[bytes, dict, list[dict]]:
        """Poll as the plugin does until it would stop; fail where it would fail."""
        polls: list[dict] = []
        best, risen_at = 0, time.monotonic()
        while True:
            reply = self.http.get(f"{self.url}/api/juce/poll_status/{session_id}", timeout=8).json()
            polls.append(reply)
            assert reply.get("success") is True, reply
            now = time.monotonic()
            if reply.get("generation_in_progress") or reply.get("transform_in_progress"):
                qs = reply.get("queue_status")
                # Every running poll carries a non-empty queue_status.status (the stall rule).
                assert isinstance(qs, dict) and qs.get("status"), reply
                assert 0 <= reply["progress"] <= 100
                if reply["progress"] > best:
                    best, risen_at = reply["progress"], now
                limit = 90.0 if best == 0 else 9.0
                assert now - risen_at < limit or qs.get("status"), "generation timed out"
                time.sleep(poll_s)
                continue
            assert reply["status"] == "completed" and reply.get("audio_data"), reply
            return base64.b64decode(reply["audio_data"]), reply, polls


def seconds(wav: bytes) -> float:
    info = sf.info(io.BytesIO(wav))
    assert (info.samplerate, info.channels, info.subtype) == (RATE, 2, "PCM_16")
    return info.frames / info.samplerate


def kept_equal(source: bytes, result: bytes, prompt_s: float = 6.0) -> bool:
    def data(w: bytes) -> bytes:
        span = wav_splice.data_span(w)
        assert span is not None
        return w[span[0]:span[0] + span[1]]
    keep = len(data(source)) - int(prompt_s * RATE) * 4
    return data(result)[:keep] == data(source)[:keep]


def crop(wav: bytes, keep_s: float) -> bytes:
    """The plugin's local crop: the first ``keep_s`` seconds, written by JUCE (JUNK chunk)."""
    x, rate = sf.read(io.BytesIO(wav), dtype="int16", always_2d=True)
    buf = io.BytesIO()
    sf.write(buf, x[: int(keep_s * rate)], rate, subtype="PCM_16", format="WAV")
    return with_junk(buf.getvalue())


def test_the_plugin_plays_a_whole_session(server) -> None:
    plugin = Plugin(server.url)
    health = plugin.http.get(server.url + "/health", timeout=10)
    assert health.status_code < 400 and health.json()["status"] in HEALTHY
    models = plugin.http.get(server.url + "/api/models", timeout=10).json()
    assert models["success"] is True and set(models["models"]) >= {"small", "medium", "large"}
    paths = [item["path"] for group in models["models"].values() for item in group if item["type"] == "single"]
    assert paths == ["debug"] and models["models"]["small"][0]["name"]
    # The three families, as the workers report them (G4L_MODELS=debug serves all three).
    assert {f: models["families"][f]["state"] for f in ("musicgen", "stable_audio", "melodyflow")} == \
        {"musicgen": "loaded", "stable_audio": "loaded", "melodyflow": "loaded"}
    assert models["families"]["stable_audio"]["default_model"] == "debug-stable-audio"

    source = with_junk(make_wav(30))
    status, reply = plugin.post("/api/juce/process_audio", plugin.params(source))
    assert status == 200 and reply["success"] is True and 0 <= reply["seed"] <= 99_999, reply
    bang, done, polls = plugin.wait(reply["session_id"])
    assert seconds(bang) == pytest.approx(30.0, abs=0.05)
    assert done["generation_seed"] == reply["seed"] and done["transform_in_progress"] is False
    assert any(p.get("generation_in_progress") for p in polls), "no poll saw it running"

    lengths, current, session_id = [30.0], bang, reply["session_id"]
    for _ in range(2):  # continue twice: every continue is a new session of the last result's bytes
        status, reply = plugin.post("/api/juce/continue_music", plugin.params(current))
        assert status == 200 and reply["success"] is True and reply["session_id"] != session_id, reply
        result, _, _ = plugin.wait(reply["session_id"])
        assert kept_equal(current, result)
        current, session_id = result, reply["session_id"]
        lengths.append(seconds(result))
    for _ in range(2):  # retry twice, each time on the session the last reply named
        status, reply = plugin.post("/api/juce/retry_music", {**plugin.params(b""), "session_id": session_id})
        assert status == 200 and reply["success"] is True, reply
        result, _, _ = plugin.wait(reply["session_id"])
        lengths.append(seconds(result))
        session_id = reply["session_id"]
    cut = crop(result, 70.0)
    status, reply = plugin.post("/api/juce/continue_music", plugin.params(cut))
    assert reply["success"] is True, reply
    final, _, _ = plugin.wait(reply["session_id"])
    assert kept_equal(cut, final)
    lengths.append(seconds(final))
    assert lengths == pytest.approx([30.0, 54.0, 78.0, 78.0, 78.0, 94.0], abs=0.05)

    # Refusals: a string error in the body, the status as upstream answers it.
    status, reply = plugin.post("/api/juce/process_audio", plugin.params(source, model_name="nope/nope"))
    assert status == 400 and reply["success"] is False and isinstance(reply["error"], str), reply
    status, reply = plugin.post("/api/juce/process_audio", {**plugin.params(source), "audio_data": "@@"})
    assert status == 400 and reply["success"] is False and isinstance(reply["error"], str), reply
    status, reply = plugin.post("/api/juce/retry_music", {**plugin.params(b""), "session_id": "no-such-session"})
    assert status == 404 and reply["success"] is False and isinstance(reply["error"], str), reply
    unknown = plugin.http.get(server.url + "/api/juce/poll_status/no-such-session", timeout=8)
    assert unknown.status_code == 200
    body = unknown.json()
    assert (body["success"], body["status"], body["generation_in_progress"]) == (True, "unknown", False)


def test_musicgen_server_additions_duration_and_seeds(server) -> None:
    plugin = Plugin(server.url)
    source = with_junk(make_wav(10))
    fixed = plugin.params(source, seed=4242, duration=12.0, prompt_duration=4)
    first = plugin.post("/api/juce/process_audio", fixed)[1]
    assert first["success"] is True and first["seed"] == 4242 and first["duration"] == 12.0, first
    a, done, _ = plugin.wait(first["session_id"])
    assert done["generation_seed"] == 4242 and seconds(a) == pytest.approx(12.0, abs=0.05)
    again = plugin.post("/api/juce/process_audio", fixed)[1]
    b, _, _ = plugin.wait(again["session_id"])
    assert a == b, "the same seed, input, model and parameters gave different audio"
    other = plugin.post("/api/juce/process_audio", {**fixed, "seed": 4243})[1]
    c, _, _ = plugin.wait(other["session_id"])
    assert c != a
    picked = plugin.post("/api/juce/process_audio", plugin.params(source, duration=12.0))[1]
    assert 0 <= picked["seed"] <= 99_999
    d, done, _ = plugin.wait(picked["session_id"])
    assert done["generation_seed"] == picked["seed"]
    # A prompt as long as the upstream allows (30 s) on a short output still adds music.
    long_prompt = plugin.post("/api/juce/process_audio", plugin.params(with_junk(make_wav(40)), prompt_duration=30))
    assert long_prompt[1]["success"] is True, long_prompt
    e, _, _ = plugin.wait(long_prompt[1]["session_id"])
    assert seconds(e) == pytest.approx(30.0, abs=0.05)


def test_the_swift_app_recovers_its_result(server) -> None:
    plugin = Plugin(server.url)
    url = server.url + "/api/latest_generated_audio/"
    missing = requests.get(url + "no-such-session", timeout=10)
    assert missing.status_code == 404 and missing.json() == {"status": "not_found"}
    reply = plugin.post("/api/juce/process_audio", plugin.params(with_junk(make_wav(8)), prompt_duration=2))[1]
    first = requests.get(url + reply["session_id"], timeout=10)
    assert first.status_code in (202, 200)
    if first.status_code == 202:
        assert first.json() == {"status": "in_progress"}
    plugin.wait(reply["session_id"])
    done = requests.get(url + reply["session_id"], timeout=10)
    body = done.json()
    assert done.status_code == 200 and body["status"] == "success" and body["session_id"] == reply["session_id"]
    assert body["model_name"] == "debug" and body["prompt_duration"] == 2
    result = base64.b64decode(body["audio_data"])
    assert seconds(result) == pytest.approx(30.0, abs=0.05)
    # A crop right after (while the result's hand-off is still in Redis) is what both read back.
    trimmed = crop(result, 20.0)
    status, cropped = plugin.post("/api/juce/update_cropped_audio",
                                  {"session_id": reply["session_id"], "audio_data": b64(trimmed)})
    assert status == 200 and cropped["success"] is True and cropped["session_id"] == reply["session_id"]
    assert base64.b64decode(requests.get(url + reply["session_id"], timeout=10).json()["audio_data"]) == trimmed
    poll = plugin.http.get(f"{server.url}/api/juce/poll_status/{reply['session_id']}", timeout=8).json()
    assert poll["status"] == "completed" and base64.b64decode(poll["audio_data"]) == trimmed
