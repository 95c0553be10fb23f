"""The state store: what outlives one transaction (answers given, delivery
reports to post, keyed records), behind
:class:`~mm7tx.interfaces.IStateStore`, in memory, in an SQLite file or in a
Redis (``state_store``: :func:`parse_store`, :func:`open_store`)."""

from __future__ import annotations

from typing import Any

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
)
from mm7tx.store.spec import StoreSpec, StoreSpecError, parse_store

__all__ = [
    "Answer",
    "Claim",
    "Done",
    "InFlight",
    "New",
    "Report",
    "StoreError",
    "StoreSize",
    "StoreSpec",
    "StoreSpecError",
    "open_store",
    "parse_store",
]


def open_store(spec: StoreSpec, reactor: Any) -> IStateStore | None:
    """The store ``spec`` names, its timers, threads and connections on
    ``reactor``; ``None`` for ``none`` (no store: stateless, as before).
    No file is opened and no connection made before the first record is
    asked for."""
    if spec.kind == "memory":
        from mm7tx.store.memory import MemoryStore

        return MemoryStore(reactor)
    if spec.kind == "sqlite":
        from mm7tx.store.sqlite import SQLiteStore, own_thread

        run, stop = own_thread(reactor)
        return SQLiteStore(spec.path, reactor, run, stop)
    if spec.kind == "redis":
        from mm7tx.store.redis import RedisStore

        return RedisStore(spec, reactor)
    return None
