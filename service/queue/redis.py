"""The Redis Streams job queue: API nodes and GPU workers on many machines share one Redis.

Key layout (``P`` = ``key_prefix``, ``M`` = ``model``); see
docs/reference/safety-and-scaleout.md B2/B3:

=====================  ===========  ==============================================================
key                    type         content
=====================  ===========  ==============================================================
``P jobs:M:front``     stream       released and reaped jobs: read before everything else
``P jobs:M:p0``        stream       priority ``normal``; consumer group ``workers`` on all three
``P jobs:M:p1``        stream       priority ``low``
``P queue:M:front``    sorted set   queued job ids of each stream in claim order (score: ``seq``);
``P queue:M:p0|p1``                 ``queue_position`` = ``ZRANK`` + the sizes of the sets ahead
``P seq:M``            string       counter giving the scores above
``P req:{id}``         hash         ``job`` (``Job.to_json()``) and the live fields ``status``,
                                    ``deliveries``, ``lost``, ``cancel``, ``started_at``,
                                    ``completed_at``, ``outcome`` (JSON), ``consumer``, and where
                                    its queue entry is (``stream``, ``entry``, ``zset``); TTL
                                    ``result_ttl`` once completed
``P log:{id}``         list         log lines (``LogEntry`` JSON), ``RPUSH``: O(1); same TTL
``P lease:{id}``       string       the consumer running it, ``PX lease_seconds``; heartbeats
                                    renew it, and the reaper takes back jobs whose lease is gone
``P done:M``           sorted set   completed ids by completion time, for ``expire()``
``P jobs:M:dead``      stream       dead letters (``MAXLEN ~ 10000``)
``P wake:{uuid}``      stream       this instance's wake-up call: ``close()`` writes it
=====================  ===========  ==============================================================

Every state change is one Lua script, so each is atomic and one round trip; stream entries are
acknowledged *and deleted* once done with, so the streams stay small. The scripts derive the per-job
keys from ids, which suits a single Redis (with replicas / Sentinel), not Redis Cluster.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

import redis
from redis.commands.core import Script
from redis.typing import KeyT, StreamIdT

from core.errors import QueueFull, UnreadableJob
from service.jobs import (
    CancelOutcome,
    CancelResult,
    Job,
    JobStatus,
    JobView,
    LogEntry,
    Outcome,
    Priority,
    Reaped,
    WorkerInfo,
)
from service.outcomes import CANCELLED, failure, lost_worker
from service.queue.base import RESYNC, ChangeListener
from service.redis_client import connect, redis_errors

logger = logging.getLogger(__name__)

GROUP = "workers"
DEAD_LETTER_MAXLEN = 10_000
REAP_SCAN = 1000  # pending entries looked at per stream and sweep
CLOSE_WAIT = 2.0  # seconds close() waits for woken claims to return
WORKER_MEMORY = 3600.0  # seconds a worker that never withdrew is remembered past its lease
FEED_POLL = 1.0  # seconds the change feed blocks per read (bounds how fast it notices close())
FEED_BACKOFF = (0.1, 5.0)  # first and longest wait before the change feed reconnects

# KEYS of every script, in this order: the three streams, their three position sets, the score
# counter, the completed set and the dead-letter stream. ARGV[1] is the key prefix, ARGV[2] the
# consumer group; a script's own arguments follow.
_PRELUDE = """
local PREFIX, GROUP = ARGV[1], ARGV[2]
local STREAMS = {KEYS[1], KEYS[2], KEYS[3]}
local ZSETS = {KEYS[4], KEYS[5], KEYS[6]}
local SEQ, DONE, DEAD = KEYS[7], KEYS[8], KEYS[9]

local CHANNEL = PREFIX .. 'changes'

local function req_key(id) return PREFIX .. 'req:' .. id end
local function log_key(id) return PREFIX .. 'log:' .. id end
local function lease_key(id) return PREFIX .. 'lease:' .. id end

-- tell API nodes that a job changed (its id), or that queue positions moved ('@queue')
local function changed(id) redis.call('PUBLISH', CHANNEL, id) end
local function queue_moved() redis.call('PUBLISH', CHANNEL, '@queue') end

-- forget a job's stream entry (acknowledged, deleted) and its queue position
local function unlink(req)
  local f = redis.call('HMGET', req, 'id', 'stream', 'entry', 'zset')
  if f[2] and f[3] then
    redis.call('XACK', f[2], GROUP, f[3])
    redis.call('XDEL', f[2], f[3])
  end
  if f[1] and f[4] and redis.call('ZREM', f[4], f[1]) == 1 then queue_moved() end
  redis.call('HDEL', req, 'stream', 'entry', 'zset')
end

-- (re)queue a job at the end of stream i: a fresh entry and a queue position
local function enqueue(id, i)
  local req = req_key(id)
  local entry = redis.call('XADD', STREAMS[i], '*', 'id', id)
  redis.call('ZADD', ZSETS[i], redis.call('INCR', SEQ), id)
  redis.call('HSET', req, 'status', 'IN_QUEUE', 'stream', STREAMS[i], 'entry', entry,
             'zset', ZSETS[i], 'started_at', '')
  redis.call('HDEL', req, 'consumer')
  redis.call('DEL', lease_key(id))
  changed(id)
  queue_moved()
end

-- mark a job COMPLETED with an outcome (JSON); its keys live ttl_ms more
local function finish(id, outcome, now, ttl_ms)
  local req = req_key(id)
  unlink(req)
  redis.call('HSET', req, 'status', 'COMPLETED', 'outcome', outcome, 'completed_at', now)
  redis.call('HDEL', req, 'consumer')
  redis.call('DEL', lease_key(id))
  redis.call('PEXPIRE', req, ttl_ms)
  redis.call('PEXPIRE', log_key(id), ttl_ms)
  redis.call('ZADD', DONE, now, id)
  changed(id)
end

local function snapshot(id)
  return {id, redis.call('HGETALL', req_key(id)), redis.call('LRANGE', log_key(id), 0, -1)}
end
"""

# ARGV: id, stream index (1-3), max_queued, n = the number of hash fields and values, those n
# strings, then the job's log lines. Returns 0 when the queue is full.
_SUBMIT = """
local id, i, max_queued, nfields = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local queued = redis.call('ZCARD', ZSETS[1]) + redis.call('ZCARD', ZSETS[2])
               + redis.call('ZCARD', ZSETS[3])
if queued >= max_queued then return 0 end
local req = req_key(id)
unlink(req)
redis.call('DEL', req, log_key(id), lease_key(id))
redis.call('HSET', req, unpack(ARGV, 7, 6 + nfields))
for j = 7 + nfields, #ARGV do redis.call('RPUSH', log_key(id), ARGV[j]) end
enqueue(id, i)
return 1
"""

# ARGV: id, outcome, now, ttl_ms, number of hash fields+values, the fields..., the logs...
_FINISH_NOW = """
local id, outcome, now, ttl, nfields = ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
local req = req_key(id)
unlink(req)
redis.call('DEL', req, log_key(id), lease_key(id))
redis.call('HSET', req, unpack(ARGV, 8, 7 + nfields))
for j = 8 + nfields, #ARGV do redis.call('RPUSH', log_key(id), ARGV[j]) end
finish(id, outcome, now, ttl)
return 1
"""

# ARGV: id. Returns false, or {hash, logs, position (-1 when not queued)}.
_VIEW = """
local id = ARGV[3]
local h = redis.call('HGETALL', req_key(id))
if #h == 0 then return false end
local f = redis.call('HMGET', req_key(id), 'status', 'zset')
local position = -1
if f[1] == 'IN_QUEUE' and f[2] then
  local rank = redis.call('ZRANK', f[2], id)
  if rank then
    position = rank
    for i = 1, 3 do
      if ZSETS[i] == f[2] then break end
      position = position + redis.call('ZCARD', ZSETS[i])
    end
  end
end
return {h, redis.call('LRANGE', log_key(id), 0, -1), position}
"""

# ARGV: consumer, max_jobs, now, lease_ms. Reads the streams in order without blocking; skips
# (acknowledges) entries whose job is no longer queued. Returns {claimed snapshots, last ids}: the
# last entry id of each stream (for a blocking XREAD that wakes on anything newer).
_CLAIM = """
local consumer, max_jobs, now, lease_ms = ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
local claimed = {}
for i = 1, 3 do
  while #claimed < max_jobs do
    local res = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', max_jobs - #claimed,
                           'STREAMS', STREAMS[i], '>')
    if not res or #res[1][2] == 0 then break end
    for _, e in ipairs(res[1][2]) do
      local eid, id = e[1], e[2][2]
      local req = req_key(id)
      local f = redis.call('HMGET', req, 'status', 'entry')
      if f[1] == 'IN_QUEUE' and f[2] == eid then
        redis.call('ZREM', ZSETS[i], id)
        redis.call('HSET', req, 'status', 'IN_PROGRESS', 'started_at', now, 'consumer', consumer)
        redis.call('HDEL', req, 'zset')
        redis.call('HINCRBY', req, 'deliveries', 1)
        redis.call('SET', lease_key(id), consumer, 'PX', lease_ms)
        changed(id)
        table.insert(claimed, snapshot(id))
      else
        redis.call('XACK', STREAMS[i], GROUP, eid)
        redis.call('XDEL', STREAMS[i], eid)
      end
    end
  end
end
if #claimed > 0 then queue_moved() end
local last = {}
if #claimed == 0 then
  for i = 1, 3 do
    local r = redis.call('XREVRANGE', STREAMS[i], '+', '-', 'COUNT', 1)
    last[i] = r[1] and r[1][1] or '0-0'
  end
end
return {claimed, last}
"""

# ARGV: consumer, lease_ms, ids...: renews the leases this consumer still holds.
_HEARTBEAT = """
local consumer, lease_ms = ARGV[3], ARGV[4]
for j = 5, #ARGV do
  local id = ARGV[j]
  local f = redis.call('HMGET', req_key(id), 'status', 'consumer')
  if f[1] == 'IN_PROGRESS' and f[2] == consumer then
    redis.call('SET', lease_key(id), consumer, 'PX', lease_ms)
  end
end
return 0
"""

# ARGV: cancelled outcome, now, ttl_ms, ids...: running jobs go back to the front stream, in this
# order; one cancelled while held is completed as cancelled instead. Returns the snapshots of
# those (their webhooks are the caller's to send).
_RELEASE = """
local cancelled = {}
for j = 6, #ARGV do
  local id = ARGV[j]
  local req = req_key(id)
  local f = redis.call('HMGET', req, 'status', 'cancel')
  if f[1] == 'IN_PROGRESS' then
    if f[2] == '1' then
      finish(id, ARGV[3], ARGV[4], ARGV[5])
      table.insert(cancelled, snapshot(id))
    else
      unlink(req)
      enqueue(id, 1)
    end
  end
end
return cancelled
"""

# ARGV: idle_ms, max_deliveries, now, ttl_ms, dead-letter outcome, timestamp, requeue log line,
# dead log line. Takes back jobs whose lease lapsed: requeued at the front, or, once they were lost
# max_deliveries times, dead-lettered and completed as failed. Returns {requeued ids, snapshots of
# the dead-lettered jobs} (their webhooks are the caller's to send).
_REAP = """
local idle_ms, max_lost, now, ttl = ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
local outcome, requeue_log, dead_log = ARGV[7], ARGV[8], ARGV[9]
-- ARGV[10]: pending entries looked at per stream; ARGV[11]: dead-letter stream MAXLEN
local requeued, dead = {}, {}
for i = 1, 3 do
  local pending = redis.call('XPENDING', STREAMS[i], GROUP, 'IDLE', idle_ms, '-', '+', ARGV[10])
  for _, p in ipairs(pending) do
    local eid, owner = p[1], p[2]
    local e = redis.call('XRANGE', STREAMS[i], eid, eid)
    if #e == 0 then
      redis.call('XACK', STREAMS[i], GROUP, eid)
    else
      local id = e[1][2][2]
      local req = req_key(id)
      if redis.call('EXISTS', lease_key(id)) == 0 then
        local f = redis.call('HMGET', req, 'status', 'entry')
        if f[1] ~= 'IN_PROGRESS' or f[2] ~= eid then
          redis.call('XACK', STREAMS[i], GROUP, eid)
          redis.call('XDEL', STREAMS[i], eid)
        elseif redis.call('HINCRBY', req, 'lost', 1) >= max_lost then
          redis.call('XADD', DEAD, 'MAXLEN', '~', ARGV[11], '*', 'id', id, 'consumer', owner,
                     'stream', STREAMS[i], 'deliveries', redis.call('HGET', req, 'deliveries'))
          redis.call('RPUSH', log_key(id), dead_log)
          finish(id, outcome, now, ttl)
          table.insert(dead, snapshot(id))
        else
          redis.call('RPUSH', log_key(id), requeue_log)
          unlink(req)
          enqueue(id, 1)
          table.insert(requeued, id)
        end
      end
    end
  end
end
return {requeued, dead}
"""

# ARGV: id, outcome, now, ttl_ms. Returns the completed job's snapshot, or false if it was
# completed already (first completion wins) or is unknown.
_COMPLETE = """
local id = ARGV[3]
local status = redis.call('HGET', req_key(id), 'status')
if not status or status == 'COMPLETED' then return false end
finish(id, ARGV[4], ARGV[5], ARGV[6])
return snapshot(id)
"""

# ARGV: id, cancelled outcome, now, ttl_ms. Returns the CancelOutcome value, with the job's
# snapshot when the cancel completed it (it was queued: nobody else will send its webhook).
_CANCEL = """
local id = ARGV[3]
local req = req_key(id)
local status = redis.call('HGET', req, 'status')
if not status then return 'NOT_FOUND' end
if status == 'COMPLETED' then return 'ALREADY_COMPLETED' end
redis.call('HSET', req, 'cancel', '1')
if status == 'IN_QUEUE' then
  finish(id, ARGV[4], ARGV[5], ARGV[6])
  return {'CANCELLATION_REQUESTED', snapshot(id)}
end
return 'CANCELLATION_REQUESTED'
"""

# ARGV: id, entry: appended unless the job is unknown or completed.
_LOG = """
local status = redis.call('HGET', req_key(ARGV[3]), 'status')
if status and status ~= 'COMPLETED' then
  redis.call('RPUSH', log_key(ARGV[3]), ARGV[4])
  changed(ARGV[3])
end
return 0
"""

# ARGV: cutoff (unix time). Completed before it: removed from the completed set and returned.
_EXPIRE = """
local ids = redis.call('ZRANGEBYSCORE', DONE, '-inf', '(' .. ARGV[3], 'LIMIT', 0, 1000)
if #ids > 0 then redis.call('ZREM', DONE, unpack(ids)) end
return ids
"""


class RedisJobQueue:
    """Implements :class:`service.queue.base.JobQueue` on Redis Streams (one consumer per process).

    ``normal`` jobs go to stream p0, ``low`` to p1; released and reaped jobs to a front stream read
    first. A claimed job holds a lease (``lease:{id}``, ``lease_seconds``) that ``heartbeat``
    renews; ``reap`` (any node) re-queues jobs whose lease lapsed and dead-letters a job whose
    lease lapsed ``max_deliveries`` times (releases do not count).
    """

    def __init__(
        self,
        url: str,
        *,
        consumer: str,
        model: str = "flux2",
        max_queued: int = 1000,
        result_ttl: float = 3600,
        lease_seconds: float = 30,
        max_deliveries: int = 3,
        key_prefix: str = "flux2:",
    ) -> None:
        self.consumer = consumer
        self.model = model
        self.max_queued = max_queued
        self.result_ttl = result_ttl
        self.lease_seconds = lease_seconds
        self.max_deliveries = max_deliveries
        self.prefix = key_prefix
        base = f"{key_prefix}jobs:{model}"
        self.streams = (f"{base}:front", f"{base}:p0", f"{base}:p1")
        self.zsets = tuple(f"{key_prefix}queue:{model}:{s}" for s in ("front", "p0", "p1"))
        self.dead_letters = f"{base}:dead"
        self._keys = [
            *self.streams,
            *self.zsets,
            f"{key_prefix}seq:{model}",
            f"{key_prefix}done:{model}",
            self.dead_letters,
        ]
        self._wake = f"{key_prefix}wake:{uuid.uuid4().hex}"
        self.channel = f"{key_prefix}changes"
        self._workers_seen = f"{key_prefix}workers:{model}"  # sorted set: name -> expires at
        self._workers_info = f"{key_prefix}workers:{model}:info"  # hash: name -> WorkerInfo
        self._listeners: list[ChangeListener] = []
        self._feed: threading.Thread | None = None
        self._feed_lock = threading.Lock()
        self._closed = threading.Event()
        self._waiting = threading.Condition()  # guards _waiters: claims blocked in XREAD
        self._waiters = 0
        with redis_errors("connect"):
            self._redis = connect(url, decode_responses=True)
            self._scripts = {
                name: self._redis.register_script(_PRELUDE + body)
                for name, body in {
                    "submit": _SUBMIT,
                    "finish_now": _FINISH_NOW,
                    "view": _VIEW,
                    "claim": _CLAIM,
                    "heartbeat": _HEARTBEAT,
                    "release": _RELEASE,
                    "reap": _REAP,
                    "complete": _COMPLETE,
                    "cancel": _CANCEL,
                    "log": _LOG,
                    "expire": _EXPIRE,
                }.items()
            }
            self._create_groups()

    # -- the JobQueue protocol ---------------------------------------------------------------

    def submit(self, job: Job) -> None:
        job.status = JobStatus.IN_QUEUE
        stream = 3 if job.priority is Priority.LOW else 2
        fields = _fields(job)
        done = self._run(
            "submit",
            job.id,
            stream,
            self.max_queued,
            len(fields),
            *fields,
            *(_dump(e.to_json()) for e in job.logs),
        )
        if not done:
            raise QueueFull(f"the queue is full ({self.max_queued} requests waiting)")

    def finish_now(self, job: Job, outcome: Outcome) -> None:
        now = time.time()
        fields = _fields(job)
        self._run(
            "finish_now",
            job.id,
            _dump(outcome.to_json()),
            repr(now),
            self._ttl_ms,
            len(fields),
            *fields,
            *(_dump(e.to_json()) for e in job.logs),
        )
        job.status = JobStatus.COMPLETED
        job.outcome = outcome
        job.completed_at = now

    def view(self, job_id: str) -> JobView | None:
        found = self._run("view", job_id)
        if not found:
            return None
        flat, logs, position = found
        fields = _hash(flat)
        status = JobStatus(fields["status"])
        outcome = fields.get("outcome")
        return JobView(
            job_id,
            status,
            int(position) if status is JobStatus.IN_QUEUE and position >= 0 else None,
            tuple(LogEntry.from_json(json.loads(line)) for line in logs),
            Outcome.from_json(json.loads(outcome)) if outcome else None,
            owner=_owner(fields),
        )

    def claim(self, max_jobs: int, timeout: float) -> list[Job]:
        if max_jobs < 1:
            return []
        deadline = time.monotonic() + timeout
        while True:
            claimed, last = self._run(
                "claim", self.consumer, max_jobs, repr(time.time()), self._lease_ms
            )
            if claimed:
                jobs = [job for _, fields, logs in claimed if (job := self._claimed(fields, logs))]
                if jobs:
                    return jobs
                continue  # every record claimed was unreadable (and failed): claim again
            left = deadline - time.monotonic()
            if left <= 0 or self._closed.is_set():
                return []
            # Wait for anything newer than what the script saw (no race), or for close().
            streams: dict[KeyT, StreamIdT] = dict(zip(self.streams, last, strict=True))
            streams[self._wake] = "0-0"
            with self._waiting:
                self._waiters += 1
            try:
                with redis_errors("claim"):
                    self._redis.xread(streams, count=1, block=max(1, int(left * 1000)))
            finally:
                with self._waiting:
                    self._waiters -= 1
                    self._waiting.notify_all()

    def heartbeat(self, job_ids: list[str]) -> None:
        if job_ids:
            self._run("heartbeat", self.consumer, self._lease_ms, *job_ids)

    def release(self, job_ids: list[str]) -> list[Job]:
        if not job_ids:
            return []
        cancelled = self._run(
            "release",
            _dump(CANCELLED.to_json()),
            repr(time.time()),
            self._ttl_ms,
            *job_ids,
        )
        return [_job(fields, logs) for _, fields, logs in cancelled]

    def reap(self) -> Reaped:
        outcome = lost_worker(self.max_deliveries)
        detail = outcome.error or ""
        requeued, dead = self._run(
            "reap",
            int(self.lease_seconds * 1000),
            self.max_deliveries,
            repr(time.time()),
            self._ttl_ms,
            _dump(outcome.to_json()),
            _dump(LogEntry("Worker lease expired: back in the queue", level="WARN").to_json()),
            _dump(LogEntry(detail, level="ERROR").to_json()),
            REAP_SCAN,
            DEAD_LETTER_MAXLEN,
        )
        return Reaped(
            requeued=tuple(str(job_id) for job_id in requeued),
            failed=tuple(_job(fields, logs) for _, fields, logs in dead),
        )

    def log(self, job_id: str, entry: LogEntry) -> None:
        self._run("log", job_id, _dump(entry.to_json()))

    def complete(self, job_id: str, outcome: Outcome) -> Job | None:
        found = self._run(
            "complete", job_id, _dump(outcome.to_json()), repr(time.time()), self._ttl_ms
        )
        if not found:
            return None
        _, fields, logs = found
        return _job(fields, logs)

    def cancel(self, job_id: str) -> CancelResult:
        answer = self._run(
            "cancel", job_id, _dump(CANCELLED.to_json()), repr(time.time()), self._ttl_ms
        )
        if isinstance(answer, list):  # it was queued: completed here, with its snapshot
            outcome, (_, fields, logs) = answer
            return CancelResult(CancelOutcome(outcome), completed=_job(fields, logs))
        return CancelResult(CancelOutcome(answer))

    def is_cancelled(self, job_id: str) -> bool:
        """True when cancellation was asked for, and for unknown, expired or completed jobs:
        there is nothing left to run (a copy still running after its lease lapsed stops)."""
        with redis_errors("is_cancelled"):
            status, cancel = self._redis.hmget(self._req(job_id), ["status", "cancel"])
        return status is None or status == JobStatus.COMPLETED or cancel == "1"

    def expire(self) -> list[str]:
        """Ids completed more than ``result_ttl`` ago (Redis TTLs already removed their keys),
        each returned once across all nodes, so their files can be deleted."""
        ids = self._run("expire", repr(time.time() - self.result_ttl))
        return [str(job_id) for job_id in ids]

    def depth(self) -> int:
        with redis_errors("depth"), self._redis.pipeline(transaction=False) as pipe:
            for zset in self.zsets:
                pipe.zcard(zset)
            return sum(int(n) for n in pipe.execute())

    def announce(self, worker: WorkerInfo, ttl: float) -> None:
        with redis_errors("announce"), self._redis.pipeline() as pipe:
            pipe.hset(self._workers_info, worker.name, _dump(worker.to_json()))
            pipe.zadd(self._workers_seen, {worker.name: worker.seen_at + ttl})
            # Workers gone for an hour without withdrawing (killed) are forgotten.
            gone = time.time() - WORKER_MEMORY
            pipe.zrangebyscore(self._workers_seen, "-inf", gone)
            pipe.zremrangebyscore(self._workers_seen, "-inf", gone)
            *_, forgotten, _ = pipe.execute()
        if forgotten:
            with redis_errors("announce"):
                self._redis.hdel(self._workers_info, *forgotten)

    def withdraw(self, name: str) -> None:
        with redis_errors("withdraw"), self._redis.pipeline() as pipe:
            pipe.zrem(self._workers_seen, name)
            pipe.hdel(self._workers_info, name)
            pipe.execute()

    def live_workers(self) -> list[WorkerInfo]:
        with redis_errors("live_workers"):
            names = [
                str(n) for n in self._redis.zrangebyscore(self._workers_seen, time.time(), "+inf")
            ]
            raw = self._redis.hmget(self._workers_info, names) if names else []
        workers = []
        for text in raw:
            try:
                workers.append(WorkerInfo.from_json(json.loads(str(text))))
            except (TypeError, ValueError):
                continue  # withdrawn meanwhile, or written by another version
        return sorted(workers, key=lambda info: info.name)

    def oldest_queued_age(self) -> float | None:
        with redis_errors("oldest_queued_age"):
            with self._redis.pipeline(transaction=False) as pipe:
                for zset in self.zsets:
                    pipe.zrange(zset, 0, 0)
                firsts = [ids[0] for ids in pipe.execute() if ids]
            with self._redis.pipeline(transaction=False) as pipe:
                for job_id in firsts:
                    pipe.hget(self._req(job_id), "job")
                records = pipe.execute()
        created = []
        for record in records:
            with suppress(TypeError, ValueError, AttributeError):
                created.append(float(json.loads(record)["created_at"]))
        return max(0.0, time.time() - min(created)) if created else None

    def watch(self, listener: ChangeListener) -> Callable[[], None]:
        """One pub/sub subscription per queue object (a thread of its own, started by the first
        listener) feeds every listener; see :meth:`JobQueue.watch`."""
        with self._feed_lock:
            self._listeners.append(listener)
            if self._feed is None:
                self._feed = threading.Thread(
                    target=self._follow_changes, name="flux2-changes", daemon=True
                )
                self._feed.start()

        def stop() -> None:
            with self._feed_lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return stop

    def close(self) -> None:
        """Wake this instance's waiting claims (they return ``[]``), then close the idle
        connections. Connections still in use by other threads are not torn down under them
        (redis-py is not safe against that); they close when released or collected."""
        self._closed.set()
        try:
            with self._redis.pipeline() as pipe:
                pipe.xadd(self._wake, {"closed": "1"})
                pipe.pexpire(self._wake, 60_000)
                pipe.execute()
        except redis.exceptions.RedisError:
            pass  # Redis is gone: a waiting read fails on its own
        with self._waiting:
            self._waiting.wait_for(lambda: self._waiters == 0, timeout=CLOSE_WAIT)
        self._redis.connection_pool.disconnect(inuse_connections=False)

    # -- internals ---------------------------------------------------------------------------

    def _follow_changes(self) -> None:
        """The change feed: subscribe, pass every message on, and when Redis goes away
        reconnect with backoff (telling listeners to ``RESYNC`` once subscribed again)."""
        delay = FEED_BACKOFF[0]
        while not self._closed.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.channel)
                self._tell(RESYNC)  # whatever happened while unsubscribed is looked at again
                delay = FEED_BACKOFF[0]
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=FEED_POLL)
                    if message is not None and message.get("type") == "message":
                        self._tell(str(message["data"]))
            except redis.exceptions.RedisError as exc:
                logger.warning("change feed lost (%s); reconnecting in %.1f s", exc, delay)
                self._closed.wait(delay)
                delay = min(delay * 2, FEED_BACKOFF[1])
            finally:
                with suppress(redis.exceptions.RedisError):
                    pubsub.close()

    def _tell(self, key: str) -> None:
        with self._feed_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(key)
            except Exception:  # a broken listener must not stop the feed
                logger.exception("change listener failed")

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.result_ttl * 1000))

    @property
    def _lease_ms(self) -> int:
        return max(1, int(self.lease_seconds * 1000))

    def _req(self, job_id: str) -> str:
        return f"{self.prefix}req:{job_id}"

    def _run(self, script: str, *args: str | int) -> Any:
        """Run one of the scripts; recreates the consumer group once if Redis lost it."""
        call: Script = self._scripts[script]
        argv = [self.prefix, GROUP, *args]
        with redis_errors(script):
            try:
                return call(keys=self._keys, args=argv)
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._create_groups()
                return call(keys=self._keys, args=argv)

    def _claimed(self, flat: Sequence[str], logs: Sequence[str]) -> Job | None:
        """A claimed record as a job; one that cannot be read at all (not even its envelope)
        is completed as failed here, since no worker can run it or trust its webhook URL.
        (A record whose *input* alone is unreadable comes back with ``input_error`` set: the
        worker fails it through the usual path, webhook included.)"""
        try:
            return _job(flat, logs)
        except (KeyError, TypeError, ValueError) as exc:
            job_id = _hash(flat).get("id", "?")
            logger.error("job %s: unreadable record, failed: %s", job_id, exc)
            failed = failure(UnreadableJob(f"the job record could not be read: {exc}"))
            self._run("complete", job_id, _dump(failed.to_json()), repr(time.time()), self._ttl_ms)
            return None

    def _create_groups(self) -> None:
        for stream in self.streams:
            try:
                self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def _fields(job: Job) -> list[str]:
    """The hash fields of a new record of ``job``, flattened for HSET."""
    values: dict[str, str] = {
        "id": job.id,
        "job": _dump(job.to_json()),
        "status": str(job.status),
        "deliveries": str(job.deliveries),
        "lost": "0",
        "cancel": "1" if job.cancel_requested else "0",
        "started_at": "" if job.started_at is None else repr(job.started_at),
    }
    return [item for pair in values.items() for item in pair]


def _hash(flat: Sequence[str]) -> dict[str, str]:
    """HGETALL's flat list as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _owner(fields: dict[str, str]) -> str | None:
    """The owner recorded in a hash's job JSON, without parsing the rest of the job."""
    try:
        owner = json.loads(fields.get("job") or "{}").get("owner")
    except (ValueError, AttributeError):
        return None
    return owner if isinstance(owner, str) else None


def _job(flat: Sequence[str], logs: Sequence[str]) -> Job:
    """A Job from a hash (HGETALL's flat list) and its log list."""
    fields = _hash(flat)
    data: dict[str, Any] = json.loads(fields["job"])
    data.update(
        status=fields["status"],
        deliveries=int(fields.get("deliveries", 0)),
        cancel_requested=fields.get("cancel") == "1",
        started_at=_float(fields.get("started_at")),
        completed_at=_float(fields.get("completed_at")),
        outcome=json.loads(fields["outcome"]) if fields.get("outcome") else None,
    )
    return Job.from_json(data, logs=[LogEntry.from_json(json.loads(line)) for line in logs])


def _float(value: str | None) -> float | None:
    return float(value) if value else None
