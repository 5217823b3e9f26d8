"""The audio store gone (killed, not paused): requests that need it are refused with
``STORE_UNAVAILABLE`` (send again) within a bound, never ``INTERNAL`` and never left
unanswered; /health says degraded; once the store is back on its port, the same client
carries on and nothing was stored half."""

from __future__ import annotations

import base64

import pytest
import requests
from conftest import make_wav, start_server, wait_until, wav_info

from g4l import embedded
from plugin_protocol import events
from plugin_protocol.client import DeviceClient, ProtocolError


@pytest.fixture
def own_store(tmp_path):
    store = embedded.start_mongo(tmp_path / "mongo")
    yield store
    store.stop()


def test_requests_while_the_store_is_gone_are_refused_clearly_and_work_again_after(tmp_path, own_store) -> None:
    data = tmp_path / "data"
    data.mkdir()
    server = start_server(data, redis_url=None, mongo_url=own_store.url, G4L_HLS_ENABLED="false")
    try:
        with DeviceClient(server.url, timeout=120) as c:
            first = c.bang(make_wav(4), model_name="debug", prompt_duration=4)
            own_store.stop(timeout=10)  # gone: connections refused
            # A crop must store its audio before it answers: refused with a code to act on, not
            # left hanging (each store write used to retry for minutes against a dead store).
            since = c.mark()
            c.emit(events.UPDATE_CROPPED_AUDIO, {"session_id": first.session_id,
                                                 "audio_data": base64.b64encode(make_wav(3)).decode()})
            with pytest.raises(ProtocolError) as refused:
                c.wait_for(events.UPDATE_CROPPED_AUDIO_COMPLETE, since, timeout=60)
            assert refused.value.code == "STORE_UNAVAILABLE", refused.value.payload
            assert refused.value.payload["session_id"] == first.session_id
            # HTTP reads of stored audio: 503 STORE_UNAVAILABLE, not a 500.
            resp = requests.get(f"{server.url}/api/v1/sessions/{first.session_id}/audio", timeout=60)
            assert resp.status_code == 503 and resp.json()["error"]["code"] == "STORE_UNAVAILABLE", resp.text
            assert server.health()[0] == 503 and server.health()[1]["mongodb"].startswith("down")
            # The store comes back on its port, with its data: the session goes on.
            restarted = embedded.start_mongo(tmp_path / "mongo", port=own_store.port)
            own_store.proc = restarted.proc
            wait_until(lambda: server.health()[0] == 200, 60, "health to be live again")
            assert c.verify(first.session_id)["version"] == 1  # the refused crop changed nothing
            again = c.continue_(first.session_id)
            assert wav_info(again.audio).duration == pytest.approx(56, abs=0.05)
    finally:
        server.stop()
