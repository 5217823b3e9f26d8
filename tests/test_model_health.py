"""A truthful health and a usable default: a server whose default model cannot load (no
hub here) says so on its first lines and on /health/ready (503, one-line reason), and a
bang for that model fails at once with MODEL_UNAVAILABLE and the same reason; the other
allowed models still work."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import ROOT, make_wav
from g4l import embedded
from plugin_protocol import events
from plugin_protocol.client import DeviceClient, ProtocolError

MISSING = "g4l-tests/no-such-model"


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@pytest.fixture(scope="module")
def unready(redis_server, mongo_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unready")
    port = embedded.free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MONGO_URL")}
    env.update({"G4L_HOST": "127.0.0.1", "G4L_PORT": str(port), "G4L_MODELS": f"{MISSING},debug",
                "G4L_DATA_DIR": str(tmp), "G4L_RATE_LIMIT_PER_MINUTE": "0", "G4L_TORCH_THREADS": "1",
                "G4L_HLS_ENABLED": "false", "G4L_MONGO_DB": "g4l_unready",
                # Localhost mode off: its fixed ports (8005, 8002) may be another test's.
                "G4L_JERRY_PORT": "0", "G4L_TERRY_PORT": "0",
                "REDIS_URL": re.sub(r"/\d+$", "", redis_server.url) + "/6", "MONGO_URL": mongo_server.url,
                # No network to the hub in tests (and none on this machine): fail as fast as it can.
                "HF_HUB_OFFLINE": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "g4l.launcher"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=open(tmp / "server.log", "ab"), text=True)
    lines: list[str] = []
    seen = threading.Event()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
            if "NOT READY" in line or line.startswith("g4l ready on"):
                seen.set()

    threading.Thread(target=pump, daemon=True).start()
    assert seen.wait(180), (tmp / "server.log").read_text()[-3000:]
    time.sleep(0.5)  # the models line follows
    yield f"http://127.0.0.1:{port}", lines
    proc.terminate()
    proc.wait(60)


def test_the_first_lines_say_the_default_model_is_unusable_and_why(unready) -> None:
    url, lines = unready
    text = "\n".join(lines)
    assert f"g4l running on {url} but NOT READY" in text and MISSING in text, text
    assert "G4L_MODELS=debug" in text  # what to do about it
    status, doc = _get(url + "/health/ready")
    assert status == 503 and doc["status"] == "not ready"
    assert MISSING in doc["pytorch"] and "\n" not in doc["pytorch"]
    assert list(doc["models_failed"]) == [MISSING]
    assert _get(url + "/health")[0] == 503  # a dependency (here the model) is unavailable
    # Each family says its own state: gary's default failed (with why); jerry's and terry's,
    # warmed after it, are loading and then loaded.
    families = doc["families"]
    assert {families["stable_audio"]["state"], families["melodyflow"]["state"]} <= {"loading", "loaded"}
    deadline = time.monotonic() + 180
    while "loading" in {families["stable_audio"]["state"], families["melodyflow"]["state"]}:
        assert time.monotonic() < deadline, families
        time.sleep(0.5)
        families = _get(url + "/health/ready")[1]["families"]
    assert families["musicgen"]["state"] == "failed" and MISSING in families["musicgen"]["reason"]
    assert families["musicgen"]["default_model"] == MISSING
    assert (families["stable_audio"]["state"], families["melodyflow"]["state"]) == ("loaded", "loaded")
    assert families["stable_audio"]["nickname"] == "jerry" and families["melodyflow"]["nickname"] == "terry"


def test_a_bang_for_the_failed_model_fails_at_once_and_other_models_work(unready) -> None:
    url, _lines = unready
    wav = base64.b64encode(make_wav(4)).decode()
    with DeviceClient(url, timeout=60) as c:
        since = c.mark()
        started = time.monotonic()
        c.emit(events.PROCESS_AUDIO, {"audio_data": wav, "model_name": MISSING, "prompt_duration": 2})
        with pytest.raises(ProtocolError) as err:
            c.wait_for(events.PROCESS_AUDIO_RECEIVED, since, timeout=30)
        elapsed = time.monotonic() - started
        assert err.value.code == "MODEL_UNAVAILABLE" and MISSING in str(err.value)
        print(f"refused in {elapsed:.2f} s")
        result = c.bang(make_wav(4), model_name="debug", prompt_duration=2)
        assert len(result.audio) > 1000
