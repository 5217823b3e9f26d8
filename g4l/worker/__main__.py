"""``python -m g4l.worker``: take jobs from the queue until SIGTERM."""

from __future__ import annotations

import gc
import os
import signal
import socket
import uuid
from typing import Any

from g4l import log as logging_setup
from g4l.context import Context
from g4l.engine.cache import ModelCache
from g4l.engine.families import FAMILIES, ModelFamily, default_model, models_of
from g4l.log import get_logger
from g4l.settings import get_settings
from g4l.store import redis_wait
from g4l.worker.heartbeat import Heartbeat
from g4l.worker.kinds import RUNNERS
from g4l.worker.result_writer import ResultWriter
from g4l.worker.worker import Worker


def main() -> None:
    settings = get_settings()
    logging_setup.configure(settings.log_level, settings.log_format, process="worker")
    log = get_logger("g4l.worker")
    ctx = Context.from_settings(settings)
    redis_wait.retry(ctx.queue.ensure_groups, wait_s=0, what="starting the worker")
    name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    import torch  # imported here: the web process never pays for it

    from g4l.engine.musicgen import disable_mkldnn

    disable_mkldnn()
    cache = ModelCache(settings.models, settings.device, retry_after_s=settings.model_retry_s,
                       paths=settings.model_path_map)
    families = served_families(settings.models, settings.model_path_map, settings.worker_memory_gb)
    defaults = {f.name: default_model(f, settings.models, settings.default_model if f.name == "musicgen" else None,
                                      settings.model_path_map) for f in families}
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
    state = {"state": "loading"}
    worker = Worker(ctx, cache, name, runners=RUNNERS, families=[f.name for f in families])

    def describe() -> dict[str, Any]:
        held = worker.held()
        # job_id (the first job held) for readers from before batching; job_ids lists them all.
        return {"job_id": held[0] if held else None, "job_ids": held, "max_batch": worker.max_batch,
                "state": state["state"], "models": cache.loaded(),
                "model_sizes": cache.sizes(), "models_failed": cache.failed(),
                "default_model": defaults.get("musicgen") or settings.model_default,
                "families": {f: family_state(cache, model) for f, model in defaults.items() if model},
                "torch": torch.__version__, "device": cache.device, "cuda": torch.cuda.is_available()}

    worker.heartbeat = Heartbeat(ctx.redis, name, settings.worker_heartbeat_s, settings.worker_dead_after_s,
                                 describe)
    worker.writer = ResultWriter(ctx)

    def on_term(signum: int, frame: object) -> None:  # finish the job in hand, then leave
        worker.stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    worker.heartbeat.start()
    # Warm each family's default model so the first request does not pay for loading it.
    # A worker whose default models cannot load is not ready (/health/ready says why); it
    # still serves the other allowed models, and refuses a failed one at once
    # (MODEL_UNAVAILABLE).
    failed: list[str] = []
    for family, model in defaults.items():
        if not model:
            continue
        try:
            cache.get(model)
            log.info("model loaded", worker=name, family=family, model=model)
        except Exception as exc:
            failed.append(family)
            log.error("default model unusable", worker=name, family=family, model=model,
                      reason=getattr(exc, "message", str(exc))[:400])
        worker.heartbeat.beat()  # /health shows each family's state as it changes
    # Ready when the default MusicGen loaded (gary is what most clients use), or, for a
    # worker without MusicGen, when any of its families did; a family whose model failed
    # is reported as failed (its jobs refused at once) while the others work.
    wanted = [f for f, model in defaults.items() if model]
    unusable = "musicgen" in failed if "musicgen" in wanted else bool(wanted) and len(failed) == len(wanted)
    state["state"] = "model_failed" if unusable else "ready"
    log.info("worker ready" if not unusable else "worker not ready: its default model failed",
             worker=name, families=wanted, failed=failed, models=cache.allowlist, device=cache.device)
    worker.heartbeat.beat()
    # Everything loaded so far (torch, AudioCraft, transformers, the warmed models: the
    # cache keeps its models for the process's life) lives as long as the process: keep it
    # out of the cyclic collector, whose full passes otherwise walk its ~350,000 objects
    # (0.2-0.7 s each) during generation, and whose passes at exit kept the process 3-5 s
    # after "worker stopped" (every server stop and restart waited on them; frozen, ~1 s).
    # gc.collect() first: nothing that is garbage now is frozen.
    gc.collect()
    gc.freeze()
    worker.run_forever()
    worker.writer.close()  # pending GridFS writes finish while the heartbeat still says we live
    worker.heartbeat.stop()
    log.info("worker stopped", worker=name)


def served_families(models: list[str], paths: dict[str, str], memory_gb: float) -> list[ModelFamily]:
    """The families this worker loads: those with an allowed model, in order, while their
    memory fits ``memory_gb`` (0: all of them)."""
    chosen: list[ModelFamily] = []
    used = 0.0
    for family in FAMILIES.values():
        if not models_of(family, models, paths):
            continue
        if memory_gb and used + family.memory_gb > memory_gb:
            get_logger("g4l.worker").info("family left to other workers: over this worker's memory budget",
                                          family=family.name, needs_gb=family.memory_gb, budget_gb=memory_gb)
            continue
        used += family.memory_gb
        chosen.append(family)
    return chosen


def family_state(cache: ModelCache, model: str) -> dict[str, Any]:
    """What the heartbeat says of a family: its default model, ``loaded`` / ``loading`` /
    ``failed`` (with the reason) / ``not_loaded``."""
    state = cache.state(model)
    out: dict[str, Any] = {"model": model, "state": state}
    if state == "failed":
        out["reason"] = cache.failed().get(model, "")
    return out


if __name__ == "__main__":
    main()
