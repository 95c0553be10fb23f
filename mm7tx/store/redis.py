"""The state store in Redis (``state_store = "redis://HOST:PORT/DB"``,
``rediss://`` for TLS): for a fleet of instances sharing one store.

Every record is a key with a native TTL under the prefix ``mm7tx:``; every
change that reads before it writes is one Lua script, atomic in Redis.
The reports' leases compare the instances' clocks (keep them in step:
NTP); a report also sits in one sorted set by due time, from which the
entries of expired reports go as they are met.  The database is expected to
hold mm7tx's keys only: :meth:`RedisStore.size` counts its keys (but the
sorted set) and the server's memory."""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime
from twisted.internet.ssl import optionsForClientTLS
from zope.interface import implementer

from mm7tx.interfaces import IStateStore
from mm7tx.store.records import (
    Answer,
    Claim,
    Done,
    InFlight,
    New,
    Report,
    StoreError,
    StoreSize,
    lease_end,
)
from mm7tx.store.resp import RedisClient
from mm7tx.store.spec import StoreSpec
from mm7tx.store.waiting import POLL_INTERVAL, wait_by_polling

PREFIX = "mm7tx:"
ONCE = PREFIX + "once:"
REPORT = PREFIX + "report:"
REPORTS_DUE = PREFIX + "reports-due"
RECORD = PREFIX + "record:"
# How many due entries one due_reports looks at, at most.
SCAN_DUE = 1000

# A key holds b"I" + the claim's token while in flight, b"D" + the answer.
CLAIM = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
COMPLETE = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 1) == 'D' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
FIELDS = ("payload", "attempts", "due", "owner", "lease_until", "expires")
PUT_REPORT = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'payload', ARGV[1], 'attempts', 0, 'due', ARGV[2],
  'owner', ARGV[3], 'lease_until', ARGV[4], 'expires', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[7])
return 1
"""
# ARGV: now, owner, limit, scan, the report key prefix
DUE_REPORTS = """
local found = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[4])
for _, id in ipairs(ids) do
  local r = redis.call('HMGET', ARGV[5] .. id,
    'payload', 'attempts', 'due', 'owner', 'lease_until', 'expires')
  if not r[1] then
    redis.call('ZREM', KEYS[1], id)
  elseif r[4] == ARGV[2] or tonumber(r[5]) <= tonumber(ARGV[1]) then
    table.insert(found, {id, r[1], r[2], r[3], r[4], r[5], r[6]})
    if #found >= tonumber(ARGV[3]) then break end
  end
end
return found
"""
# ARGV: owner, now, lease
LEASE_REPORT = """
local r = redis.call('HMGET', KEYS[1],
  'payload', 'attempts', 'due', 'owner', 'lease_until', 'expires')
if not r[1] then return false end
if r[4] ~= ARGV[1] and tonumber(r[5]) > tonumber(ARGV[2]) then return false end
local due = tonumber(r[3])
local until_ = math.max(tonumber(ARGV[2]), due) + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease_until', tostring(until_))
return {r[1], r[2], r[3], ARGV[1], tostring(until_), r[6]}
"""
# ARGV: owner, attempts, due, lease_until, id
UPDATE_REPORT = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'attempts', ARGV[2], 'due', ARGV[3],
  'lease_until', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
return 1
"""


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least one (Redis refuses 0)."""
    return max(1, round(seconds * 1000))


def _number(value: float) -> str:
    return repr(float(value))


def _report(report_id: str, fields: list[Any]) -> Report:
    payload, attempts, due, owner, lease_until, expires = fields
    return Report(
        report_id,
        bytes(payload),
        int(attempts),
        float(due),
        owner.decode("utf-8"),
        float(lease_until),
        float(expires),
    )


def _state(value: bytes | None) -> Claim | None:
    if value is None:
        return None
    if value[:1] == b"D":
        return Done(Answer.decode(value[1:]))
    return InFlight()


def endpoint_for(spec: StoreSpec, reactor: Any) -> Any:
    """The endpoint to ``spec``'s server: TCP, wrapped in TLS for rediss."""
    endpoint = HostnameEndpoint(reactor, spec.host, spec.port)
    if spec.tls:
        return wrapClientTLS(optionsForClientTLS(spec.host), endpoint)
    return endpoint


@implementer(IStateStore)
class RedisStore:
    """:class:`~mm7tx.interfaces.IStateStore` in the Redis ``spec`` names,
    its connection on ``reactor``, its times on ``clock`` (the reactor by
    default)."""

    def __init__(
        self,
        spec: StoreSpec,
        reactor: Any,
        clock: IReactorTime | None = None,
        timeout: float = 2.0,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.description = spec.describe()
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._poll_interval = poll_interval

        def setup() -> list[tuple[bytes | str | int, ...]]:
            commands: list[tuple[bytes | str | int, ...]] = []
            if spec.password is not None:
                if spec.username:
                    commands.append(("AUTH", spec.username, spec.password))
                else:
                    commands.append(("AUTH", spec.password))
            if spec.db:
                commands.append(("SELECT", spec.db))
            return commands

        self.client = RedisClient(
            endpoint_for(spec, reactor),
            reactor,
            self.description,
            setup,
            timeout,
            tls=spec.tls,
        )

    def _eval(self, script: str, keys: list[str], *args: Any) -> defer.Deferred[Any]:
        return self.client.command("EVAL", script, len(keys), *keys, *args)

    # exactly once

    def claim(self, key: str, lease: float) -> defer.Deferred[Claim]:
        token = uuid.uuid4().hex
        claimed = self._eval(CLAIM, [ONCE + key], b"I" + token.encode(), _ms(lease))
        return claimed.addCallback(lambda old: _state(old) or New(token))

    def complete(
        self, key: str, token: str, answer: Answer, ttl: float
    ) -> defer.Deferred[None]:
        done = self._eval(COMPLETE, [ONCE + key], b"D" + answer.encode(), _ms(ttl))
        return done.addCallback(lambda _: None)

    def release(self, key: str, token: str) -> defer.Deferred[None]:
        released = self._eval(RELEASE, [ONCE + key], b"I" + token.encode())
        return released.addCallback(lambda _: None)

    def wait(self, key: str, timeout: float) -> defer.Deferred[Answer | None]:
        def look() -> defer.Deferred[Claim | None]:
            return self.client.command("GET", ONCE + key).addCallback(_state)

        return wait_by_polling(self._clock, look, timeout, self._poll_interval)

    # delivery reports

    def put_report(
        self,
        report_id: str,
        payload: bytes,
        owner: str,
        due: float,
        lease: float,
        ttl: float,
    ) -> defer.Deferred[None]:
        now = self._clock.seconds()
        written = self._eval(
            PUT_REPORT,
            [REPORT + report_id, REPORTS_DUE],
            payload,
            _number(due),
            owner,
            _number(lease_end(now, due, lease)),
            _number(now + ttl),
            _ms(ttl),
            report_id,
        )
        return written.addCallback(lambda _: None)

    def due_reports(self, owner: str, limit: int) -> defer.Deferred[list[Report]]:
        now = self._clock.seconds()
        found = self._eval(
            DUE_REPORTS, [REPORTS_DUE], _number(now), owner, limit, SCAN_DUE, REPORT
        )
        return found.addCallback(
            lambda rows: [_report(row[0].decode("utf-8"), row[1:]) for row in rows]
        )

    def lease_report(
        self, report_id: str, owner: str, lease: float
    ) -> defer.Deferred[Report | None]:
        now = self._clock.seconds()
        leased = self._eval(
            LEASE_REPORT, [REPORT + report_id], owner, _number(now), _number(lease)
        )
        return leased.addCallback(
            lambda fields: None if fields is None else _report(report_id, fields)
        )

    def update_report(
        self, report_id: str, owner: str, attempts: int, due: float, lease: float
    ) -> defer.Deferred[bool]:
        until = lease_end(self._clock.seconds(), due, lease)
        updated = self._eval(
            UPDATE_REPORT,
            [REPORT + report_id, REPORTS_DUE],
            owner,
            attempts,
            _number(due),
            _number(until),
            report_id,
        )
        return updated.addCallback(lambda changed: changed == 1)

    @defer.inlineCallbacks
    def remove_report(self, report_id: str) -> Any:
        yield self.client.command("DEL", REPORT + report_id)
        yield self.client.command("ZREM", REPORTS_DUE, report_id)

    # keyed records

    def put(self, key: str, value: bytes, ttl: float) -> defer.Deferred[None]:
        written = self.client.command("SET", RECORD + key, value, "PX", _ms(ttl))
        return written.addCallback(lambda _: None)

    def get(self, key: str) -> defer.Deferred[bytes | None]:
        return self.client.command("GET", RECORD + key)

    def delete(self, key: str) -> defer.Deferred[None]:
        return self.client.command("DEL", RECORD + key).addCallback(lambda _: None)

    # the store

    @defer.inlineCallbacks
    def size(self) -> Any:
        keys = yield self.client.command("DBSIZE")
        index = yield self.client.command("EXISTS", REPORTS_DUE)
        records = keys - index
        info = yield self.client.command("INFO", "memory")
        for line in bytes(info).splitlines():
            if line.startswith(b"used_memory:"):
                return StoreSize(int(records), int(line.partition(b":")[2]))
        raise StoreError(f"{self.description}: INFO memory gave no used_memory")

    def close(self) -> defer.Deferred[None]:
        return self.client.close()
