"""jerry (Stable Audio Open Small) as the gary4live device and gary4juce call it, against a
real server on the tiny debug model: the upstream answers and refusals (``error`` always a
plain string), exact lengths, seed control, the loop at the prompt's tempo, the job queue
(``/api/v1/text-to-audio``, position, cancel) and localhost mode's ports.

It runs on the shared server (conftest): jerry's and terry's localhost ports are on free
ports there.
"""

from __future__ import annotations

import base64
import io

import pytest
import requests
import soundfile as sf
from conftest import wait_until

from plugin_protocol.jerry import ClipAnswer, LoopAnswer, Refusal

RATE = 44_100


@pytest.fixture(scope="module")
def jerry(server):
    """The shared server (tiny debug models of every family; jerry's and terry's localhost
    ports on free ports)."""
    return server


def post(url: str, body: object, **kw) -> requests.Response:
    return requests.post(url, json=body, timeout=kw.pop("timeout", 300), **kw)


def wav(data: bytes) -> tuple[sf._SoundFileInfo, bytes]:
    return sf.info(io.BytesIO(data)), data


def my_jobs(base: str) -> int:
    return requests.get(base + "/api/v1/jobs", timeout=10).json()["total"]


BAD = [  # (path, body, what the error says): issue 19's bad inputs that concern jerry
    ("/audio/generate", {"prompt": "x", "steps": 8.0}, "steps must be an integer"),
    ("/audio/generate", {"prompt": "x", "steps": 8.5}, "steps must be an integer"),
    ("/audio/generate", {"prompt": "x", "steps": 0}, "between 1 and 250"),
    ("/audio/generate", {"prompt": "x", "steps": 251}, "between 1 and 250"),
    ("/audio/generate", {"prompt": "x", "cfg_scale": 20.5}, "cfg_scale"),
    ("/audio/generate", {"prompt": "x", "cfg_scale": -1}, "cfg_scale"),
    ("/audio/generate", {"prompt": "x", "seconds_total": 0}, "seconds_total must be >= 1"),
    ("/audio/generate", {"steps": 8}, "prompt is required"),
    ("/audio/generate", {"prompt": ""}, "prompt is required"),
    ("/audio/generate", {"prompt": "x", "return_format": "mp3"}, "return_format"),
    ("/audio/generate", {"prompt": "x", "model_type": "finetune", "finetune_repo": "thepatch/jerry_grunge",
                         "finetune_checkpoint": "a.ckpt"}, "not served here"),
    ("/generate", [1, 2], "JSON body required"),
    ("/audio/generate/loop", {"prompt": "funky drums"}, "NNNbpm"),
    ("/audio/generate/loop", {"prompt": "funky drums 120bpm", "bars": 3}, "bars must be 1, 2, 4 or 8"),
    ("/generate/loop", {"prompt": "funky drums 120bpm", "loop_type": "vocals"}, "loop_type"),
]


def test_every_refusal_is_a_plain_string_and_queues_nothing(jerry) -> None:
    base = jerry.url
    before = my_jobs(base)
    for path, body, fragment in BAD:
        resp = post(base + path, body, timeout=30)
        assert resp.status_code == 400, (path, body, resp.text)
        error = Refusal.model_validate(resp.json()).error
        assert fragment in error, (path, body, error)
    broken = requests.post(base + "/audio/generate", data=b"{not json", timeout=10)
    assert broken.status_code == 400 and isinstance(broken.json()["error"], str)
    # Flask's own errors on jerry's paths keep the shape (the device prints error as text).
    for resp, status in ((requests.get(base + "/audio/generate", timeout=10), 405),
                         (requests.post(base + "/audio/nothing", json={}, timeout=10), 404),
                         (requests.get(base + "/models/nothing", timeout=10), 404),
                         (post(base + "/audio/generate", {"prompt": "x" * 100_000}, timeout=10), 413)):
        assert resp.status_code == status and isinstance(resp.json()["error"], str), resp.text
    assert my_jobs(base) == before


def test_model_status_and_health_report_the_family(jerry) -> None:
    def status() -> dict:
        return requests.get(jerry.url + "/audio/models/status", timeout=10).json()

    wait_until(lambda: status()["model_details"]["debug-stable-audio"]["state"] != "loading", 120, "jerry's model")
    body = status()
    detail = body["model_details"]["debug-stable-audio"]
    assert detail["type"] == "standard" and detail["source"] == "debug-stable-audio", body
    assert detail["state"] == "loaded", detail  # the engine loads the tiny model in the released layout
    assert body["cache_status"]["usage_order"][-1] == "debug-stable-audio"
    health = requests.get(jerry.url + "/audio/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "healthy"


def test_a_clip_as_the_device_asks_for_it(jerry) -> None:
    resp = post(jerry.url + "/audio/generate", {"prompt": "lofi hip hop beat 90bpm", "steps": 8, "cfg_scale": 1.0,
                                                  "return_format": "base64", "seed": -1, "seconds_total": 3})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    ClipAnswer.model_validate(body)  # every field the device and the plugin read
    assert body["success"] is True
    meta = body["metadata"]
    assert meta["detected_bpm"] == 90 and meta["sample_rate"] == RATE and meta["duration_seconds"] == 3
    assert isinstance(meta["seed"], int)
    info, _ = wav(base64.b64decode(body["audio_base64"]))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (RATE, 2, "PCM_16", 3 * RATE)
    # return_format file (the default): the WAV itself, as upstream sends it.
    raw = post(jerry.url + "/generate", {"prompt": "lofi hip hop beat 90bpm", "seconds_total": 100})
    assert raw.status_code == 200 and raw.headers["Content-Type"] == "audio/wav"
    assert raw.headers["Content-Disposition"].startswith("attachment;")
    info, _ = wav(raw.content)
    assert info.frames == 11 * RATE  # 100 is clamped to the model's 11 s


def test_the_same_seed_gives_the_same_audio(jerry) -> None:
    ask = {"prompt": "ambient pad 70bpm", "return_format": "base64", "seconds_total": 2}
    first = post(jerry.url + "/audio/generate", {**ask, "seed": -1}).json()
    seed = first["metadata"]["seed"]
    again = post(jerry.url + "/audio/generate", {**ask, "seed": seed}).json()
    assert again["metadata"]["seed"] == seed
    assert again["audio_base64"] == first["audio_base64"]  # the reported seed reproduces the clip
    other = post(jerry.url + "/audio/generate", {**ask, "seed": seed + 1}).json()
    assert other["audio_base64"] != first["audio_base64"]


def test_a_smart_loop_is_exactly_its_bars(jerry) -> None:
    resp = post(jerry.url + "/audio/generate/loop", {"prompt": "funky drums 120bpm", "loop_type": "drums",
                                                       "return_format": "base64", "model_type": "standard",
                                                       "sampler_type": "pingpong", "seed": 7})
    assert resp.status_code == 200, resp.text
    LoopAnswer.model_validate(resp.json())
    meta = resp.json()["metadata"]
    assert (meta["bars"], meta["detected_bpm"]) == (4, 120)
    assert (meta["loop_duration_seconds"], meta["seconds_per_bar"]) == (8.0, 2.0)
    assert meta["cfg_scale"] == 6.0 and meta["negative_prompt"]  # drums steer away from melody
    info, _ = wav(base64.b64decode(resp.json()["audio_base64"]))
    assert info.frames == 8 * RATE
    two = post(jerry.url + "/generate/loop", {"prompt": "keys 100bpm", "bars": 2, "return_format": "base64"}).json()
    info, _ = wav(base64.b64decode(two["audio_base64"]))
    assert two["metadata"]["bars"] == 2 and info.frames == round(2 * 4 * 60 / 100 * RATE)


def test_jobs_through_the_queue_position_and_cancel(jerry) -> None:
    api = jerry.url + "/api/v1"
    doc = requests.get(api + "/openapi.json", timeout=10).json()
    ops = {op.get("operationId") for item in doc["paths"].values() for op in item.values()}
    assert "createTextToAudioJob" in ops
    first = post(api + "/text-to-audio", {"prompt": "long drone", "steps": 250, "seed": 5})
    second = post(api + "/text-to-audio", {"prompt": "short hit", "seconds_total": 1, "seed": 6})
    assert first.status_code == 202 and second.status_code == 202, (first.text, second.text)
    job = second.json()["job_id"]
    assert second.json()["position"] >= 1  # behind the first (one job at a time here)
    canceled = requests.delete(f"{api}/jobs/{job}", timeout=10).json()
    assert canceled["status"] == "canceled"
    done = first.json()["job_id"]
    wait_until(lambda: requests.get(f"{api}/jobs/{done}", timeout=10).json()["status"] == "completed", 300, "the job")
    status = requests.get(f"{api}/jobs/{done}", timeout=10).json()
    assert status["kind"] == "text_to_audio" and status["seed"] == 5
    info, _ = wav(requests.get(f"{api}/jobs/{done}/audio", timeout=30).content)
    assert (info.samplerate, info.channels, info.frames) == (RATE, 2, 11 * RATE)
    # jerry's clip becomes a session take that gary can continue (as the device does with its audio).
    imported = post(api + "/sessions/import", {"job_id": done}, timeout=30)
    assert imported.status_code in (200, 201), imported.text
    refused = post(api + "/text-to-audio", {"prompt": "x", "steps": 8.0}, timeout=10)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "INVALID_REQUEST"


def test_localhost_mode_ports_reach_jerry_and_terry(jerry) -> None:
    local = jerry.jerry_url
    status = requests.get(local + "/models/status", timeout=10)
    assert status.status_code == 200 and "debug-stable-audio" in status.json()["model_details"]
    assert requests.get(local + "/health", timeout=10).json()["status"] == "live"
    resp = post(local + "/generate", {"prompt": "808 bass 140bpm", "return_format": "base64", "seconds_total": 1})
    assert resp.status_code == 200 and resp.json()["success"] is True, resp.text
    terry = requests.get(jerry.terry_url + "/health", timeout=10)
    assert terry.status_code == 200 and terry.json()["status"] == "live"


def test_the_cli_makes_a_clip_and_a_loop(jerry, tmp_path) -> None:
    import json
    import subprocess
    import sys

    def g4l(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "g4l.cli", "--url", jerry.url, "--json", "--no-progress", *args],
                              capture_output=True, text=True, timeout=300)

    out = tmp_path / "clip.wav"
    done = g4l("jerry", "dusty rhodes", "--bpm", "90", "--seconds", "2", "--seed", "3", "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["seed"] == 3 and result["prompt"] == "dusty rhodes 90bpm"
    assert sf.info(str(out)).frames == 2 * RATE
    loop = g4l("jerry", "breakbeat", "--bpm", "120", "--loop", "--bars", "2", "--out", str(tmp_path / "loop.wav"))
    assert loop.returncode == 0, loop.stderr
    assert sf.info(str(tmp_path / "loop.wav")).frames == 4 * RATE
    usage = g4l("jerry", "breakbeat", "--loop")
    assert usage.returncode == 2 and "tempo" in usage.stderr
    refused = g4l("jerry", "x", "--steps", "0")
    assert refused.returncode == 1 and "INVALID_REQUEST" in refused.stderr
