"""A running station in the packager, one module per job:

- :mod:`~g4l.hls.station.driver`: :class:`StationDriver`, each tick in order;
- :mod:`~g4l.hls.station.chunks`: the stored buffer (GridFS audio, Redis order);
- :mod:`~g4l.hls.station.accounting`: what is decoded and what was heard (the play position);
- :mod:`~g4l.hls.station.program`: on or off the air, and decoding stored audio into the stream;
- :mod:`~g4l.hls.station.planner`: what to generate next (prompt rotation) and what a finished
  stretch becomes;
- :mod:`~g4l.hls.station.streamed`: a new station's first stretch, played while it is generated.
"""

from g4l.hls.station.driver import StationDriver

__all__ = ["StationDriver"]
