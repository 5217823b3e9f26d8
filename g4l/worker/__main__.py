"""``python -m g4l.worker``: take jobs from the queue until SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid

from g4l import log as logging_setup
from g4l.context import Context
from g4l.engine.cache import ModelCache
from g4l.jobs import lifecycle
from g4l.log import get_logger
from g4l.settings import get_settings
from g4l.store import retention
from g4l.worker import kinds  # noqa: F401  (registers the non-device job runners)
from g4l.worker.heartbeat import Heartbeat
from g4l.worker.result_writer import ResultWriter
from g4l.worker.runner import run_job

MAINTENANCE_EVERY_S = 5.0


def main() -> None:
    settings = get_settings()
    logging_setup.configure(settings.log_level, settings.log_format, process="worker")
    log = get_logger("g4l.worker")
    ctx = Context.from_settings(settings)
    ctx.queue.ensure_groups()
    name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    import torch  # imported here: the web process never pays for it

    from g4l.engine.musicgen import disable_mkldnn

    disable_mkldnn()
    cache = ModelCache(settings.models, settings.device)
    threads = settings.torch_threads
    if not threads and cache.device == "cpu":
        # A CPU worker shares the machine with the web process and the stores: leaving
        # them a core keeps sockets answering, and on a busy 2-core box the model even
        # finishes sooner than with two threads fighting everything else.
        threads = max(1, (os.cpu_count() or 1) - 1)
    if threads:
        torch.set_num_threads(threads)
    if cache.device == "cpu" and settings.worker_nice:
        # On a CPU box the model competes with the web process for cores: let the web win,
        # so sockets stay responsive while a generation runs.
        os.nice(settings.worker_nice)
    current: dict[str, str | None] = {"job": None, "state": "loading"}
    device = cache.device

    def describe() -> dict:
        return {"job_id": current["job"], "state": current["state"], "models": cache.loaded(), "torch": torch.__version__,
                "device": device, "cuda": torch.cuda.is_available()}

    heartbeat = Heartbeat(ctx.redis, name, settings.worker_heartbeat_s, settings.worker_dead_after_s, describe)
    stopping = {"flag": False}

    def on_term(signum, frame):  # finish the job in hand, then leave
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    heartbeat.start()
    writer = ResultWriter(ctx)
    # Warm the default model so the first bang does not pay for loading it.
    try:
        cache.get(settings.model_default)
    except Exception:
        log.exception("could not preload the default model", model=settings.model_default)
    current["state"] = "ready"
    heartbeat.beat()
    log.info("worker ready", worker=name, models=settings.models, device=device)
    last_maintenance = 0.0
    while not stopping["flag"]:
        if time.monotonic() - last_maintenance > MAINTENANCE_EVERY_S:
            last_maintenance = time.monotonic()
            try:
                lifecycle.recover_orphans(ctx)
                retention.sweep_if_due(ctx)
            except Exception:
                log.exception("maintenance failed")
        claimed = ctx.queue.claim(name, block_ms=1000)
        if claimed is None:
            continue
        job = ctx.jobs.get(claimed.job_id)
        if job is None or job.status in ("completed", "failed", "canceled") or ctx.jobs.cancel_requested(job.id):
            if job is not None and job.status == "queued":
                lifecycle.canceled(ctx, job)
            ctx.queue.ack(claimed)
            continue
        current["job"] = job.id
        heartbeat.refresh()  # health and recovery see the job now, not at the next tick
        ctx.queue.mark_running(claimed)
        lifecycle.started(ctx, job, name)
        deferred = False
        try:
            deferred = run_job(ctx, cache, job, writer=writer, claimed=claimed)
        finally:
            if not deferred:
                ctx.queue.ack(claimed)
            current["job"] = None
            heartbeat.refresh()
    writer.close()  # pending GridFS writes finish while the heartbeat still says we live
    heartbeat.stop()
    log.info("worker stopped", worker=name)


if __name__ == "__main__":
    main()
