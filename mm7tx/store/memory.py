"""The state store in this process's memory (``state_store = "memory"``):
for tests, and for one process that needs no record across restarts.

Bounded: at most ``max_records`` of each kind (answers and claims, reports,
keyed records); past it the oldest answer, in-flight claim or keyed record
makes room (an evicted claim lets a retry run beside the transaction still
in flight), and a new report fails with :class:`StoreError`.  Expired
records are dropped when read and by a sweep every ``sweep_interval``
seconds on the clock."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
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
from mm7tx.store.waiting import POLL_INTERVAL, wait_by_polling

MAX_RECORDS = 100_000
SWEEP_INTERVAL = 60.0

T = TypeVar("T")


def _now(value: T) -> defer.Deferred[T]:
    return defer.succeed(value)


@implementer(IStateStore)
class MemoryStore:
    """:class:`~mm7tx.interfaces.IStateStore` in dicts, on ``clock``."""

    description = "memory"

    def __init__(
        self,
        clock: IReactorTime,
        max_records: int = MAX_RECORDS,
        sweep_interval: float = SWEEP_INTERVAL,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self._clock = clock
        self._max = max_records
        self._poll_interval = poll_interval
        # key -> (token of the claim, or None once answered; answer; expires)
        self._once: dict[str, tuple[str | None, Answer | None, float]] = {}
        self._reports: dict[str, Report] = {}
        self._records: dict[str, tuple[bytes, float]] = {}
        self._sweep = task.LoopingCall(self.sweep)
        self._sweep.clock = clock
        self._sweep.start(sweep_interval, now=False)

    # exactly once

    def _state(self, key: str) -> tuple[str | None, Answer | None, float] | None:
        entry = self._once.get(key)
        if entry is not None and entry[2] <= self._clock.seconds():
            del self._once[key]
            return None
        return entry

    def _look(self, key: str) -> Claim | None:
        entry = self._state(key)
        if entry is None:
            return None
        return InFlight() if entry[1] is None else Done(entry[1])

    def claim(self, key: str, lease: float) -> defer.Deferred[Claim]:
        seen = self._look(key)
        if seen is not None:
            return _now(seen)
        token = uuid.uuid4().hex
        self._set_once(key, (token, None, self._clock.seconds() + lease))
        return _now(New(token))

    def complete(
        self, key: str, token: str, answer: Answer, ttl: float
    ) -> defer.Deferred[None]:
        entry = self._state(key)
        if entry is None or entry[1] is None:
            self._set_once(key, (None, answer, self._clock.seconds() + ttl))
        return _now(None)

    def release(self, key: str, token: str) -> defer.Deferred[None]:
        entry = self._state(key)
        if entry is not None and entry[0] == token:
            del self._once[key]
        return _now(None)

    def wait(self, key: str, timeout: float) -> defer.Deferred[Answer | None]:
        return wait_by_polling(
            self._clock, lambda: _now(self._look(key)), timeout, self._poll_interval
        )

    def _set_once(
        self, key: str, entry: tuple[str | None, Answer | None, float]
    ) -> None:
        self._once.pop(key, None)
        _make_room(self._once, self._max, self.sweep)
        self._once[key] = entry

    # delivery reports

    def _report(self, report_id: str) -> Report | None:
        report = self._reports.get(report_id)
        if report is not None and report.expires <= self._clock.seconds():
            del self._reports[report_id]
            return None
        return report

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
        if report_id not in self._reports and len(self._reports) >= self._max:
            self.sweep()
            if len(self._reports) >= self._max:
                return defer.fail(StoreError(f"{self._max} reports kept: full"))
        self._reports[report_id] = Report(
            report_id, payload, 0, due, owner, lease_end(now, due, lease), now + ttl
        )
        return _now(None)

    def due_reports(self, owner: str, limit: int) -> defer.Deferred[list[Report]]:
        now = self._clock.seconds()
        found = []
        for report_id in list(self._reports):
            report = self._report(report_id)
            if report is None or report.due > now:
                continue
            if report.owner == owner or report.lease_until <= now:
                found.append(report)
        found.sort(key=lambda r: r.due)
        return _now(found[:limit])

    def lease_report(
        self, report_id: str, owner: str, lease: float
    ) -> defer.Deferred[Report | None]:
        now = self._clock.seconds()
        report = self._report(report_id)
        if report is None or (report.owner != owner and report.lease_until > now):
            return _now(None)
        report = replace(
            report, owner=owner, lease_until=lease_end(now, report.due, lease)
        )
        self._reports[report_id] = report
        return _now(report)

    def update_report(
        self, report_id: str, owner: str, attempts: int, due: float, lease: float
    ) -> defer.Deferred[bool]:
        report = self._report(report_id)
        if report is None or report.owner != owner:
            return _now(False)
        lease_until = lease_end(self._clock.seconds(), due, lease)
        self._reports[report_id] = replace(
            report, attempts=attempts, due=due, lease_until=lease_until
        )
        return _now(True)

    def remove_report(self, report_id: str) -> defer.Deferred[None]:
        self._reports.pop(report_id, None)
        return _now(None)

    # keyed records

    def put(self, key: str, value: bytes, ttl: float) -> defer.Deferred[None]:
        self._records.pop(key, None)
        _make_room(self._records, self._max, self.sweep)
        self._records[key] = (value, self._clock.seconds() + ttl)
        return _now(None)

    def get(self, key: str) -> defer.Deferred[bytes | None]:
        entry = self._records.get(key)
        if entry is None or entry[1] <= self._clock.seconds():
            self._records.pop(key, None)
            return _now(None)
        return _now(entry[0])

    def delete(self, key: str) -> defer.Deferred[None]:
        self._records.pop(key, None)
        return _now(None)

    # the store

    def sweep(self) -> None:
        """Drop every expired record."""
        now = self._clock.seconds()
        for key in [k for k, e in self._once.items() if e[2] <= now]:
            del self._once[key]
        for key in [k for k, r in self._reports.items() if r.expires <= now]:
            del self._reports[key]
        for key in [k for k, e in self._records.items() if e[1] <= now]:
            del self._records[key]

    def size(self) -> defer.Deferred[StoreSize]:
        self.sweep()
        size = sum(
            len(k) + (len(a.encode()) if a else 0)
            for k, (_, a, _) in self._once.items()
        )
        size += sum(len(k) + len(r.payload) for k, r in self._reports.items())
        size += sum(len(k) + len(v) for k, (v, _) in self._records.items())
        count = len(self._once) + len(self._reports) + len(self._records)
        return _now(StoreSize(count, size))

    def close(self) -> defer.Deferred[None]:
        if self._sweep.running:
            self._sweep.stop()
        return _now(None)


def _make_room(records: dict[str, T], limit: int, sweep: Callable[[], None]) -> None:
    """Drop the oldest entries of ``records`` until one more fits (after a
    sweep, when it is full)."""
    if len(records) < limit:
        return
    sweep()
    while len(records) >= limit:
        del records[next(iter(records))]
