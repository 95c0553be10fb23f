"""The reference samples in ../shared/mm7-reference, as (Content-Type, body)."""

from __future__ import annotations

import os
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
REFERENCE = Path(
    os.environ.get("MM7_REFERENCE", HERE.parent.parent / "shared" / "mm7-reference")
)
SAMPLES = REFERENCE / "samples"


def read(relative: str) -> bytes:
    return (SAMPLES / relative).read_bytes()


def http_message(raw: bytes) -> tuple[str | None, bytes]:
    """Split a captured HTTP message into its Content-Type and body."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, _, body = raw.partition(b"\n\n")
    unfolded = re.sub(rb"\r?\n[ \t]+", b" ", head)
    match = re.search(rb"(?im)^content-type:\s*(.*?)\s*$", unfolded)
    return (match.group(1).decode() if match else None), body


def blocks(relative: str) -> list[bytes]:
    """The fenced example blocks of a Skycore docs file."""
    text = read(relative)
    return re.findall(
        rb"----- BEGIN BLOCK \d+ -----\n(.*?)\n----- END BLOCK", text, re.S
    )


def body_sample(relative: str) -> tuple[str, bytes]:
    """A body-only MIME sample: the boundary comes from its first line."""
    raw = read(relative)
    first = raw.lstrip().split(b"\n", 1)[0].rstrip()
    boundary = first[2:].decode()
    return f'multipart/related; type="text/xml"; boundary="{boundary}"', raw


# Example 7.1 of the Momentum seed, verbatim (a test checks it is in the seed).
EXAMPLE_7_1 = """
mm7_serv {
  mm7_server_default_email_from_address = "test@messagesystems.com"
  mm7_server_default_email_from_domain = "messagesystems.com"
  mm7_server_default_email_to_address = "test@exampleto.com"
  mm7_server_default_email_to_domain = "exampleto.com"
  mm7_server_version = "6.8.0"
  mm7_vasp_uri_paths =  ("/ringtones/" "/photo_contest/" "/email_gateway/")
}
"""
