"""The rate-limited warning: once per interval per key on the reactor's
clock, the count of what it held back in the key's next line, and a memory
of keys that stays bounded whatever keys come (issue 19, item 4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, capturedLogs, formatEvent

from mm7tx.http.ratelog import RateLimitedWarning

log = Logger()


def warning(clock: Clock, **kw: Any) -> RateLimitedWarning:
    return RateLimitedWarning(
        log,
        clock,
        "Refusing {what} from {peer}",
        suppressed="refused",
        **kw,
    )


def lines(events: Sequence[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events]


def test_once_per_interval_per_key_then_the_count_held_back() -> None:
    clock = Clock()
    warn = warning(clock, interval=60)
    with capturedLogs() as events:
        assert warn("192.0.2.1", what="x", peer="192.0.2.1")
        for _ in range(411):
            clock.advance(0.1)
            assert not warn("192.0.2.1", what="x", peer="192.0.2.1")
        assert warn("192.0.2.2", what="x", peer="192.0.2.2")  # its own key
        clock.advance(60)
        assert warn("192.0.2.1", what="y", peer="192.0.2.1")
        assert not warn("192.0.2.1", what="y", peer="192.0.2.1")
        clock.advance(60)
        assert warn("192.0.2.1", what="z", peer="192.0.2.1")
    assert lines(events) == [
        "Refusing x from 192.0.2.1",
        "Refusing x from 192.0.2.2",
        "Refusing y from 192.0.2.1 (411 more refused since the last warning)",
        "Refusing z from 192.0.2.1 (1 more refused since the last warning)",
    ]
    assert all(e["log_level"] == LogLevel.warn for e in events)
    # The count is a field of its own, for a JSON log.
    assert [e.get("suppressed") for e in events] == [0, 0, 411, 1]


def test_the_interval_is_measured_on_the_clock_given() -> None:
    clock = Clock()
    clock.advance(1_000_000)  # far from time.time()
    warn = warning(clock, interval=60)
    with capturedLogs() as events:
        warn("k", what="x", peer="p")
        clock.advance(59.9)
        warn("k", what="x", peer="p")
        clock.advance(0.1)
        warn("k", what="x", peer="p")
    assert len(events) == 2


def test_the_keys_remembered_are_bounded() -> None:
    clock = Clock()
    warn = warning(clock, interval=60, max_keys=100)
    with capturedLogs():
        for n in range(10_000):  # an attacker cycling source addresses
            warn(f"10.0.{n // 256}.{n % 256}", what="x", peer="p")
            assert len(warn) <= 100
        assert len(warn) == 100


def test_keys_are_forgotten_once_old() -> None:
    clock = Clock()
    warn = warning(clock, interval=60, forget_after=3600)
    with capturedLogs():
        for n in range(50):
            warn(n, what="x", peer="p")
            warn(n, what="x", peer="p")  # one held back for each
        assert len(warn) == 50
        clock.advance(3600)
        warn("another", what="x", peer="p")
    assert len(warn) == 1


def test_a_held_back_count_forgotten_is_not_reported() -> None:
    clock = Clock()
    warn = warning(clock, interval=60, forget_after=600)
    with capturedLogs() as events:
        warn("k", what="x", peer="p")
        warn("k", what="x", peer="p")
        clock.advance(600)
        warn("k", what="x", peer="p")
    assert lines(events) == ["Refusing x from p", "Refusing x from p"]


def test_nonsense_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        warning(Clock(), interval=0)
    with pytest.raises(ValueError):
        warning(Clock(), interval=60, forget_after=30)
    with pytest.raises(ValueError):
        warning(Clock(), max_keys=0)
