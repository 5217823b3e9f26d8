"""The session history against real Redis and the real store: a musician's story told with
crops (no model needed), the tree's rules, the refusals, the bound, old sessions, and a
flood of concurrent moves that leaves the tree and the pointer agreeing."""

from __future__ import annotations

import base64
import threading

import pytest

from conftest import make_wav
from g4l import keys
from g4l.errors import (
    Busy,
    NothingToRedo,
    NothingToRetry,
    NothingToUndo,
    RateLimited,
    SessionNotFound,
    VersionNotFound,
    VersionPruned,
)
from g4l.services.auth import Caller
from g4l.services.history import HistoryService, history_document
from g4l.services.sessions import SessionService
from g4l.store.history import Operation, VersionRecord
from g4l.store.retention import prune_history
from g4l.store.sessions import SessionStatus
from plugin_protocol.payloads import BeginRestoreAudio, HistoryPayload, RetryMusicRequest, UpdateCroppedAudio

ME = Caller("ip:127.0.0.1", keyed=True)
OTHER = Caller("key:other", keyed=True)


def _b64(wav: bytes) -> str:
    return base64.b64encode(wav).decode()


@pytest.fixture
def services(ctx):
    sessions = SessionService(ctx, spawn=lambda fn, *a: fn(*a))
    return sessions, HistoryService(sessions)


def _crop(sessions: SessionService, sid: str | None, wav: bytes) -> str:
    return sessions.crop(UpdateCroppedAudio(session_id=sid, audio_data=_b64(wav)), ME)


def _current_audio(history: HistoryService, sid: str) -> bytes:
    tree = history.history(sid, ME)
    assert tree.current is not None
    return history.audio(tree.versions[tree.current])


def test_undo_redo_and_a_branch_keep_every_version_byte_for_byte(services) -> None:
    sessions, history = services
    takes = [make_wav(2 + i, freq=200.0 + 50 * i) for i in range(4)]
    sid = _crop(sessions, None, takes[0])          # v1 (a root)
    _crop(sessions, sid, takes[1])                 # v2 <- v1
    _crop(sessions, sid, takes[2])                 # v3 <- v2
    assert history.undo(sid, ME).version.version == 2
    assert _current_audio(history, sid) == takes[1]
    assert history.undo(sid, ME).version.version == 1
    assert _current_audio(history, sid) == takes[0]
    with pytest.raises(NothingToUndo):
        history.undo(sid, ME)
    assert history.redo(sid, ME).version.version == 2  # back along the branch it came from
    assert history.undo(sid, ME).version.version == 1
    _crop(sessions, sid, takes[3])                 # v4 <- v1: a branch, v2 and v3 are kept
    with pytest.raises(NothingToRedo):
        history.redo(sid, ME)
    tree = history.history(sid, ME)
    assert tree.current == 4 and tree.children(1) == [2, 4] and tree.versions[4].parent == 1
    assert [tree.versions[v].operation for v in (1, 2, 3, 4)] == [Operation.CROP] * 4
    # Any version can be made current again, with its audio as it was.
    assert history.checkout(sid, 3, ME).version.version == 3
    assert _current_audio(history, sid) == takes[2]
    session = sessions.ctx.sessions.require(sid)
    assert session.version == 3 and session["current_blob"] == tree.versions[3].blob
    # Undo and redo now follow the checked-out branch.
    assert history.undo(sid, ME).version.version == 2
    assert history.redo(sid, ME).version.version == 3
    doc = HistoryPayload.model_validate(history_document(sid, history.history(sid, ME)))
    assert doc.current == 3 and [v.version for v in doc.versions] == [1, 2, 3, 4]
    assert [v.current for v in doc.versions] == [False, False, True, False]


def test_refusals_are_clear_and_change_nothing(services) -> None:
    sessions, history = services
    sid = _crop(sessions, None, make_wav(2))
    _crop(sessions, sid, make_wav(3))
    before = (sessions.ctx.redis.hgetall(keys.session(sid)), sessions.ctx.redis.hgetall(keys.session_versions(sid)))

    def unchanged() -> bool:
        now = (sessions.ctx.redis.hgetall(keys.session(sid)), sessions.ctx.redis.hgetall(keys.session_versions(sid)))
        strip = lambda d: {k: v for k, v in d.items() if k != "updated"}  # noqa: E731
        return strip(now[0]) == strip(before[0]) and now[1] == before[1]

    with pytest.raises(NothingToRedo, match="newest on its branch"):
        history.redo(sid, ME)
    with pytest.raises(VersionNotFound, match="no version 9"):
        history.checkout(sid, 9, ME)
    with pytest.raises(SessionNotFound):  # another key's session does not exist for it
        history.undo(sid, OTHER)
    with pytest.raises(SessionNotFound):
        history.history(sid, OTHER)
    with pytest.raises(SessionNotFound):
        history.undo("not a valid id!", ME)
    with pytest.raises(NothingToRetry):  # crops only: no continue to redo
        sessions.retry(RetryMusicRequest(session_id=sid), ME)
    with pytest.raises(NothingToUndo, match="No previous audio found to undo to"):
        history.undo_transform(sid, ME)
    assert unchanged()
    # While a job of the session is queued or running, every move is refused.
    sessions.ctx.sessions.begin_job(sid, "job-1")
    for move in (lambda: history.undo(sid, ME), lambda: history.redo(sid, ME),
                 lambda: history.checkout(sid, 1, ME)):
        with pytest.raises(Busy, match="undo, redo and checkout wait"):
            move()
    with pytest.raises(Busy):
        _crop(sessions, sid, make_wav(1))
    tree = history.history(sid, ME)
    assert tree.current == 2 and sorted(tree.versions) == [1, 2]


def test_a_session_without_audio_has_nothing_to_undo(services) -> None:
    sessions, history = services
    sid, _ = sessions.begin_restore(BeginRestoreAudio(), ME)
    with pytest.raises(NothingToUndo, match="no audio yet"):
        history.undo(sid, ME)
    assert history.history(sid, ME).versions == {}


def test_history_max_prunes_the_oldest_never_the_current_line(ctx, services) -> None:
    sessions, history = services
    ctx.sessions.history_max = 3
    sid = _crop(sessions, None, make_wav(1))                          # v1
    for i in range(2):
        _crop(sessions, sid, make_wav(1, freq=300.0 + i))             # v2, v3
    history.undo(sid, ME)
    history.undo(sid, ME)                                             # at v1
    _crop(sessions, sid, make_wav(1, freq=500.0))                     # v4 <- v1: 4 versions > 3
    tree = history.history(sid, ME)
    # v4 and its parent v1 are the current line: kept. The oldest other one (v2) went.
    assert [v for v, r in tree.versions.items() if r.pruned] == [2]
    assert ctx.blobs.info(tree.versions[2].blob) is None
    assert ctx.blobs.info(tree.versions[1].blob) is not None
    with pytest.raises(VersionPruned, match="G4L_HISTORY_MAX"):
        history.checkout(sid, 2, ME)
    with pytest.raises(VersionPruned):
        history.version(sid, 2, ME)
    assert history.checkout(sid, 3, ME).version.version == 3          # v3 is kept: its line is v3 <- v2(pruned)
    with pytest.raises(NothingToUndo, match="were pruned"):
        history.undo(sid, ME)
    history.checkout(sid, 4, ME)
    _crop(sessions, sid, make_wav(1, freq=600.0))                     # v5 <- v4
    _crop(sessions, sid, make_wav(1, freq=700.0))                     # v6 <- v5
    tree = history.history(sid, ME)
    kept = sorted(v for v, r in tree.versions.items() if not r.pruned)
    # The bound holds: the current version and its two nearest ancestors.
    assert kept == [4, 5, 6]
    stored = {f.metadata["version"] for f in ctx.blobs.for_session(sid)}
    assert stored == {4, 5, 6}
    assert history.undo(sid, ME).version.version == 5
    assert history.undo(sid, ME).version.version == 4
    with pytest.raises(NothingToUndo, match="were pruned"):
        history.undo(sid, ME)
    assert ctx.sessions.require(sid).version == 4  # the refused undo changed nothing


def test_undo_transform_restores_what_the_transform_started_from_after_a_continue(ctx, services) -> None:
    # The transform kind arrives with the model families: its record is written here the
    # way a job's completion writes it, so the rule is tested now.
    sessions, history = services
    original, transformed, continued = make_wav(2), make_wav(2, freq=880.0), make_wav(3, freq=990.0)
    sid = _crop(sessions, None, original)                             # v1
    blobs = {}
    for operation, wav, parent in ((Operation.TRANSFORM, transformed, 1), (Operation.CONTINUE, continued, 2)):
        version = ctx.sessions.allocate_version(sid)
        blobs[version] = ctx.blobs.put(wav, session_id=sid, kind="output", version=version)
        record = VersionRecord(version=version, parent=parent, operation=operation, blob=blobs[version],
                               format="48000,2,PCM_16", created=1.0)
        assert ctx.sessions.append_version(sid, record) == "OK"
    assert history.history(sid, ME).current == 3
    moved = history.undo_transform(sid, ME)
    assert moved.version.version == 1 and history.audio(moved.version) == original
    with pytest.raises(NothingToUndo, match="No previous audio found"):  # v1 was not made by a transform
        history.undo_transform(sid, ME)
    assert history.redo(sid, ME).version.version == 2  # the transform and the continue are kept


def test_a_session_written_before_histories_gets_its_current_audio_as_root(ctx, services) -> None:
    sessions, history = services
    wav, source = make_wav(2), make_wav(3, freq=330.0)
    sid = "legacy-session"
    blob = ctx.blobs.put(wav, session_id=sid, kind="output", version=4)
    source_blob = ctx.blobs.put(source, session_id=sid, kind="input")
    # The fields an older server wrote: no history, a version counter, the retry input.
    ctx.redis.hset(keys.session(sid), mapping={
        "id": sid, "status": "idle", "version": "4", "current_blob": blob, "last_output_blob": blob,
        "last_kind": "continue", "retry_input_blob": source_blob, "current_format": "48000,2,PCM_16",
        "owner": ME.owner, "params": "", "job_id": "old-job"})
    ctx.redis.expire(keys.session(sid), 3600)
    tree = history.history(sid, ME)
    assert 0 < ctx.redis.ttl(keys.session_versions(sid)) <= 3600  # adopted with its session's lifetime
    assert tree.current == 4 and tree.versions[4].operation is Operation.CONTINUE
    assert tree.versions[4].input_blob == source_blob and history.audio(tree.versions[4]) == wav
    with pytest.raises(NothingToUndo):
        history.undo(sid, ME)
    _crop(sessions, sid, make_wav(1))
    tree = history.history(sid, ME)
    assert tree.current == 5 and tree.versions[5].parent == 4   # numbers go on from the old counter
    assert history.undo(sid, ME).version.version == 4
    target = tree.retry_target()
    assert target is not None and target.version == 4  # a retry redoes the old continue


def test_a_flood_of_concurrent_moves_leaves_the_tree_and_pointer_agreeing(ctx, services) -> None:
    sessions, history = services
    takes = {1: make_wav(1)}
    sid = _crop(sessions, None, takes[1])
    for i in range(5):
        takes[i + 2] = make_wav(1, freq=250.0 + 10 * i)
        _crop(sessions, sid, takes[i + 2])                            # a line of six
    errors: list[BaseException] = []
    limited: list[RateLimited] = []

    def hammer(seed: int) -> None:
        moves = [history.undo, history.redo]
        for i in range(60):
            try:
                moves[(i * 7 + seed) % 2](sid, ME)
            except (NothingToUndo, NothingToRedo):
                pass
            except RateLimited as exc:
                limited.append(exc)
            except BaseException as exc:  # anything else is a failure
                errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    # 360 moves in a moment: those past G4L_HISTORY_MOVES_PER_MINUTE (120) are refused.
    limit = ctx.settings.history_moves_per_minute
    assert len(limited) == 6 * 60 - limit and int(limited[0].details["retry_after"]) >= 1
    session = ctx.sessions.require(sid)
    tree = history.history(sid, ME)
    assert session.status is SessionStatus.IDLE
    assert tree.current is not None and session["current_blob"] == tree.versions[tree.current].blob
    assert sorted(tree.versions) == [1, 2, 3, 4, 5, 6]
    assert _current_audio(history, sid) == takes[tree.current]


def _synthetic(ctx, sid: str, operation: Operation, parent: int | None, wav: bytes,
               input_blob: str | None = None) -> int:
    """A version written the way a job's completion writes one (for kinds not run here)."""
    version = ctx.sessions.allocate_version(sid)
    blob = ctx.blobs.put(wav, session_id=sid, kind="output", version=version)
    record = VersionRecord(version=version, parent=parent, operation=operation, blob=blob, input_blob=input_blob,
                           format="48000,2,PCM_16", created=1.0)
    assert ctx.sessions.append_version(sid, record) == "OK"
    return version


def test_the_bound_keeps_what_a_retry_redoes_and_a_pruned_continue_is_not_retried(ctx, services) -> None:
    sessions, history = services
    ctx.sessions.history_max = 3
    sid = _crop(sessions, None, make_wav(1))                                           # v1
    source = ctx.blobs.put(make_wav(2, freq=440.0), session_id=sid, kind="input")
    _synthetic(ctx, sid, Operation.CONTINUE, 1, make_wav(2, freq=450.0), input_blob=source)  # v2
    for i in range(4):
        _crop(sessions, sid, make_wav(1, freq=600.0 + i))                              # v3..v6
    tree = history.history(sid, ME)
    # The last three, and the continue a retry would redo (with its input).
    assert sorted(v for v, r in tree.versions.items() if not r.pruned) == [2, 4, 5, 6]
    assert ctx.blobs.info(source) is not None
    target = tree.retry_target()
    assert target is not None and target.version == 2 and target.input_blob == source
    # A newer continue is what a retry redoes now: the old one goes, its input with it.
    newer = ctx.blobs.put(make_wav(2, freq=460.0), session_id=sid, kind="input")
    _synthetic(ctx, sid, Operation.CONTINUE, 6, make_wav(2, freq=470.0), input_blob=newer)  # v7
    prune_history(ctx.blobs, ctx.sessions, sid)
    tree = history.history(sid, ME)
    assert sorted(v for v, r in tree.versions.items() if not r.pruned) == [5, 6, 7]
    assert ctx.blobs.info(source) is None and ctx.blobs.info(newer) is not None
    # From v5 the nearest continue is the pruned v2: a retry is refused, not queued on a lost input.
    history.checkout(sid, 5, ME)
    with pytest.raises(NothingToRetry):
        sessions.retry(RetryMusicRequest(session_id=sid), ME)


def test_a_job_adds_one_version_however_often_it_completes(ctx, services) -> None:
    sessions, history = services
    sid = _crop(sessions, None, make_wav(1))
    ctx.sessions.begin_job(sid, "job-a")
    blob = ctx.blobs.put(make_wav(2), session_id=sid, kind="output")
    version = ctx.sessions.allocate_version(sid)
    record = VersionRecord(version=version, parent=1, operation=Operation.CONTINUE, blob=blob, job_id="job-a",
                           format="48000,2,PCM_16", created=1.0)
    assert ctx.sessions.append_version(sid, record, job_id="job-a", status="idle") == "OK"
    assert history.undo(sid, ME).version.version == 1
    # A second completion of the same job (an attempt taken for dead that finished anyway)
    # adds nothing and does not undo the undo.
    again = VersionRecord(version=ctx.sessions.allocate_version(sid), parent=1, operation=Operation.CONTINUE,
                          blob=blob, job_id="job-a", format="48000,2,PCM_16", created=2.0)
    assert ctx.sessions.append_version(sid, again, job_id="job-a", status="idle") == "STALE"
    tree = history.history(sid, ME)
    assert sorted(tree.versions) == [1, 2] and tree.current == 1


def test_after_an_undo_the_undone_result_is_neither_redelivered_nor_served(ctx, services) -> None:
    from g4l.jobs.records import Job, JobStatus
    from g4l.jobs.spec import GenerationSpec
    from g4l.services.jobs import JobService

    sessions, history = services
    sid = _crop(sessions, None, make_wav(1))
    ctx.sessions.begin_job(sid, "job-b")
    ctx.jobs.save(Job(id="job-b", kind="continue", session_id=sid, status=JobStatus.COMPLETED,
                      spec=GenerationSpec(model="debug", output_seconds=30.0), output_blob="x", owner=ME.owner))
    result = make_wav(2, freq=700.0)
    blob = ctx.blobs.put(result, session_id=sid, kind="output")
    record = VersionRecord(version=ctx.sessions.allocate_version(sid), parent=1, operation=Operation.CONTINUE,
                           blob=blob, job_id="job-b", format="48000,2,PCM_16", created=1.0)
    # Finished while the device was away: not delivered yet.
    assert ctx.sessions.append_version(sid, record, job_id="job-b", status="idle", last_output_blob=blob,
                                       delivered="") == "OK"
    assert sessions.missed_result(ctx.sessions.require(sid)) is not None
    assert JobService(ctx, sessions).session_audio_blob(ME, sid) == (blob, "job-b")
    history.undo(sid, ME)  # another client of the session undoes meanwhile
    assert sessions.missed_result(ctx.sessions.require(sid)) is None  # the returning device is not sent the undone take
    current, job = JobService(ctx, sessions).session_audio_blob(ME, sid)
    assert current == history.history(sid, ME).versions[1].blob and job is None


def test_a_result_the_store_never_took_is_taken_back_from_the_history(ctx, services) -> None:
    sessions, history = services
    first = make_wav(1)
    sid = _crop(sessions, None, first)
    version = _synthetic(ctx, sid, Operation.CONTINUE, 1, make_wav(2, freq=880.0))
    assert history.history(sid, ME).current == version
    assert ctx.sessions.withdraw_version(sid, version) == 1
    tree = history.history(sid, ME)
    assert tree.current == 1 and tree.versions[version].pruned
    assert _current_audio(history, sid) == first
    with pytest.raises(NothingToRedo):  # the withdrawn version is not offered again
        history.redo(sid, ME)
