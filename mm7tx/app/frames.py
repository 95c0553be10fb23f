"""The configuration a ``--workers`` parent passes its workers: the text it
accepted, framed on each worker's standard input (its length in decimal, a
newline, then the bytes), at the worker's start and after each good SIGHUP.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

from mm7tx.config import EMBEDDED, Config, load, with_overrides


@dataclass(frozen=True)
class Accepted:
    """A configuration as the parent accepted it: the file's ``text`` as
    read (None: the embedded defaults) and ``source``, its name in messages.
    Relative paths in it resolve as in the parent: a worker has its folder."""

    source: str
    text: str | None

    def load(self) -> Config:
        return EMBEDDED if self.text is None else load(self.text, self.source)


def frame(payload: bytes) -> bytes:
    """``payload`` as the parent writes it on a worker's standard input:
    its length in decimal, a newline, then the bytes."""
    return b"%d\n%s" % (len(payload), payload)


def configuration_frame(bound: Accepted, accepted: Accepted) -> bytes:
    """What a worker runs: ``accepted``, with the listeners of ``bound``
    (the configuration the parent bound its sockets for)."""
    payload = {"accepted": [accepted.source, accepted.text]}
    if bound != accepted:
        payload["bound"] = [bound.source, bound.text]
    return frame(json.dumps(payload).encode("utf-8"))


def configuration(
    payload: bytes, listen: Sequence[str], smtp_relay: str | None
) -> Config:
    """The configuration a worker runs from a frame's ``payload``, with its
    command line's ``--listen`` and ``--smtp-relay`` over it; a
    :class:`~mm7tx.config.ConfigError` as for the file."""
    found = json.loads(payload)
    accepted = Accepted(*found["accepted"])
    config = with_overrides(accepted.load(), list(listen), smtp_relay, "1")
    if "bound" not in found:
        return config
    bound = with_overrides(Accepted(*found["bound"]).load(), list(listen), None, "1")
    # Listener i adopts the parent's socket i: the listeners it was bound for
    # (the HTTP ones, then the ESMTP ones: mm7tx.app.worker.passed_endpoints).
    return replace(
        config,
        listeners=bound.listeners,
        esmtp_listeners=bound.esmtp_listeners,
    )


class Frames:
    """A worker's standard input as it comes: :meth:`feed` returns the
    payloads of the frames it completes."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        found = []
        while (end := self._buffer.find(b"\n")) >= 0:
            size = int(self._buffer[:end])
            if len(self._buffer) < end + 1 + size:
                break
            found.append(self._buffer[end + 1 : end + 1 + size])
            self._buffer = self._buffer[end + 1 + size :]
        return found


def read_frame(fd: int) -> bytes | None:
    """The next frame's payload on ``fd``, waiting for all of it and reading
    no byte past it (the frames after it are the running worker's); None if
    ``fd`` ends first (the parent is gone)."""
    header = b""
    while not header.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            return None
        header += byte
    size = int(header)
    pieces: list[bytes] = []
    while size:
        piece = os.read(fd, min(size, 1 << 16))
        if not piece:
            return None
        pieces.append(piece)
        size -= len(piece)
    return b"".join(pieces)
