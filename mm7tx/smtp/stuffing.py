"""SMTP data: a message made the DATA of an SMTP transaction, dots stuffed
(RFC 5321 4.5.2), in pieces that are written as they are made and read back
as a file for Twisted's ``FileSender``, never copied whole."""

from __future__ import annotations

from email.message import EmailMessage

from twisted.protocols.basic import FileSender

from mm7tx.mail.wire import write_wire

# A message up to this size (as SMTP data) goes to the transport in one write;
# a bigger one in chunks of this size.
ONE_WRITE = 256 * 1024


class Chunks(FileSender):
    CHUNK_SIZE = ONE_WRITE


# Past this many dots, stuffed stops looking for one that starts a line
# and doubles every "\r\n." in one call.
DOTS_LOOKED_AT = 64


def dot_starts_a_line(data: bytes) -> bool:
    """Whether a dot follows a line feed in ``data``, or may (past
    :data:`DOTS_LOOKED_AT` dots).  The dots are found with ``find``, which
    skips from dot to dot: a mail has a few, in its headers, and none in
    its base64 parts, so most messages need no search for ``"\r\n."``,
    which would stop at every line end."""
    at = data.find(b".")
    for _ in range(DOTS_LOOKED_AT):
        if at < 0:
            return False
        if at > 0 and data[at - 1] == 10:
            return True
        at = data.find(b".", at + 1)
    return at >= 0


def stuffed(data: bytes) -> bytes:
    """A message with LF line ends as SMTP DATA without the final dot: CRLF
    line ends and leading dots doubled (RFC 5321 4.5.2)."""
    return b"".join(stuffed_pieces(data))


def stuffed_pieces(data: bytes) -> list[bytes]:
    """:func:`stuffed` in pieces of about a megabyte of whole lines: each
    piece over whole lines at once, never chunk by chunk (a dot starting a
    chunk would be missed), and no single call over a large message holds
    the interpreter for long (this may run in a thread, mm7tx.offload)."""
    if len(data) <= PIECE:
        return [stuffed_lines(data)]
    pieces = []
    at = 0
    while at < len(data):
        end = data.find(b"\n", at + PIECE - 1) + 1 or len(data)
        pieces.append(stuffed_lines(data[at:end]))
        at = end
    return pieces


# How much of a message stuffed works on at a time.
PIECE = 1024 * 1024


def stuffed_lines(data: bytes) -> bytes:
    """:func:`stuffed` for ``data`` starting at the start of a line."""
    wire = data.replace(b"\n", b"\r\n")
    if dot_starts_a_line(data):
        wire = wire.replace(b"\r\n.", b"\r\n..")
    if wire.startswith(b"."):
        wire = b"." + wire
    if wire and not wire.endswith(b"\r\n"):
        wire += b"\r\n"
    return wire


def smtp_pieces(message: EmailMessage) -> list[bytes]:
    """The message as SMTP DATA without the final dot, in pieces: made once,
    whatever the connection that carries it, as it is written (never whole
    with LF line ends first, nor joined: copies of tens of megabytes)."""
    out = Stuffer()
    write_wire(message, out)
    return out.close()


class Stuffer:
    """What the generator writes, made SMTP data as it comes: the whole
    lines written so far, once about a megabyte is pending, through
    :func:`stuffed_pieces` (mail lines are at most 998 octets, so whole
    lines end soon after any write)."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        self._size += len(data)
        if self._size >= PIECE:
            self._stuff(final=False)

    def close(self) -> list[bytes]:
        """The pieces, the last line ended if it was not."""
        self._stuff(final=True)
        return self.pieces

    def _stuff(self, final: bool) -> None:
        data = b"".join(self._pending)
        end = len(data) if final else data.rfind(b"\n") + 1
        if end:
            self.pieces.extend(stuffed_pieces(data[:end]))
        rest = data[end:]
        self._pending, self._size = ([rest] if rest else []), len(rest)


class Pieces:
    """The pieces of a message read as a file, as ``FileSender`` reads one:
    no piece is copied but for the slices read."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces
        self._index = 0
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        out = []
        want = size if size >= 0 else sum(map(len, self._pieces))
        while want > 0 and self._index < len(self._pieces):
            piece = self._pieces[self._index]
            taken = piece[self._offset : self._offset + want]
            out.append(taken)
            want -= len(taken)
            self._offset += len(taken)
            if self._offset >= len(piece):
                self._index, self._offset = self._index + 1, 0
        return b"".join(out)
