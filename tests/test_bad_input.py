"""Bad input gets a clear error with a stable code, changes nothing, and the server stays up."""

from __future__ import annotations

import base64
import io
import struct

import numpy as np
import pytest
import soundfile as sf
from conftest import make_wav

from plugin_protocol import events
from plugin_protocol.client import DeviceClient, ProtocolError

GOOD = base64.b64encode(make_wav(4)).decode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _nan_wav() -> bytes:
    x = np.zeros((48000, 2), dtype=np.float32)
    x[100] = np.nan
    buf = io.BytesIO()
    sf.write(buf, x, 48000, subtype="FLOAT", format="WAV")
    return buf.getvalue()


def _two_hour_header() -> bytes:
    """A WAV whose header declares 2 hours (the test never allocates them)."""
    wav = bytearray(make_wav(0.5, rate=8000, channels=1))
    declared = 2 * 3600 * 8000 * 2
    data_at = wav.index(b"data")
    struct.pack_into("<I", wav, data_at + 4, declared)
    struct.pack_into("<I", wav, 4, declared + data_at)
    return bytes(wav)


def _zero_frames() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros((0, 2), dtype=np.float32), 48000, format="WAV")
    return buf.getvalue()


def _bang(**overrides):
    payload = {"audio_data": GOOD, "model_name": "debug", "prompt_duration": 6}
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not ...}


BANG_CASES = {
    "payload is a list": ([1, 2, 3], "INVALID_REQUEST"),
    "payload is not JSON": ("{not json", "INVALID_REQUEST"),
    "payload is a number": (42, "INVALID_REQUEST"),
    "missing audio": (_bang(audio_data=...), "INVALID_REQUEST"),
    "audio is a number": (_bang(audio_data=123), "INVALID_REQUEST"),
    "broken base64": (_bang(audio_data="@@@not base64@@@"), "INVALID_AUDIO"),
    "not a WAV": (_bang(audio_data=_b64(b"ID3\x03\x00" + bytes(2000))), "INVALID_AUDIO"),
    "empty file": (_bang(audio_data=_b64(b"")), "INVALID_REQUEST"),
    "zero frames": (_bang(audio_data=_b64(_zero_frames())), "INVALID_AUDIO"),
    "two-hour file": (_bang(audio_data=_b64(_two_hour_header())), "INVALID_AUDIO"),
    "NaN samples": (_bang(audio_data=_b64(_nan_wav())), "INVALID_AUDIO"),
    "unknown model": (_bang(model_name="facebook/musicgen-large"), "MODEL_NOT_ALLOWED"),
    "prompt_duration 0": (_bang(prompt_duration=0), "INVALID_REQUEST"),
    "prompt_duration 99": (_bang(prompt_duration=99), "INVALID_REQUEST"),
    "prompt_duration is text": (_bang(prompt_duration="six"), "INVALID_REQUEST"),
    "temperature NaN": (_bang(temperature=float("nan")), "INVALID_REQUEST"),
    "temperature negative": (_bang(temperature=-1), "INVALID_REQUEST"),
    "top_k huge": (_bang(top_k=10**9), "INVALID_REQUEST"),
    "cfg_coef is a list": (_bang(cfg_coef=[1]), "INVALID_REQUEST"),
}


@pytest.mark.parametrize("payload,code", list(BANG_CASES.values()), ids=list(BANG_CASES))
def test_bad_bang_gets_error_and_queues_nothing(client: DeviceClient, redis_client, payload, code) -> None:
    sessions_before = len(list(redis_client.scan_iter("g4l:session:*")))
    since = client.mark()
    client.emit(events.PROCESS_AUDIO, payload)
    with pytest.raises(ProtocolError) as err:
        client.wait_for(events.PROCESS_AUDIO_RECEIVED, since, timeout=30)
    assert err.value.code == code
    assert err.value.payload["message"] and len(err.value.payload["message"]) < 400
    assert len(list(redis_client.scan_iter("g4l:session:*"))) == sessions_before


@pytest.fixture(scope="module")
def idle_session(server):
    with DeviceClient(server.url) as c:
        bang = c.bang(make_wav(8), model_name="debug", prompt_duration=4)
        c.continue_(bang.session_id, bang.audio)
        yield bang.session_id


SESSION_CASES = {
    "continue broken base64": (events.CONTINUE_MUSIC, {"audio_data": "%%%"}, "INVALID_AUDIO"),
    "continue non-WAV": (events.CONTINUE_MUSIC, {"audio_data": _b64(b"OggS" + bytes(500))}, "INVALID_AUDIO"),
    "continue NaN": (events.CONTINUE_MUSIC, {"audio_data": _b64(_nan_wav())}, "INVALID_AUDIO"),
    "continue unknown model": (events.CONTINUE_MUSIC, {"model_name": "nope/nope"}, "MODEL_NOT_ALLOWED"),
    "continue top_p 2": (events.CONTINUE_MUSIC, {"top_p": 2}, "INVALID_REQUEST"),
    "retry bad temperature": (events.RETRY_MUSIC, {"temperature": "hot"}, "INVALID_REQUEST"),
    "continue too short a duration, other model": (events.CONTINUE_MUSIC, {"duration": 3, "top_k": 7},
                                                    "INVALID_REQUEST"),
    "retry too long a duration": (events.RETRY_MUSIC, {"duration": 3000, "top_k": 7}, "INVALID_REQUEST"),
    "continue seed out of range": (events.CONTINUE_MUSIC, {"seed": -2}, "INVALID_REQUEST"),
    "crop two-hour": (events.UPDATE_CROPPED_AUDIO, {"audio_data": _b64(_two_hour_header())}, "INVALID_AUDIO"),
    "crop zero frames": (events.UPDATE_CROPPED_AUDIO, {"audio_data": _b64(_zero_frames())}, "INVALID_AUDIO"),
    "crop no audio": (events.UPDATE_CROPPED_AUDIO, {}, "INVALID_REQUEST"),
}


@pytest.mark.parametrize("event,fields,code", list(SESSION_CASES.values()), ids=list(SESSION_CASES))
def test_bad_request_leaves_the_session_as_it_was(client: DeviceClient, redis_client, idle_session,
                                                  event, fields, code) -> None:
    before = redis_client.hgetall(f"g4l:session:{idle_session}")
    since = client.mark()
    client.emit(event, {"session_id": idle_session, **fields})
    with pytest.raises(ProtocolError) as err:
        client.wait_for({"never"}, since, timeout=30)
    assert err.value.code == code
    assert err.value.payload["session_id"] == idle_session
    after = redis_client.hgetall(f"g4l:session:{idle_session}")
    assert {k: v for k, v in after.items() if k != "updated"} == {k: v for k, v in before.items() if k != "updated"}


@pytest.mark.parametrize("event", [events.CONTINUE_MUSIC, events.RETRY_MUSIC, events.UPDATE_CROPPED_AUDIO,
                                   events.CLEANUP_SESSION])
def test_unknown_session_is_session_not_found(client: DeviceClient, event) -> None:
    since = client.mark()
    client.emit(event, {"session_id": "2b1e4a8e-0000-4000-8000-123456789abc", "audio_data": GOOD})
    with pytest.raises(ProtocolError) as err:
        client.wait_for({"never"}, since, timeout=30)
    assert err.value.code == "SESSION_NOT_FOUND"


def test_session_id_with_path_characters_is_rejected(client: DeviceClient) -> None:
    since = client.mark()
    client.emit(events.VERIFY_SESSION, {"session_id": "../../etc/passwd"})
    with pytest.raises(ProtocolError) as err:
        client.wait_for(events.SESSION_STATUS, since, timeout=30)
    assert err.value.code == "INVALID_REQUEST"


def test_server_survives_the_bad_inputs_and_still_generates(server, client: DeviceClient) -> None:
    for payload, _code in BANG_CASES.values():
        client.emit(events.PROCESS_AUDIO, payload)
    status, body = server.health()
    assert status == 200 and body["status"] == "live"
    with DeviceClient(server.url) as fresh:
        assert fresh.bang(make_wav(3), model_name="debug", prompt_duration=2).audio


# ---------------------------------------------------------------- packets the parser gives up on
class RawSocket:
    """A Socket.IO v5 client spoken by hand over a stock websocket: it can send packet
    text no Socket.IO library would write."""

    def __init__(self, url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket",
                                              timeout=30, suppress_origin=True)
        assert self.ws.recv().startswith("0{")  # engine.io open
        self.ws.send("40")
        assert self.recv().startswith("40")  # namespace connected

    def recv(self) -> str:
        while True:
            text = self.ws.recv()
            if text == "2":  # engine.io ping
                self.ws.send("3")
                continue
            return text

    def event(self) -> tuple[str, list]:
        """The next Socket.IO event (name, args), or an ack as ("ack", args)."""
        import json

        text = self.recv()
        if text.startswith("43"):
            return "ack", json.loads(text[text.index("["):])
        assert text.startswith("42"), text[:200]
        name, *args = json.loads(text[2:])
        return name, args

    def close(self) -> None:
        self.ws.close()


@pytest.mark.parametrize("packet, needle", [
    ('42["process_audio_request",' + "[" * 3000 + "]" * 3000 + "]", "nested too deeply"),
    ('42["continue_music_request",{"session_id":"x","top_k":' + "9" * 5000 + "}]", "cannot be parsed"),
    ('427["verify_session",{"session_id": ]', "cannot be parsed"),
    ('42["continue_music_request","{\\"a\\":' + "[" * 3000 + "]" * 3000 + '}"]', "nested too deeply"),
    ('42["continue_music_request","{\\"top_k\\":' + "9" * 5000 + '}"]', "not usable JSON"),
])
def test_packets_the_json_parser_gives_up_on_are_answered(server, packet, needle) -> None:
    raw = RawSocket(server.url)
    try:
        raw.ws.send(packet)
        name, args = raw.event()
        while name == "ack":
            name, args = raw.event()
        assert name == events.ERROR and args[0]["code"] == "INVALID_REQUEST", (name, args)
        assert needle in args[0]["message"]
        raw.ws.send('42["verify_session",{"session_id":"2b1e4a8e-0000-4000-8000-123456789abc"}]')
        seen = [raw.event()]
        while seen[-1][0] == "ack":
            seen.append(raw.event())
        assert seen[-1][0] == events.SESSION_STATUS, seen  # the socket still works
        if packet.startswith("427"):  # the packet's ack id was read before its JSON: the ack comes too
            assert ("ack", []) in seen
    finally:
        raw.close()


def test_a_lone_surrogate_in_an_id_is_not_found_not_internal(server) -> None:
    raw = RawSocket(server.url)
    try:
        for payload, code in (('{"job_id":"\\ud800"}', "NOT_FOUND"),
                              ('{"session_id":"\\udfff x"}', "SESSION_NOT_FOUND")):
            raw.ws.send(f'42["subscribe",{payload}]')
            name, args = raw.event()
            assert name == events.ERROR and args[0]["code"] == code, (name, args)
        raw.ws.send('42["continue_music_request",{"session_id":"\\ud800","audio_data":"x"}]')
        name, args = raw.event()
        assert name == events.ERROR and args[0]["code"] in ("SESSION_NOT_FOUND", "INVALID_AUDIO", "INVALID_REQUEST")
    finally:
        raw.close()


def test_a_chunk_declaring_a_huge_total_costs_round_trips_for_what_arrived(client: DeviceClient, redis_client):
    """One 4-byte chunk of a declared 100,000: Redis sees a handful of HSTRLEN, not 100,000."""
    since = client.mark()
    client.emit(events.BEGIN_RESTORE_AUDIO, {})
    _name, ready = client.wait_for(events.READY_FOR_CHUNKS, since, timeout=30)
    session_id = ready["session_id"]

    def hstrlen_calls() -> int:
        return int(redis_client.info("commandstats").get("cmdstat_hstrlen", {}).get("calls", 0))

    before = hstrlen_calls()
    since = client.mark()
    client.emit(events.AUDIO_CHUNK, {"session_id": session_id, "chunk_index": 0, "total_chunks": 100_000,
                                     "chunk": "UklG"})
    client.wait_for(events.CHUNK_RECEIVED, since, timeout=60)
    assert hstrlen_calls() - before < 10
