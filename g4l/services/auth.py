"""Who is calling: API keys, owners and the access rule, for every protocol.

When the operator configures keys (``G4L_API_KEYS``), every route and event except
``/health*`` needs one, and jobs and sessions belong to the key that created them. The
owner recorded on a job or session is a hash of the key (never the key itself), so a
Redis dump reveals no credential. Without keys, the owner is the client's IP: it scopes
job listings and rate limits, but ids stay the capabilities they are in the device
protocol (nothing is hidden by IP).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from g4l.errors import Unauthorized
from g4l.settings import Settings

#: The HTTP header that carries a key, and the field of the Socket.IO ``auth`` payload.
HEADER = "X-API-Key"
AUTH_FIELD = "api_key"


def key_owner(key: str) -> str:
    """The owner id of an API key: a short, stable, one-way hash."""
    return "key:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


def ip_owner(address: str | None) -> str:
    return f"ip:{address or 'unknown'}"


@dataclass(frozen=True)
class Caller:
    """An authenticated (or anonymous, when keys are off) client.

    :param owner: the id recorded on what the caller creates (key hash or ``ip:...``).
    :param keyed: whether access control is on; only then do owners hide records.
    :param operator: may run operator actions (stopping everyone's idle streams): an
        operator key, or anyone when keys are off.
    """

    owner: str
    keyed: bool
    operator: bool = False

    def can_see(self, owner: str | None) -> bool:
        """The one ownership rule: with keys on, a record (session, job, station) exists
        only for the key that created it; with keys off, an id is its own capability."""
        return not self.keyed or owner == self.owner

    @classmethod
    def internal(cls) -> Caller:
        """The server itself (a packager, a worker): sees everything."""
        return cls("internal", keyed=False, operator=True)


class ApiKeys:
    """The operator's keys. Checks compare hashes in constant time."""

    def __init__(self, settings: Settings) -> None:
        self._operators = [key_owner(k) for k in settings.operator_keys if k]
        self._owners = [key_owner(k) for k in settings.api_keys if k] + self._operators

    @property
    def enabled(self) -> bool:
        return bool(self._owners)

    def is_operator_key(self, key: str | None) -> bool:
        """Whether ``key`` is one of ``G4L_OPERATOR_KEYS`` (never true when none are set:
        unlike :meth:`caller`, "keys off" makes nobody an operator here). For what only an
        operator may *see*, such as where the processes run."""
        if not self._operators or not isinstance(key, str) or not key.strip():
            return False
        owner = key_owner(key.strip())
        return any(hmac.compare_digest(owner, known) for known in self._operators)

    def caller(self, key: str | None, address: str | None) -> Caller:
        """The caller presenting ``key`` from ``address``.

        :raises Unauthorized: keys are configured and ``key`` is missing or unknown.
        """
        if not self._owners:
            return Caller(ip_owner(address), keyed=False, operator=True)
        if not isinstance(key, str) or not key.strip():
            raise Unauthorized(f"an API key is required: send it in the {HEADER} header")
        owner = key_owner(key.strip())
        if not any(hmac.compare_digest(owner, known) for known in self._owners):
            raise Unauthorized("unknown API key")
        operator = any(hmac.compare_digest(owner, known) for known in self._operators)
        return Caller(owner, keyed=True, operator=operator)
