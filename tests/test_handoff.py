"""The result hand-off through real Redis: a continue's new audio alone, joined to the
input a web node holds or to its GridFS copy, gives exactly the worker's file."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import make_wav
from g4l import keys
from g4l.context import Context
from g4l.jobs import delivery, handoff
from g4l.jobs.spec import Assembly, AudioFormat, GenerationSpec, Prompt
from g4l.services.held_inputs import HeldInputs
from g4l.worker.assembly import build_result


def continue_spec(subtype: str, prompt_s: float = 6.0) -> GenerationSpec:
    """A continue's spec: 48 kHz stereo in ``subtype``, spliced after ``prompt_s``."""
    return GenerationSpec(model="debug", prompt=Prompt(seconds=prompt_s, end="tail"), output_seconds=30.0,
                          output=AudioFormat(sample_rate=48_000, channels=2, subtype=subtype),
                          assembly=Assembly.SPLICE)


def _continue_result(subtype: str = "FLOAT", seconds: float = 40.0):
    source = make_wav(seconds, subtype=subtype)
    output = np.random.default_rng(7).uniform(-0.5, 0.5, (1, 32_000 * 10)).astype(np.float32)
    result = build_result(continue_spec(subtype), output, 32_000, source)
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

    assert delivery.read_result(ctx, "job-1", None, held=held) == whole
    assert asked == ["job-1"]
    # The web node's variant: the same bytes, as an array numpy copied without the GIL.
    assert delivery.read_result(ctx, "job-1", None, held=held, as_array=True).tobytes() == whole
    # No held copy (another web node, a worker's recovery): the GridFS copy of the input.
    assert delivery.read_result(ctx, "job-1", None, held=lambda _j: None) == whole
    assert delivery.read_result(ctx, "job-1", None) == whole
    # A reader that needs only the tail (the HLS packager) gets the new audio alone.
    assert delivery.read_result(ctx, "job-1", None, tail_s=10.0) == result.new_wav
    assert delivery.read_result(ctx, "job-1", None, tail_s=20.0) == whole


def test_whole_handoff_and_expired_handoff(ctx: Context) -> None:
    _source, result = _continue_result("PCM_24", 20.0)
    handoff.put_whole(ctx.redis_bytes, "job-2", result.wav())
    assert handoff.read(ctx.redis_bytes, "job-2").data_seconds() is None
    assert delivery.read_result(ctx, "job-2", None,
                                held=lambda _j: pytest.fail("a whole hand-off needs no input")) == result.wav()
    assert delivery.read_result(ctx, "no-such-job", None) is None
    # Gone from Redis: the stored file, waited for while its writer is still at it.
    blob_id = ctx.blobs.new_id()
    threading.Timer(0.3, lambda: ctx.blobs.put(b"RIFF-stored", session_id="s", kind="output",
                                               blob_id=blob_id)).start()
    assert delivery.read_result(ctx, "no-such-job", blob_id, stored_wait_s=5.0) == b"RIFF-stored"
    assert delivery.read_result(ctx, "no-such-job", ctx.blobs.new_id(), stored_wait_s=0.2) is None


def test_spliced_handoff_without_any_input_falls_back_to_the_stored_file_never_a_wrong_one(ctx: Context) -> None:
    _source, result = _continue_result()
    handoff.put_spliced(ctx.redis_bytes, "job-3", result.new_wav,
                        handoff.Splice(ctx.blobs.new_id(), result.drop_frames, 48_000, 2, "FLOAT"))
    # No input anywhere and no stored result: nothing, rather than the new audio alone.
    assert delivery.read_result(ctx, "job-3", ctx.blobs.new_id(), input_wait_s=0.3, stored_wait_s=0.1) is None
    # A held "input" that is not a WAV is refused too: the stored result is read instead.
    stored = ctx.blobs.put(result.wav(), session_id="s", kind="output")
    assert delivery.read_result(ctx, "job-3", stored, held=lambda _j: b"not a wav at all") == result.wav()


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

    from g4l.jobs.records import Job, JobStatus, new_job_id

    session = ctx.sessions.create(status="queued")
    job = Job(id=new_job_id(), kind="continue", session_id=session.id, spec=continue_spec("PCM_16"))
    ctx.queue.enqueue(job)
    claimed = ctx.queue.claim("ghost", block_ms=10)
    assert claimed is not None and claimed.job_id == job.id
    ctx.jobs.update(job.id, status=JobStatus.COMPLETED, output_blob=blob_id, output_meta=json.dumps(meta))
    return job


def test_recovery_stores_a_dead_workers_spliced_result_and_skips_a_broken_one(ctx: Context) -> None:
    from g4l.jobs import recovery

    source, result = _continue_result("PCM_16", 30.0)
    input_blob = ctx.blobs.put(source, session_id="s", kind="input")
    broken_blob, good_blob = ctx.blobs.new_id(), ctx.blobs.new_id()
    broken = _finished_by_a_dead_worker(ctx, broken_blob, {"session_id": "s", "kind": "output"})
    ctx.redis_bytes.set(keys.result(broken.id), handoff.MAGIC + b"\xff\xff\xff\x7fnot json")
    good = _finished_by_a_dead_worker(ctx, good_blob, {"session_id": "s", "kind": "output"})
    handoff.put_spliced(ctx.redis_bytes, good.id, result.new_wav,
                        handoff.Splice(input_blob, result.drop_frames, 48_000, 2, "PCM_16"))
    time.sleep(0.3)  # past worker_dead_after_s of the test settings
    assert recovery.recover_orphans(ctx) == 2
    assert ctx.blobs.get(good_blob) == result.wav()  # joined to the input's GridFS copy
    assert not ctx.blobs.exists(broken_blob)  # logged as lost, and it did not stop the other


def test_a_stored_result_leaves_no_hand_off_behind(ctx: Context) -> None:
    """Once GridFS has a result, Redis no longer holds it: under load the hand-offs of the
    last two minutes used to add up to hundreds of MB (scripts/load)."""
    from g4l.jobs.records import Job, new_job_id
    from g4l.worker.result_writer import PendingWrite, store_result

    session = ctx.sessions.create(status="queued")
    job = Job(id=new_job_id(), kind="continue", session_id=session.id, spec=continue_spec("PCM_16"))
    ctx.queue.enqueue(job)
    claimed = ctx.queue.claim("writer-test", block_ms=10)
    assert claimed is not None
    wav = make_wav(3)
    ctx.redis_bytes.set(keys.result(job.id), wav, ex=handoff.RESULT_TTL_S)
    blob_id = ctx.blobs.new_id()
    store_result(ctx, PendingWrite(job, claimed, blob_id, lambda: wav, {"session_id": session.id, "kind": "output"}))
    assert ctx.blobs.get(blob_id) == wav
    assert ctx.redis_bytes.exists(keys.result(job.id)) == 0
    # Readers fall back to the stored file.
    assert bytes(delivery.read_result(ctx, job.id, blob_id)) == wav


# --- big results are read in pieces (a web node's event loop keeps serving meanwhile) ---

def test_a_hand_off_read_in_pieces_is_the_same_hand_off(ctx: Context) -> None:
    source, result = _continue_result()
    input_blob = ctx.blobs.put(source, session_id="s1", kind="input")
    handoff.put_spliced(ctx.redis_bytes, "job-p", result.new_wav,
                        handoff.Splice(input_blob, result.drop_frames, 48_000, 2, "FLOAT"))
    handoff.put_whole(ctx.redis_bytes, "job-w", source)
    for job in ("job-p", "job-w"):
        whole = handoff.read(ctx.redis_bytes, job)
        # 100 kB pieces: dozens of GETRANGEs, the last one short.
        pieces = handoff.read(ctx.redis_bytes, job, piece_bytes=100_000)
        assert whole is not None and pieces is not None
        assert bytes(pieces.data) == bytes(whole.data) and pieces.splice == whole.splice
    assert handoff.read(ctx.redis_bytes, "job-none", piece_bytes=100_000) is None
    with pytest.raises(ValueError):
        handoff.read(ctx.redis_bytes, "job-w", piece_bytes=0)
    # The delivery path reads in pieces and gives the worker's file, whole or spliced.
    assert delivery.read_result(ctx, "job-w", None) == source
    assert delivery.read_result(ctx, "job-w", None, as_array=True).tobytes() == source
    assert delivery.read_result(ctx, "job-p", None) == result.wav()


def test_a_hand_off_dropped_while_read_in_pieces_reads_as_gone(ctx: Context) -> None:
    """GridFS got the file and the worker dropped the hand-off between two pieces: the
    reader must not return half a file (it reads as expired, and delivery takes GridFS)."""
    wav = make_wav(10.0)
    handoff.put_whole(ctx.redis_bytes, "job-d", wav)

    class DropsAfterFirstPiece:
        """The real Redis connection; the hand-off is dropped right after the first piece."""

        def __init__(self, r) -> None:  # type: ignore[no-untyped-def]
            self.r, self.calls = r, 0

        def strlen(self, key: str) -> int:
            return self.r.strlen(key)

        def getrange(self, key: str, start: int, end: int) -> bytes:
            piece = self.r.getrange(key, start, end)
            handoff.drop(self.r, "job-d")
            return piece

    assert handoff.read(DropsAfterFirstPiece(ctx.redis_bytes), "job-d", piece_bytes=100_000) is None  # type: ignore[arg-type]
    blob = ctx.blobs.put(wav, session_id="s1", kind="output")
    assert delivery.read_result(ctx, "job-d", blob) == wav


def test_a_stored_file_read_one_chunk_at_a_time_is_the_stored_file(ctx: Context) -> None:
    wav = make_wav(20.0, subtype="FLOAT")  # 7.7 MB: 8 GridFS chunks of 1 MiB
    blob = ctx.blobs.put(wav, session_id="s1", kind="output")
    joined: list[int] = []

    def offload(fn, *args):  # type: ignore[no-untyped-def]
        joined.append(len(args[0]))
        return fn(*args)

    assert delivery.read_stored(ctx, blob, 0.0, offload=offload) == wav == ctx.blobs.get(blob)
    assert joined == [8]  # one join of the 8 pieces, by the offload
    small = ctx.blobs.put(b"RIFF tiny", session_id="s1", kind="output")
    assert delivery.read_stored(ctx, small, 0.0) == b"RIFF tiny"
    with pytest.raises(KeyError):
        delivery.read_stored(ctx, ctx.blobs.new_id(), 0.1)
    with pytest.raises(KeyError):
        delivery.read_stored(ctx, "not-an-id", 0.0)


def test_a_stored_file_written_while_the_reader_waits_is_read_whole(ctx: Context) -> None:
    wav = make_wav(8.0)
    blob = ctx.blobs.new_id()
    writer = threading.Timer(0.3, lambda: ctx.blobs.put(wav, session_id="s1", kind="output", blob_id=blob))
    writer.start()
    try:
        assert delivery.read_stored(ctx, blob, 10.0) == wav
    finally:
        writer.join()
