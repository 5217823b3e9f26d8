#!/usr/bin/env python3
"""Where a command's CPU goes, by kind of process: ``cpu_by_process.py -- bash scripts/test``.

Runs the command and reads every process's CPU time (``/proc/<pid>/stat``) each second
while it runs; a process is counted from its first reading to its last (what one that
started before the command had used is left out), so processes that live under a second
are missed. Prints CPU seconds, processes and seconds per process for each kind (the
g4l process, the store, a test worker, a browser...), largest first, then the command's
exit status. Issue 20 used it to find that worker start-ups took a third of the suite's
CPU time.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
import time

#: Substrings of a command line, in the order they are tried: the first found names its kind.
KINDS = ("g4l.worker", "g4l.web", "g4l.hls", "g4l.launcher", "g4l.cli", "secantusd", "redis-server",
         "xdist", "exec(eval(sys.stdin", "pytest", "chrom", "ffmpeg", "ffprobe", "node", "nginx", "gst-launch")
HZ = os.sysconf("SC_CLK_TCK")


def kind_of(cmdline: str) -> str:
    """The kind a process's command line names (``exec(eval(sys.stdin`` is an xdist worker)."""
    for key in KINDS:
        if key in cmdline:
            return "pytest worker (xdist)" if key == "exec(eval(sys.stdin" else key
    return cmdline.split(" ")[0].rsplit("/", 1)[-1][:30] or "(kernel or exited)"


def read_all(seen: dict[tuple[str, str], list], boot_ticks: int) -> None:
    """One reading of every process: ``seen[(pid, start)] = [cmdline, cpu s, cpu s at first
    sight if it started before the command]``."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            cpu = (int(rest[11]) + int(rest[12])) / HZ
            key = (pid, rest[19])
            if key in seen:
                seen[key][1] = cpu
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            seen[key] = [cmd, cpu, cpu if int(rest[19]) < boot_ticks else 0.0]
        except (OSError, IndexError, ValueError):
            continue


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    with open("/proc/uptime") as f:
        boot_ticks = int(float(f.read().split()[0]) * HZ)
    seen: dict[tuple[str, str], list] = {}
    read_all(seen, boot_ticks)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            read_all(seen, boot_ticks)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    code = subprocess.call(argv)
    done.set()
    sampler.join()
    read_all(seen, boot_ticks)
    total: dict[str, float] = collections.defaultdict(float)
    count: collections.Counter[str] = collections.Counter()
    for cmd, cpu, before in seen.values():
        if cpu - before > 0:
            kind = kind_of(cmd)
            total[kind] += cpu - before
            count[kind] += 1
    print(f"\nCPU by kind of process over {time.monotonic() - started:.0f} s (exit status {code}):")
    for kind, cpu in sorted(total.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {cpu:8.1f} s  {count[kind]:4d} processes  {cpu / count[kind]:6.1f} s each  {kind}")
    print(f"  {sum(total.values()):8.1f} s  in all")
    return code


if __name__ == "__main__":
    sys.exit(main())
