"""Structured logging: one JSON object a line, naming the session and job it is about."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "INFO", fmt: str = "json", process: str = "g4l") -> None:
    """Set up structlog and route stdlib logging (engineio, werkzeug) through it."""
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        # A third-party line says which library wrote it.
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    _ROOT_HANDLERS.add(handler)
    adopt_library_loggers()
    root.setLevel(level.upper())
    # The websocket libraries log every frame at INFO: keep them quiet unless debugging.
    for noisy in ("engineio", "socketio", "geventwebsocket", "werkzeug", "xformers"):
        logging.getLogger(noisy).setLevel(max(logging.ERROR if noisy == "xformers" else logging.WARNING, root.level))
    structlog.contextvars.bind_contextvars(process=process)


_ROOT_HANDLERS: set[logging.Handler] = set()


def adopt_library_loggers() -> None:
    """Route every library logger through the root's structured handler, once.

    Some libraries give their own logger a plain stderr handler and stop it propagating
    (huggingface_hub when imported, transformers on first use): their lines then came out
    twice, once unstructured. Call this after importing such a library (the model cache
    does, before loading a model); it is cheap and idempotent."""
    for logger in list(logging.root.manager.loggerDict.values()):
        if not isinstance(logger, logging.Logger) or not logger.handlers:
            continue
        plain = [h for h in logger.handlers if type(h) is logging.StreamHandler and h not in _ROOT_HANDLERS]
        for h in plain:
            logger.removeHandler(h)
        if plain:
            logger.propagate = True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A logger; bind ``session_id``/``job_id`` on it for every line about them."""
    return structlog.get_logger(name)
