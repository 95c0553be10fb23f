"""The state store (mm7tx.store): one conformance suite run against every
implementation — in memory, SQLite (its work run inline on the test's
thread, so that its order is the test's) and a real ``redis-server`` on a
free loopback port — then what is particular to each, and the parser of
the ``state_store`` text.

Time is a ``Clock`` the test advances.  Redis keeps its TTLs on its own
clock, so the Redis harness moves them as the test's clock moves: every
key's remaining TTL shortened by the time advanced (or the key deleted)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from mm7tx.interfaces import IStateStore
from mm7tx.offload import inline
from mm7tx.store import (
    Answer,
    Done,
    InFlight,
    New,
    StoreSize,
    StoreSpec,
)
from mm7tx.store.memory import MemoryStore
from mm7tx.store.redis import RedisStore
from mm7tx.store.sqlite import SQLiteStore

ANSWER = Answer(b"<DeliverRsp/>", {"status": "1000", "content-type": "text/xml"})
OTHER = Answer(b"<other/>", {"status": "1000"})
DAY = 86400.0


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


class RedisHarness(Harness):
    async def advance(self, seconds: float) -> None:
        client = self.store.client
        keys = await client.command("KEYS", "*")
        for key in keys:
            left = await client.command("PTTL", key)
            if left < 0:
                continue
            if left <= seconds * 1000:
                await client.command("DEL", key)
            else:
                await client.command("PEXPIRE", key, left - round(seconds * 1000))
        self.clock.advance(seconds)
        # Replies come in order: once this one is in, so are the replies to
        # what the clock's calls asked for.
        await client.command("PING")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def redis_server():
    """A real redis-server on a free loopback port, for this module."""
    server = shutil.which("redis-server")
    assert server, "redis-server is missing: apt-get install redis-server (.ci/run)"
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    for line in process.stdout:  # it says when it listens
        if b"Ready to accept connections" in line:
            break
    else:
        raise AssertionError(f"redis-server exited: {process.wait()}")
    yield port
    process.terminate()
    process.wait(5)
    process.stdout.close()


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.loopback)]
)
def harness(request, tmp_path):
    clock = Clock()
    clock.advance(1_000_000)
    if request.param == "memory":
        store: Any = MemoryStore(clock)
        made = Harness(store, clock)
    elif request.param == "sqlite":
        store = SQLiteStore(str(tmp_path / "state.sqlite3"), clock, inline)
        made = Harness(store, clock)
    else:
        port = request.getfixturevalue("redis_server")
        store = RedisStore(
            StoreSpec("redis", host="127.0.0.1", port=port), reactor, clock
        )
        made = RedisHarness(store, clock)
    yield made
    if request.param == "redis":
        pytest_twisted.blockon(store.client.command("FLUSHDB"))
    pytest_twisted.blockon(store.close())


def test_every_store_provides_the_interface(harness):
    assert verifyObject(IStateStore, harness.store)
    assert "@" not in harness.store.description


# exactly once


@pytest_twisted.ensureDeferred
async def test_a_claimed_key_is_in_flight_then_done_with_the_answer(harness):
    store = harness.store
    first = await store.claim("k", 30)
    assert isinstance(first, New)
    assert await store.claim("k", 30) == InFlight()
    await store.complete("k", first.token, ANSWER, DAY)
    again = await store.claim("k", 30)
    assert again == Done(ANSWER)
    assert again.answer.metadata["status"] == "1000"


@pytest_twisted.ensureDeferred
async def test_keys_are_apart(harness):
    first = await harness.store.claim("a", 30)
    second = await harness.store.claim("b", 30)
    assert isinstance(first, New) and isinstance(second, New)
    assert first.token != second.token


@pytest_twisted.ensureDeferred
async def test_the_first_answer_stays(harness):
    store = harness.store
    claim = await store.claim("k", 30)
    await store.complete("k", claim.token, ANSWER, DAY)
    await store.complete("k", claim.token, OTHER, DAY)
    assert await store.claim("k", 30) == Done(ANSWER)


@pytest_twisted.ensureDeferred
async def test_a_released_key_is_claimed_afresh(harness):
    store = harness.store
    claim = await store.claim("k", 30)
    await store.release("k", "not-the-token")
    assert await store.claim("k", 30) == InFlight()
    await store.release("k", claim.token)
    assert isinstance(await store.claim("k", 30), New)


@pytest_twisted.ensureDeferred
async def test_an_answer_is_not_released(harness):
    store = harness.store
    claim = await store.claim("k", 30)
    await store.complete("k", claim.token, ANSWER, DAY)
    await store.release("k", claim.token)
    assert await store.claim("k", 30) == Done(ANSWER)


@pytest_twisted.ensureDeferred
async def test_a_claim_whose_lease_passed_is_free(harness):
    store = harness.store
    await store.claim("k", 30)
    await harness.advance(29)
    assert await store.claim("k", 30) == InFlight()
    await harness.advance(1)
    assert isinstance(await store.claim("k", 30), New)


@pytest_twisted.ensureDeferred
async def test_an_answer_expires_after_the_window(harness):
    store = harness.store
    claim = await store.claim("k", 30)
    await store.complete("k", claim.token, ANSWER, DAY)
    await harness.advance(DAY - 1)
    assert await store.claim("k", 30) == Done(ANSWER)
    await harness.advance(1)
    assert isinstance(await store.claim("k", 30), New)


@pytest_twisted.ensureDeferred
async def test_a_retry_waits_for_the_answer(harness):
    store = harness.store
    claim = await store.claim("k", 30)
    waiting = store.wait("k", 10)
    await harness.advance(1)
    assert not waiting.called
    await store.complete("k", claim.token, ANSWER, DAY)
    await harness.advance(0.05)
    assert await waiting == ANSWER


@pytest_twisted.ensureDeferred
async def test_a_wait_ends_when_the_key_is_released(harness):
    store = harness.store
    claim = await store.claim("k", 30)
    waiting = store.wait("k", 10)
    await store.release("k", claim.token)
    await harness.advance(0.05)
    assert await waiting is None
    assert isinstance(await store.claim("k", 30), New)


@pytest_twisted.ensureDeferred
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


@pytest_twisted.ensureDeferred
async def test_a_wait_on_a_free_or_answered_key_ends_at_once(harness):
    store = harness.store
    assert await store.wait("free", 10) is None
    claim = await store.claim("k", 30)
    await store.complete("k", claim.token, ANSWER, DAY)
    assert await store.wait("k", 10) == ANSWER


# delivery reports


@pytest_twisted.ensureDeferred
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


@pytest_twisted.ensureDeferred
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


@pytest_twisted.ensureDeferred
async def test_reports_come_in_due_order_up_to_the_limit(harness):
    store, now = harness.store, harness.clock.seconds()
    for n in (3, 1, 2):
        await store.put_report(f"r{n}", b"p", "a", now + n, 60, DAY)
    await harness.advance(3)
    assert [r.report_id for r in await store.due_reports("a", 2)] == ["r1", "r2"]


@pytest_twisted.ensureDeferred
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


@pytest_twisted.ensureDeferred
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


@pytest_twisted.ensureDeferred
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
