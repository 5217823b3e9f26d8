"""The load balancer in front of N web processes: Debian's nginx, run as a child process
with a configuration written here (``python -m g4l.balancer`` prints one for a deployment).

* New connections, HTTP requests and websocket upgrades go to the least busy web process;
  a request that cannot reach one is passed to another, and a process that keeps refusing
  connections is skipped for a while, so clients of a dead process reconnect to a live one.
* A long-polling Engine.IO request goes to the process that handed out its session id:
  ids start with the node's name (:mod:`g4l.web.nodes`), matched by a ``map`` on the
  ``sid`` query argument. No sticky cookie is needed, for polling or websocket clients.
* Nothing is buffered: uploads of hundreds of MB stream through to the web process (which
  enforces its own limits and deadlines) and results stream back.
* The web processes see the client's address in ``X-Forwarded-For`` (they trust one proxy,
  ``G4L_TRUSTED_PROXIES=1``), so per-address limits still tell clients apart.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from g4l.embedded import ManagedProcess, wait_for_port

#: Seconds an idle proxied connection (a websocket between pings, a long poll) may stay open.
IDLE_TIMEOUT_S = 3600
#: A web process that failed this many connections within FAIL_TIMEOUT_S is not tried again
#: for FAIL_TIMEOUT_S (one failure is not enough: a burst of connections can overflow a
#: busy process's accept queue for a moment).
MAX_FAILS = 3
FAIL_TIMEOUT_S = 2


@dataclass(frozen=True)
class Backend:
    """One web process: its node name (the session-id prefix) and address."""

    node: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _nginx_time(seconds: float) -> str:
    """nginx's time syntax: whole seconds as ``20s``, else milliseconds (tests use 2.5 s)."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def render_config(backends: Sequence[Backend], listen: str | Sequence[str], *, max_body_mb: int,
                  prefix: Path | None = None, pid_file: str | None = None, header_timeout_s: float = 20.0,
                  keepalive_timeout_s: float = 75.0) -> str:
    """An nginx configuration balancing ``listen`` (``host:port``, or several: the main
    port and the localhost-mode ports) over ``backends``.

    :param max_body_mb: the largest request body passed on (the web's own limit decides).
    :param header_timeout_s: a client's request line and headers must arrive within this
        (``G4L_HTTP_HEADER_TIMEOUT_S``); else nginx resets the connection. nginx holds
        the client's connection itself, so the web processes' deadline never sees a stall.
    :param keepalive_timeout_s: an idle client connection is closed after this
        (``G4L_HTTP_KEEPALIVE_TIMEOUT_S``).
    :param prefix: where nginx keeps its pid, temp files and error log (a launcher's data
        directory); None for a deployment's image defaults (docker/nginx.conf).
    """
    if not backends:
        raise ValueError("at least one web process is needed")
    listens = "".join(f"        listen {address};\n" for address in ([listen] if isinstance(listen, str) else listen))
    routes = "\n".join(f'        "~^{re.escape(b.node)}\\." g4l_node_{b.node};' for b in backends)
    servers = "\n".join(f"        server {b.address} max_fails={MAX_FAILS} fail_timeout={FAIL_TIMEOUT_S}s;"
                        for b in backends)
    # One upstream per node as well, so a polling request reaches its own node (names, not
    # addresses, in the map: a deployment's host names are resolved when nginx starts).
    singles = "".join(f"    upstream g4l_node_{b.node} {{\n        server {b.address};\n    }}\n" for b in backends)
    paths = ""
    if prefix is not None:
        temp = prefix / "temp"
        paths = "\n".join([f"pid {pid_file or prefix / 'nginx.pid'};", f"error_log {prefix / 'error.log'} warn;", ""])
        http_paths = "".join(f"    {name}_temp_path {temp / name};\n"
                             for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    else:
        http_paths = ""
    return f"""# g4l: {len(backends)} web processes behind one address (written by g4l.balancer).
worker_processes auto;
{paths}events {{
    worker_connections 8192;
}}

http {{
    access_log off;
{http_paths}    client_max_body_size {max_body_mb}m;
    # Slow clients: the web processes' own header and keep-alive deadlines, held here,
    # where the client's connection is; a stalled one is reset, not left half-closed.
    client_header_timeout {_nginx_time(header_timeout_s)};
    keepalive_timeout {_nginx_time(keepalive_timeout_s)};
    reset_timedout_connection on;
    # Websocket upgrades pass through; other requests reuse upstream connections.
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}
    # A long-polling request goes to the web process that issued its Engine.IO session id
    # ("<node>.<random>"); everything else to the pool.
    map $arg_sid $g4l_backend {{
        default g4l_web;
{routes}
    }}
    upstream g4l_web {{
        least_conn;
{servers}
        keepalive 32;
    }}
{singles}    server {{
{listens}        location / {{
            proxy_pass http://$g4l_backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_connect_timeout 5s;
            proxy_read_timeout {IDLE_TIMEOUT_S}s;
            proxy_send_timeout {IDLE_TIMEOUT_S}s;
            # A process that is down is skipped for requests that may be sent twice.
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


def nginx_binary() -> str:
    """Debian's nginx (``scripts/install.sh`` installs it)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not found:
        raise RuntimeError("nginx not found: run scripts/install.sh (apt-get install nginx)")
    return found


def start(backends: Sequence[Backend], host: str, port: int, data_dir: Path, *, max_body_mb: int,
          header_timeout_s: float = 20.0, keepalive_timeout_s: float = 75.0,
          extra_ports: Sequence[int] = ()) -> ManagedProcess:
    """Write the configuration under ``data_dir`` and run nginx in the foreground on
    ``host:port`` (and ``extra_ports``); returns once it accepts connections (timeouts:
    :func:`render_config`)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (data_dir / "temp" / name).mkdir(parents=True, exist_ok=True)
    conf = data_dir / "nginx.conf"
    listens = [f"{host}:{p}" for p in (port, *extra_ports)]
    conf.write_text(render_config(backends, listens, max_body_mb=max_body_mb, prefix=data_dir,
                                  header_timeout_s=header_timeout_s, keepalive_timeout_s=keepalive_timeout_s))
    binary = nginx_binary()
    check = subprocess.run([binary, "-t", "-q", "-p", str(data_dir), "-c", str(conf)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"nginx refused its configuration: {check.stderr.strip()[:500]}")
    log_path = data_dir / "nginx.log"
    proc = subprocess.Popen([binary, "-p", str(data_dir), "-c", str(conf), "-g", "daemon off;"],
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(port, proc, 20, "nginx")
    return ManagedProcess("balancer", proc, f"http://{host}:{port}", port, log_path)


def main(argv: Sequence[str] | None = None) -> int:
    """Print a configuration for a deployment: ``--node w0=web0:8000 --node w1=web1:8000``."""
    parser = argparse.ArgumentParser(prog="python -m g4l.balancer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", action="append", required=True, metavar="NAME=HOST:PORT",
                        help="a web process: its G4L_WEB_NODE and address (repeat)")
    parser.add_argument("--listen", default="80", help="what nginx listens on (port or host:port)")
    parser.add_argument("--max-body-mb", type=int, default=257)
    args = parser.parse_args(argv)
    backends = []
    for spec in args.node:
        name, _, address = spec.partition("=")
        host, _, port = address.rpartition(":")
        backends.append(Backend(name, host, int(port)))
    print(render_config(backends, args.listen, max_body_mb=args.max_body_mb), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
