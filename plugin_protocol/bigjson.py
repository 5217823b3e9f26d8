"""JSON decoding for messages that are one long string and a little structure.

An upload or a result is ``["event",{"audio_data":"<60 MB of base64>",...}]``. A JSON
parser reads every character of that string looking for escapes (about 0.12 s for 60 MB
here), although base64 has none. :func:`loads_at` first finds the long strings that hold
no backslash (``str.find`` runs at memory speed), parses the text with short placeholders
in their place, and puts the strings back: the same value, in about a third of the time.

Anything unusual (no long string, escapes inside it, a long object key, more quotes than a
message of this kind has, a parse error) goes to the standard parser unchanged, so results
and errors are the standard library's. One difference: raw control characters inside a
long string are not rejected here (the standard parser refuses them); the field's own
validation (base64) refuses them instead.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

_DECODER = json.JSONDecoder()
_WHITESPACE = json.decoder.WHITESPACE  # type: ignore[attr-defined]
#: Below this a text is parsed the ordinary way.
MIN_TEXT = 1 << 20
#: Strings at least this long are lifted out of the text.
MIN_STRING = 1 << 16
#: A message with more quotes than this is not "a little structure": parse it normally
#: (this also bounds the Python-level scan for hostile input full of quotes).
MAX_QUOTES = 512
#: Longer runs of backslashes before a quote are not counted in Python: parse normally.
MAX_BACKSLASHES = 32


def _long_strings(text: str, start: int) -> list[tuple[int, int]] | None:
    """(begin, end) of the content of every long string without backslashes, or None
    when the scan gives up (see :data:`MAX_QUOTES`)."""
    found: list[tuple[int, int]] = []
    quotes = 0
    i = start
    while True:
        opening = text.find('"', i)
        if opening == -1:
            return found
        j = opening + 1
        while True:  # the closing quote: the next one not escaped by a backslash
            closing = text.find('"', j)
            quotes += 1
            if closing == -1 or quotes > MAX_QUOTES:
                return None
            k = closing - 1
            while k > opening and text[k] == "\\":
                k -= 1
                if closing - k > MAX_BACKSLASHES:
                    return None
            if (closing - 1 - k) % 2 == 0:
                break
            j = closing + 1
        if closing - opening - 1 >= MIN_STRING and text.find("\\", opening + 1, closing) == -1:
            found.append((opening + 1, closing))
        i = closing + 1


def _put_back(value: Any, originals: dict[str, tuple[int, int]], text: str) -> int:
    """Replace placeholder strings in ``value`` (in place) by the text they stood for;
    returns how many were replaced. Placeholder keys are left (and so counted missing)."""
    replaced = 0
    stack = [value]
    while stack:
        node = stack.pop()
        items: Iterable[tuple[Any, Any]]
        if isinstance(node, dict):
            items = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            continue
        for key, item in items:
            if isinstance(item, str):
                span = originals.get(item)
                if span is not None:
                    node[key] = text[span[0]:span[1]]
                    replaced += 1
            elif isinstance(item, (dict, list)):
                stack.append(item)
    return replaced


def _fast(text: str, start: int) -> Any:
    spans = _long_strings(text, start)
    if not spans:
        raise ValueError("nothing to lift")
    nonce = uuid.uuid4().hex
    originals: dict[str, tuple[int, int]] = {}
    pieces: list[str] = []
    at = start
    for n, (begin, end) in enumerate(spans):
        placeholder = f"g4l-lifted-{n}-{nonce}"
        originals[placeholder] = (begin, end)
        pieces += (text[at:begin], placeholder)
        at = end
    pieces.append(text[at:])
    small = "".join(pieces)
    value, stop = _DECODER.raw_decode(small, 0)
    if _WHITESPACE.match(small, stop).end() != len(small):
        raise ValueError("extra data")
    holder = [value]  # so that a lifted top-level string is put back too
    if _put_back(holder, originals, text) != len(spans):
        raise ValueError("a placeholder was not a plain string value")
    return holder[0]


def loads_at(text: str, start: int = 0) -> Any:
    """The JSON value that starts at ``start`` (after optional whitespace) and fills the
    rest of ``text`` but trailing whitespace. :raises json.JSONDecodeError: as
    ``json.loads`` would."""
    begin = _WHITESPACE.match(text, start).end()
    if len(text) - begin >= MIN_TEXT:
        try:
            return _fast(text, begin)
        except (ValueError, RecursionError):
            pass  # the ordinary parse below gives the ordinary answer or error
    value, stop = _DECODER.raw_decode(text, begin)
    stop = _WHITESPACE.match(text, stop).end()
    if stop != len(text):
        raise json.JSONDecodeError("Extra data", text, stop)
    return value
