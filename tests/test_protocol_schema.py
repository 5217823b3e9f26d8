"""The protocol package: normalisation of what real clients send, and the JSON Schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from plugin_protocol import schema
from plugin_protocol.normalize import PayloadError, parse_payload
from plugin_protocol.payloads import ContinueMusicRequest, ProcessAudioRequest


def test_committed_schema_is_current() -> None:
    assert schema.SCHEMA_PATH.read_text() == schema.render(), "run: python -m plugin_protocol.schema"


def test_schema_validates_real_payloads_and_rejects_bad_ones() -> None:
    doc = json.loads(schema.SCHEMA_PATH.read_text())
    bang = doc["events"]["process_audio_request"]
    jsonschema.validate({"audio_data": "UklGRg==", "model_name": "debug", "prompt_duration": 6}, bang)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"audio_data": "UklGRg==", "model_name": "debug", "prompt_duration": 99}, bang)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"model_name": "debug", "prompt_duration": 6}, bang)


def test_swift_string_form_is_decoded_once() -> None:
    raw = '{"session_id": " 7c9e6679-7425-40de-944b-e07fc1f90ae7 ", "model_name": "thepatch\\/vanya_ai_dnb_0.1"}'
    req = parse_payload(raw, ContinueMusicRequest)
    assert req.session_id == "7c9e6679-7425-40de-944b-e07fc1f90ae7"
    assert req.model_name == "thepatch/vanya_ai_dnb_0.1"
    # Backslashes that mean something else survive (no blanket stripping).
    req = parse_payload({"session_id": "a", "description": "a\\b"}, ContinueMusicRequest)
    assert req.description == "a\\b"


@pytest.mark.parametrize("raw,needle", [
    ("[1,2]", "JSON object"),
    ("{oops", "not valid JSON"),
    ({"model_name": "x", "prompt_duration": 6}, "audio_data"),
    ({"audio_data": "x", "model_name": "x", "prompt_duration": 6, "temperature": float("nan")}, "temperature"),
])
def test_bad_payloads_name_the_problem(raw, needle) -> None:
    with pytest.raises(PayloadError) as err:
        parse_payload(raw, ProcessAudioRequest)
    assert needle in err.value.message
