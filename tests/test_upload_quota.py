"""One client cannot park more than ``G4L_UPLOADS_PER_OWNER_MB`` in unfinished chunked
uploads, however many it opens (g4l/services/upload_quota.py): the chunk past the bound is
refused with TOO_LARGE and not stored, other clients go on, and the room comes back when
an upload completes or expires: at the end of its lifetime, or when no chunk came for
``G4L_UPLOAD_IDLE_S``. The device
operations themselves (``SessionService.begin_restore`` / ``add_chunk``, what
``begin_restore_audio`` / ``audio_chunk`` call) run against the real Redis and store."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator

import pytest
import redis as redis_lib
from conftest import make_wav

from g4l import keys
from g4l.context import Context
from g4l.errors import SessionNotFound, TooLarge
from g4l.services.auth import Caller
from g4l.services.sessions import SessionService
from g4l.settings import Settings
from plugin_protocol.payloads import GenerationParams

MB = 1024 * 1024
ALICE = Caller("key:alice", keyed=True)
BOB = Caller("key:bob", keyed=True)
CHUNK = 300_000  # characters of base64 per chunk


@pytest.fixture
def make_service(redis_server, mongo_server) -> Iterator[Callable[..., SessionService]]:
    """SessionService on its own Redis database and Mongo database, with these settings."""
    made: list[Context] = []

    def make(**overrides: object) -> SessionService:
        url = redis_server.url.rsplit("/", 1)[0] + "/6"
        settings = Settings(REDIS_URL=url, MONGO_URL=mongo_server.url, mongo_db=f"g4l_quota_{time.time_ns()}",
                            models=["debug"], **overrides)
        ctx = Context.from_settings(settings)
        ctx.redis.flushdb()
        made.append(ctx)
        return SessionService(ctx)

    yield make
    for ctx in made:
        ctx.redis.flushdb()
        ctx.blobs.client.drop_database(ctx.settings.mongo_db)


def _begin(service: SessionService, caller: Caller) -> str:
    return service.begin_restore(GenerationParams(), caller)[0]


def _stored(r: redis_lib.Redis, session_id: str) -> int:
    """Bytes of chunks an upload holds in Redis."""
    fields = [f for f in r.hkeys(keys.upload(session_id)) if f.isdigit()]
    return sum(r.hstrlen(keys.upload(session_id), f) for f in fields)


def test_one_client_filling_four_uploads_is_stopped_at_its_bound_and_another_goes_on(make_service) -> None:
    service = make_service(uploads_per_owner_mb=1)
    r = service.ctx.redis
    uploads = [_begin(service, ALICE) for _ in range(4)]
    accepted, refused = 0, []
    for sid in uploads:  # two chunks into each of four uploads: 2.4 MB in all
        for index in range(2):
            try:
                service.add_chunk(sid, index, 8, "A" * CHUNK, False, ALICE)
                accepted += 1
            except TooLarge as exc:
                refused.append((sid, index, exc))
    assert accepted == 3 and len(refused) == 5  # 3 x 300 KB fit in 1 MiB, the 4th does not
    sid, index, exc = refused[0]
    assert exc.code == "TOO_LARGE" and exc.session_id == sid
    assert "G4L_UPLOADS_PER_OWNER_MB" in exc.message and "0.9 MB" in exc.message, exc.message
    # A refused chunk changed nothing: not stored, and Redis holds no more than the bound.
    assert not r.hexists(keys.upload(sid), str(index))
    assert sum(_stored(r, s) for s in uploads) == 3 * CHUNK <= MB
    # A chunk sent again replaces the old one: it needs no more room.
    service.add_chunk(uploads[0], 0, 8, "B" * CHUNK, False, ALICE)
    # Another client is not affected by Alice's uploads.
    other = _begin(service, BOB)
    for index in range(3):
        service.add_chunk(other, index, 8, "C" * CHUNK, False, BOB)
    assert _stored(r, other) == 3 * CHUNK


def test_a_client_whose_uploads_fill_the_bound_cannot_begin_another(make_service) -> None:
    service = make_service(uploads_per_owner_mb=1)
    sid = _begin(service, ALICE)
    for index in range(4):  # 1 MiB exactly: 4 x 262,144
        service.add_chunk(sid, index, 5, "A" * (MB // 4), False, ALICE)
    with pytest.raises(TooLarge):
        service.add_chunk(sid, 4, 5, "A", False, ALICE)
    with pytest.raises(TooLarge) as refused:
        _begin(service, ALICE)
    assert "another upload does not fit" in refused.value.message
    _begin(service, BOB)


def test_a_completed_upload_gives_its_room_back(make_service) -> None:
    service = make_service(uploads_per_owner_mb=1)
    r = service.ctx.redis
    text = base64.b64encode(make_wav(1.0)).decode()  # 48 kHz stereo 16-bit: 256 KB of base64
    parts = [text[i:i + CHUNK] for i in range(0, len(text), CHUNK)]
    parked = _begin(service, ALICE)
    service.add_chunk(parked, 0, 9, "A" * (MB - len(text)), False, ALICE)  # all the room but the WAV's
    restored = _begin(service, ALICE)
    for index, part in enumerate(parts):
        received, missing, complete = service.add_chunk(restored, index, len(parts), part, index == len(parts) - 1,
                                                        ALICE)
    assert complete and missing == [] and received == len(parts)
    assert service.ctx.sessions.require(restored).get("current_blob")
    # The restore's bytes are Alice's again: the same amount fits once more.
    assert not r.hexists(keys.owner_uploads(ALICE.owner), restored)
    again = _begin(service, ALICE)
    service.add_chunk(again, 0, 9, "B" * len(text), False, ALICE)
    with pytest.raises(TooLarge):
        service.add_chunk(again, 1, 9, "B", False, ALICE)


def test_an_upload_expires_at_the_end_of_its_lifetime(make_service) -> None:
    service = make_service(uploads_per_owner_mb=1, upload_ttl_s=2)
    first = _begin(service, ALICE)
    service.add_chunk(first, 0, 5, "A" * MB, False, ALICE)
    with pytest.raises(TooLarge):
        _begin(service, ALICE)
    time.sleep(2.5)  # G4L_UPLOAD_TTL_S (the idle time, 300 s, does not extend it)
    second = _begin(service, ALICE)
    service.add_chunk(second, 0, 5, "B" * MB, False, ALICE)
    with pytest.raises(SessionNotFound):
        service.add_chunk(first, 1, 5, "A", False, ALICE)


def test_a_client_that_left_frees_its_room_after_the_idle_time(make_service) -> None:
    # The probe's client: fills its uploads, leaves. An hour-long lifetime, 3 s idle time.
    service = make_service(uploads_per_owner_mb=1, upload_idle_s=3)
    r = service.ctx.redis
    left = _begin(service, ALICE)
    service.add_chunk(left, 0, 9, "A" * (MB - 1000), False, ALICE)
    assert 0 < r.ttl(keys.upload(left)) <= 3
    # Meanwhile an upload that keeps sending is kept past the idle time.
    active = _begin(service, BOB)
    for index in range(5):
        service.add_chunk(active, index, 9, "B" * 1000, False, BOB)
        time.sleep(1)
    assert not r.exists(keys.upload(left))  # gone after 3 s without a chunk
    assert r.exists(keys.upload(active))
    # Alice comes back (a device that crashed and starts over): the room is hers again, and
    # the old upload answers clearly.
    again = _begin(service, ALICE)
    service.add_chunk(again, 0, 9, "C" * (MB - 1000), False, ALICE)
    with pytest.raises(SessionNotFound):
        service.add_chunk(left, 1, 9, "A", False, ALICE)


def test_the_bound_can_be_turned_off(make_service) -> None:
    service = make_service(uploads_per_owner_mb=0)
    sid = _begin(service, ALICE)
    for index in range(3):
        service.add_chunk(sid, index, 5, "A" * MB, False, ALICE)
    assert _stored(service.ctx.redis, sid) == 3 * MB
    _begin(service, ALICE)
