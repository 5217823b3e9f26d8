"""``python -m g4l.web``: serve the web process until SIGTERM."""

from gevent import monkey

monkey.patch_all()  # before anything imports socket/threading/ssl

import gc  # noqa: E402
import signal  # noqa: E402

import gevent  # noqa: E402

from g4l import log as logging_setup  # noqa: E402
from g4l.log import get_logger  # noqa: E402
from g4l.settings import get_settings  # noqa: E402
from g4l.web import http_server  # noqa: E402
from g4l.web.app import create_app  # noqa: E402
from g4l.web.loop_guard import limit_gridfs_upload_batches  # noqa: E402


def main() -> None:
    settings = get_settings()
    logging_setup.configure(settings.log_level, settings.log_format, process="web")
    limit_gridfs_upload_batches()  # an upload's GridFS write must not hold every socket
    web = create_app(settings)
    web.relay.start()
    web.heartbeat.start()
    # Everything loaded so far lives as long as the process: keep it out of the cyclic
    # collector's full passes, which otherwise stall every socket for 50-100 ms.
    gc.collect()
    gc.freeze()
    log = get_logger("g4l.web")
    extra = http_server.listen_extra(web.app, settings)  # jerry's and terry's localhost ports

    def stop() -> None:
        log.info("web stopping", node=web.heartbeat.name)
        web.heartbeat.stop()
        web.relay.stop()
        for server in extra:
            server.stop(timeout=1)
        web.socketio.stop()

    def dump() -> None:  # kill -USR1 <pid>: every greenlet's stack, for a stuck server
        import gevent.util

        log.warning("greenlet dump", greenlets="\n".join(gevent.util.format_run_info()))

    gevent.signal_handler(signal.SIGUSR1, dump)
    gevent.signal_handler(signal.SIGTERM, stop)
    gevent.signal_handler(signal.SIGINT, stop)
    log.info("web listening", host=settings.host, port=settings.port, node=web.heartbeat.name,
             extra_ports=[s.server_port for s in extra])
    web.socketio.run(web.app, host=settings.host, port=settings.port, log_output=False,
                     handler_class=http_server.handler_class(settings))


if __name__ == "__main__":
    main()
