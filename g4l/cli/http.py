"""The HTTP side: ``/api/v1``, ``/health`` and downloads, with the server's JSON errors
turned into :class:`~g4l.cli.errors.CliError`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from g4l.cli.errors import CliError, unreachable

API = "/api/v1"
#: Seconds for one request without audio (connect and each read).
REQUEST_TIMEOUT_S = 30.0
_CHUNK = 1 << 20
#: The header that carries the API key (g4l/services/auth.py's ``HEADER``).
KEY_HEADER = "X-API-Key"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int | None]:
    """A URL's origin: scheme, host and port (the scheme's default port when none is
    written), lower-cased, so ``HTTP://Host`` and ``http://host:80`` are one origin."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: an origin of its own, matching nothing
        return scheme, (parts.hostname or "").lower(), -1
    return scheme, (parts.hostname or "").lower(), port if port is not None else _DEFAULT_PORTS.get(scheme)


class KeyedSession(requests.Session):
    """A ``requests`` session that sends the API key to one origin only.

    The server's replies carry absolute URLs (a playlist under ``G4L_PUBLIC_URL``, say) and
    a reply may redirect anywhere: the key goes with a request, or a redirect, only when it
    goes to the scheme, host and port the key was given for. ``requests`` itself strips
    only ``Authorization`` from a redirect to another host, never a custom header.

    :param url: the server the key belongs to.
    :param api_key: the key, or None to send none.
    """

    def __init__(self, url: str, api_key: str | None) -> None:
        super().__init__()
        self._origin = origin(url)
        self._key = api_key or None

    def request(self, method: str, url: str, **kw: Any) -> requests.Response:  # type: ignore[override]
        """``requests.Session.request`` (keyword arguments only), with the key added for this origin."""
        headers = {k: v for k, v in (kw.pop("headers", None) or {}).items() if k.lower() != KEY_HEADER.lower()}
        if self._key and origin(url) == self._origin:
            headers[KEY_HEADER] = self._key
        return super().request(method, url, headers=headers, **kw)

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        """On a redirect: drop the key when the next hop is another origin."""
        super().rebuild_auth(prepared_request, response)
        if origin(prepared_request.url or "") != self._origin:
            prepared_request.headers.pop(KEY_HEADER, None)


class Api:
    """A small JSON client of one server.

    :param url: the server's base URL (``http://host:port``).
    :param api_key: sent as ``X-API-Key`` when given, to that server's origin only (see
        :class:`KeyedSession`).
    """

    def __init__(self, url: str, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.http = KeyedSession(self.url, api_key)
        self.http.headers["User-Agent"] = "g4l-cli"

    def absolute(self, path: str) -> str:
        """A server-relative URL (``/hls/...``) made absolute."""
        return urljoin(self.url + "/", path)

    def request(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                accept: tuple[int, ...] = (), timeout: float = REQUEST_TIMEOUT_S) -> tuple[int, dict[str, Any]]:
        """Send one request and parse its JSON reply.

        :param accept: error statuses that are answers, not failures (``/health``'s 503).
        :returns: the status and the JSON object.
        :raises CliError: the server's ``{"error": {code, message}}`` (exit 1), or no
            answer / no JSON (exit 3).
        """
        resp = self._send(method, path, json=body, timeout=timeout)
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code >= 400 and resp.status_code not in accept:
            error = data.get("error") if isinstance(data, dict) else None
            if isinstance(error, dict) and error.get("code"):
                raise CliError(str(error["code"]), str(error.get("message") or resp.reason))
            raise CliError(f"HTTP_{resp.status_code}", f"{method} {path}: {resp.reason}")
        if not isinstance(data, dict):
            raise unreachable("BAD_REPLY", f"{method} {path}: the server did not answer with a JSON object")
        return resp.status_code, data

    def get(self, path: str, **kw: Any) -> dict[str, Any]:
        """``GET`` a JSON object (see :meth:`request`)."""
        return self.request("GET", path, **kw)[1]

    def post(self, path: str, body: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        """``POST`` a JSON body, get a JSON object (see :meth:`request`)."""
        return self.request("POST", path, body=body if body is not None else {}, **kw)[1]

    def delete(self, path: str, **kw: Any) -> dict[str, Any]:
        """``DELETE``, get a JSON object (see :meth:`request`)."""
        return self.request("DELETE", path, **kw)[1]

    def download(self, path: str, dest: Path) -> int:
        """Stream ``path`` into ``dest`` (atomically: a failed download leaves no file).

        :returns: the number of bytes written.
        """
        resp = self._send("GET", path, stream=True, timeout=REQUEST_TIMEOUT_S)
        with resp:
            if resp.status_code >= 400:
                try:
                    error = resp.json().get("error") or {}
                except ValueError:
                    error = {}
                raise CliError(str(error.get("code") or f"HTTP_{resp.status_code}"),
                               str(error.get("message") or resp.reason))
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            size = 0
            try:
                with os.fdopen(fd, "wb") as f:
                    for chunk in resp.iter_content(_CHUNK):
                        f.write(chunk)
                        size += len(chunk)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return size

    def status(self, url: str) -> int | None:
        """The HTTP status of ``GET url`` (an absolute URL the server gave), None when there
        is no answer. The key goes along only when ``url`` is on this server's origin."""
        try:
            with self.http.get(url, timeout=REQUEST_TIMEOUT_S, stream=True) as resp:
                return resp.status_code
        except requests.RequestException:
            return None

    def _send(self, method: str, path: str, **kw: Any) -> requests.Response:
        try:
            return self.http.request(method, self.url + path, **kw)
        except requests.Timeout as exc:
            raise unreachable("TIMEOUT", f"{method} {path}: no answer from {self.url} in time") from exc
        except requests.RequestException as exc:
            raise unreachable("UNREACHABLE", f"cannot reach {self.url}: {_reason(exc)}") from exc


def _reason(exc: Exception) -> str:
    # requests nests the socket error a few levels deep; its innermost text says it best.
    inner: BaseException = exc
    while inner.__context__ is not None and inner.__context__ is not inner:
        inner = inner.__context__
    return str(inner) or type(exc).__name__
