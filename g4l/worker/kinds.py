"""Imports every module that registers a job runner in :data:`g4l.worker.runner.RUNNERS`.

Each non-device job kind lives in its own module and adds one import here.
"""

from __future__ import annotations

from g4l.worker import generate_job  # noqa: F401  (kind 'generate': POST /api/v1/generate)

from g4l.worker import station_job  # noqa: F401,E402  (kind "station": generative stations)
