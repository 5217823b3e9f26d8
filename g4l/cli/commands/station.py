"""``g4l station start|status|stop|list``: endless generative stations (``/api/v1/stations``)."""

from __future__ import annotations

import argparse
from typing import Any

from g4l.cli.http import API, Api
from g4l.cli.options import Options
from g4l.cli.outcome import Outcome


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``station`` and its sub-commands."""
    station = sub.add_parser("station", parents=parents, help="endless generative stations (live HLS)",
                             description="Start, inspect and stop stations.")
    ops = station.add_subparsers(dest="station_command", metavar="{start,status,stop,list}", required=True)

    p = ops.add_parser("start", parents=parents, help="start a station playing a prompt",
                       description="POST /api/v1/stations: prints the station id and its live stream.")
    p.add_argument("prompt", help="what to play")
    p.add_argument("--then", action="append", metavar="PROMPT", default=None,
                   help="a further prompt of the rotation (repeatable; see --rotate-every)")
    p.add_argument("--rotate-every", type=float, metavar="S", help="seconds of music per prompt (0: never; >= 10)")
    p.add_argument("--model", "-m", help="model id from the server's allowlist (default: the server's default)")
    p.add_argument("--temperature", type=float, help="softmax temperature (0.05-5)")
    p.add_argument("--top-k", type=int, help="top-k sampling")
    p.add_argument("--cfg-coef", type=float, help="classifier-free guidance")
    p.set_defaults(run=run_start)

    for name, fn, text in (("status", run_status, "a station's buffer, prompts, listeners and errors"),
                           ("stop", run_stop, "stop a station")):
        p = ops.add_parser(name, parents=parents, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("station_id", metavar="ID", help="the station id (from `g4l station start` or `list`)")
        p.set_defaults(run=fn)

    p = ops.add_parser("list", parents=parents, help="the running stations",
                       description="The running stations (with API keys on: this key's).")
    p.set_defaults(run=run_list)


def run_start(args: argparse.Namespace, opts: Options) -> Outcome:
    """Start a station."""
    api = Api(opts.url, opts.api_key)
    body = {"prompt": args.prompt, "prompts": args.then, "rotate_every_s": args.rotate_every,
            "model": args.model, "temperature": args.temperature, "top_k": args.top_k, "cfg_coef": args.cfg_coef}
    created = _absolute(api, api.post(f"{API}/stations", {k: v for k, v in body.items() if v is not None}))
    text = (f"station {created['station_id']} {created.get('status')}\n"
            f"playlist: {created['playlist_url']}\npage:     {created['page_url']}")
    return Outcome({"command": "station start", **created}, text)


def run_status(args: argparse.Namespace, opts: Options) -> Outcome:
    """One station's status."""
    api = Api(opts.url, opts.api_key)
    st = _absolute(api, api.get(f"{API}/stations/{args.station_id}"))
    return Outcome({"command": "station status", **st}, _describe(st))


def run_stop(args: argparse.Namespace, opts: Options) -> Outcome:
    """Stop a station."""
    stopped = Api(opts.url, opts.api_key).delete(f"{API}/stations/{args.station_id}")
    return Outcome({"command": "station stop", **stopped}, f"station {stopped.get('station_id')} stopped")


def run_list(args: argparse.Namespace, opts: Options) -> Outcome:
    """The running stations."""
    api = Api(opts.url, opts.api_key)
    stations = [_absolute(api, st) for st in api.get(f"{API}/stations").get("stations", [])]
    text = "\n".join(_describe(st) for st in stations) or "no station is running"
    return Outcome({"command": "station list", "stations": stations}, text)


def _absolute(api: Api, station: dict[str, Any]) -> dict[str, Any]:
    out = dict(station)
    for key in ("playlist_url", "page_url"):
        if isinstance(out.get(key), str):
            out[key] = api.absolute(out[key])
    return out


def _describe(st: dict[str, Any]) -> str:
    prompt = st.get("current_prompt") or st.get("generating_prompt") or ", ".join(st.get("prompts") or [])
    line = (f"station {st.get('station_id')}: {st.get('status')}, buffer {st.get('buffered_seconds', 0):.0f} s "
            f"({st.get('buffer_health')}), {st.get('generations', 0)} generations, "
            f"{st.get('listeners', 0)} listeners, playing \"{prompt}\"")
    if st.get("errors"):
        line += f", {len(st['errors'])} errors (last: {st['errors'][-1]})"
    return f"{line}\n  {st.get('playlist_url')}"
