"""Live listening over HLS: the packager process (``python -m g4l.hls``).

One long-lived AAC encoder per live stream (a session's or a station's), fed at wall-clock
pace from a buffer of generated audio, writing MPEG-TS segments and a sliding-window live
playlist under ``G4L_HLS_DIR/<listen token>/``. Modules, one per concept:

- :mod:`g4l.hls.buffer`: the audio waiting to play, joins (crossfades) and filler;
- :mod:`g4l.hls.encoder`: the stream's ffmpeg (:class:`g4l.media.FfmpegProcess`) and the thread that paces it;
- :mod:`g4l.hls.playlist`: the live playlist (m3u8) and segment deletion;
- :mod:`g4l.hls.stream`: one stream = buffer + encoder + playlist;
- :mod:`g4l.hls.outputs` and :mod:`g4l.hls.rtmp`: a station's RTMP(S) outputs; :mod:`g4l.hls.recorder`: its recordings;
- :mod:`g4l.hls.station`: keeps a station's buffer ahead by queueing continuations;
- :mod:`g4l.hls.packager`: which streams run in this process, and their new audio.
"""
