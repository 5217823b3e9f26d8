"""Imports every module that registers a job runner in :data:`g4l.worker.runner.RUNNERS`.

Each non-device job kind lives in its own module and adds one import here.
"""

from __future__ import annotations
