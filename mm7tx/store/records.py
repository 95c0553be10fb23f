"""The records of the state store, as the stores give them back: a claim's
outcome, an answer kept, a delivery report, the store's size; and how an
answer is written as bytes (the same in every store)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field


class StoreError(Exception):
    """The store could not do what was asked (unreachable, too slow, full,
    its file unreadable): the caller serves without it."""


@dataclass(frozen=True)
class Answer:
    """The answer given to a transaction: its bytes, as sent, and what the
    caller needs beside them to send them again (the HTTP status, the
    content type, a MessageID...), as text."""

    body: bytes
    metadata: Mapping[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        """``metadata`` as one line of JSON, then ``body``."""
        line = json.dumps(dict(self.metadata), sort_keys=True, separators=(",", ":"))
        return line.encode("utf-8") + b"\n" + self.body

    @classmethod
    def decode(cls, data: bytes) -> Answer:
        """The inverse of :meth:`encode`; :class:`StoreError` for bytes that
        are not an answer."""
        line, newline, body = data.partition(b"\n")
        try:
            metadata = json.loads(line)
        except ValueError:
            metadata = None
        if not newline or not isinstance(metadata, dict):
            raise StoreError("a stored answer is unreadable")
        return cls(body, {str(k): str(v) for k, v in metadata.items()})


@dataclass(frozen=True)
class New:
    """The key was free and is now claimed: ``token`` completes or
    releases it."""

    token: str


@dataclass(frozen=True)
class InFlight:
    """Another holder's claim on the key is live."""


@dataclass(frozen=True)
class Done:
    """The key's transaction was answered: ``answer`` is what was sent."""

    answer: Answer


Claim = New | InFlight | Done


@dataclass(frozen=True)
class Report:
    """A delivery report still to post: ``payload`` is what to post (the
    caller's encoding), ``attempts`` the attempts made, ``due`` when the
    next is, ``owner`` the instance that holds it until ``lease_until``."""

    report_id: str
    payload: bytes
    attempts: int
    due: float
    owner: str
    lease_until: float
    expires: float


@dataclass(frozen=True)
class StoreSize:
    """How many records a store holds and their bytes (keys and values;
    Redis: the server's whole memory)."""

    records: int
    bytes: int


def lease_end(now: float, due: float, lease: float) -> float:
    """When a report's lease ends: ``lease`` seconds after its attempt is
    due, or after now when that is later (its owner attempts it at ``due``
    and renews the lease then, so that a live owner is never taken over)."""
    return max(now, due) + lease
