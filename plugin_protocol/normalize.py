"""Turn what a client sent into a validated payload model.

Clients send either a JSON object (the Max4Live device) or the same object as a JSON
*string* (a Swift client, which also escapes "/" as "\\/"). Strings are decoded with a real
JSON parser, so escapes are undone exactly once; backslashes are never stripped blindly.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)


class PayloadError(ValueError):
    """A payload that cannot be used; ``message`` is fit to show a musician."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def as_object(raw: Any) -> dict[str, Any]:
    """Return the payload as a dict, decoding the JSON-string form."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PayloadError("payload is not UTF-8 text") from exc
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            raise PayloadError("payload is empty")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PayloadError(f"payload is not valid JSON: {exc.msg} at position {exc.pos}") from exc
        except RecursionError:
            raise PayloadError("payload is nested too deeply") from None
        except ValueError as exc:  # e.g. an integer past Python's 4300-digit conversion limit
            raise PayloadError(f"payload is not usable JSON: {str(exc)[:120]}") from None
    if raw is None:
        raise PayloadError("payload is missing")
    if not isinstance(raw, dict):
        raise PayloadError(f"payload must be a JSON object, not {type(raw).__name__}")
    return raw


def _describe(error: ValidationError) -> tuple[str, str | None]:
    first = error.errors(include_url=False)[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or None
    msg = first.get("msg", "invalid value")
    # Never echo a 100 MB audio string back into an error message.
    if first.get("type") == "missing":
        text = f"missing required field '{field}'"
    else:
        text = f"invalid '{field}': {msg}" if field else msg
    extra = len(error.errors()) - 1
    if extra > 0:
        text += f" (and {extra} more problem{'s' if extra > 1 else ''})"
    return text, field


def parse_payload(raw: Any, model: type[T]) -> T:
    """Validate ``raw`` (dict, JSON string or bytes) as ``model``.

    :raises PayloadError: with a short human message naming the first bad field.
    """
    data = as_object(raw)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, field = _describe(exc)
        raise PayloadError(message, field) from None
