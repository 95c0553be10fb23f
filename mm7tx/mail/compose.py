"""Composing emails: the policy they are built with, header values made
safe, dates, Content-Disposition, multipart boundaries, the header blocks of
delivery status (RFC 3464) and disposition (RFC 8098) notifications, and
:class:`Mail`, an email with its envelope.  Pure: no I/O, nothing of MM7."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from email.utils import format_datetime
from urllib.parse import quote

from mm7tx.mail.wire import CONTROLS, HEADER_CLASSES, RawHeaderPolicy

# Bodies are kept 7-bit (quoted-printable or base64): Twisted's SMTP client
# does not negotiate 8BITMIME, and many relays would mangle 8-bit data.
BUILD_POLICY = RawHeaderPolicy(cte_type="7bit", header_factory=HEADER_CLASSES)

# MMStatus -> (RFC 3464 Action, Status) for delivery reports: the README's
# table ("Delivery status back to the mail's sender").  A failure the MMSC
# may only have given up on (Expired, Indeterminate, Unreachable) keeps a 4.x.x
# status, as an MTA's bounce after its queue lifetime does.
DSN_ACTIONS: dict[str, tuple[str, str]] = {
    "retrieved": ("delivered", "2.0.0"),
    "forwarded": ("relayed", "2.0.0"),
    "deferred": ("delayed", "4.0.0"),
    "expired": ("failed", "4.4.7"),
    "indeterminate": ("failed", "4.0.0"),
    "rejected": ("failed", "5.0.0"),
    "unrecognised": ("failed", "5.1.1"),
    "unrecognized": ("failed", "5.1.1"),
    "unreachable": ("failed", "4.4.1"),
    "deliveryconditionnotmet": ("failed", "5.3.0"),
    "notsupported": ("failed", "5.6.0"),
}
# MMStatus -> RFC 8098 disposition type for read replies.
MDN_DISPOSITIONS = {"read": "displayed", "deleted": "deleted"}


def clean(text: str | None) -> str:
    """A header-safe one-line value: control characters and line separators
    (CR, LF, NEL, U+2028...) become a space, so nothing from a request can
    add a header to the email."""
    return CONTROLS.sub(" ", text or "").strip()


def disposition(kind: str, filename: str | None) -> str:
    """A Content-Disposition value, built in linear time: a short plain
    name quoted, any other as RFC 2231 continuations of at most 56
    characters each, so that folding never needs a line over 78."""
    if filename is None:
        return kind
    if (
        len(filename) <= 60
        and filename.isascii()
        and filename.isprintable()
        and not set(filename) & set('"\\')
    ):
        return f'{kind}; filename="{filename}"'
    encoded = quote(filename.encode("utf-8", "replace"), safe="")
    pieces = []
    at = 0
    while at < len(encoded):
        end = min(at + 56, len(encoded))
        percent = encoded.rfind("%", end - 2, end)
        if end < len(encoded) and percent >= 0:
            end = percent  # never split a %XX escape
        pieces.append(encoded[at:end])
        at = end
    first, *rest = pieces
    params = [f"filename*0*=utf-8''{first}"]
    params += [f"filename*{i}*={piece}" for i, piece in enumerate(rest, 1)]
    return f"{kind}; " + "; ".join(params)


def email_date(timestamp: str | None) -> str:
    """An RFC 5322 date from an MM7 (ISO 8601) timestamp; now if unreadable."""
    when = None
    if timestamp:
        try:
            when = datetime.fromisoformat(timestamp.strip())
        except ValueError:
            when = None
    if when is None:
        when = datetime.now(UTC)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return format_datetime(when)


@dataclass(frozen=True, slots=True)
class Mail:
    """An email ready for a sender: envelope sender (``""``: the null
    sender, ``MAIL FROM:<>``), recipients, message."""

    sender: str
    recipients: list[str]
    message: EmailMessage


# One random boundary per process (and nesting depth), so that the
# Content-Type naming it is the same in every email, and the email package
# parses it once rather than once per email.  An email with text that
# contains it gets fresh random boundaries instead.
BOUNDARY = f"mm7tx-{secrets.token_urlsafe(16)}"


def _text_payload(part: Message) -> object:
    """The payload as the generator writes it, unless base64 (whose
    alphabet has no "-": it cannot hold a boundary).  Not ``get_payload``,
    which encodes the whole text once more to look for surrogates."""
    if str(part.get("Content-Transfer-Encoding", "")).lower() == "base64":
        return None
    return part._payload  # type: ignore[attr-defined]


def set_boundaries(msg: Message) -> None:
    """Boundaries for the multiparts that have none, set now: otherwise the
    generator makes one and scans the whole text for it."""
    fresh = any(
        (isinstance(payload, str) and BOUNDARY in payload)
        or (isinstance(payload, bytes) and BOUNDARY.encode() in payload)
        for payload in (_text_payload(part) for part in msg.walk())
    )

    def visit(part: Message, depth: int) -> None:
        if not part.is_multipart():
            return
        # (message/delivery-status also holds a list, of header blocks.)
        if part.get_content_maintype() == "multipart" and part.get_boundary() is None:
            # 128 random bits, short enough for Content-Type to fit a line.
            part.set_boundary(
                f"mm7tx-{secrets.token_urlsafe(16)}"
                if fresh
                else f"{BOUNDARY}-{depth:02x}"
            )
        for child in part.get_payload():
            visit(child, depth + 1)  # type: ignore[arg-type]

    visit(msg, 0)


def header_block(*pairs: tuple[str, str]) -> Message:
    """A header block of a delivery-status or disposition notification."""
    block = Message(policy=BUILD_POLICY)
    for name, value in pairs:
        value = clean(value)
        if value:  # no empty field (X-MM7-StatusText:)
            block[name] = value
    return block


def make_report(
    msg: EmailMessage, text: str, report_type: str, fields: list[Message]
) -> None:
    """Make ``msg`` a ``multipart/report`` of ``report_type`` (RFC 6522):
    the readable ``text``, then a ``message/<report_type>`` part of the
    header blocks ``fields``; the caller may attach more parts after."""
    msg.set_content(text)
    msg.make_mixed()
    msg.set_type("multipart/report")
    msg.set_param("report-type", report_type)
    notification = EmailMessage(policy=BUILD_POLICY)
    notification["Content-Type"] = f"message/{report_type}"
    notification.set_payload(fields)  # type: ignore[arg-type]
    msg.attach(notification)
