"""The device's whole session with the client the device really uses: Node's
socket.io-client over a websocket (tests/device/device.mjs), against the running server.
Every result decodes to the length the protocol promises, and a continue's kept part is
the client's own file, byte for byte."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import make_wav, wav_info
from g4l import wav_splice

DEVICE = Path(__file__).resolve().parent / "device"
RATE = 48_000


def _data(wav: bytes) -> bytes:
    span = wav_splice.data_span(wav)
    assert span is not None, "not a plain WAV"
    return wav[span[0]:span[0] + span[1]]


def _kept_equal(source: bytes, result: bytes, prompt_s: float = 6.0) -> bool:
    """The result starts with the source minus its last ``prompt_s``, byte for byte."""
    block = 2 * 2  # stereo PCM_16
    keep = len(_data(source)) - int(prompt_s * RATE) * block
    return _data(result)[:keep] == _data(source)[:keep]


def test_node_socketio_client_plays_a_whole_device_session(server, tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node is not None and (DEVICE / "node_modules" / "socket.io-client").is_dir(), \
        "scripts/install.sh test installs node and the device harness"
    (tmp_path / "in.wav").write_bytes(make_wav(30))
    crop = make_wav(40, freq=330.0)
    (tmp_path / "crop.wav").write_bytes(crop)
    proc = subprocess.run([node, str(DEVICE / "device.mjs"), server.url, str(tmp_path / "in.wav"),
                           str(tmp_path / "crop.wav"), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = {s["step"]: s for s in map(json.loads, proc.stdout.splitlines())}
    audio = {name: Path(s["file"]).read_bytes() for name, s in steps.items() if "file" in s}

    expected = {"bang": 30.0, "continue1": 54.0, "continue2": 78.0, "retry": 78.0, "continue3": 64.0}
    for name, seconds in expected.items():
        info = wav_info(audio[name])
        assert (info.samplerate, info.channels, info.subtype) == (RATE, 2, "PCM_16"), name
        assert info.duration == pytest.approx(seconds, abs=0.05), name
        step = steps[name]
        # Acknowledged with its job, queue status and progress on the way, as the device expects.
        assert step["acks"] == 1 and step["ack_job_id"] and step["queue_status"] >= 1, step
        assert step["progress_events"] >= 1 and step["max_progress"] == 100, step
    sid = steps["bang"]["session_id"]
    assert all(steps[n]["session_id"] == sid for n in expected) and steps["crop"]["session_id"] == sid
    assert _kept_equal(audio["bang"], audio["continue1"])
    assert _kept_equal(audio["continue1"], audio["continue2"])
    assert _kept_equal(audio["continue1"], audio["retry"])  # the retry redid continue2 from ITS input
    assert audio["retry"] != audio["continue2"]
    assert _kept_equal(crop, audio["continue3"])  # continued the cropped audio, stored server-side
    assert steps["refused"]["code"] == "SESSION_NOT_FOUND"
    assert steps["cleanup"]["session_id"] == sid
