"""The state store (mm7tx.store): one conformance suite run against every
implementation — here in memory and SQLite (its work run inline on the
test's thread, so that its order is the test's), against a real
``redis-server`` in tests/loopback/test_store.py — then what is particular
to each, and the parser of the ``state_store`` text.

Time is a ``Clock`` the test advances."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from mm7tx.interfaces import IStateStore
from mm7tx.offload import inline
from mm7tx.store import (
    Answer,
    Done,
    InFlight,
    New,
    StoreError,
    StoreSize,
    StoreSpec,
    StoreSpecError,
    open_store,
    parse_store,
)
from mm7tx.store.memory import MemoryStore
from mm7tx.store.redis import RedisStore
from mm7tx.store.resp import RETRY_AFTER, RedisClient
from mm7tx.store.sqlite import SQLiteStore
from mm7tx.testing import result_of

ANSWER = Answer(b"<DeliverRsp/>", {"status": "1000", "content-type": "text/xml"})
OTHER = Answer(b"<other/>", {"status": "1000"})
DAY = 86400.0

# How long a store test may take on the real reactor before it fails.
TIMEOUT = 5.0


def timed(test: Callable[..., Coroutine[Any, Any, None]]) -> Any:
    """An async test (``pytest_twisted.ensureDeferred``) that fails with
    ``TimeoutError`` once it has run ``TIMEOUT`` seconds, rather than hang:
    the time-out cancels the Deferred the test awaits (one that never fires,
    such as a wait on a store that no longer ends it)."""

    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> None:
        await defer.ensureDeferred(test(*args, **kwargs)).addTimeout(TIMEOUT, reactor)

    return pytest_twisted.ensureDeferred(run)


class Harness:
    """A store and its clock."""

    def __init__(self, store: Any, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def sweep(self) -> None:
        sweep = getattr(self.store, "sweep", None)
        if sweep is not None:
            await defer.maybeDeferred(sweep)


@pytest.fixture(params=["memory", "sqlite"])
def harness(request, tmp_path):
    clock = Clock()
    clock.advance(1_000_000)
    if request.param == "memory":
        store: Any = MemoryStore(clock)
    else:
        store = SQLiteStore(str(tmp_path / "state.sqlite3"), clock, inline)
    yield Harness(store, clock)
    pytest_twisted.blockon(store.close())


def test_every_store_provides_the_interface(harness):
    assert verifyObject(IStateStore, harness.store)
    assert "@" not in harness.store.description


# exactly once


@timed
async def test_a_claimed_key_is_in_flight_then_done_with_the_answer(harness):
    store = harness.store
    first = await store.claim("k", 30)
    assert isinstance(first, New)
    assert await store.claim("k", 30) == InFlight()
    await store.complete("k", first.token, ANSWER, DAY)
    again = await store.claim("k", 30)
    assert again == Done(ANSWER)
    assert again.answer.metadata["status"] == "1000"


@timed
async def test_keys_are_apart(harness):
    first = await harness.store.claim("a", 30)
    second = await harness.store.claim("b", 30)
    assert isinstance(first, New) and isinstance(second, New)
    assert first.token != second.token


@timed
async def test_the_first_answer_stays(harness):
    store = harness.store
    claim = await store.claim("k", 30)
    await store.complete("k", claim.token, ANSWER, DAY)
    await store.complete("k", claim.token, OTHER, DAY)
    assert await store.claim("k", 30) == Done(ANSWER)


@timed
async def test_a_released_key_is_claimed_afresh(harness):
    store = harness.store
    claim = await store.claim("k", 30)
    await store.release("k", "not-the-token")
    assert await store.claim("k", 30) == InFlight()
    await store.release("k", claim.token)
    assert isinstance(await store.claim("k", 30), New)


@timed
async def test_an_answer_is_not_released(harness):
    store = harness.store
    claim = await store.claim("k", 30)
    await store.complete("k", claim.token, ANSWER, DAY)
    await store.release("k", claim.token)
    assert await store.claim("k", 30) == Done(ANSWER)


@timed
async def test_a_claim_whose_lease_passed_is_free(harness):
    store = harness.store
    await store.claim("k", 30)
    await harness.advance(29)
    assert await store.claim("k", 30) == InFlight()
    await harness.advance(1)
    assert isinstance(await store.claim("k", 30), New)


@timed
async def test_an_answer_expires_after_the_window(harness):
    store = harness.store
    claim = await store.claim("k", 30)
    await store.complete("k", claim.token, ANSWER, DAY)
    await harness.advance(DAY - 1)
    assert await store.claim("k", 30) == Done(ANSWER)
    await harness.advance(1)
    assert isinstance(await store.claim("k", 30), New)


@timed
async def test_a_retry_waits_for_the_answer(harness):
    store = harness.store
    claim = await store.claim("k", 30)
    waiting = store.wait("k", 10)
    await harness.advance(1)
    assert not waiting.called
    await store.complete("k", claim.token, ANSWER, DAY)
    await harness.advance(0.05)
    assert await waiting == ANSWER


@timed
async def test_a_wait_ends_when_the_key_is_released(harness):
    store = harness.store
    claim = await store.claim("k", 30)
    waiting = store.wait("k", 10)
    await store.release("k", claim.token)
    await harness.advance(0.05)
    assert await waiting is None
    assert isinstance(await store.claim("k", 30), New)


@timed
async def test_a_wait_ends_at_its_timeout(harness):
    store = harness.store
    await store.claim("k", 30)
    waiting = store.wait("k", 2)
    for _ in range(39):
        await harness.advance(0.05)
    assert not waiting.called
    await harness.advance(0.05)
    await harness.advance(0.05)
    assert await waiting is None
    assert await store.claim("k", 30) == InFlight()


@timed
async def test_a_wait_on_a_free_or_answered_key_ends_at_once(harness):
    store = harness.store
    assert await store.wait("free", 10) is None
    claim = await store.claim("k", 30)
    await store.complete("k", claim.token, ANSWER, DAY)
    assert await store.wait("k", 10) == ANSWER


# delivery reports


@timed
async def test_a_report_is_due_to_its_owner(harness):
    store, now = harness.store, harness.clock.seconds()
    await store.put_report("r1", b"payload", "a", now + 5, 60, DAY)
    assert await store.due_reports("a", 10) == []
    await harness.advance(5)
    [report] = await store.due_reports("a", 10)
    assert (report.report_id, report.payload, report.attempts) == ("r1", b"payload", 0)
    assert (report.owner, report.due) == ("a", now + 5)
    assert report.lease_until == now + 65
    # another instance sees it only once the owner's lease passed
    assert await store.due_reports("b", 10) == []
    assert await store.lease_report("r1", "b", 60) is None
    await harness.advance(60)
    [taken] = await store.due_reports("b", 10)
    assert taken.report_id == "r1"
    leased = await store.lease_report("r1", "b", 60)
    assert (leased.owner, leased.lease_until) == ("b", now + 125)
    assert await store.due_reports("a", 10) == []
    assert not await store.update_report("r1", "a", 1, now + 200, 60)


@timed
async def test_an_attempt_moves_the_report_and_its_lease(harness):
    store, now = harness.store, harness.clock.seconds()
    await store.put_report("r1", b"p", "a", now, 60, DAY)
    assert await store.update_report("r1", "a", 1, now + 300, 60)
    assert await store.due_reports("a", 10) == []
    await harness.advance(300)
    [report] = await store.due_reports("a", 10)
    assert (report.attempts, report.due, report.lease_until) == (
        1,
        now + 300,
        now + 360,
    )
    assert await store.due_reports("b", 10) == []


@timed
async def test_reports_come_in_due_order_up_to_the_limit(harness):
    store, now = harness.store, harness.clock.seconds()
    for n in (3, 1, 2):
        await store.put_report(f"r{n}", b"p", "a", now + n, 60, DAY)
    await harness.advance(3)
    assert [r.report_id for r in await store.due_reports("a", 2)] == ["r1", "r2"]


@timed
async def test_a_removed_or_expired_report_is_gone(harness):
    store, now = harness.store, harness.clock.seconds()
    await store.put_report("r1", b"p", "a", now, 60, 100)
    await store.put_report("r2", b"p", "a", now, 60, DAY)
    await store.remove_report("r2")
    assert [r.report_id for r in await store.due_reports("a", 10)] == ["r1"]
    await harness.advance(100)
    assert await store.due_reports("a", 10) == []
    assert await store.lease_report("r1", "a", 60) is None
    assert not await store.update_report("r1", "a", 1, now, 60)


# keyed records


@timed
async def test_a_record_is_kept_until_its_ttl(harness):
    store = harness.store
    assert await store.get("k") is None
    await store.put("k", b"value", 10)
    await store.put("other", b"x", 10)
    assert await store.get("k") == b"value"
    await store.put("k", b"newer", 20)
    await harness.advance(10)
    assert await store.get("k") == b"newer"
    assert await store.get("other") is None
    await store.delete("k")
    assert await store.get("k") is None


# size


@timed
async def test_the_size_counts_the_records_and_shrinks_as_they_expire(harness):
    store, now = harness.store, harness.clock.seconds()
    empty = await store.size()
    claim = await store.claim("k", 30)
    await store.complete("k", claim.token, ANSWER, 100)
    await store.put_report("r", b"p" * 1000, "a", now, 60, 100)
    await store.put("x", b"v" * 1000, 100)
    full = await store.size()
    assert isinstance(full, StoreSize)
    assert full.records == empty.records + 3
    assert full.bytes > empty.bytes + 2000
    await harness.advance(100)
    await harness.sweep()
    assert (await store.size()).records == empty.records


# memory: bounded


def test_memory_keeps_at_most_max_records_dropping_the_oldest():
    store = MemoryStore(Clock(), max_records=3)
    for n in range(5):
        result_of(store.put(f"k{n}", b"v", 10))
    assert result_of(store.size()).records == 3
    assert result_of(store.get("k1")) is None
    assert result_of(store.get("k4")) == b"v"
    for n in range(3):
        result_of(store.put_report(f"r{n}", b"p", "a", 0, 60, 10))
    with pytest.raises(StoreError, match="full"):
        result_of(store.put_report("r3", b"p", "a", 0, 60, 10))
    result_of(store.close())


def test_memory_sweeps_on_its_clock():
    clock = Clock()
    store = MemoryStore(clock, sweep_interval=60)
    result_of(store.put("k", b"v", 10))
    assert len(store._records) == 1
    clock.advance(60)
    assert store._records == {}
    result_of(store.close())
    assert not clock.getDelayedCalls()


# SQLite: one file, several processes, group commit


class HeldRunner:
    """Runs each batch when the test says so, like a thread that is busy."""

    def __init__(self) -> None:
        self.held: list[
            tuple[defer.Deferred[Any], Callable[..., Any], tuple[Any, ...]]
        ] = []

    def __call__(self, function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        done: defer.Deferred[Any] = defer.Deferred()
        self.held.append((done, function, args))
        return done

    def run(self) -> None:
        done, function, args = self.held.pop(0)
        done.callback(function(*args))


def test_sqlite_commits_the_work_asked_for_meanwhile_in_one_batch(tmp_path):
    runner = HeldRunner()
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), Clock(), runner)
    first = store.claim("k0", 30)
    later = [store.claim(f"k{n}", 30) for n in range(1, 6)]
    assert len(runner.held) == 1  # the first batch runs; the others wait
    runner.run()
    assert isinstance(result_of(first), New)
    assert len(runner.held) == 1
    runner.run()
    assert all(isinstance(result_of(d), New) for d in later)
    assert (store.batches, store.work_done) == (2, 6)
    closing = store.close()
    while runner.held:
        runner.run()
    result_of(closing)


def test_sqlite_is_shared_by_two_stores_on_one_file(tmp_path):
    path, clock = str(tmp_path / "s.sqlite3"), Clock()
    one, two = SQLiteStore(path, clock, inline), SQLiteStore(path, clock, inline)
    claim = result_of(one.claim("k", 30))
    assert result_of(two.claim("k", 30)) == InFlight()
    waiting = two.wait("k", 10)
    result_of(one.complete("k", claim.token, ANSWER, DAY))
    clock.advance(0.05)
    assert result_of(waiting) == ANSWER
    result_of(one.put_report("r", b"p", "a", 0, 60, DAY))
    assert [r.report_id for r in result_of(two.due_reports("a", 10))] == ["r"]
    result_of(one.close())
    result_of(two.close())


def test_sqlite_uses_the_write_ahead_log(tmp_path):
    path = tmp_path / "s.sqlite3"
    store = SQLiteStore(str(path), Clock(), inline)
    result_of(store.put("k", b"v", 10))
    assert (tmp_path / "s.sqlite3-wal").exists()
    result_of(store.close())


def test_sqlite_sweeps_expired_rows_on_its_clock(tmp_path):
    clock = Clock()
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), clock, inline, sweep_interval=60)
    result_of(store.put("k", b"v", 10))
    result_of(store.put_report("r", b"p", "a", 0, 60, 10))
    result_of(store.claim("c", 10))
    assert result_of(store.size()).records == 3
    clock.advance(60)
    assert result_of(store.size()) == StoreSize(0, 0)
    result_of(store.close())
    assert not clock.getDelayedCalls()


def test_sqlite_a_file_it_cannot_open_is_a_store_error(tmp_path):
    store = SQLiteStore(str(tmp_path / "no" / "such" / "dir.sqlite3"), Clock(), inline)
    with pytest.raises(StoreError, match="unable to open"):
        result_of(store.claim("k", 30))
    (tmp_path / "junk.sqlite3").write_bytes(b"not a database at all" * 100)
    junk = SQLiteStore(str(tmp_path / "junk.sqlite3"), Clock(), inline)
    with pytest.raises(StoreError, match="not a database"):
        result_of(junk.get("k"))
    result_of(store.close())
    result_of(junk.close())


def test_sqlite_refuses_work_once_closed(tmp_path):
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), Clock(), inline)
    result_of(store.close())
    with pytest.raises(StoreError, match="closed"):
        result_of(store.get("k"))


def test_an_unreadable_answer_is_a_store_error():
    with pytest.raises(StoreError, match="unreadable"):
        Answer.decode(b"no metadata line")
    assert Answer.decode(ANSWER.encode()) == ANSWER


@timed
async def test_sqlite_on_its_own_thread_with_the_real_reactor(tmp_path):
    store = open_store(parse_store(f"sqlite:{tmp_path / 's.sqlite3'}"), reactor)
    assert isinstance(store, SQLiteStore)
    claims = await defer.gatherResults([store.claim(f"k{n}", 30) for n in range(50)])
    assert all(isinstance(c, New) for c in claims)
    assert store.work_done == 50 and store.batches < 50  # grouped while one ran
    await store.close()


def test_redis_a_silent_server_times_out_and_the_next_command_reconnects():
    memory = MemoryReactorClock()
    store = RedisStore(StoreSpec("redis", host="127.0.0.1"), memory, timeout=2)
    answers: list[Any] = []
    store.get("k").addBoth(answers.append)
    memory.advance(0)  # HostnameEndpoint resolves, then connects
    [(host, port, factory, _, _)] = memory.tcpClients
    assert (host, port) == ("127.0.0.1", 6379)
    transport = StringTransport()
    factory.buildProtocol(None).makeConnection(transport)
    assert transport.value() == b"*2\r\n$3\r\nGET\r\n$14\r\nmm7tx:record:k\r\n"
    memory.advance(1.9)
    assert answers == []
    memory.advance(0.1)  # no answer in 2 s: the command fails, the link drops
    [failure] = answers
    assert failure.check(StoreError)
    again: list[Any] = []
    store.get("k").addBoth(again.append)
    memory.advance(0)
    assert len(memory.tcpClients) == 2


def _refused(memory: MemoryReactorClock, index: int) -> None:
    """The connection attempt ``index`` (HostnameEndpoint's) is refused."""
    connector = memory.connectors[index]
    factory = memory.tcpClients[index][2]
    factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
    memory.advance(0.3)  # HostnameEndpoint reports it at its next attempt


def test_redis_after_a_refused_connection_commands_fail_at_once_for_a_second():
    memory = MemoryReactorClock()
    store = RedisStore(StoreSpec("redis", host="127.0.0.1"), memory, timeout=2)
    first: list[Any] = []
    store.get("k").addBoth(first.append)
    memory.advance(0)
    _refused(memory, 0)
    [failure] = first
    assert "cannot connect" in failure.getErrorMessage()
    soon: list[Any] = []
    store.get("k").addBoth(soon.append)
    memory.advance(0)
    assert len(memory.tcpClients) == 1  # no new attempt: failed at once
    [failure] = soon
    assert "cannot connect" in failure.getErrorMessage()
    memory.advance(RETRY_AFTER)
    later: list[Any] = []
    store.get("k").addBoth(later.append)
    memory.advance(0)
    assert len(memory.tcpClients) == 2 and later == []  # tried again


def test_redis_reconnecting_logs_nothing_from_its_factory():
    memory = MemoryReactorClock()
    store = RedisStore(StoreSpec("redis", host="127.0.0.1"), memory, timeout=2)
    with capturedLogs() as events:
        for attempt in range(2):
            store.get("k").addErrback(lambda _: None)
            memory.advance(0)
            factory = memory.tcpClients[attempt][2]
            factory.doStart()
            proto = factory.buildProtocol(None)
            proto.makeConnection(StringTransport())
            proto.connectionLost(Failure(ConnectionDone()))
            factory.doStop()
    assert [formatEvent(e) for e in events] == []


class _Connected:
    """An endpoint whose connections are at once made over a StringTransport."""

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        return defer.succeed(proto)


def test_rediss_to_a_server_that_does_not_answer_tls_says_so():
    clock = Clock()
    client = RedisClient(_Connected(), clock, "rediss://r:6379/0", tls=True)
    answers: list[Any] = []
    client.command("GET", "k").addBoth(answers.append)
    clock.advance(2)
    [failure] = answers
    assert failure.getErrorMessage() == (
        "rediss://r:6379/0: TLS handshake failed: no TLS answer in 2.0 s "
        "(does the server speak TLS?)"
    )
    lost: list[Any] = []
    client.command("GET", "k").addBoth(lost.append)
    client._protocol.connectionLost(Failure(ConnectionDone()))  # type: ignore[union-attr]
    assert lost[0].getErrorMessage().startswith("TLS handshake failed: ")


def test_redis_without_tls_says_only_that_it_had_no_answer():
    clock = Clock()
    client = RedisClient(_Connected(), clock, "redis://r:6379/0")
    answers: list[Any] = []
    client.command("GET", "k").addBoth(answers.append)
    clock.advance(2)
    assert answers[0].getErrorMessage() == "redis://r:6379/0: no answer in 2.0 s"


# the store's text


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("none", StoreSpec("none")),
        (" Memory ", StoreSpec("memory")),
        ("sqlite:mm7tx.sqlite3", StoreSpec("sqlite", path="mm7tx.sqlite3")),
        ("sqlite:/var/lib/mm7tx/s.db", StoreSpec("sqlite", path="/var/lib/mm7tx/s.db")),
        ("redis://r.example", StoreSpec("redis", host="r.example")),
        (
            "redis://r.example:6380/3",
            StoreSpec("redis", host="r.example", port=6380, db=3),
        ),
        (
            "rediss://u:p%40ss@r.example:6390/1",
            StoreSpec(
                "redis",
                host="r.example",
                port=6390,
                db=1,
                tls=True,
                username="u",
                password="p@ss",
            ),
        ),
        ("redis://[::1]:6379/0", StoreSpec("redis", host="::1")),
    ],
)
def test_parse_store(text, spec):
    assert parse_store(text) == spec


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "is none of"),
        ("postgres://db", "is none of"),
        ("sqlite:", "names no file"),
        ("redis://", "no host"),
        ("redis://h:99999", "port"),
        ("redis://h:port", "port"),
        ("redis://h/x", "database must be a number"),
        ("redis://h/0?timeout=1", "not understood"),
        ("mysql://user:hunter2@h", "a text with a password"),
    ],
)
def test_parse_store_refuses_what_names_no_store(text, says):
    with pytest.raises(StoreSpecError, match=says) as refused:
        parse_store(text)
    assert "hunter2" not in str(refused.value)


def test_the_password_is_never_shown():
    spec = parse_store("redis://:hunter2@r.example:6379/0")
    assert spec.password == "hunter2"
    assert "hunter2" not in repr(spec)
    assert spec.describe() == "redis://r.example:6379/0"
    assert parse_store("redis://h", password="sep").password == "sep"
    assert parse_store("redis://:url@h", password="sep").password == "url"
    assert "hunter2" not in RedisStore(spec, MemoryReactorClock()).description
    with pytest.raises(StoreSpecError) as refused:
        parse_store("redis://:hunter2@r.example:bad")
    assert "hunter2" not in str(refused.value)


def test_open_store():
    clock = Clock()
    assert open_store(parse_store("none"), clock) is None
    store = open_store(parse_store("memory"), clock)
    assert isinstance(store, MemoryStore)
    result_of(store.close())
    redis = open_store(parse_store("rediss://h:1/0"), MemoryReactorClock())
    assert isinstance(redis, RedisStore)
    assert redis.description == "rediss://h:1/0"
