"""How an email becomes bytes on the wire: the header policy and caches.

Processors build messages with :data:`HEADER_CLASSES` and
:class:`RawHeaderPolicy`; senders turn them into bytes with
:func:`wire_bytes`.  Both are ``policy.default`` made fast where a profile
showed it slow, with output byte for byte what the standard library writes
(differential tests in ``tests/test_fuzz.py``).
"""

from __future__ import annotations

import functools
import sys
from email.generator import BytesGenerator
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy
from io import BytesIO
from typing import Any


class _HeaderClasses(HeaderRegistry):
    """The standard header registry, but making each header class once:
    ``HeaderRegistry.__getitem__`` builds a new class with ``type()`` for
    every header set, which a profile showed at 8% of a transaction."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


# One registry for building and writing mail (the generator reads headers
# through its own policy).
HEADER_CLASSES = _HeaderClasses()


class RawHeaderPolicy(EmailPolicy):
    """``policy.default``, but a plain-ASCII header value is stored as it is,
    parsed once per distinct value when read, and folded once per distinct
    value when written.

    ``policy.default`` parses every header into a structured object when it
    is set, again each time it is read when stored raw, and refolds it when
    written: a profile showed header parsing and folding at a third of a
    transaction (Content-Type alone was parsed six times per email).  Here a
    value that fits on one line is written unchanged (which is what folding
    gives for it), a longer one as ``policy.default`` folds it, and reading
    either gives the same structured header as ever.  Anything else
    (non-ASCII, control characters, a header object) goes the normal way."""

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        if _plain(value):
            return (name, value)
        return super().header_store_parse(name, value)  # type: ignore[no-any-return]

    def header_fetch_parse(self, name: str, value: Any) -> Any:
        if _plain(value):
            return _parsed(self.header_factory, name, value)
        return super().header_fetch_parse(name, value)

    def fold(self, name: str, value: Any) -> str:
        if _plain(value):
            return self._fold_plain(name, value)
        return super().fold(name, value)  # type: ignore[no-any-return]

    def fold_binary(self, name: str, value: Any) -> bytes:
        if _plain(value):
            return self._fold_plain(name, value).encode("ascii")
        return super().fold_binary(name, value)  # type: ignore[no-any-return]

    def _fold_plain(self, name: str, value: str) -> str:
        if len(name) + 2 + len(value) <= (self.max_line_length or sys.maxsize):
            return f"{name}: {value}{self.linesep}"
        return _folded(self, name, value)


def _plain(value: Any) -> bool:
    return (
        type(value) is str
        and 0 < len(value) <= 998  # RFC 5322's line limit bounds the caches
        and value.isascii()
        and value.isprintable()
        and value.strip() == value
    )


# Header objects are immutable strings: one can serve every message.
@functools.lru_cache(maxsize=1024)
def _parsed(factory: Any, name: str, value: str) -> Any:
    return factory(name, value)


_FOLDED: dict[tuple[Any, ...], str] = {}


def _folded(policy: EmailPolicy, name: str, value: str) -> str:
    # By what folding depends on, not by policy object: the generator clones
    # its policy for every nested message.
    key = (
        policy.header_factory,
        policy.linesep,
        policy.max_line_length,
        policy.utf8,
        name,
        value,
    )
    folded = _FOLDED.get(key)
    if folded is None:
        if len(_FOLDED) >= 1024:
            _FOLDED.clear()
        folded = policy.header_factory(name, value).fold(policy=policy)
        _FOLDED[key] = folded
    return folded


# The generator reads the top-level headers through its own policy.
WIRE_POLICY = RawHeaderPolicy(linesep="\n", header_factory=HEADER_CLASSES)


class _Generator(BytesGenerator):
    """``BytesGenerator`` writing a body whose lines already end as they
    should in one piece, rather than line by line (a profile showed the
    per-line writes of base64 bodies at 9% of a transaction).  The output is
    byte for byte what the standard generator writes."""

    def _write_lines(self, lines: str) -> None:
        if "\r" not in lines:
            self.write(lines if self._NL == "\n" else lines.replace("\n", self._NL))  # type: ignore[attr-defined]
            return
        super()._write_lines(lines)  # type: ignore[misc]


def wire_bytes(message: EmailMessage) -> bytes:
    """The message as Twisted's SMTP client wants it: LF line endings (it
    turns them into CRLF and dot-stuffs)."""
    out = BytesIO()
    _Generator(out, policy=WIRE_POLICY).flatten(message)
    return out.getvalue()
