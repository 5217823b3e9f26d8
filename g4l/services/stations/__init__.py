"""Stations, endless music from a prompt: one module per concern.

- :mod:`~g4l.services.stations.service`: create, describe, stop and feed stations;
- :mod:`~g4l.services.stations.policy`: the buffer policy (five states) and the transitions;
- :mod:`~g4l.services.stations.history`: the buffer samples the dashboard plots;
- :mod:`~g4l.services.stations.outputs`: RTMP(S) outputs (configuration, secret keys, status);
- :mod:`~g4l.services.stations.recordings`: the recorded program's files;
- :mod:`~g4l.services.stations.genres`: genre streams (a shared station per genre and level).

The station record itself lives in :mod:`g4l.store.stations`; the packager drives running
stations (:mod:`g4l.hls.station`).
"""
