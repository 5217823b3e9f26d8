"""plugin_protocol.bigjson gives what json.loads gives, for the messages it speeds up and
for every odd case that must fall back to the ordinary parser."""

from __future__ import annotations

import base64
import json
import os

import pytest

from plugin_protocol import bigjson
from plugin_protocol.packets import FastPacket
from socketio import packet as sio_packet

BIG = "QUJD" * (bigjson.MIN_TEXT // 4)  # 1 MiB of base64
LONG = "x" * bigjson.MIN_STRING

CASES = {
    "upload": '["continue_music",{"session_id":null,"audio_data":"' + BIG + '","prompt_duration":6,'
              '"description":"a \\"quoted\\" \\\\ word \\u00e9"}]',
    "top-level string": '"' + BIG + '"',
    "two long strings and nesting": '["' + BIG + '",{"k":["' + LONG + '",{"d":"' + BIG + '"}]},1.5,null,true]',
    "long key": '{"' + BIG + '":1}',
    "escaped backslash before a quote": '["a\\\\","' + BIG + '"]',
    "escaped quote before the long one": '["a\\"' + BIG + '"]',
    "escapes inside the long string (Swift's \\/)": '["' + BIG + '\\/' + BIG + '"]',
    "leading and trailing whitespace": ' \n["' + BIG + '"] \t',
    "many short strings": "[" + ",".join(['"a"'] * (bigjson.MAX_QUOTES + 10)) + ',"' + BIG + '"]',
    "a long run of backslashes": '["' + BIG + "\\\\" * 40 + '"]',
    "NaN": '[NaN,"' + BIG + '"]',
    "non-ASCII": '["é' + BIG + '","日本"]',
    "looks like a placeholder": '["g4l-lifted-0-0","' + BIG + '"]',
    "extra data": '["' + BIG + '"] x',
    "unterminated": '["' + BIG + '"',
    "unterminated string": '["' + BIG,
    "a quote-only flood": '"' + '\\"' * (bigjson.MIN_TEXT // 2) + '"',
}


def _outcome(fn, text):
    try:
        return "ok", fn(text)
    except json.JSONDecodeError as exc:
        return "error", (exc.msg, exc.pos)


@pytest.mark.parametrize("name", list(CASES))
def test_same_value_or_same_error_as_json_loads(name) -> None:
    text = CASES[name]
    assert len(text) >= bigjson.MIN_TEXT
    assert _outcome(bigjson.loads_at, text) == _outcome(json.loads, text)


def test_the_fast_path_is_taken_for_an_upload(monkeypatch) -> None:
    """Not only the same answer: the long string was really lifted (the ordinary parser
    would get the full text)."""
    seen: list[int] = []
    real = bigjson._DECODER.raw_decode
    monkeypatch.setattr(bigjson, "_DECODER", type("D", (), {
        "raw_decode": staticmethod(lambda s, i=0: (seen.append(len(s)), real(s, i))[1])})())
    value = bigjson.loads_at(CASES["upload"])
    assert value[1]["audio_data"] == BIG and seen and max(seen) < 1000


def test_raw_control_characters_in_a_long_string_are_left_to_field_validation() -> None:
    """The documented difference: json.loads refuses them, the lifted parse keeps them."""
    text = '["' + BIG + '\n"]'
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert bigjson.loads_at(text) == [BIG + "\n"]


def test_socketio_packets_with_an_upload_decode_like_the_library() -> None:
    audio = base64.b64encode(os.urandom(3 * bigjson.MIN_TEXT)).decode()
    for encoded in ('2["continue_music",{"audio_data":"' + audio + '"}]',
                    '2/ns,7["process_audio","' + audio + '"]',
                    '2["x","' + audio + '"] trailing'):
        try:
            theirs = sio_packet.Packet(encoded_packet=encoded)
        except ValueError:
            with pytest.raises(ValueError):
                FastPacket(encoded_packet=encoded)
            continue
        ours = FastPacket(encoded_packet=encoded)
        assert (ours.packet_type, ours.namespace, ours.id, ours.data) == \
               (theirs.packet_type, theirs.namespace, theirs.id, theirs.data)
