"""How an email becomes bytes on the wire: the header policy and caches.

Processors build messages with :data:`HEADER_CLASSES` and
:class:`RawHeaderPolicy`; senders turn them into bytes with
:func:`write_wire` (or :func:`wire_bytes`).  Both are ``policy.default`` made fast where a profile
showed it slow, with output byte for byte what the standard library writes
(differential tests in ``tests/system/test_fuzz.py``).
"""

from __future__ import annotations

import binascii
import functools
import re
from email.generator import BytesGenerator
from email.headerregistry import HeaderRegistry, UnstructuredHeader
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
    parsed once per distinct value when read, and folded in linear time when
    written; a non-ASCII value of an unstructured header (Subject, X-MM7-*)
    is stored as RFC 2047 encoded words, made in linear time.

    ``policy.default`` parses every header into a structured object when it
    is set, again each time it is read when stored raw, and refolds it when
    written: a profile showed header parsing and folding at a third of a
    transaction (Content-Type alone was parsed six times per email), and its
    folder (``_refold_parse_tree``) takes time quadratic in the value's
    length: a 512 KB Subject of short words held the reactor for seconds.
    Here a value that fits on one line is written unchanged (which is what
    folding gives for it), a longer one is broken before its spaces into
    lines of at most 78 characters where its words allow, and reading either
    gives the same structured header as ever.  A word of an unstructured
    header too long for even a line of 998 characters (RFC 5322's limit) is
    written as encoded words, as ``policy.default`` does with any word too
    long for its line (:func:`fitted_words`).
    Anything else (control characters, a non-ASCII structured header, a
    header object) goes the normal way."""

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        if _plain(value):
            return (name, value)
        if (
            type(value) is str
            and value
            and not value.isascii()
            and not CONTROLS.search(value)
            and value.strip() == value
            and _unstructured(self.header_factory, name)
        ):
            return (name, encoded_words(value))
        return super().header_store_parse(name, value)  # type: ignore[no-any-return]

    def header_fetch_parse(self, name: str, value: Any) -> Any:
        if _plain(value):
            if len(value) > 998:
                return self.header_factory(name, value)
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
        width = min(self.max_line_length or MAX_LINE, MAX_LINE)
        if len(name) + 2 + len(value) <= width:
            return f"{name}: {value}{self.linesep}"
        if _unstructured(self.header_factory, name):
            # What a line leaves beside the name, where the first word goes:
            # no word may be longer, wherever folding puts it.
            value = fitted_words(value, MAX_LINE - len(name) - 2)
        # A structured header's words stay whole, however long: the values
        # processors give them are cut far shorter than a line
        # (mm7tx.gateway.fields.FIELD_LIMITS).
        return fold_words(f"{name}: {value}", width, self.linesep)


def _unstructured(factory: Any, name: str) -> bool:
    return issubclass(factory[name], UnstructuredHeader)


# RFC 5322 2.1.1 (and RFC 5321 4.5.3.1.6): no line of a mail may be longer
# than 998 characters without its CRLF; a strict relay refuses the mail.
MAX_LINE = 998

# What may not go into a header: line breaks of every kind, controls.
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def _plain(value: Any) -> bool:
    return (
        type(value) is str
        and len(value) > 0
        and value.isascii()
        and value.isprintable()
        and value.strip() == value
    )


# Header objects are immutable strings: one can serve every message.
@functools.lru_cache(maxsize=1024)
def _parsed(factory: Any, name: str, value: str) -> Any:
    return factory(name, value)


def fold_words(line: str, width: int = 78, linesep: str = "\n") -> str:
    """A header line (``Name: value``, printable ASCII) folded before its
    spaces so that each line is at most ``width`` characters where the words
    allow: one pass, linear in the length.  A word longer than a line is
    left whole on a line of its own; the first word stays beside the name.
    (Folding inside a quoted string is allowed: RFC 5322 makes the line
    break invisible there.)"""
    words = line.split(" ")
    lines: list[str] = []
    current = words[0]
    first = True
    pending = ""
    for word in words[1:]:
        pending += " "
        if not word:
            continue
        piece, pending = pending + word, ""
        if len(current) + len(piece) > width and not first:
            lines.append(current)
            current = piece
        else:
            current += piece
        first = False
    lines.append(current + pending)
    return linesep.join(lines) + linesep


def fitted_words(value: str, room: int) -> str:
    """``value`` (an unstructured header's printable ASCII, no space at its
    ends) with each word that, with the spaces before it, is longer than
    ``room`` characters written as RFC 2047 encoded words instead, so that
    no line :func:`fold_words` makes of it is over ``room`` characters and a
    reader gets the same text back: one pass, linear in the length.

    The spaces before such a word go inside its encoded words but one, which
    separates them from the text before (a reader keeps the space between
    text and an encoded word, and drops it between two encoded words).  The
    other words are left as they are: a long StatusText keeps its first
    words readable, and Diagnostic-Code its ``X-MM7;`` type."""
    if len(value) <= room:
        return value
    out: list[str] = []
    gap = -1  # the spaces before the word (none before the first)
    after_encoded = False
    for word in value.split(" "):
        gap += 1
        if not word:
            continue
        spaces, gap = " " * gap, 0
        if len(spaces) + len(word) <= room:
            out.append(spaces + word)
            after_encoded = False
        elif after_encoded:
            out.append(" " + encoded_words(spaces + word))
        else:
            out.append(spaces[:1] + encoded_words(spaces[1:] + word))
            after_encoded = True
    return "".join(out)


def encoded_words(text: str) -> str:
    """``text`` as RFC 2047 encoded words (UTF-8, base64), at most 75
    characters each and separated by a space, which a reader drops between
    two encoded words: made in one pass, linear in the length."""
    text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    for char in text:
        width = len(char.encode("utf-8"))
        if size + width > 45:  # 45 bytes are 60 base64 characters
            words.append(_b_word("".join(chunk)))
            chunk, size = [], 0
        chunk.append(char)
        size += width
    if chunk:
        words.append(_b_word("".join(chunk)))
    return " ".join(words)


def _b_word(text: str) -> str:
    encoded = binascii.b2a_base64(text.encode("utf-8"), newline=False)
    return f"=?utf-8?b?{encoded.decode('ascii')}?="


# The generator reads the top-level headers through its own policy.
WIRE_POLICY = RawHeaderPolicy(linesep="\n", header_factory=HEADER_CLASSES)


class _Generator(BytesGenerator):
    """``BytesGenerator`` writing a body whose lines already end as they
    should in one piece, rather than line by line (a profile showed the
    per-line writes of base64 bodies at 9% of a transaction), and writing
    each part straight into the output once every multipart has its
    boundary.  The output is byte for byte what the standard generator
    writes.

    The standard generator writes each part's body into a buffer of its
    own before its headers (so that it can pick a boundary the text does
    not hold, or change a transfer encoding), then copies the buffer into
    its parent's: a mail holding a part of tens of megabytes was copied
    that many times more.  mm7tx sets the boundaries before (processors'
    ``_set_boundaries``), and a policy writing 8-bit changes no encoding."""

    def _write(self, msg: Any) -> None:
        if self._mangle_from_ or not _streams(msg, self.policy):  # type: ignore[attr-defined]
            super()._write(msg)  # type: ignore[misc]
            return
        self._munge_cte = None
        write_headers = getattr(msg, "_write_headers", None)
        if write_headers is None:
            self._write_headers(msg)  # type: ignore[attr-defined]
        else:
            write_headers(self)
        self._dispatch(msg)  # type: ignore[attr-defined]
        del self._munge_cte

    def _handle_multipart(self, msg: Any) -> None:
        boundary = msg.get_boundary()
        subparts = msg.get_payload()
        if not boundary or not isinstance(subparts, list):
            super()._handle_multipart(msg)  # type: ignore[misc]
            return
        # As BytesGenerator writes it (no From_ mangling in ours).
        if msg.preamble is not None:
            self._write_lines(msg.preamble)
            self.write(self._NL)  # type: ignore[attr-defined]
        self.write("--" + boundary + self._NL)  # type: ignore[attr-defined]
        for i, part in enumerate(subparts):
            if i:
                self.write(self._NL + "--" + boundary + self._NL)  # type: ignore[attr-defined]
            self.clone(self._fp).flatten(part, unixfrom=False, linesep=self._NL)  # type: ignore[attr-defined]
        self.write(self._NL + "--" + boundary + "--" + self._NL)  # type: ignore[attr-defined]
        if msg.epilogue is not None:
            self._write_lines(msg.epilogue)

    def _write_lines(self, lines: str) -> None:
        if "\r" not in lines:
            if self._NL != "\n":  # type: ignore[attr-defined]
                lines = lines.replace("\n", self._NL)  # type: ignore[attr-defined]
            # A megabyte at a time: no single encoding holds the interpreter
            # long (the flattening of a large mail runs in a thread).
            for at in range(0, len(lines), _PIECE):
                self.write(lines[at : at + _PIECE])
            return
        super()._write_lines(lines)  # type: ignore[misc]


_PIECE = 1024 * 1024


def _streams(msg: Any, policy: Any) -> bool:
    """Whether the generator may write ``msg``'s headers first and its body
    straight after: nothing in writing the body can change them (a
    multipart has its boundary, no 7-bit policy re-encodes 8-bit text).
    Each part is asked as it is written: one that may not is buffered, as
    the standard generator does, without holding up its parent."""
    if getattr(policy, "cte_type", "8bit") == "7bit":
        return False
    if msg.is_multipart() and msg.get_content_maintype() == "multipart":
        return bool(msg.get_boundary())  # "" would be replaced
    return True


def wire_bytes(message: EmailMessage) -> bytes:
    """The message with LF line endings, whole (the ESMTP sender writes it
    with :func:`write_wire` straight into SMTP data instead)."""
    out = BytesIO()
    write_wire(message, out)
    return out.getvalue()


def write_wire(message: EmailMessage, out: Any) -> None:
    """Write the message with LF line endings into ``out`` (anything with
    ``write(bytes)``), as :func:`wire_bytes` gives it."""
    _Generator(out, policy=WIRE_POLICY).flatten(message)


def mail_size(message: EmailMessage) -> int:
    """About how many bytes the message makes: its leaves' payloads (read
    as they are: ``get_payload`` would encode each once more)."""
    size = 0
    for part in message.walk():
        payload = part._payload  # type: ignore[attr-defined]
        if isinstance(payload, (str, bytes)):
            size += len(payload)
    return size
