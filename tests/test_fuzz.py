"""Property-based fuzzing (hypothesis) of every device event over a real Socket.IO
websocket: whatever a client sends, the server answers it without ``INTERNAL``, stays up,
and a refused request changes nothing (a reference session, named in many of the payloads,
stays byte-for-byte as it was). The HTTP routes get the same treatment in
tests/test_http_api.py (hypothesis over every route and key, and the schemathesis contract
test). Bounded: a fixed number of examples, derandomized."""

from __future__ import annotations

import base64
import json
import time

import pytest
from conftest import make_wav
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin_protocol import events
from plugin_protocol.client import DeviceClient

EXAMPLES = 150
#: Events whose refusal must leave a session as it was (those that may legitimately
#: change one, cleanup and the listen link, only ever name a throwaway id).
EVENTS = [events.PROCESS_AUDIO, events.CONTINUE_MUSIC, events.RETRY_MUSIC, events.UPDATE_CROPPED_AUDIO,
          events.VERIFY_SESSION, events.REQUEST_PROGRESS_STATUS, events.AUDIO_CHUNK, "subscribe", "unsubscribe"]
SAFE_ONLY = [events.CLEANUP_SESSION, events.GET_LISTEN_URL]
FIELDS = ["session_id", "audio_data", "model_name", "prompt_duration", "top_k", "top_p", "temperature", "cfg_coef",
          "description", "seed", "duration", "chunk", "chunk_index", "total_chunks", "is_last", "job_id"]

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
                      st.sampled_from(["", "debug", "-1", "../../etc/passwd", "\u0000", "\ud800", "UklGRg==", "@@@", "9" * 5000]))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                          max_leaves=12)


@pytest.fixture(scope="module")
def fuzz_target(server):
    """A client and an idle session of it (audio stored, no continue yet)."""
    with DeviceClient(server.url, timeout=120) as c:
        result = c.bang(make_wav(3), model_name="debug", prompt_duration=2)
        yield c, result.session_id


def _payload(draw, ref_id: str, event: str) -> object:
    fields = draw(st.dictionaries(st.sampled_from(FIELDS), json_value, max_size=6))
    if event in SAFE_ONLY:
        fields["session_id"] = draw(st.sampled_from(["fuzz-throwaway", "0" * 36, "x" * 300]))
    elif draw(st.booleans()):
        fields["session_id"] = ref_id
        # Anything naming the reference session carries audio that is not a WAV, so a
        # continue or crop of it is always refused (a retry of it has nothing to retry).
        # (Not "": an empty audio_data means "none sent", and a continue then uses the stored audio.)
        not_wav = ["@@@", base64.b64encode(b"ID3not a wav").decode(), "UklGRg=="]
        fields["audio_data"] = draw(st.sampled_from(not_wav))
    form = draw(st.sampled_from(["object", "string", "raw"]))
    if form == "string":  # the Swift client's form: the object as a JSON string
        return json.dumps(fields)
    if form == "raw":
        return draw(json_value)
    return fields


def test_every_event_survives_fuzzed_payloads_and_refusals_change_nothing(fuzz_target, redis_client, server):
    client, ref_id = fuzz_target
    key = f"g4l:session:{ref_id}"
    before = redis_client.hgetall(key)
    assert before, "the reference session is missing"
    since = client.mark()
    sent: list[str] = []

    @given(data=st.data())
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def fuzz(data) -> None:
        event = data.draw(st.sampled_from(EVENTS + SAFE_ONLY))
        payload = _payload(data.draw, ref_id, event)
        client.emit(event, payload)
        sent.append(event)
        time.sleep(0.01)

    fuzz()
    time.sleep(3)  # let the last answers arrive
    errors = [data for _t, name, data in client.received[since:] if name == events.ERROR]
    internal = [e for e in errors if isinstance(e, dict) and e.get("code") == "INTERNAL"]
    assert not internal, internal[:5]
    assert len(errors) >= len(sent) // 4, "most fuzzed requests should be refused with a code"
    after = redis_client.hgetall(key)
    ignore = {"updated", "last_access"}
    assert {k: v for k, v in after.items() if k not in ignore} == {k: v for k, v in before.items() if k not in ignore}
    assert server.health()[0] == 200  # still up
    assert client.verify(ref_id)["exists"]
    print(f"fuzz: {len(sent)} events, {len(errors)} refused with a code, 0 INTERNAL")
