"""The station record: one Redis hash per station (:func:`g4l.keys.station`), read and
written through :class:`StationStore` as a typed :class:`StationRecord`.

The hash's fields are what they always were (a flag is ``"1"``/``"0"``, a list or a small
object is JSON, numbers are written as Python formats them), so a record written before
this module reads the same, and a reader of the raw hash (a test, an operator's
``redis-cli``) sees nothing new.

Writes follow one discipline:

- a field that one process alone writes (the packager's program state: on the air, the
  buffer's level) is set with :meth:`StationStore.update`;
- a write that depends on what was read (forget the job only if it is still the one
  read, append to a kept list) is *update-if-current*: :meth:`StationStore.update_if`
  runs a Lua compare-and-set (the fields it expects are compared and the new ones set in
  one server-side step), so it applies only if the record is still what the writer read,
  and reports whether it did. Lua, not WATCH/MULTI, because every other check-and-write
  of g4l is a Lua script already (quotas, slots, the queue), it needs no retry loop for
  the common case, and the embedded store runs it the same way.

The chunk queue's four fields (``chunk_seq``, ``queue_s``, ``play_seq``,
``play_offset_s``) are written by :class:`g4l.hls.station.chunks.ChunkQueue` in the same
transaction as its list (:meth:`StationStore.key` names the hash); the record reads them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from redis import Redis
from redis.client import Pipeline

from g4l import keys

#: How each field is kept in the hash (anything not named here is a plain string).
_JSON = frozenset({"prompts", "errors", "rotations", "rtf", "played", "chunk_starts", "feed_started"})
_FLAGS = frozenset({"record", "on_air", "ever_on_air"})
_INTS = frozenset({"generations", "chunk_seq", "play_seq"})
_OPTIONAL_INTS = frozenset({"generating_index", "last_prompt_index"})
_FLOATS = frozenset({"created", "rotate_every_s", "audio_s", "last_generated_at", "on_air_at", "off_air_at",
                     "buffered_s", "buffer_state_since", "playing_audio_s", "queue_s", "play_offset_s"})

#: The fields a new station's hash is created with.
CREATED = ("id", "token", "status", "model", "owner", "prompts", "rotate_every_s", "sampling", "created", "audio_s",
           "generations", "last_blob", "job_id", "generating_prompt", "errors", "rotations", "name", "record",
           "buffer_policy", "transition", "queue_s", "play_seq", "play_offset_s", "on_air")

# KEYS[1]: the station's hash. ARGV[1]: n; then n (field, expected value) pairs (a missing
# field reads as ""); then the (field, value) pairs to set. -> 1 set, 0 not current (or no
# such station): nothing written.
_UPDATE_IF = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  local have = redis.call('HGET', KEYS[1], ARGV[2 + 2 * i]) or ''
  if have ~= ARGV[3 + 2 * i] then return 0 end
end
if #ARGV > 1 + 2 * n then redis.call('HSET', KEYS[1], unpack(ARGV, 2 + 2 * n)) end
return 1
"""


@dataclass
class StationRecord:
    """Everything stored about one station (its hash, typed). An absent field has its
    default, so records from older versions read too.

    ``sampling``, ``buffer_policy`` and ``transition`` are the JSON of their service-level
    types (:class:`g4l.jobs.spec.Sampling`, :mod:`g4l.services.stations.policy`), kept raw
    here: the store sits below the layers that define them.
    """

    id: str = ""
    #: Its stream's listen token.
    token: str = ""
    #: ``running`` | ``stopped``
    status: str = ""
    stopped_reason: str = ""
    model: str = ""
    #: The API key's owner that started it ("" with keys off).
    owner: str = ""
    #: Shown on its outputs' video card.
    name: str = ""
    created: float = 0.0
    #: Rotated every ``rotate_every_s`` seconds of music (0: never).
    prompts: list[str] = field(default_factory=list)
    rotate_every_s: float = 0.0
    sampling: str = ""
    buffer_policy: str = ""
    transition: str = ""
    #: Its program is recorded into files.
    record: bool = False
    # ---- generation
    #: The stretch being generated ("" when none is queued).
    job_id: str = ""
    generating_prompt: str = ""
    generating_index: int | None = None
    #: Stretches generated so far.
    generations: int = 0
    #: Seconds of music generated so far (the station's own timeline).
    audio_s: float = 0.0
    #: The newest chunk's audio (the next stretch continues it).
    last_blob: str = ""
    last_prompt_index: int | None = None
    last_generated_at: float = 0.0
    #: The last chunks' (audio seconds, wall seconds).
    rtf: list[list[float]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    rotations: list[dict[str, Any]] = field(default_factory=list)
    # ---- program (the packager's)
    on_air: bool = False
    #: It was on the air once (off the air now means the slate plays).
    ever_on_air: bool = False
    on_air_at: float = 0.0
    off_air_at: float = 0.0
    #: Where this packager's program started (chunk seq, seconds into it, wall time).
    feed_started: dict[str, Any] | None = None
    #: Chunk seqs heard lately, newest last.
    played: list[int] = field(default_factory=list)
    #: Where the last chunks start in the stream (``seq``, ``stream_s``, ``streamed``).
    chunk_starts: list[dict[str, Any]] = field(default_factory=list)
    #: Seconds stored and not heard, and the buffer's state (the five of the policy).
    buffered_s: float = 0.0
    buffer_state: str = ""
    buffer_state_since: float = 0.0
    #: Where the listeners are on the music timeline.
    playing_audio_s: float = 0.0
    # ---- the chunk queue's (g4l.hls.station.chunks.ChunkQueue)
    #: The last chunk number given.
    chunk_seq: int = 0
    #: Seconds of the queued chunks (heard or not).
    queue_s: float = 0.0
    #: The chunk playing and the seconds of it heard.
    play_seq: int = 0
    play_offset_s: float = 0.0

    @property
    def running(self) -> bool:
        return self.status == "running"

    @classmethod
    def from_hash(cls, raw: Mapping[str, str]) -> StationRecord:
        """The record of a hash as Redis returns it (strings)."""
        known = {f.name for f in fields(cls)}
        return cls(**{name: decode(name, value) for name, value in raw.items() if name in known})


def decode(name: str, value: str | None) -> Any:
    """Field ``name``'s stored text as its type (None or "" gives the type's empty value)."""
    if name in _JSON:
        return json.loads(value) if value else (None if name == "feed_started" else [])
    if name in _FLAGS:
        return value == "1"
    if name in _INTS:
        return int(value or 0)
    if name in _OPTIONAL_INTS:
        return int(value) if value not in (None, "") else None
    if name in _FLOATS:
        return float(value or 0)
    return value or ""


def encode(name: str, value: Any) -> str | int | float:
    """Field ``name``'s value as it is stored (numbers as Redis formats them from Python)."""
    if name in _JSON:
        return json.dumps(value)
    if name in _FLAGS:
        return "1" if value else "0"
    if value is None:
        return ""
    return value


def _encoded(changes: Mapping[str, Any]) -> dict[str, str | int | float]:
    known = _FIELD_NAMES
    unknown = set(changes) - known
    if unknown:
        raise KeyError(f"not a station field: {sorted(unknown)}")
    return {name: encode(name, value) for name, value in changes.items()}


_FIELD_NAMES = frozenset(f.name for f in fields(StationRecord))


class StationStore:
    """Stations' records in Redis.

    :param redis: the client (strings decoded).
    """

    def __init__(self, redis: Redis) -> None:
        self.r = redis
        self._update_if = redis.register_script(_UPDATE_IF)

    @staticmethod
    def key(station_id: str) -> str:
        """The hash's Redis key (for a transaction that writes it with other keys)."""
        return keys.station(station_id)

    # ------------------------------------------------------------ read
    def get(self, station_id: str) -> StationRecord | None:
        """The station's record; None when there is none (or the id is not one)."""
        if not keys.valid_id(station_id):
            return None
        raw = self.r.hgetall(keys.station(station_id))
        return StationRecord.from_hash(raw) if raw else None

    def fields(self, station_id: str, *names: str) -> dict[str, Any]:
        """Only ``names`` of the record, typed (one round trip, no whole record)."""
        values = self.r.hmget(keys.station(station_id), list(names))
        return {name: decode(name, value) for name, value in zip(names, values, strict=True)}

    # ------------------------------------------------------------ write
    def create(self, record: StationRecord) -> None:
        """Write a new station's record (the :data:`CREATED` fields)."""
        self.r.hset(keys.station(record.id), mapping=_encoded({name: getattr(record, name) for name in CREATED}))

    def update(self, station_id: str, pipe: Pipeline | None = None, **changes: Any) -> None:
        """Set ``changes`` as they are (for fields only the caller writes; see the module's
        note), in ``pipe`` when given."""
        (pipe if pipe is not None else self.r).hset(keys.station(station_id), mapping=_encoded(changes))

    def update_if(self, station_id: str, expect: Mapping[str, Any], **changes: Any) -> bool:
        """Set ``changes`` only if every field in ``expect`` still holds that value (one
        atomic compare-and-set); whether it was set. A station that is gone is never
        written again."""
        want = _encoded(expect)
        args: list[Any] = [len(want)]
        for name, value in want.items():
            args += [name, "" if value is None else value]
        for name, value in _encoded(changes).items():
            args += [name, value]
        return bool(self._update_if(keys=[keys.station(station_id)], args=args))

    def append(self, station_id: str, name: str, items: Iterable[Any], keep: int) -> list[Any]:
        """Add ``items`` to the end of the JSON list ``name``, keeping its last ``keep``
        (update-if-current: another writer's append in between is never lost). Returns
        the list written ([] when the station is gone)."""
        items = list(items)
        for _ in range(20):
            (raw,) = self.r.hmget(keys.station(station_id), [name])
            listed = [*decode(name, raw), *items][-keep:]
            want = json.dumps(listed)
            args = [1, name, raw or "", name, want]
            if self._update_if(keys=[keys.station(station_id)], args=args):
                return listed
            if not self.r.exists(keys.station(station_id)):
                return []
        raise RuntimeError(f"station {station_id}: {name} kept changing")

    def add(self, station_id: str, name: str, amount: float, pipe: Pipeline | None = None) -> None:
        """Add ``amount`` to the number ``name`` (one atomic step), in ``pipe`` when given."""
        if name not in _FLOATS:
            raise KeyError(f"not a station field that adds: {name}")
        (pipe if pipe is not None else self.r).hincrbyfloat(keys.station(station_id), name, amount)

    def next_seq(self, station_id: str, name: str) -> int:
        """Add one to the counter ``name`` and return it (one atomic step)."""
        if name not in _INTS:
            raise KeyError(f"not a station counter: {name}")
        return int(self.r.hincrby(keys.station(station_id), name, 1))

    def expire(self, station_id: str, seconds: int, pipe: Pipeline | None = None) -> None:
        """The record goes after ``seconds`` (a stopped station), in ``pipe`` when given."""
        (pipe if pipe is not None else self.r).expire(keys.station(station_id), seconds)
