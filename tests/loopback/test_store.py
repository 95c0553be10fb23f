"""The state store's conformance suite (tests/store/test_store.py) run
against a real ``redis-server`` on a free loopback port, then what is
particular to Redis: native TTLs, authentication, an unreachable server.

Redis keeps its TTLs on its own clock, so the Redis harness moves them as
the test's clock moves: every key's remaining TTL shortened by the time
advanced (or the key deleted)."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from mm7tx.store import StoreError, StoreSpec, parse_store
from mm7tx.store.redis import RedisStore

# The conformance suite, collected here again: each test gets this module's
# ``harness`` (Redis), where tests/store/test_store.py gives memory and SQLite.
from tests.store.test_store import (  # noqa: F401 (collected here)
    ANSWER,
    DAY,
    Harness,
    test_a_claim_whose_lease_passed_is_free,
    test_a_claimed_key_is_in_flight_then_done_with_the_answer,
    test_a_record_is_kept_until_its_ttl,
    test_a_released_key_is_claimed_afresh,
    test_a_removed_or_expired_report_is_gone,
    test_a_report_is_due_to_its_owner,
    test_a_retry_waits_for_the_answer,
    test_a_wait_ends_at_its_timeout,
    test_a_wait_ends_when_the_key_is_released,
    test_a_wait_on_a_free_or_answered_key_ends_at_once,
    test_an_answer_expires_after_the_window,
    test_an_answer_is_not_released,
    test_an_attempt_moves_the_report_and_its_lease,
    test_every_store_provides_the_interface,
    test_keys_are_apart,
    test_reports_come_in_due_order_up_to_the_limit,
    test_the_first_answer_stays,
    test_the_size_counts_the_records_and_shrinks_as_they_expire,
)


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


@pytest.fixture(params=["redis"])
def harness(request, tmp_path):
    clock = Clock()
    clock.advance(1_000_000)
    port = request.getfixturevalue("redis_server")
    store = RedisStore(StoreSpec("redis", host="127.0.0.1", port=port), reactor, clock)
    yield RedisHarness(store, clock)
    pytest_twisted.blockon(store.client.command("FLUSHDB"))
    pytest_twisted.blockon(store.close())


# Redis: native TTLs, authentication, an unreachable server


@pytest_twisted.ensureDeferred
async def test_redis_keeps_native_ttls(redis_server):
    store = RedisStore(StoreSpec("redis", host="127.0.0.1", port=redis_server), reactor)
    try:
        claim = await store.claim("k", 30)
        assert 29_000 < await store.client.command("PTTL", "mm7tx:once:k") <= 30_000
        await store.complete("k", claim.token, ANSWER, DAY)
        assert await store.client.command("PTTL", "mm7tx:once:k") > DAY * 1000 - 1000
        await store.put("r", b"v", 5)
        assert 4000 < await store.client.command("PTTL", "mm7tx:record:r") <= 5000
        await store.put_report("p", b"v", "a", 0, 60, 100)
        assert await store.client.command("PTTL", "mm7tx:report:p") > 99_000
    finally:
        await store.client.command("FLUSHDB")
        await store.close()


@pytest_twisted.ensureDeferred
async def test_redis_authenticates_and_selects_its_database(redis_server):
    admin = RedisStore(StoreSpec("redis", host="127.0.0.1", port=redis_server), reactor)
    await admin.client.command("CONFIG", "SET", "requirepass", "s3cret")
    try:
        url = f"redis://:s3cret@127.0.0.1:{redis_server}/2"
        store = RedisStore(parse_store(url), reactor)
        await store.put("k", b"v", 10)
        assert await store.client.command("CLIENT", "INFO") is not None
        await store.close()
        wrong = RedisStore(
            parse_store(f"redis://127.0.0.1:{redis_server}/2", password="wrong"),
            reactor,
        )
        with pytest.raises(StoreError) as refused:
            await wrong.get("k")
        assert "wrong" not in str(refused.value)
        await wrong.close()
        separate = RedisStore(
            parse_store(f"redis://127.0.0.1:{redis_server}/2", password="s3cret"),
            reactor,
        )
        assert await separate.get("k") == b"v"
        await separate.client.command("FLUSHDB")
        await separate.close()
    finally:
        await admin.client.command("AUTH", "s3cret")
        await admin.client.command("CONFIG", "SET", "requirepass", "")
        await admin.close()


@pytest_twisted.ensureDeferred
async def test_redis_unreachable_is_a_store_error():
    port = free_port()  # nothing listens there
    store = RedisStore(StoreSpec("redis", host="127.0.0.1", port=port), reactor)
    with pytest.raises(StoreError, match="cannot connect"):
        await store.claim("k", 30)
    await store.close()
