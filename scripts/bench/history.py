"""What a session's history costs in GridFS: 100 operations (continues of the stored take,
each followed by a crop back to the take's length), then the bytes the session holds, with
G4L_HISTORY_MAX as shipped (or --history-max), against the bytes the operations made.

    scripts/bench_history [--operations 100] [--history-max N] [--seconds 10]
"""

from __future__ import annotations

import argparse
import sys
import time

import common  # noqa: F401  (re-execs under the venv)
import pymongo

from plugin_protocol.client import DeviceClient


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--operations", type=int, default=100, help="versions to make (half continues, half crops)")
    ap.add_argument("--history-max", type=int, default=None, help="G4L_HISTORY_MAX (default: the shipped one)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the take (48 kHz stereo 16-bit)")
    args = ap.parse_args()
    common.install_term_handler()
    common.install_alarm(1800)
    env = {"G4L_HLS_ENABLED": "false"}
    if args.history_max is not None:
        env["G4L_HISTORY_MAX"] = str(args.history_max)
    server = common.Server(extra_env=env)
    try:
        server.start()
        started = time.monotonic()
        made = 0
        take = common.make_wav(args.seconds, seed=1)
        with DeviceClient(server.url, timeout=300) as c:
            bang = c.bang(take, model_name="debug", prompt_duration=4, duration=6)
            sid, made, ops = bang.session_id, len(bang.audio), 1
            while ops < args.operations:
                result = c.continue_(sid, prompt_duration=4, duration=6)
                made, ops = made + len(result.audio), ops + 1
                if ops < args.operations:
                    cropped = common.make_wav(args.seconds, seed=ops)
                    c.crop(sid, cropped)
                    made, ops = made + len(cropped), ops + 1
            history = c.history(sid)
        elapsed = time.monotonic() - started
        time.sleep(2)  # the last result's GridFS write follows its delivery
        files = pymongo.MongoClient(server.mongo_url)["g4l"]["audio.files"]
        docs = list(files.find({"metadata.session_id": sid}, {"length": 1, "metadata.kind": 1}))
        stored = sum(int(d["length"]) for d in docs)
        kept = [v for v in history["versions"] if not v["pruned"]]
        print(f"operations {ops} in {elapsed:.1f} s: {len(history['versions'])} versions, {len(kept)} kept "
              f"(G4L_HISTORY_MAX {args.history_max or 'shipped'}), current v{history['current']}")
        print(f"audio made {made / 1e6:.1f} MB; GridFS holds {len(docs)} files, {stored / 1e6:.1f} MB for the session "
              f"({stored / max(1, len(kept)) / 1e6:.2f} MB per kept version)")
        print(f"gridfs bytes per session after {ops} operations: {stored}")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
