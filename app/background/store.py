"""The shared job store in Redis (`LSRCNN_JOBS_STORE=redis://...`): what any replica reads
and writes, each step one atomic call (a Lua script where it reads before it writes).

Layout, under one prefix (standalone Redis: the scripts touch keys they derive):
- `jobs`, a stream with one consumer group: one entry per job not yet finished. Replicas
  pull (XREADGROUP) when their request work allows; an entry a replica holds stays in the
  group's pending list, and the holder resets its idle time every beat (XCLAIM JUSTID). One
  idle past the lease is taken over by another replica (XAUTOCLAIM): a replica that died by
  kill -9 or a drained node loses no job. Finished entries are acknowledged and deleted.
- `job:<id>`, a hash: the state as submitted (JSON) and what moves (status, runner, tiles
  done, eta, error, result key).
- `job:<id>:in` and `job:<id>:out:<attempt>`: the payloads, as hashes of 1 MiB chunks, so
  that no reply is large enough to hold the event loop (the job pixel limit's input is
  32 chunks, its result up to about 250).
- `bytes` (job id -> bytes held or promised: the cap), `reserving` (submissions being
  written, by deadline) and `expires` (finished jobs, by the end of their time to live):
  any replica sweeps the two indexes, so the cap falls as jobs go.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, RedisError, ResponseError

from app.images.sizing import Size

CHUNK = 1024 * 1024
GROUP = "replicas"
RESERVE_S = 600  # a submission not committed by then is swept (its replica died meanwhile)


class StoreUnavailable(Exception):
    """The shared store cannot be reached: job routes answer 503 with this reason."""


class Jobs(Protocol):
    """What the job routes need of a store: the embedded spool or the shared one."""

    async def create(self, data: bytes, size: Size, fmt: str | None, quality: int,
                     model: str | None, kind: str, strip: bool, filename: str | None
                     ) -> dict[str, Any]: ...
    async def status(self, job_id: str) -> dict[str, Any] | None: ...
    async def open_result(self, job_id: str
                          ) -> tuple[dict[str, Any], Path | ResultStream] | None: ...
    async def cancel(self, job_id: str) -> dict[str, Any] | None: ...


# KEYS: bytes, reserving. ARGV: id, need, cap, deadline. -> {admitted, bytes used}
_ADMIT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {1, 0} end  -- run twice
local used = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do used = used + tonumber(v) end
if used + tonumber(ARGV[2]) > tonumber(ARGV[3]) then return {0, used} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return {1, used}
"""
# KEYS: job, reserving, stream. ARGV: id, state json, est_s. -> stream id, or 0 (swept)
_COMMIT = """
local done = redis.call('HGET', KEYS[1], 'msg')
if done then return done end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
local msg = redis.call('XADD', KEYS[3], '*', 'id', ARGV[1])
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'status', 'queued', 'msg', msg,
           'tiles_done', 0, 'est_s', ARGV[3], 'attempts', 0)
return msg
"""
# KEYS: job, stream. ARGV: group, msg, consumer, now. -> attempt number, or 0 (drop it)
_START = """
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'queued' or st == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'runner', ARGV[3], 'beat_at', ARGV[4])
  return redis.call('HINCRBY', KEYS[1], 'attempts', 1)
end
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return 0
"""
_MINE = """
local function mine(stream, group, msg, consumer)
  local p = redis.call('XPENDING', stream, group, msg, msg, 1)
  return #p > 0 and p[1][2] == consumer
end
"""
# KEYS: job, stream. ARGV: group, msg, consumer, tiles done, eta_s, now.
# -> 'running', or why the holder must stop: 'lost' (taken over), 'cancelled', 'gone'
_BEAT = _MINE + """
if not mine(KEYS[2], ARGV[1], ARGV[2], ARGV[3]) then return 'lost' end
local st = redis.call('HGET', KEYS[1], 'status')
-- Status first: a beat that lands after a hand-back must not make the job look held.
if st ~= 'running' then return st or 'gone' end
redis.call('XCLAIM', KEYS[2], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
redis.call('HSET', KEYS[1], 'tiles_done', ARGV[4], 'eta_s', ARGV[5], 'beat_at', ARGV[6])
return 'running'
"""
# KEYS: job, stream, bytes, expires, input. ARGV: group, msg, consumer, id, status, error,
# result key, result bytes, now, expire at, bytes kept. -> 1 finished, 0 not the holder's
_FINISH = _MINE + """
if ARGV[7] ~= '' and redis.call('HGET', KEYS[1], 'result_key') == ARGV[7] then return 1 end
local held = mine(KEYS[2], ARGV[1], ARGV[2], ARGV[3])
if held then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[2])
end
if not held or redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[5], 'error', ARGV[6], 'result_key', ARGV[7],
           'result_bytes', ARGV[8], 'finished', ARGV[9])
redis.call('DEL', KEYS[5])
if ARGV[7] ~= '' then redis.call('PERSIST', ARGV[7]) end  -- kept: the sweeper removes it
-- What earlier attempts stored in part (their replica died, or lost the store) goes now,
-- not when it expires.
for a = 1, tonumber(redis.call('HGET', KEYS[1], 'attempts') or 0) do
  local k = KEYS[1] .. ':out:' .. a
  if k ~= ARGV[7] then redis.call('DEL', k) end
end
redis.call('HSET', KEYS[3], ARGV[4], ARGV[11])
redis.call('ZADD', KEYS[4], ARGV[10], ARGV[4])
return 1
"""
# KEYS: job, stream. ARGV: group, msg, consumer, lease ms. A holder stopping hands its job
# back at once: queued again, its entry idle past the lease, the attempt not counted.
_RELEASE = _MINE + """
if not mine(KEYS[2], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XCLAIM', KEYS[2], ARGV[1], ARGV[3], 0, ARGV[2], 'IDLE', ARGV[4], 'JUSTID')
if redis.call('HGET', KEYS[1], 'status') == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'queued')
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)  -- a handover, not a failure
end
return 1
"""
# KEYS: job, stream, bytes, expires, input. ARGV: group, id, now, expire at, bytes kept.
# -> {1, 'cancelled'}, {0, status} (a finished job, removed with its result), or nil
_CANCEL = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return nil end
redis.call('DEL', KEYS[5])
if st == 'queued' or st == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished', ARGV[3])
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[5])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[2])
  if st == 'queued' then  -- a running one's holder acknowledges it when it stops
    local msg = redis.call('HGET', KEYS[1], 'msg')
    redis.call('XACK', KEYS[2], ARGV[1], msg)
    redis.call('XDEL', KEYS[2], msg)
  end
  return {1, 'cancelled'}
end
local result = redis.call('HGET', KEYS[1], 'result_key')
if result then redis.call('DEL', result) end
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
return {0, st}
"""
# KEYS: bytes, reserving, expires. ARGV: now, prefix. -> jobs swept
# KEYS: bytes, reserving, input, job. ARGV: id. A submission that failed before its 202 lets
# its reservation go, unless its commit ran after all (a reply lost).
_UNRESERVE = """
if redis.call('HEXISTS', KEYS[4], 'msg') == 1 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return 1
"""
# KEYS: stream. ARGV: group, idle ms. Consumers idle that long holding nothing leave the
# group, checked and removed at once (none can take an entry in between).
_FORGET = """
local n = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['pending'] == 0 and info['idle'] > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    n = n + 1
  end
end
return n
"""
_SWEEP = """
local n = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 100)) do
  redis.call('DEL', ARGV[2] .. 'job:' .. id .. ':in')
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  n = n + 1
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, 100)) do
  local job = ARGV[2] .. 'job:' .. id
  local result = redis.call('HGET', job, 'result_key')
  if result then redis.call('DEL', result) end
  redis.call('DEL', job, job .. ':in')
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[3], id)
  n = n + 1
end
return n
"""
# KEYS: bytes, stream, expires. ARGV: prefix. -> {bytes, flat status/count pairs}
_COUNTS = """
local used = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do used = used + tonumber(v) end
local counts, seen = {}, {}
local function count(id)
  if seen[id] then return end  -- a cancelled job still running is in both indexes
  seen[id] = true
  local st = redis.call('HGET', ARGV[1] .. 'job:' .. id, 'status')
  if st then counts[st] = (counts[st] or 0) + 1 end
end
for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+')) do count(e[2][2]) end
for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do count(id) end
local flat = {}
for st, n in pairs(counts) do flat[#flat + 1] = st; flat[#flat + 1] = n end
return {used, flat}
"""


@dataclass
class ResultStream:
    """A result held in the store, read chunk by chunk as the response is sent."""

    store: Store
    key: str
    size: int

    async def chunks(self) -> AsyncIterator[bytes]:
        for i in range(math.ceil(self.size / CHUNK)):
            chunk = await self.store.r.hget(self.key, str(i))  # type: ignore[misc]
            if chunk is None:  # removed meanwhile (DELETE, its time to live over)
                return
            yield chunk


class Store:
    def __init__(self, url: str, prefix: str = "lsrcnn:") -> None:
        # A connection the server closed (a restart) is retried on a new one; a command
        # that timed out is not (it may have run: the scripts below are safe to run twice
        # where a lost reply is likely, and the caller sees the error otherwise).
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), 2, (ConnectionError,))
        self.r = aioredis.from_url(url, socket_timeout=10, socket_connect_timeout=5,
                                   health_check_interval=15, retry=retry)
        self.p = prefix
        self.stream, self.bytes_key = prefix + "jobs", prefix + "bytes"
        self.reserving, self.expires = prefix + "reserving", prefix + "expires"
        script = self.r.register_script
        self._admit, self._commit, self._start = script(_ADMIT), script(_COMMIT), script(_START)
        self._beat, self._finish, self._release = script(_BEAT), script(_FINISH), \
            script(_RELEASE)
        self._cancel, self._sweep, self._counts = script(_CANCEL), script(_SWEEP), \
            script(_COUNTS)
        self._unreserve, self._forget = script(_UNRESERVE), script(_FORGET)
        self._claim_from = "0-0"  # XAUTOCLAIM's cursor: each call scans on from the last

    def job(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}"

    def result_key(self, job_id: str, attempt: int) -> str:
        """Where an attempt stores its result (FINISH removes the other attempts' by it)."""
        return f"{self.job(job_id)}:out:{attempt}"

    async def close(self) -> None:
        await self.r.aclose()

    async def ensure_group(self) -> None:
        try:
            await self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    # -- submission ----------------------------------------------------------------------

    async def admit(self, job_id: str, need: int, cap: int) -> tuple[bool, int]:
        ok, used = await self._admit(keys=[self.bytes_key, self.reserving],
                                     args=[job_id, need, cap, time.time() + RESERVE_S])
        return bool(ok), int(used)

    async def put_chunks(self, key: str, data: bytes | memoryview) -> None:
        """A payload, one chunk a call: each reply small, the event loop free between."""
        view = memoryview(data)
        for i in range(0, max(1, len(view)), CHUNK):
            await self.r.hset(key, str(i // CHUNK), bytes(view[i:i + CHUNK]))  # type: ignore[misc]

    async def put_file(self, key: str, path: Path, expire_s: float) -> int:
        """A file, read and stored one chunk at a time, expiring after `expire_s` unless
        persisted; its size."""
        size = 0
        with open(path, "rb") as f:
            for i in itertools.count():
                chunk = await asyncio.to_thread(f.read, CHUNK)
                if not chunk and i:
                    return size
                if i == 0:  # never without its expiry, even if the store dies right after
                    async with self.r.pipeline(transaction=True) as pipe:
                        pipe.hset(key, "0", chunk)
                        pipe.expire(key, int(expire_s))
                        await pipe.execute()
                else:
                    await self.r.hset(key, str(i), chunk)  # type: ignore[misc]
                size += len(chunk)
                if not chunk:
                    return size
        return size

    async def get_chunks(self, key: str) -> list[bytes]:
        n = await self.r.hlen(key)  # type: ignore[misc]
        chunks = []
        for i in range(n):
            chunk = await self.r.hget(key, str(i))  # type: ignore[misc]
            if chunk is None:
                raise KeyError(key)
            chunks.append(chunk)
        return chunks

    async def commit(self, job_id: str, state_json: bytes, est_s: float) -> bool:
        msg = await self._commit(keys=[self.job(job_id), self.reserving, self.stream],
                                 args=[job_id, state_json, est_s])
        return msg != 0

    async def unreserve(self, job_id: str) -> None:
        await self._unreserve(keys=[self.bytes_key, self.reserving, self.job(job_id) + ":in",
                                    self.job(job_id)], args=[job_id])

    # -- reading -------------------------------------------------------------------------

    async def read(self, job_id: str) -> dict[str, str] | None:
        raw = await self.r.hgetall(self.job(job_id))  # type: ignore[misc]
        return {k.decode(): v.decode() for k, v in raw.items()} or None

    async def queue(self) -> list[str]:
        """Ids of the jobs not finished, oldest first."""
        entries = await self.r.xrange(self.stream, "-", "+")
        return [fields[b"id"].decode() for _, fields in entries]

    async def progress_of(self, ids: list[str]) -> list[dict[str, str]]:
        """What estimates need of many jobs, in one round trip."""
        fields = ("status", "eta_s", "beat_at", "est_s")
        async with self.r.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self.job(job_id), fields)
            rows = await pipe.execute()
        return [{k: v.decode() for k, v in zip(fields, row, strict=True) if v is not None}
                for row in rows]

    async def forget_idle(self, idle_s: float) -> None:
        """Consumers of replicas long gone, holding nothing, leave the group (each process
        start is a new consumer)."""
        await self._forget(keys=[self.stream], args=[GROUP, int(idle_s * 1000)])
        await self.r.zremrangebyscore(self.p + "replicas", "-inf", time.time() - idle_s)

    async def counts(self) -> tuple[int, dict[str, int]]:
        used, flat = await self._counts(keys=[self.bytes_key, self.stream, self.expires],
                                        args=[self.p])
        return int(used), {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def live_replicas(self, lease_s: float) -> int:
        return await self.r.zcount(self.p + "replicas", time.time() - lease_s, "+inf")

    async def seen(self, consumer: str) -> None:
        await self.r.zadd(self.p + "replicas", {consumer: time.time()})

    # -- running -------------------------------------------------------------------------

    async def take(self, consumer: str, lease_ms: int, block_ms: int
                   ) -> tuple[str, str] | None:
        """The next job for this replica: one whose holder's lease ran out first, else a new
        one (waiting up to block_ms); (stream id, job id)."""
        cursor, claimed, _ = await self.r.xautoclaim(self.stream, GROUP, consumer, lease_ms,
                                                     self._claim_from, count=1)
        self._claim_from = cursor.decode() if isinstance(cursor, bytes) else cursor
        if not claimed:
            got = await self.r.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=1,
                                          block=block_ms)
            if not got or not got[0][1]:
                return None
            claimed = got[0][1]
        msg, fields = claimed[0]
        return msg.decode(), fields[b"id"].decode()

    async def start(self, job_id: str, msg: str, consumer: str) -> int:
        return int(await self._start(keys=[self.job(job_id), self.stream],
                                     args=[GROUP, msg, consumer, time.time()]))

    async def beat(self, job_id: str, msg: str, consumer: str, done: int, eta_s: float
                   ) -> str:
        said = await self._beat(keys=[self.job(job_id), self.stream],
                                args=[GROUP, msg, consumer, done, eta_s, time.time()])
        return said.decode() if isinstance(said, bytes) else str(said)

    async def finish(self, job_id: str, msg: str, consumer: str, status: str, error: str,
                     result_key: str, result_bytes: int, kept_bytes: int, ttl_s: float
                     ) -> bool:
        now = time.time()
        return bool(await self._finish(
            keys=[self.job(job_id), self.stream, self.bytes_key, self.expires,
                  self.job(job_id) + ":in"],
            args=[GROUP, msg, consumer, job_id, status, error, result_key, result_bytes, now,
                  now + ttl_s, kept_bytes]))

    async def release(self, job_id: str, msg: str, consumer: str, lease_ms: int) -> None:
        await self._release(keys=[self.job(job_id), self.stream],
                            args=[GROUP, msg, consumer, lease_ms + 1])

    async def cancel(self, job_id: str, kept_bytes: int, ttl_s: float
                     ) -> tuple[bool, str] | None:
        """(whether a queued or running job was cancelled, the status now shown)."""
        now = time.time()
        said = await self._cancel(
            keys=[self.job(job_id), self.stream, self.bytes_key, self.expires,
                  self.job(job_id) + ":in"],
            args=[GROUP, job_id, now, now + ttl_s, kept_bytes])
        return None if said is None else (bool(said[0]), said[1].decode())

    async def sweep(self) -> int:
        return int(await self._sweep(keys=[self.bytes_key, self.reserving, self.expires],
                                     args=[time.time(), self.p]))


__all__ = ["CHUNK", "Jobs", "RedisError", "ResultStream", "Store", "StoreUnavailable"]
