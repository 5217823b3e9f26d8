"""The result hand-off through real Redis: a continue's new audio alone, joined to the
input a web node holds or to its GridFS copy, gives exactly the worker's file."""

from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import make_wav
from g4l import keys
from g4l.context import Context
from g4l.jobs import handoff
from g4l.services.held_inputs import HeldInputs
from g4l.worker.generation import ClientFormat, build_result


def _continue_result(subtype: str = "FLOAT", seconds: float = 40.0):
    source = make_wav(seconds, subtype=subtype)
    output = np.random.default_rng(7).uniform(-0.5, 0.5, (1, 32_000 * 10)).astype(np.float32)
    result = build_result("continue", output, 32_000, ClientFormat(48_000, 2, subtype), source, 6.0)
    assert result.kept is not None  # a plain WAV of a spliceable format
    return source, result


def test_spliced_handoff_gives_the_workers_file_from_held_or_stored_input(ctx: Context) -> None:
    source, result = _continue_result()
    whole = result.wav()
    input_blob = ctx.blobs.put(source, session_id="s1", kind="input")
    handoff.put_spliced(ctx.redis_bytes, "job-1", result.new_wav,
                        handoff.Splice(input_blob, result.drop_frames, 48_000, 2, "FLOAT"))
    # Only the new audio (10 s of 40 - 6 + 10) travels.
    assert ctx.redis_bytes.strlen(keys.result("job-1")) < len(whole) / 3
    assert 0 < ctx.redis_bytes.ttl(keys.result("job-1")) <= handoff.RESULT_TTL_S
    read = handoff.read(ctx.redis_bytes, "job-1")
    assert read is not None and read.data_seconds() == pytest.approx(10.0, abs=1e-3)

    asked: list[str] = []

    def held(job_id: str) -> bytes:
        asked.append(job_id)
        return source

    assert handoff.read_wav(ctx, "job-1", held=held) == whole
    assert asked == ["job-1"]
    # The web node's variant: the same bytes, as an array numpy copied without the GIL.
    assert handoff.read_wav(ctx, "job-1", held=held, as_array=True).tobytes() == whole
    # No held copy (another web node, a worker's recovery): the GridFS copy of the input.
    assert handoff.read_wav(ctx, "job-1", held=lambda _j: None) == whole
    assert handoff.read_wav(ctx, "job-1") == whole


def test_whole_handoff_and_expired_handoff(ctx: Context) -> None:
    _source, result = _continue_result("PCM_24", 20.0)
    handoff.put_whole(ctx.redis_bytes, "job-2", result.wav())
    assert handoff.read(ctx.redis_bytes, "job-2").data_seconds() is None
    assert handoff.read_wav(ctx, "job-2", held=lambda _j: pytest.fail("a whole hand-off needs no input")) \
        == result.wav()
    assert handoff.read_wav(ctx, "no-such-job") is None


def test_spliced_handoff_without_any_input_is_an_error_not_a_wrong_file(ctx: Context, monkeypatch) -> None:
    _source, result = _continue_result()
    handoff.put_spliced(ctx.redis_bytes, "job-3", result.new_wav,
                        handoff.Splice(ctx.blobs.new_id(), result.drop_frames, 48_000, 2, "FLOAT"))
    monkeypatch.setattr(handoff, "INPUT_WAIT_S", 0.3)
    with pytest.raises(KeyError):
        handoff.read_wav(ctx, "job-3")
    # A held "input" that is not a WAV is refused too.
    with pytest.raises(ValueError):
        handoff.read_wav(ctx, "job-3", held=lambda _j: b"not a wav at all")


def test_held_inputs_stay_within_their_budget_and_age() -> None:
    held = HeldInputs(max_bytes=100, max_age_s=60)
    assert held.put("a", b"x" * 60) and held.put("b", b"y" * 30)
    # No room: not held (the held ones belong to jobs already told to splice).
    assert held.put("c", b"z" * 50) is False and held.get("c") is None
    assert held.get("a") == b"x" * 60 and held.get("b") == b"y" * 30 and held.held_bytes == 90
    assert held.put("huge", b"h" * 101) is False and held.get("huge") is None
    assert held.pop("a") == b"x" * 60 and held.get("a") is None and held.held_bytes == 30
    assert held.put("c", b"z" * 50) and held.held_bytes == 80
    held.discard("c")
    held.discard("b")
    assert held.held_bytes == 0
    assert HeldInputs(max_bytes=0).put("any", b"1") is False  # G4L_HELD_INPUTS_MB=0: off

    young = HeldInputs(max_bytes=100, max_age_s=0.2)
    young.put("old", b"1")
    time.sleep(0.3)
    young.put("new", b"2")
    assert young.get("old") is None and young.get("new") == b"2" and young.held_bytes == 1


def _finished_by_a_dead_worker(ctx: Context, blob_id: str, meta: dict):
    """A job whose worker completed it, handed the result off, and died before the GridFS
    write (its stream entry still pending, no heartbeat)."""
    import json

    from g4l.jobs.records import Job, new_job_id

    session = ctx.sessions.create(status="queued")
    job = Job(id=new_job_id(), kind="continue", session_id=session.id, model="debug", params={})
    ctx.queue.enqueue(job)
    claimed = ctx.queue.claim("ghost", block_ms=10)
    assert claimed is not None and claimed.job_id == job.id
    ctx.jobs.update(job.id, status="completed", output_blob=blob_id, output_meta=json.dumps(meta))
    return job


def test_recovery_stores_a_dead_workers_spliced_result_and_skips_a_broken_one(ctx: Context) -> None:
    from g4l.jobs import lifecycle

    source, result = _continue_result("PCM_16", 30.0)
    input_blob = ctx.blobs.put(source, session_id="s", kind="input")
    broken_blob, good_blob = ctx.blobs.new_id(), ctx.blobs.new_id()
    broken = _finished_by_a_dead_worker(ctx, broken_blob, {"session_id": "s", "kind": "output"})
    ctx.redis_bytes.set(keys.result(broken.id), handoff.MAGIC + b"\xff\xff\xff\x7fnot json")
    good = _finished_by_a_dead_worker(ctx, good_blob, {"session_id": "s", "kind": "output"})
    handoff.put_spliced(ctx.redis_bytes, good.id, result.new_wav,
                        handoff.Splice(input_blob, result.drop_frames, 48_000, 2, "PCM_16"))
    time.sleep(0.3)  # past worker_dead_after_s of the test settings
    assert lifecycle.recover_orphans(ctx) == 2
    assert ctx.blobs.get(good_blob) == result.wav()  # joined to the input's GridFS copy
    assert not ctx.blobs.exists(broken_blob)  # logged as lost, and it did not stop the other
