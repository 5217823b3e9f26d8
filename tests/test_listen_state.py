"""A stream's published state on the real Redis: the packager's periodic write never
undoes a stop that landed between its tick and its write (the playlist would be served
again until the next tick closed the stream)."""

from __future__ import annotations

from g4l import keys
from g4l.hls.packager import Packager
from g4l.hls.stream import LiveStream
from g4l.services.listen import SESSION, ListenService, new_token


def test_a_publish_after_a_stop_keeps_the_stream_stopped(ctx, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ctx.settings = ctx.settings.model_copy(update={"hls_dir": tmp_path})
    listen, token = ListenService(ctx), new_token()
    listen.open_stream(token, SESSION, "a-session")
    packager = Packager(ctx, name="test-packager")
    stream = LiveStream(token, SESSION, "a-session", ctx.settings)  # not started: nothing encodes

    packager._publish(token, stream)
    published = ctx.redis.hgetall(keys.listen(token))
    assert published["state"] == "starting" and published["packager"] == "test-packager"
    assert listen.resolve(token) is not None
    assert 0 < ctx.redis.ttl(keys.listen(token)) <= ctx.settings.retention_seconds

    listen.stop(token, "stopped")
    packager._publish(token, stream)  # the tick that read the stream before the stop
    assert ctx.redis.hget(keys.listen(token), "state") == "stopped"
    assert listen.resolve(token) is None  # so /hls/<token>/index.m3u8 answers 404

    listen.open_stream(token, SESSION, "a-session")  # re-opened: published again
    packager._publish(token, stream)
    assert ctx.redis.hget(keys.listen(token), "state") == "starting"
    packager.pool.shutdown()
