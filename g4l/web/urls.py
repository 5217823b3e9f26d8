"""Absolute URLs of the links the server hands out (HLS players need a full URL)."""

from __future__ import annotations

from flask import current_app, request


def absolute(path: str) -> str:
    """``path`` under ``G4L_PUBLIC_URL`` when the operator set one (a proxy in front),
    else under the host the request came to."""
    base = current_app.config["G4L_SETTINGS"].public_url or request.host_url
    return base.rstrip("/") + "/" + path.lstrip("/")
