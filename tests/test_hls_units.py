"""The packager's pure parts with real signals: joins without clicks, filler, playlists."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import m3u8
import numpy as np
import pytest

from g4l.hls.buffer import RATE, PcmBuffer
from g4l.hls.encoder import SegmentEncoder
from g4l.hls.playlist import LivePlaylist, aac_segment_seconds, segment_name, target_duration
from g4l.hls.watch import check_playlist, max_step

#: An equal-power crossfade of two unrelated signals briefly sums them (up to sqrt(2) in
#: level), so the mix's steps may exceed either part's by that much; a click (a hard cut
#: between two non-zero samples) is 10-50 times larger than the signals' own steps.
MIX = 1.5


def tone(seconds: float, freq: float, phase: float = 0.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    x = (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)
    return np.stack([x, x])


def drain(buf: PcmBuffer, seconds: float, step: int = 960) -> np.ndarray:
    return np.concatenate([buf.take(step) for _ in range(int(seconds * RATE) // step)], axis=1)


def test_a_join_between_unrelated_generations_has_no_click() -> None:
    buf = PcmBuffer(crossfade_frames=2400)
    a, b = tone(1.0, 220.0), tone(1.0, 330.0, phase=2.0)  # b starts at a non-zero sample
    buf.append(a)
    buf.append(b)
    out = drain(buf, 2.5)
    own = max(max_step(a), max_step(b))
    assert max_step(out) <= own * MIX
    assert buf.underruns == 1  # ran dry after b, and faded out instead of clicking


def test_a_continuation_overlapping_the_previous_end_keeps_time() -> None:
    buf = PcmBuffer(crossfade_frames=2400)
    x = tone(2.0, 440.0)
    buf.append(x[:, :RATE])
    start = buf.append(x[:, RATE - 2400:], overlap_frames=2400)  # re-states the last 50 ms
    assert start == RATE - 2400
    out = drain(buf, 1.9)
    # The same signal on both sides of the join: the crossfade leaves it (nearly) intact.
    assert np.abs(out[:, 2400:] - x[:, 2400 : out.shape[1]]).max() < 0.25  # after the opening fade-in
    assert max_step(out) <= max_step(x) * MIX


def test_audio_arriving_during_silence_fades_in_and_buffered_seconds_count() -> None:
    buf = PcmBuffer(crossfade_frames=2400)
    silence = drain(buf, 0.2)
    assert not silence.any() and buf.buffered_seconds == 0
    buf.append(tone(1.0, 220.0, phase=1.0))
    assert abs(buf.buffered_seconds - 1.0) < 0.01
    out = np.concatenate([silence, drain(buf, 0.5)], axis=1)
    assert max_step(out) <= max_step(tone(1.0, 220.0)) * 1.05  # a fade-in only lowers steps


def test_held_loop_fills_a_gap_and_hands_over_smoothly() -> None:
    buf = PcmBuffer(crossfade_frames=2400, fill="loop", loop_frames=RATE)
    a = tone(2.0, 220.0)
    buf.append(a)
    out = drain(buf, 4.0)  # 2 s of a, then the last second of it looped
    assert np.abs(out[:, -RATE:]).max() > 0.3, "the loop plays, not silence"
    buf.append(tone(1.0, 330.0, phase=0.5))
    out = np.concatenate([out, drain(buf, 1.0)], axis=1)
    assert max_step(out) <= max(max_step(a), max_step(tone(1.0, 330.0))) * MIX


def test_playlist_slides_deletes_and_continues_after_a_restart(tmp_path: Path) -> None:
    start = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    pl = LivePlaylist(tmp_path, segment_s=2.0, window=6)
    for seq in range(12):
        (tmp_path / segment_name(seq)).write_bytes(b"x")
        pl.add(seq, 1.984, start + dt.timedelta(seconds=2 * seq))
    parsed = m3u8.load(str(pl.path))
    assert check_playlist(parsed) == []
    assert parsed.media_sequence == 6 and len(parsed.segments) == 6 and parsed.target_duration == 2
    on_disk = sorted(p.name for p in tmp_path.glob("seg_*.ts"))
    assert on_disk[0] == segment_name(3), "segments leave the disk a few segments after the window"

    again = LivePlaylist(tmp_path, segment_s=2.0, window=6)  # a new packager process
    (tmp_path / segment_name(12)).write_bytes(b"x")
    again.add(12, 1.984, start + dt.timedelta(seconds=100))
    parsed = m3u8.load(str(again.path))
    assert parsed.media_sequence == 7
    assert [s.discontinuity for s in parsed.segments] == [False] * 5 + [True]
    for seq in range(13, 19):
        (tmp_path / segment_name(seq)).write_bytes(b"x")
        again.add(seq, 1.984, start + dt.timedelta(seconds=100 + 2 * (seq - 12)))
    parsed = m3u8.load(str(again.path))
    assert parsed.discontinuity_sequence == 1 and not any(s.discontinuity for s in parsed.segments)
    assert check_playlist(parsed) == []


def test_segments_are_cut_on_aac_frames_so_the_target_duration_is_the_segment_length(tmp_path: Path) -> None:
    """Asked for 2.0 s, ffmpeg cut 2.005 s segments (94 AAC frames) and the target duration
    had to be 3: hls.js, three target durations behind, played 9.6 s late. Rounded down to
    whole frames, every segment the real encoder cuts is exactly that long."""
    assert (aac_segment_seconds(1.0), target_duration(1.0)) == (0.981333, 1)
    assert (aac_segment_seconds(2.0), target_duration(2.0)) == (1.984, 2)
    playlist = LivePlaylist(tmp_path, segment_s=1.0, window=6)
    buffer = PcmBuffer()
    buffer.append(tone(20.0, 220.0))
    cut: list[float] = []
    encoder = SegmentEncoder(tmp_path, buffer, playlist, segment_s=playlist.segment_s, bitrate_kbps=128,
                             on_segment=lambda sequence, duration: cut.append(duration))
    encoder.start()  # the back-dated silence of a new stream gives the first segments at once
    try:
        deadline = dt.datetime.now() + dt.timedelta(seconds=30)
        while len(cut) < 8 and dt.datetime.now() < deadline:
            time.sleep(0.1)
    finally:
        encoder.stop()
    full = cut[:8]  # what came after may have been cut short by the stop
    assert len(full) == 8 and all(abs(d - 0.981333) < 2e-6 for d in full), cut
    parsed = m3u8.load(str(playlist.path))
    assert parsed.target_duration == 1 and check_playlist(parsed) == []


def test_rtmp_urls_are_checked_and_stream_keys_never_survive_redaction() -> None:
    import pytest

    from g4l.errors import InvalidRequest
    from g4l.hls.rtmp import card_text, ffmpeg_command, key_options
    from g4l.services.stations.outputs import check_stream_key, display_url, publish_url, redact
    from g4l.settings import Settings

    assert display_url(" RTMPS://Live.Example.com:443/app/ ") == "rtmps://live.example.com:443/app"
    assert display_url("rtmp://a.rtmp.youtube.com/live2") == "rtmp://a.rtmp.youtube.com/live2"
    for bad in ("http://x/live", "rtmp:///live", "rtmp://host", "rtmp://u:p@host/live", "rtmp://host/live?k=1",
                "rtmp://host:99999/live", "rtmp://host/li ve"):
        with pytest.raises(InvalidRequest):
            display_url(bad)
    for bad in ("", "   ", "a b", "x" * 513):
        with pytest.raises(InvalidRequest):
            check_stream_key(bad)
    key = "ab/cd+ef?g"
    target = publish_url("rtmp://host/live", key)
    said = f"[rtmp] {target}: Broken pipe; {target.replace(key, 'ab%2Fcd%2Bef%3Fg')}"
    assert key not in redact(said, [key, target]) and "%2F" not in redact(said, [key, target])
    cmd = ffmpeg_command("rtmp://host/live", "card", "", Settings(), "/dev/fd/7")
    assert cmd[-1] == "rtmp://host/live" and cmd[-3:-1] == ["-fpre", "/dev/fd/7"]
    assert "-shortest" in cmd and cmd[cmd.index("-g") + 1] == "60"
    assert not any(key in arg for arg in cmd)  # the key is never an argument (ps shows those)
    # It is read from the pipe instead, with the application ffmpeg would take from url/key.
    assert key_options("rtmp://host/live", key) == b"rtmp_app=live\nrtmp_playpath=ab/cd+ef?g\n"
    assert key_options("rtmps://host:443/app/inst", "k").startswith(b"rtmp_app=app/inst\n")
    wrapped = card_text("a very long prompt " * 20, 1280, 27)
    assert len(wrapped.splitlines()) == 4 and wrapped.endswith("\u2026")


# ---------------------------------------------------------------------- stored buffers
def test_pieces_of_one_recording_butt_join_exactly_and_report_where_they_start() -> None:
    buf = PcmBuffer(crossfade_frames=2400)
    x = tone(3.0, 220.0)
    first = buf.append(x[:, : RATE])
    second = buf.append(x[:, RATE:], join="butt")
    assert (first, second) == (0, RATE)
    out = drain(buf, 4.0)
    # Past the first fade-in and before the last fade-out, it is the recording, bit for bit.
    np.testing.assert_array_equal(out[:, 2400: 3 * RATE - 2400], x[:, 2400: 3 * RATE - 2400])


def test_a_lead_in_crossfade_reports_the_frame_of_the_first_new_sample() -> None:
    buf = PcmBuffer(crossfade_frames=2400)
    buf.append(tone(2.0, 220.0))
    start = buf.append(tone(2.0, 330.0), overlap_frames=4800)
    assert buf.last_new_frame == start + 4800 == 2 * RATE  # where the previous audio ends


def test_a_break_is_silence_between_two_fades() -> None:
    buf = PcmBuffer(crossfade_frames=2400)
    buf.append(tone(1.0, 220.0))
    buf.append(np.zeros((2, 2 * RATE), np.float32), join="fade")
    buf.append(tone(1.0, 330.0), join="fade")
    out = drain(buf, 5.0)
    loud = np.abs(out[0]) > 1e-4
    silent = np.flatnonzero(~loud[2400:]) + 2400
    runs = np.split(silent, np.flatnonzero(np.diff(silent) > 1) + 1)
    assert abs(max(len(r) for r in runs[:-1]) / RATE - 2.0) < 0.01
    assert max_step(out) <= max_step(tone(1.0, 330.0)) * MIX


def test_off_the_air_the_slate_loops_without_a_click_and_music_crossfades_back_in() -> None:
    from g4l.hls.slate import slate_loop

    slate = slate_loop()
    assert np.max(np.abs(slate)) > 0.05  # audible, not silence
    buf = PcmBuffer(crossfade_frames=2400)
    buf.append(tone(3.0, 220.0))
    drain(buf, 1.0)
    dropped = buf.interrupt(slate)
    assert abs(dropped - (2 * RATE - 2400 - 2400)) <= 2400  # the unheard audio is dropped, not played
    off = drain(buf, 5.0)
    assert buf.buffered_frames == 0 and not buf.playing
    spectrum = np.abs(np.fft.rfft(off[0, RATE:]))
    freqs = np.fft.rfftfreq(off.shape[1] - RATE, 1 / RATE)
    for hz in (220.0, 440.0, 660.0):
        assert spectrum[np.argmin(np.abs(freqs - hz))] > 20 * np.median(spectrum)
    assert max_step(off) <= max(max_step(slate), max_step(tone(1.0, 220.0))) * MIX
    buf.resume()
    buf.append(tone(2.0, 330.0))
    back = drain(buf, 1.5)
    assert max_step(back) <= max(max_step(slate), max_step(tone(1.0, 330.0))) * MIX


def test_the_buffer_policy_defaults_keep_todays_station_and_bad_ones_are_refused() -> None:
    import pytest

    from g4l.errors import InvalidRequest
    from g4l.services.stations.policy import build_policy, build_transition, default_policy
    from g4l.settings import Settings

    settings = Settings(station_buffer_s=45.0)
    policy = build_policy(settings, None, None, None)
    assert policy == default_policy(settings)
    assert policy.thresholds() == {"healthy": 45.0, "warning": 22.5, "critical": 11.25, "emergency": 3.75}
    assert policy.resume_s == 7.5 < 8.0  # the first 8 s stretch goes on the air at once
    assert [policy.state(s) for s in (50, 30, 12, 5, 1)] == ["HEALTHY", "WARNING", "CRITICAL", "EMERGENCY",
                                                               "DEPLETED"]
    long = build_policy(settings, "long", None, 300)
    assert long.thresholds() == {"healthy": 86400.0, "warning": 43200.0, "critical": 21600.0, "emergency": 7200.0}
    assert long.chunk_s == 300 and long.resume_s == 14400
    for bad, words in [({"healthy": 10, "warning": 20, "critical": 5, "emergency": 1}, "decrease"),
                       ({"healthy": 10, "warning": 5}, "missing: critical, emergency"),
                       ({"healthy": 10, "warning": 5, "critical": 2, "emergency": 1, "x": 0}, "unknown: x"),
                       ("short", '"long"')]:
        with pytest.raises(InvalidRequest, match=words):
            build_policy(settings, bad, None, None)
    with pytest.raises(InvalidRequest, match="buffer_resume_s"):
        build_policy(settings, None, 1.0, None)
    with pytest.raises(InvalidRequest, match="chunk_seconds"):
        build_policy(settings, None, None, 3600)
    with pytest.raises(InvalidRequest, match="break"):
        build_transition(settings, {"kind": "break", "seconds": 0})
    with pytest.raises(InvalidRequest, match="kind"):
        build_transition(settings, {"kind": "jump", "seconds": 2})
    assert build_transition(settings, {"kind": "crossfade", "seconds": 4}).seconds == 4.0


def test_a_recording_file_cut_short_still_plays_up_to_its_last_whole_fragment(tmp_path) -> None:
    """What a recorder's ffmpeg writes (fragmented MP4, a fragment a second) cut at an
    arbitrary byte, as a kill leaves it: rewritten as a plain MP4 it decodes whole."""
    import subprocess

    from g4l.hls.recorder import FRAGMENTED, plain_mp4

    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"sine=f=330:r={RATE}:d=6", "-ac", "2", "-c:a", "aac",
                    "-b:a", "192k", "-f", "segment", "-segment_time", "60", "-segment_format", "mp4",
                    "-segment_format_options", FRAGMENTED, "-reset_timestamps", "1", str(tmp_path / "rec_1_%06d.m4a")],
                   check=True, capture_output=True, timeout=60)
    whole = (tmp_path / "rec_1_000000.m4a").read_bytes()
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(whole[: int(len(whole) * 0.6)])  # mid-fragment, no index at the end
    data, duration = plain_mp4(cut)
    assert 2.0 <= duration <= 4.0, duration  # the whole fragments before the cut
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", "-", "-f", "f32le", "pipe:1"], input=data,
                             capture_output=True, timeout=60)
    assert decoded.returncode == 0 and not decoded.stderr, decoded.stderr
    assert len(decoded.stdout) / 8 / RATE == pytest.approx(duration, abs=0.05)
    assert plain_mp4(cut)[0][4:8] == b"ftyp" and b"moov" in data[:4096]  # an index first: plays while downloading
    (tmp_path / "empty.m4a").write_bytes(whole[:40])  # killed before its header was out: unreadable
    with pytest.raises(subprocess.CalledProcessError):
        plain_mp4(tmp_path / "empty.m4a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.m4a", "empty.m4a", "rec_1_000000.m4a"]  # no temp left
