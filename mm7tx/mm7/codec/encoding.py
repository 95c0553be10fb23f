"""Base64 in MIME's 76-character lines, for the parts of MM7 requests and
of emails alike."""

from __future__ import annotations

import binascii
import itertools
import struct

# Whole 76-character base64 lines, sixteen at a time.
_SIXTEEN_LINES = struct.Struct("76s" * 16)


# Input bytes encoded per step: whole 57-byte lines, so that no step but
# the last has padding; about a megabyte, so that no line list is large.
_STEP = 57 * 16 * 1024


def base64_lines(data: bytes | memoryview) -> bytes:
    """``base64.encodebytes(data)``, byte for byte, in a few C calls rather
    than one per 57-byte line: a megabyte at a time, encoded in one piece
    and cut into lines sixteen at a time by ``struct``.  Steps keep the line
    objects of one megabyte alive at most, not those of the whole part."""
    if len(data) <= _STEP:
        return _base64_step(data)
    view = memoryview(data)
    return b"".join(
        _base64_step(view[at : at + _STEP]) for at in range(0, len(data), _STEP)
    )


def _base64_step(data: bytes | memoryview) -> bytes:
    if not data:
        return b""
    encoded = binascii.b2a_base64(data, newline=False)
    whole = len(encoded) - len(encoded) % _SIXTEEN_LINES.size
    lines = list(
        itertools.chain.from_iterable(
            _SIXTEEN_LINES.iter_unpack(memoryview(encoded)[:whole])
        )
    )
    lines += [encoded[at : at + 76] for at in range(whole, len(encoded), 76)]
    return b"\n".join(lines) + b"\n"
