"""A session's history: a tree of audio versions in Redis, beside the session's hash.

Every operation that changes a session's audio (bang, continue, retry, crop, an upload,
and the kinds later issues add) appends one :class:`VersionRecord`: the operation, its
parameters, the version it built on (its parent), the GridFS file of the audio. The
session's ``version`` field is a pointer into this tree:

* undo moves it to the parent; redo to the child it was last on (after a new operation,
  that is the newest one); any version can be made current (checkout);
* a new operation after an undo starts a branch: nothing is thrown away;
* ``G4L_HISTORY_MAX`` bounds the versions whose audio is kept; the oldest are pruned,
  never the current one nor its nearest ancestors within the bound, so undo always goes
  back ``G4L_HISTORY_MAX - 1`` steps (:meth:`HistoryScripts.prune`).

Layout: ``g4l:session:<id>:versions`` is a hash. Field ``"<n>"`` is version *n*'s record
(JSON, written once); ``"<n>.child"`` is the child redo goes to; ``"<n>.pruned"`` marks a
version whose audio was deleted. The session hash keeps the pointer (``version``), the
pointer's audio (``current_blob``, ``current_format``) and a counter (``versions_made``)
that hands out version numbers, which are never reused.

Every change is one Lua call over both keys, so two requests racing on one session (an
undo and a crop, a job ending and a checkout) cannot leave the pointer and the tree
disagreeing. A session written before histories existed gets one on first use: its
current audio becomes the root (:data:`_ADOPT`).

Why one file of over 400 lines: the record, the reader and the Lua scripts all speak the one
key layout above, and split they would each restate it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

from g4l import keys


class Operation(StrEnum):
    """What made a version."""

    BANG = "bang"
    CONTINUE = "continue"
    RETRY = "retry"
    CROP = "crop"
    UPLOAD = "upload"  # a chunked restore
    GENERATE = "generate"  # text-to-audio imported into a session
    TRANSFORM = "transform"
    LEGACY = "legacy"  # the current audio of a session written before histories existed

    @classmethod
    def parse(cls, value: str) -> Operation:
        try:
            return cls(value)
        except ValueError:
            return cls.LEGACY


#: Operations a retry can redo: it re-runs the nearest of these at or above the current
#: version, from the input that one used (a LEGACY root only when it kept that input).
RETRYABLE = (Operation.CONTINUE, Operation.RETRY, Operation.LEGACY)


def retryable(operation: Operation) -> bool:
    """Whether a version made by ``operation`` can be redone by a retry."""
    return operation in RETRYABLE


@dataclass(frozen=True)
class VersionRecord:
    """One version of a session's audio.

    :param version: its number (unique in the session, never reused).
    :param parent: the version it was made from (None: a root, e.g. a bang).
    :param operation: what made it.
    :param blob: the GridFS id of its audio (byte for byte what the client received).
    :param input_blob: the audio the operation read, when that was not the parent's
        (a continue of an uploaded file; what a retry of this version re-reads).
    :param job_id: the job that made it (its result may still be in the Redis hand-off).
    :param params: the generation parameters (model, seed, prompt window, sampling...).
    :param format: ``"rate,channels,subtype"`` of the audio.
    """

    version: int
    parent: int | None
    operation: Operation
    blob: str
    input_blob: str | None = None
    job_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    format: str = ""
    duration: float | None = None
    created: float = 0.0
    #: Where redo goes from here (None: a leaf, or a branch never visited).
    redo_to: int | None = None
    #: Its audio was deleted by the history bound; it can be listed, not restored.
    pruned: bool = False

    def to_json(self) -> str:
        """The immutable part, as stored."""
        data = {"version": self.version, "parent": self.parent, "operation": self.operation.value,
                "blob": self.blob, "input_blob": self.input_blob, "job_id": self.job_id, "params": self.params,
                "format": self.format, "duration": self.duration, "created": self.created}
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, *, redo_to: str | None = None, pruned: bool = False) -> VersionRecord:
        d = json.loads(text)
        parent = d.get("parent")
        params = d.get("params")
        return cls(version=int(d["version"]), parent=int(parent) if parent is not None else None,
                   operation=Operation.parse(str(d.get("operation") or "")), blob=str(d.get("blob") or ""),
                   input_blob=d.get("input_blob") or None, job_id=d.get("job_id") or None,
                   params=params if isinstance(params, dict) else {}, format=str(d.get("format") or ""),
                   duration=float(d["duration"]) if d.get("duration") is not None else None,
                   created=float(d.get("created") or 0.0), redo_to=int(redo_to) if redo_to else None,
                   pruned=pruned)


@dataclass(frozen=True)
class History:
    """A session's whole tree, as read at one moment."""

    current: int | None
    versions: dict[int, VersionRecord]

    def children(self, version: int) -> list[int]:
        """The versions made from ``version``, oldest first."""
        return sorted(v for v, r in self.versions.items() if r.parent == version)

    def ancestors(self, version: int | None) -> list[VersionRecord]:
        """``version`` and its ancestors up to its root, nearest first."""
        out: list[VersionRecord] = []
        seen: set[int] = set()
        while version is not None and version in self.versions and version not in seen:
            seen.add(version)
            record = self.versions[version]
            out.append(record)
            version = record.parent
        return out

    def retry_target(self) -> VersionRecord | None:
        """The version a retry redoes: the nearest continue or retry at or above the
        current version (or an older server's root that remembered one's input). None when
        there is none, or when it was pruned (its input may be gone with it)."""
        for record in self.ancestors(self.current):
            if retryable(record.operation) and record.input_blob:
                return None if record.pruned else record
        return None

    def last_of(self, operation: Operation) -> VersionRecord | None:
        """The nearest version at or above the current one that ``operation`` made."""
        for record in self.ancestors(self.current):
            if record.operation is operation:
                return record
        return None


# Shared by every script: give a session written before histories existed its root.
_ADOPT = """
local function adopt(s, v, now)
  if redis.call('EXISTS', v) == 1 then return end
  local blob = redis.call('HGET', s, 'current_blob')
  if (not blob) or blob == '' then return end
  local ver = tonumber(redis.call('HGET', s, 'version') or '0') or 0
  if ver < 1 then ver = 1 end
  local kind = redis.call('HGET', s, 'last_kind')
  if (not kind) or kind == '' then kind = 'legacy' end
  local job = ''
  if blob == redis.call('HGET', s, 'last_output_blob') then
    job = redis.call('HGET', s, 'job_id') or ''
  else
    kind = 'legacy'  -- a crop or upload since the last generation (older servers kept no word for it)
  end
  -- The input of the last continue, which a retry redoes (older servers kept it through crops).
  local input = ''
  if kind == 'continue' or kind == 'retry' or kind == 'legacy' then
    input = redis.call('HGET', s, 'retry_input_blob') or ''
  end
  local rec = cjson.encode({version = ver, operation = kind, blob = blob, input_blob = input, job_id = job,
                            format = redis.call('HGET', s, 'current_format') or '', created = tonumber(now)})
  redis.call('HSET', v, tostring(ver), rec)
  local ttl = redis.call('TTL', s)
  if ttl > 0 then redis.call('EXPIRE', v, ttl) end  -- the history lives as long as its session
  redis.call('HSET', s, 'version', ver)
  if redis.call('HEXISTS', s, 'versions_made') == 0 then redis.call('HSET', s, 'versions_made', ver) end
end
"""

# KEYS: session, versions; ARGV: now -> the new version number (0: no such session)
_ALLOCATE = _ADOPT + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
adopt(KEYS[1], KEYS[2], ARGV[1])
if redis.call('HEXISTS', KEYS[1], 'versions_made') == 0 then
  redis.call('HSET', KEYS[1], 'versions_made', tonumber(redis.call('HGET', KEYS[1], 'version') or '0') or 0)
end
return redis.call('HINCRBY', KEYS[1], 'versions_made', 1)
"""

# KEYS: session, versions; ARGV: job_id ('' = not a job's), version, record, parent ('' = none),
# ttl, now, field, value, ... -> OK | NOT_FOUND | STALE (another job is the session's) | BUSY
_APPEND = _ADOPT + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'NOT_FOUND' end
local st = redis.call('HGET', KEYS[1], 'status')
if ARGV[1] ~= '' then
  -- Only the session's job, and only once: a second attempt of the same job (a worker taken
  -- for dead that finished anyway) finds the session idle and adds nothing.
  if redis.call('HGET', KEYS[1], 'job_id') ~= ARGV[1] then return 'STALE' end
  if st ~= 'queued' and st ~= 'running' then return 'STALE' end
else
  if st == 'queued' or st == 'running' then return 'BUSY' end
end
adopt(KEYS[1], KEYS[2], ARGV[6])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], ARGV[4] .. '.child', ARGV[2]) end
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'updated', ARGV[6])
local made = tonumber(redis.call('HGET', KEYS[1], 'versions_made') or '0') or 0
if made < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'versions_made', ARGV[2]) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 'OK'
"""

# KEYS: session, versions; ARGV: mode (undo | redo | to), target (for 'to'), now, ttl
# -> {state, current version}; state OK | NOT_FOUND | BUSY | EMPTY | AT_ROOT | AT_LEAF | UNKNOWN | PRUNED
_MOVE = _ADOPT + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NOT_FOUND', ''} end
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'queued' or st == 'running' then return {'BUSY', ''} end
adopt(KEYS[1], KEYS[2], ARGV[3])
local cur = redis.call('HGET', KEYS[1], 'version') or '0'
local currec = redis.call('HGET', KEYS[2], cur)
local target
if ARGV[1] == 'to' then
  target = ARGV[2]
else
  if not currec then return {'EMPTY', cur} end
  if ARGV[1] == 'undo' then
    local p = cjson.decode(currec)['parent']
    if p == nil or p == cjson.null then return {'AT_ROOT', cur} end
    target = tostring(p)
    if redis.call('HEXISTS', KEYS[2], target .. '.pruned') == 1 then return {'PRUNED', cur} end
    redis.call('HSET', KEYS[2], target .. '.child', cur)
  else
    target = redis.call('HGET', KEYS[2], cur .. '.child')
    if not target then return {'AT_LEAF', cur} end
  end
end
local rec = redis.call('HGET', KEYS[2], target)
if not rec then return {'UNKNOWN', cur} end
if redis.call('HEXISTS', KEYS[2], target .. '.pruned') == 1 then return {'PRUNED', cur} end
local t = cjson.decode(rec)
-- Redo from any ancestor now leads back along this branch.
local child, r, depth = target, t, 0
while r['parent'] ~= nil and r['parent'] ~= cjson.null and depth < 100000 do
  local p = tostring(r['parent'])
  redis.call('HSET', KEYS[2], p .. '.child', child)
  local pr = redis.call('HGET', KEYS[2], p)
  if not pr then break end
  child, r, depth = p, cjson.decode(pr), depth + 1
end
redis.call('HSET', KEYS[1], 'version', target, 'current_blob', t['blob'], 'current_format', t['format'] or '',
           'updated', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {'OK', target}
"""

# KEYS: session, versions; ARGV: now -> 1 (an old session's root is made if it needs one)
_ENSURE = _ADOPT + """
if redis.call('EXISTS', KEYS[1]) == 1 then adopt(KEYS[1], KEYS[2], ARGV[1]) end
return 1
"""

# KEYS: session, versions; ARGV: version, now -> the current version after (0: none)
_WITHDRAW = """
local rec = redis.call('HGET', KEYS[2], ARGV[1])
if not rec then return tonumber(redis.call('HGET', KEYS[1], 'version') or '0') or 0 end
redis.call('HSET', KEYS[2], ARGV[1] .. '.pruned', '1')
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then
  return tonumber(redis.call('HGET', KEYS[1], 'version') or '0') or 0
end
local p = cjson.decode(rec)['parent']
if p == nil or p == cjson.null then
  redis.call('HSET', KEYS[1], 'current_blob', '', 'updated', ARGV[2])
  return 0
end
local prec = redis.call('HGET', KEYS[2], tostring(p))
if not prec then return 0 end
local t = cjson.decode(prec)
redis.call('HSET', KEYS[1], 'version', tostring(p), 'current_blob', t['blob'], 'current_format', t['format'] or '',
           'updated', ARGV[2])
return tonumber(p)
"""

# KEYS: session, versions; ARGV: keep -> the versions just marked pruned (oldest first)
_PRUNE = """
local all = redis.call('HGETALL', KEYS[2])
local recs, pruned, live = {}, {}, {}
for i = 1, #all, 2 do
  local k = all[i]
  if string.find(k, '.', 1, true) == nil then recs[k] = all[i + 1]
  elseif string.sub(k, -7) == '.pruned' then pruned[string.sub(k, 1, -8)] = true end
end
for k, _ in pairs(recs) do if not pruned[k] then table.insert(live, tonumber(k)) end end
local over = #live - tonumber(ARGV[1])
if over <= 0 then return {} end
-- The current version and its nearest ancestors, as many as the bound keeps, are kept.
local protected, walked = {}, 0
local cur = redis.call('HGET', KEYS[1], 'version')
while cur and recs[cur] and not protected[cur] and walked < tonumber(ARGV[1]) do
  protected[cur] = true
  walked = walked + 1
  local p = cjson.decode(recs[cur])['parent']
  if p == nil or p == cjson.null then break end
  cur = tostring(p)
end
-- So is what a retry would redo: the nearest continue or retry above, with its input.
cur = redis.call('HGET', KEYS[1], 'version')
local seen = {}
while cur and recs[cur] and not seen[cur] do
  seen[cur] = true
  local r = cjson.decode(recs[cur])
  local op = r['operation']
  if (op == 'continue' or op == 'retry' or op == 'legacy') and r['input_blob'] and r['input_blob'] ~= ''
     and r['input_blob'] ~= cjson.null then
    if not pruned[cur] then protected[cur] = true end
    break
  end
  local p = r['parent']
  if p == nil or p == cjson.null then break end
  cur = tostring(p)
end
table.sort(live)
local out = {}
for _, n in ipairs(live) do
  if over <= 0 then break end
  local k = tostring(n)
  if not protected[k] then
    redis.call('HSET', KEYS[2], k .. '.pruned', '1')
    table.insert(out, k)
    over = over - 1
  end
end
return out
"""


class MoveRefused(Exception):
    """An undo, redo or checkout that cannot be done; ``state`` says why
    (BUSY, EMPTY, AT_ROOT, AT_LEAF, UNKNOWN, PRUNED, NOT_FOUND)."""

    def __init__(self, state: str, current: int | None) -> None:
        super().__init__(state)
        self.state = state
        self.current = current


class HistoryScripts:
    """The Lua calls over a session's hash and its versions hash (used by
    :class:`~g4l.store.sessions.SessionStore`, which alone writes sessions)."""

    def __init__(self, r: redis.Redis, ttl_seconds: int) -> None:
        self.r = r
        self.ttl = ttl_seconds
        self._allocate = r.register_script(_ALLOCATE)
        self._append = r.register_script(_APPEND)
        self._move = r.register_script(_MOVE)
        self._prune = r.register_script(_PRUNE)
        self._ensure = r.register_script(_ENSURE)
        self._withdraw = r.register_script(_WITHDRAW)

    @staticmethod
    def _keys(session_id: str) -> list[str]:
        return [keys.session(session_id), keys.session_versions(session_id)]

    def allocate(self, session_id: str) -> int:
        """A new version number for ``session_id`` (0 when the session is gone)."""
        return int(self._allocate(keys=self._keys(session_id), args=[time.time()]))

    def append(self, session_id: str, record: VersionRecord, fields: list[str], job_id: str | None) -> str:
        """Add ``record`` and make it current, writing ``fields`` (flat name/value pairs) to
        the session. With ``job_id``: only while that job is still the session's; without:
        only while no job is queued or running. Returns OK, NOT_FOUND, STALE or BUSY."""
        parent = "" if record.parent is None else str(record.parent)
        return str(self._append(keys=self._keys(session_id),
                                args=[job_id or "", record.version, record.to_json(), parent, self.ttl, time.time(),
                                      *fields]))

    def move(self, session_id: str, mode: str, target: int | None = None) -> int:
        """Point the session at another version (``mode``: undo, redo or to ``target``).
        Returns the new current version. :raises MoveRefused:"""
        state, current = self._move(keys=self._keys(session_id),
                                    args=[mode, "" if target is None else str(target), time.time(), self.ttl])
        if state != "OK":
            raise MoveRefused(str(state), int(current) if current else None)
        return int(current)

    def prune(self, session_id: str, keep: int) -> list[int]:
        """Mark the oldest versions beyond ``keep`` pruned: never the current one nor its
        ``keep - 1`` nearest ancestors. Returns the versions marked; their audio is the
        caller's to delete."""
        return [int(v) for v in self._prune(keys=self._keys(session_id), args=[max(1, keep)])]

    def withdraw(self, session_id: str, version: int) -> int:
        """A version whose audio was never stored: marked pruned, and when it is current
        the session goes back to its parent. Returns the current version after (0: none)."""
        return int(self._withdraw(keys=self._keys(session_id), args=[str(version), time.time()]))

    def read(self, session_id: str) -> History:
        """The whole tree and the current pointer."""
        self._ensure(keys=self._keys(session_id), args=[time.time()])
        with self.r.pipeline(transaction=True) as p:
            p.hget(keys.session(session_id), "version")
            p.hgetall(keys.session_versions(session_id))
            current, raw = p.execute()
        records: dict[int, VersionRecord] = {}
        for name, text in raw.items():
            if "." in name:
                continue
            try:
                records[int(name)] = VersionRecord.from_json(text, redo_to=raw.get(f"{name}.child"),
                                                             pruned=f"{name}.pruned" in raw)
            except (ValueError, KeyError, TypeError):
                continue  # an unreadable record names no audio anyone can get back
        cur = int(current) if current and int(current) in records else None
        return History(current=cur, versions=records)
