"""Log lines are structured, once: a library that brings its own stderr handler (the
Hugging Face hub, whose download retries are what an operator sees when the hub cannot
be reached) is routed through ours, and its lines name the library."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import logging
from g4l import log
log.configure("INFO", "json", process="worker")
from huggingface_hub.utils import logging as hub_logging  # installs its own stderr handler
hub_logging.get_logger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
log.adopt_library_loggers()
hub_logging.get_logger("huggingface_hub.utils._http").warning("Retrying in 2s [Retry 2/5].")
log.get_logger("g4l.test").info("ours", job_id="j1")
"""


def test_library_lines_come_out_once_structured_and_named() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    # Before adopting: the library's own handler prints it (unstructured); after: one JSON line.
    assert lines[0] == "Retrying in 1s [Retry 1/5]."
    second = [line for line in lines if "Retry 2/5" in line]
    assert len(second) == 1, lines
    doc = json.loads(second[0])
    assert doc["logger"] == "huggingface_hub.utils._http" and doc["level"] == "warning"
    assert doc["process"] == "worker" and "_record" not in doc and "_from_structlog" not in doc
    ours = json.loads(lines[-1])
    assert ours["event"] == "ours" and ours["job_id"] == "j1"

