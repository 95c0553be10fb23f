"""The digest and key that say two MM7 requests are one transaction."""

from __future__ import annotations

import base64
import re

import pytest

from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.mm7.digest import (
    peer_identity,
    source_network,
    transaction_digest,
    transaction_key,
)

PHOTO = bytes(range(256)) * 40


def _deliver(subject: str = "hello", photo: bytes = PHOTO) -> m.DeliverReq:
    return m.DeliverReq(
        sender=m.Address("+15551234567"),
        recipients=m.Recipients(to=(m.Address("1234", "ShortCode"),)),
        subject=subject,
        content=(
            m.ContentPart("text/plain", b"hi", (("charset", "utf-8"),), "t"),
            m.ContentPart("image/jpeg", photo, (), "p", "photo.jpg"),
        ),
    )


def _as_received(message: m.DeliverReq, rewrap: int | None = None) -> m.DeliverReq:
    """``message`` encoded and decoded by our codec, as the resource gets it;
    with ``rewrap``, its base64 lines refolded to that length first."""
    content_type, body = codec.encode(m.Envelope("t1", message))
    if rewrap is not None:

        def refold(match: re.Match[bytes]) -> bytes:
            flat = match.group(0).replace(b"\r\n", b"")
            lines = [flat[i : i + rewrap] for i in range(0, len(flat), rewrap)]
            return b"\r\n".join(lines) + b"\r\n"

        refolded = re.sub(rb"(?:[A-Za-z0-9+/=]{40,}\r\n)+", refold, body)
        assert refolded != body
        body = refolded
    decoded = codec.decode(content_type, body).message
    assert isinstance(decoded, m.DeliverReq)
    assert decoded.content[1].base64 is not None  # passed through as it came
    return decoded


def test_a_retry_with_a_new_boundary_has_the_same_digest() -> None:
    first, second = _as_received(_deliver()), _as_received(_deliver())
    assert transaction_digest(first) == transaction_digest(second)


def test_base64_folded_otherwise_has_the_same_digest() -> None:
    first = _as_received(_deliver())
    second = _as_received(_deliver(), rewrap=64)
    assert first.content[1].base64 != second.content[1].base64
    digests = transaction_digest(first), transaction_digest(second)
    assert first == second  # the same request (comparing decodes the parts)
    assert digests[0] == digests[1]


def test_the_digest_does_not_decode_base64_parts() -> None:
    part = m.ContentPart.from_base64("image/jpeg", base64.encodebytes(PHOTO))
    transaction_digest(m.DeliverReq(content=(part,)))
    assert part.base64 is not None  # still as received


@pytest.mark.parametrize(
    "other",
    [
        _deliver(subject="hello!"),
        _deliver(photo=PHOTO[:-1] + b"\x00"),
        m.DeliverReq(subject="hello"),
        m.SubmitReq(subject="hello"),
    ],
)
def test_another_transaction_has_another_digest(other: m.Request) -> None:
    assert transaction_digest(_as_received(_deliver())) != transaction_digest(other)


def test_none_and_empty_text_differ() -> None:
    assert transaction_digest(m.DeliverReq(subject=None)) != transaction_digest(
        m.DeliverReq(subject="")
    )


def test_recipient_lists_do_not_run_into_each_other() -> None:
    a, b = m.Address("1"), m.Address("2")
    one = m.SubmitReq(recipients=m.Recipients(to=(a,), cc=(b,)))
    two = m.SubmitReq(recipients=m.Recipients(to=(a, b)))
    assert transaction_digest(one) != transaction_digest(two)


def test_the_key_depends_on_each_of_its_parts() -> None:
    keys = {
        transaction_key("account:v1", "t1", "d"),
        transaction_key("account:v2", "t1", "d"),
        transaction_key("account:v1", "t2", "d"),
        transaction_key("account:v1", "t1", "e"),
        transaction_key("account:v1t", "1", "d"),
    }
    assert len(keys) == 5
    assert all(re.fullmatch("[0-9a-f]{64}", key) for key in keys)


def test_a_peer_without_an_account_is_its_path_and_network() -> None:
    assert peer_identity("vasp1", "/mm7/", "10.0.0.1") == "account:vasp1"
    same = peer_identity(None, "/vasp/", "10.0.0.1")
    assert same == peer_identity(None, "/vasp/", "10.0.0.200")
    assert same != peer_identity(None, "/vasp/", "10.0.1.1")
    assert same != peer_identity(None, "/other/", "10.0.0.1")
    assert source_network("::ffff:10.0.0.9") == "10.0.0.0/24"
    assert source_network("2001:db8::1") == "2001:db8::/64"
    assert source_network("/run/mm7.sock") == "/run/mm7.sock"
