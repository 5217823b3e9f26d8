"""How much one client may hold in unfinished chunked uploads (``begin_restore_audio`` +
``audio_chunk``), across all of them.

Each upload is bounded on its own (``G4L_MAX_PAYLOAD_MB``) and expires after
``G4L_UPLOAD_TTL_S``; without a bound per client, one client could open many uploads, fill
each, and leave Redis holding all of it for the uploads' lifetime. Here every owner (its
API key's hash, or its address when keys are off: :attr:`Caller.owner`) has a tally in
Redis, ``g4l:owner:<owner>:uploads`` (upload session id -> bytes of chunks stored), and a
chunk that would take the owner past ``G4L_UPLOADS_PER_OWNER_MB`` is refused with
``TOO_LARGE`` before it is stored, so the refusal changes nothing.

Bytes are given back when an upload ends: completed or refused (:meth:`UploadQuota.release`),
or expired, cleaned up, or refused for its own size (its upload key is gone: the tally's
entry is dropped the next time the owner's total is counted). When a chunk does not fit,
the owner's uploads that have had no chunk for :data:`ABANDONED_AFTER_S` are taken as
abandoned and deleted first (a device that crashed mid-upload and starts over must not
wait an hour for its own old upload to expire).
"""

from __future__ import annotations

import time

import redis

from g4l import keys
from g4l.errors import TooLarge
from g4l.log import get_logger
from g4l.settings import Settings

log = get_logger(__name__)

_MB = 1024 * 1024  # as G4L_UPLOADS_PER_OWNER_MB counts them
#: An upload with no chunk for this long is abandoned when its owner needs the room.
ABANDONED_AFTER_S = 300.0
#: The field of an upload's hash that says when its last chunk came (epoch seconds).
SEEN_FIELD = "seen"

# Reserve room for one chunk, atomically with the count of what the owner holds.
# KEYS[1] = the owner's tally, KEYS[2] = the upload's hash.
# ARGV: session id, chunk index, chunk length, limit (bytes), tally TTL (s), now.
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
redis.call('HSET', KEYS[2], 'seen', ARGV[6])
return {1, held + delta}
"""


class UploadQuota:
    """The per-owner bound on bytes held in unfinished chunked uploads.

    :param r: Redis (the uploads' own).
    :param settings: ``uploads_per_owner_mb`` (0: no bound) and ``upload_ttl_s``.
    """

    def __init__(self, r: redis.Redis, settings: Settings) -> None:
        self.r = r
        self.limit = settings.uploads_per_owner_mb * _MB
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

    def admit(self, owner: str, session_id: str | None = None) -> None:
        """Check that ``owner`` may begin another upload: refused while what it holds
        already fills its bound (and no abandoned upload of its own can be let go).

        :raises TooLarge: the owner's open uploads hold the whole bound.
        """
        if self.limit <= 0:
            return
        held = self.held(owner)
        if held >= self.limit and self._let_go_abandoned(owner, keep=None):
            held = self.held(owner)
        if held >= self.limit:
            raise TooLarge(self._message(held, "another upload"), session_id=session_id)

    def reserve(self, owner: str, session_id: str, index: int, chunk: str) -> None:
        """Count ``chunk``, at ``index`` of ``session_id``'s upload, against ``owner``
        before it is stored (a chunk sent again replaces the old one's bytes).

        :raises TooLarge: it would take the owner past its bound; nothing was counted.
        """
        if self.limit <= 0:
            return
        # What Redis stores: UTF-8 (str.isascii is a flag lookup; base64 is ASCII).
        length = len(chunk) if chunk.isascii() else len(chunk.encode("utf-8", "surrogatepass"))
        self.held(owner)  # drops the uploads that ended from the tally
        tally, upload = keys.owner_uploads(owner), keys.upload(session_id)
        for attempt in (1, 2):
            now = f"{time.time():.3f}"
            args = [session_id, str(index), length, self.limit, self.ttl_s, now]
            ok, held = self._reserve(keys=[tally, upload], args=args)
            if int(ok) != 0:  # reserved, or no such upload (add_chunk's own check says so)
                return
            if attempt == 1 and self._let_go_abandoned(owner, keep=session_id):
                continue
            raise TooLarge(self._message(int(held), f"this chunk ({length / _MB:.1f} MB)"), session_id=session_id)

    def release(self, owner: str, session_id: str) -> None:
        """The upload ended (assembled, or refused): its bytes are the owner's again."""
        if self.limit > 0:
            self.r.hdel(keys.owner_uploads(owner), session_id)

    # ------------------------------------------------------------ internals
    def _let_go_abandoned(self, owner: str, keep: str | None) -> bool:
        """Delete the owner's uploads (but ``keep``) that had no chunk for
        :data:`ABANDONED_AFTER_S`. Returns whether any was."""
        sessions = [sid for sid in self.r.hkeys(keys.owner_uploads(owner)) if sid != keep]
        if not sessions:
            return False
        with self.r.pipeline(transaction=False) as p:
            for sid in sessions:
                p.hget(keys.upload(sid), SEEN_FIELD)
            seen = p.execute()
        cutoff = time.time() - ABANDONED_AFTER_S
        stale = [sid for sid, at in zip(sessions, seen, strict=True) if at is not None and float(at) < cutoff]
        if not stale:
            return False
        with self.r.pipeline() as p:
            p.delete(*[keys.upload(sid) for sid in stale])
            p.hdel(keys.owner_uploads(owner), *stale)
            p.execute()
        for sid in stale:
            log.info("abandoned chunked upload let go for its owner's next one", session_id=sid,
                     idle_s=ABANDONED_AFTER_S)
        return True

    def _message(self, held: int, what: str) -> str:
        return (f"{what} does not fit: this client's unfinished chunked uploads hold {held / _MB:.1f} MB "
                f"and at most {self.limit / _MB:g} MB may be held at once (G4L_UPLOADS_PER_OWNER_MB); "
                f"finish or clean up an upload first (one with no chunk for {ABANDONED_AFTER_S:g} s is let go "
                f"when room is needed, any after {self.ttl_s} s)")
