"""How much one client may hold in unfinished chunked uploads (``begin_restore_audio`` +
``audio_chunk``), across all of them, and for how long an abandoned one is kept.

Each upload is bounded on its own (``G4L_MAX_PAYLOAD_MB``) and lives at most
``G4L_UPLOAD_TTL_S``; without more, one client could open many uploads, fill each, leave,
and Redis would hold all of it for the uploads' whole lifetime. So:

- every owner (its API key's hash, or its address when keys are off: :attr:`Caller.owner`)
  has a tally in Redis, ``g4l:owner:<owner>:uploads`` (upload session id -> bytes of
  chunks stored); a chunk that would take the owner past ``G4L_UPLOADS_PER_OWNER_MB`` is
  refused with ``TOO_LARGE`` before it is stored (the refusal changes nothing), and so is
  a new upload while the owner's uploads hold it all;
- an upload that has stored a chunk expires ``G4L_UPLOAD_IDLE_S`` after its last one (or
  at the end of its lifetime, if sooner): a client that left frees its bytes in minutes,
  and a device that crashed mid-upload and starts over gets its room back as soon.

The bytes are the owner's again when an upload ends: completed or refused
(:meth:`UploadQuota.release`), or expired, cleaned up, or refused for its own size (its
upload key is gone: the tally's entry is dropped the next time the owner's total is
counted).
"""

from __future__ import annotations

import redis

from g4l import keys
from g4l.errors import TooLarge
from g4l.settings import Settings

_MB = 1024 * 1024  # as G4L_UPLOADS_PER_OWNER_MB counts them
#: The field of an upload's hash that holds when it must be gone at the latest (epoch
#: seconds: its begin plus ``G4L_UPLOAD_TTL_S``), written with its first chunk.
DEADLINE_FIELD = "deadline"
#: A limit that is never reached (``G4L_UPLOADS_PER_OWNER_MB=0``).
_UNBOUNDED = 1 << 62

# Reserve room for one chunk, atomically with the count of what the owner holds, and push
# the upload's expiry to the idle time from now (never past its lifetime).
# KEYS[1] = the owner's tally, KEYS[2] = the upload's hash.
# ARGV: session id, chunk index, chunk length, limit (bytes), tally TTL (s), idle (s).
# -> {1, held after} | {0, held now} (refused) | {-1, 0} (no such upload: the caller's own
# check answers that).
_RESERVE = """
if redis.call('EXISTS', KEYS[2]) == 0 then return {-1, 0} end
local delta = tonumber(ARGV[3]) - redis.call('HSTRLEN', KEYS[2], ARGV[2])
local held = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do held = held + tonumber(v) end
if delta > 0 and held + delta > tonumber(ARGV[4]) then return {0, held} end
redis.call('HINCRBY', KEYS[1], ARGV[1], delta)
redis.call('EXPIRE', KEYS[1], ARGV[5])
local now = tonumber(redis.call('TIME')[1])
local deadline = tonumber(redis.call('HGET', KEYS[2], 'deadline') or '0')
if deadline == 0 then
  local ttl = redis.call('TTL', KEYS[2])
  if ttl < 0 then ttl = tonumber(ARGV[5]) end
  deadline = now + ttl
  redis.call('HSET', KEYS[2], 'deadline', deadline)
end
local left = deadline - now
if tonumber(ARGV[6]) > 0 and tonumber(ARGV[6]) < left then left = tonumber(ARGV[6]) end
if left < 1 then left = 1 end
redis.call('EXPIRE', KEYS[2], left)
return {1, held + delta}
"""


class UploadQuota:
    """The per-owner bound on bytes held in unfinished chunked uploads, and their idle expiry.

    :param r: Redis (the uploads' own).
    :param settings: ``uploads_per_owner_mb`` (0: no bound), ``upload_idle_s`` (0: none)
        and ``upload_ttl_s``.
    """

    def __init__(self, r: redis.Redis, settings: Settings) -> None:
        self.r = r
        self.limit = settings.uploads_per_owner_mb * _MB
        self.idle_s = settings.upload_idle_s
        self.ttl_s = settings.upload_ttl_s
        self._reserve = r.register_script(_RESERVE)

    def held(self, owner: str) -> int:
        """Bytes ``owner`` holds in uploads that are still open (ended ones are dropped)."""
        tally = self.r.hgetall(keys.owner_uploads(owner))
        if not tally:
            return 0
        sessions = list(tally)
        with self.r.pipeline(transaction=False) as p:
            for sid in sessions:
                p.exists(keys.upload(sid))
            alive = p.execute()
        ended = [sid for sid, live in zip(sessions, alive, strict=True) if not live]
        if ended:
            self.r.hdel(keys.owner_uploads(owner), *ended)
        return sum(int(tally[sid]) for sid, live in zip(sessions, alive, strict=True) if live)

    def admit(self, owner: str) -> None:
        """Check that ``owner`` may begin another upload.

        :raises TooLarge: the owner's open uploads already hold its whole bound.
        """
        if self.limit <= 0:
            return
        held = self.held(owner)
        if held >= self.limit:
            raise TooLarge(self._message(held, "another upload"))

    def reserve(self, owner: str, session_id: str, index: int, chunk: str) -> None:
        """Count ``chunk``, at ``index`` of ``session_id``'s upload, against ``owner``
        before it is stored (a chunk sent again replaces the old one's bytes), and keep
        the upload ``G4L_UPLOAD_IDLE_S`` from now.

        :raises TooLarge: it would take the owner past its bound; nothing was counted.
        """
        # What Redis stores: UTF-8 (str.isascii is a flag lookup; base64 is ASCII).
        length = len(chunk) if chunk.isascii() else len(chunk.encode("utf-8", "surrogatepass"))
        if self.limit > 0:
            self.held(owner)  # drops the uploads that ended from the tally
        args = [session_id, str(index), length, self.limit if self.limit > 0 else _UNBOUNDED, self.ttl_s, self.idle_s]
        ok, held = self._reserve(keys=[keys.owner_uploads(owner), keys.upload(session_id)], args=args)
        if int(ok) == 0:
            raise TooLarge(self._message(int(held), f"this chunk ({length / _MB:.1f} MB)"), session_id=session_id)

    def release(self, owner: str, session_id: str) -> None:
        """The upload ended (assembled, or refused): its bytes are the owner's again."""
        self.r.hdel(keys.owner_uploads(owner), session_id)

    def _message(self, held: int, what: str) -> str:
        idle = f"; one with no chunk for {self.idle_s} s expires" if self.idle_s > 0 else ""
        return (f"{what} does not fit: this client's unfinished chunked uploads hold {held / _MB:.1f} MB "
                f"and at most {self.limit / _MB:g} MB may be held at once (G4L_UPLOADS_PER_OWNER_MB): "
                f"finish or clean up an upload first{idle}")
