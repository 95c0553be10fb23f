"""The state store in an SQLite file (``state_store = "sqlite:PATH"``),
shared by the processes of one host (``--workers``) through SQLite's
write-ahead log.

The reactor never waits for the file: every statement runs in a thread of
the store's own, one batch at a time.  Work asked for while a batch runs
waits for the next one, and each batch is one transaction (one commit for
many transactions' records: group commit); each piece of work in it has a
savepoint of its own, so that one failing leaves the others.  Another
process holding the write lock makes the thread wait (``busy_timeout``),
never the reactor.  Expired rows are swept every ``sweep_interval``
seconds on the clock, and never read before then."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer, task, threads
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
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

log = Logger(namespace="mm7tx.store")

SWEEP_INTERVAL = 60.0
# How long the store's thread waits for another process's write lock (ms).
BUSY_TIMEOUT_MS = 5000

T = TypeVar("T")
# Runs ``function(*args)`` off the reactor thread; its result as a Deferred
# (mm7tx.offload.Offload's shape; tests run the work inline).
Runner = Callable[..., "defer.Deferred[Any]"]
# One piece of work: given the connection, inside the batch's transaction.
Work = Callable[[sqlite3.Connection], Any]

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS once ("
    " key TEXT PRIMARY KEY, token TEXT, answer BLOB, expires REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS reports ("
    " id TEXT PRIMARY KEY, payload BLOB NOT NULL, attempts INTEGER NOT NULL,"
    " due REAL NOT NULL, owner TEXT NOT NULL, lease_until REAL NOT NULL,"
    " expires REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS reports_due ON reports (due)",
    "CREATE TABLE IF NOT EXISTS records ("
    " key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL)",
)
TABLES = ("once", "reports", "records")


def own_thread(reactor: Any) -> tuple[Runner, Callable[[], None]]:
    """A :data:`Runner` on a thread pool of one thread, started by the
    first work (a process that stops before it serves, a port in use, is
    not kept alive by an idle thread), and the function that stops it (the
    reactor's shutdown stops it too)."""
    pool = ThreadPool(1, 1, name="mm7tx-store")
    trigger = reactor.addSystemEventTrigger("during", "shutdown", pool.stop)

    def run(function: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        if not pool.started:
            pool.start()
        return threads.deferToThreadPool(reactor, pool, function, *args)

    def stop() -> None:
        reactor.removeSystemEventTrigger(trigger)
        pool.stop()

    return run, stop


@implementer(IStateStore)
class SQLiteStore:
    """:class:`~mm7tx.interfaces.IStateStore` in the SQLite file ``path``;
    its work runs through ``run`` (a thread of its own by default: give the
    reactor), its times and sweep on ``clock``."""

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        run: Runner,
        stop_runner: Callable[[], None] = lambda: None,
        sweep_interval: float = SWEEP_INTERVAL,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.description = f"sqlite:{path}"
        self._path = path
        self._clock = clock
        self._run = run
        self._stop_runner = stop_runner
        self._poll_interval = poll_interval
        self._connection: sqlite3.Connection | None = None
        self._queued: list[tuple[Work, defer.Deferred[Any]]] = []
        self._busy = False
        self._closed = False
        # How many batches (transactions) ran, and how much work they held.
        self.batches = 0
        self.work_done = 0
        self._sweep = task.LoopingCall(self._sweep_now)
        self._sweep.clock = clock
        self._sweep.start(sweep_interval, now=False)

    # the batches

    def _submit(self, work: Work) -> defer.Deferred[Any]:
        if self._closed:
            return defer.fail(StoreError(f"{self.description} is closed"))
        done: defer.Deferred[Any] = defer.Deferred()
        self._queued.append((work, done))
        if not self._busy:
            self._next_batch()
        return done

    def _next_batch(self) -> None:
        batch, self._queued = self._queued, []
        self._busy = True
        self.batches += 1
        self.work_done += len(batch)
        ran = self._run(self._in_thread, [work for work, _ in batch])
        ran.addBoth(self._finished, [done for _, done in batch])

    def _finished(self, outcome: Any, waiting: list[defer.Deferred[Any]]) -> None:
        self._busy = False
        if isinstance(outcome, Failure):
            error = outcome.value
            failure = Failure(StoreError(f"{self.description}: {error}"))
            outcome = [failure] * len(waiting)
        for done, result in zip(waiting, outcome, strict=True):
            if isinstance(result, Failure):
                done.errback(result)
            else:
                done.callback(result)
        if self._queued and not self._busy:
            self._next_batch()

    def _in_thread(self, batch: list[Work]) -> list[Any]:
        """Run ``batch`` in one transaction (in the store's thread)."""
        connection = self._connect()
        results: list[Any] = []
        connection.execute("BEGIN IMMEDIATE")
        try:
            for work in batch:
                connection.execute("SAVEPOINT work")
                try:
                    results.append(work(connection))
                except sqlite3.Error as error:
                    connection.execute("ROLLBACK TO work")
                    results.append(Failure(StoreError(f"{self.description}: {error}")))
                except Exception:
                    connection.execute("ROLLBACK TO work")
                    results.append(Failure())
                connection.execute("RELEASE work")
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return results

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(
                self._path,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                # With the log, NORMAL loses nothing when a process dies
                # (only the last commits when the machine does).
                connection.execute("PRAGMA synchronous=NORMAL")
                for statement in SCHEMA:
                    connection.execute(statement)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    # exactly once

    def _look_now(
        self, connection: sqlite3.Connection, key: str, now: float
    ) -> tuple[Claim | None, str | None]:
        row = connection.execute(
            "SELECT token, answer FROM once WHERE key = ? AND expires > ?", (key, now)
        ).fetchone()
        if row is None:
            return None, None
        token, answer = row
        if answer is None:
            return InFlight(), token
        return Done(Answer.decode(answer)), None

    def claim(self, key: str, lease: float) -> defer.Deferred[Claim]:
        now = self._clock.seconds()
        token = uuid.uuid4().hex

        def work(connection: sqlite3.Connection) -> Claim:
            seen, _ = self._look_now(connection, key, now)
            if seen is not None:
                return seen
            connection.execute(
                "INSERT OR REPLACE INTO once VALUES (?, ?, NULL, ?)",
                (key, token, now + lease),
            )
            return New(token)

        return self._submit(work)

    def complete(
        self, key: str, token: str, answer: Answer, ttl: float
    ) -> defer.Deferred[None]:
        now = self._clock.seconds()
        data = answer.encode()

        def work(connection: sqlite3.Connection) -> None:
            seen, _ = self._look_now(connection, key, now)
            if not isinstance(seen, Done):
                connection.execute(
                    "INSERT OR REPLACE INTO once VALUES (?, NULL, ?, ?)",
                    (key, data, now + ttl),
                )

        return self._submit(work)

    def release(self, key: str, token: str) -> defer.Deferred[None]:
        def work(connection: sqlite3.Connection) -> None:
            connection.execute(
                "DELETE FROM once WHERE key = ? AND token = ?", (key, token)
            )

        return self._submit(work)

    def wait(self, key: str, timeout: float) -> defer.Deferred[Answer | None]:
        def look() -> defer.Deferred[Claim | None]:
            now = self._clock.seconds()
            return self._submit(lambda c: self._look_now(c, key, now)[0])

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
        row = (report_id, payload, 0, due, owner, lease_end(now, due, lease), now + ttl)

        def work(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT OR REPLACE INTO reports VALUES (?, ?, ?, ?, ?, ?, ?)", row
            )

        return self._submit(work)

    def due_reports(self, owner: str, limit: int) -> defer.Deferred[list[Report]]:
        now = self._clock.seconds()

        def work(connection: sqlite3.Connection) -> list[Report]:
            rows = connection.execute(
                "SELECT * FROM reports WHERE due <= ? AND expires > ?"
                " AND (owner = ? OR lease_until <= ?) ORDER BY due LIMIT ?",
                (now, now, owner, now, limit),
            )
            return [Report(*row) for row in rows]

        return self._submit(work)

    def _report(
        self, connection: sqlite3.Connection, report_id: str, now: float
    ) -> Report | None:
        row = connection.execute(
            "SELECT * FROM reports WHERE id = ? AND expires > ?", (report_id, now)
        ).fetchone()
        return None if row is None else Report(*row)

    def lease_report(
        self, report_id: str, owner: str, lease: float
    ) -> defer.Deferred[Report | None]:
        now = self._clock.seconds()

        def work(connection: sqlite3.Connection) -> Report | None:
            report = self._report(connection, report_id, now)
            if report is None or (report.owner != owner and report.lease_until > now):
                return None
            until = lease_end(now, report.due, lease)
            connection.execute(
                "UPDATE reports SET owner = ?, lease_until = ? WHERE id = ?",
                (owner, until, report_id),
            )
            return self._report(connection, report_id, now)

        return self._submit(work)

    def update_report(
        self, report_id: str, owner: str, attempts: int, due: float, lease: float
    ) -> defer.Deferred[bool]:
        now = self._clock.seconds()

        def work(connection: sqlite3.Connection) -> bool:
            cursor = connection.execute(
                "UPDATE reports SET attempts = ?, due = ?, lease_until = ?"
                " WHERE id = ? AND owner = ? AND expires > ?",
                (attempts, due, lease_end(now, due, lease), report_id, owner, now),
            )
            return cursor.rowcount == 1

        return self._submit(work)

    def remove_report(self, report_id: str) -> defer.Deferred[None]:
        def work(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM reports WHERE id = ?", (report_id,))

        return self._submit(work)

    # keyed records

    def put(self, key: str, value: bytes, ttl: float) -> defer.Deferred[None]:
        expires = self._clock.seconds() + ttl

        def work(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT OR REPLACE INTO records VALUES (?, ?, ?)", (key, value, expires)
            )

        return self._submit(work)

    def get(self, key: str) -> defer.Deferred[bytes | None]:
        now = self._clock.seconds()

        def work(connection: sqlite3.Connection) -> bytes | None:
            row = connection.execute(
                "SELECT value FROM records WHERE key = ? AND expires > ?", (key, now)
            ).fetchone()
            return None if row is None else bytes(row[0])

        return self._submit(work)

    def delete(self, key: str) -> defer.Deferred[None]:
        def work(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM records WHERE key = ?", (key,))

        return self._submit(work)

    # the store

    def sweep(self) -> defer.Deferred[int]:
        """Delete every expired row; fires with how many went."""
        now = self._clock.seconds()

        def work(connection: sqlite3.Connection) -> int:
            return sum(
                connection.execute(
                    f"DELETE FROM {table} WHERE expires <= ?", (now,)
                ).rowcount
                for table in TABLES
            )

        return self._submit(work)

    def _sweep_now(self) -> None:
        # A sweep that fails is tried again at the next one.
        self.sweep().addErrback(
            lambda failure: log.warn(
                "state store {store}: sweep failed: {error}",
                store=self.description,
                error=failure.getErrorMessage(),
            )
        )

    def size(self) -> defer.Deferred[StoreSize]:
        def work(connection: sqlite3.Connection) -> StoreSize:
            records, size = connection.execute(
                "SELECT (SELECT count(*) FROM once) + (SELECT count(*) FROM reports)"
                " + (SELECT count(*) FROM records),"
                " (SELECT coalesce(sum(length(key) + coalesce(length(answer), 0)), 0)"
                "  FROM once)"
                " + (SELECT coalesce(sum(length(id) + length(payload)), 0) FROM reports)"
                " + (SELECT coalesce(sum(length(key) + length(value)), 0) FROM records)"
            ).fetchone()
            return StoreSize(int(records), int(size))

        return self._submit(work)

    def close(self) -> defer.Deferred[None]:
        """Stop the sweep, finish the work asked for, close the file (in
        the store's thread) and stop the thread."""
        if self._sweep.running:
            self._sweep.stop()
        flushed = self._submit(lambda connection: None)
        self._closed = True
        flushed.addErrback(lambda _: None)
        flushed.addCallback(lambda _: self._run(self._close_in_thread))
        flushed.addBoth(self._stopped)
        return flushed

    def _close_in_thread(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _stopped(self, result: Any) -> Any:
        self._stop_runner()
        return result
