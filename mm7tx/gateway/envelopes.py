"""The envelope of a mail that became an MMS, as the store keeps it for
the way back (:class:`SentMail`): who sent it, each recipient with its
NOTIFY and ORCPT and the last status reported for it, and the rules that
decide which report becomes a DSN (:meth:`SentRecipient.step`).

Kept under :func:`record_key` (the upstream MMSC and the MessageID it
gave) for ``mm7_report_window`` seconds, as JSON.  The mail's header
section is kept, never its body, whatever RET says.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from email.utils import getaddresses
from typing import Any

from mm7tx.interfaces import Envelope

# The most of a mail's header section kept (cut at a header's end).
MAX_HEADERS = 32 * 1024

# RFC 3464 Actions after which nothing more is reported for a recipient.
FINAL_ACTIONS = frozenset({"delivered", "failed"})

_NOT_DIGITS = re.compile(r"[^0-9]")


def record_key(mmsc: str, message_id: str) -> str:
    """The store key of the envelope the MMSC ``mmsc`` took as ``message_id``."""
    return f"return-path:{mmsc}:{message_id}"


def digits(value: str | None) -> str:
    """The digits of a number as an MMSC may write it (``+1 555``,
    ``tel:+1555``, ``1555/TYPE=PLMN``), for matching."""
    if not value:
        return ""
    return _NOT_DIGITS.sub("", value.split("/TYPE=", 1)[0])


@dataclass(frozen=True, slots=True)
class SentRecipient:
    """One recipient of the mail: its address (``15551234567@mms.example``),
    the number the SubmitReq named, its NOTIFY and ORCPT, the last Action
    reported for it (``state``), the Actions a DSN was sent for, and
    whether an MDN was sent."""

    address: str
    number: str
    notify: tuple[str, ...] = ()
    orcpt: tuple[str, str] | None = None
    state: str | None = None
    sent: tuple[str, ...] = ()
    mdn_sent: bool = False

    def step(self, action: str) -> SentRecipient | None:
        """This recipient with ``action`` as its new state, or ``None``
        when the report changes nothing: the same Action again, or any
        after a final one (delivered, failed)."""
        if self.state == action or self.state in FINAL_ACTIONS:
            return None
        return replace(self, state=action)


@dataclass(frozen=True, slots=True)
class SentMail:
    """The envelope of one mail the MMSC ``mmsc`` took as ``message_id``.

    ``arrival`` and ``expires`` are the clock's seconds; ``headers`` the
    header section as received (bytes kept as Latin-1 text); ``mdn_to``
    the ``Disposition-Notification-To`` address, if the mail asked for a
    read receipt."""

    mmsc: str
    message_id: str
    mail_from: str
    arrival: float
    expires: float
    recipients: tuple[SentRecipient, ...]
    envid: str | None = None
    ret: str | None = None
    mail_message_id: str | None = None
    subject: str | None = None
    headers: str = ""
    mdn_to: str | None = None
    version: int = field(default=1)

    @property
    def key(self) -> str:
        return record_key(self.mmsc, self.message_id)

    @property
    def header_bytes(self) -> bytes:
        return self.headers.encode("latin-1")

    def recipient_for(self, *candidates: str | None) -> SentRecipient | None:
        """The recipient whose number is the first of ``candidates`` that
        names one (an MMSC's report names the handset as its Recipient,
        or as its Sender when it swaps them); the only recipient if none
        does: the MessageID alone says which mail it was."""
        for candidate in candidates:
            wanted = digits(candidate)
            if not wanted:
                continue
            for recipient in self.recipients:
                if digits(recipient.number) == wanted:
                    return recipient
        if len(self.recipients) == 1:
            return self.recipients[0]
        return None

    def with_recipient(self, updated: SentRecipient) -> SentMail:
        return replace(
            self,
            recipients=tuple(
                updated if r.number == updated.number else r for r in self.recipients
            ),
        )

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> SentMail:
        """The record in ``data``; ValueError if it is not one."""
        try:
            raw: dict[str, Any] = json.loads(data)
            recipients = tuple(
                SentRecipient(
                    address=r["address"],
                    number=r["number"],
                    notify=tuple(r["notify"]),
                    orcpt=tuple(r["orcpt"]) if r["orcpt"] else None,  # type: ignore[arg-type]
                    state=r["state"],
                    sent=tuple(r["sent"]),
                    mdn_sent=bool(r["mdn_sent"]),
                )
                for r in raw.pop("recipients")
            )
            return cls(recipients=recipients, **raw)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not an envelope record: {e}") from e


def header_section(raw: bytes) -> bytes:
    """The header section of the mail ``raw``, up to and with its last
    header line's ending: everything before the first empty line, whether
    the mail ends its lines with CRLF or (as ``EmailMessage.as_bytes()``
    writes them) with a bare LF; all of ``raw`` if it has no empty line."""
    crlf = raw.find(b"\r\n\r\n")
    lf = raw.find(b"\n\n")
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return raw[: lf + 1]
    return raw if crlf < 0 else raw[: crlf + 2]


def _cut_headers(raw: bytes) -> bytes:
    """The header section of ``raw``, at most :data:`MAX_HEADERS` bytes
    (cut at the end of a header line)."""
    head = header_section(raw)
    if len(head) <= MAX_HEADERS:
        return head
    cut = head.rfind(b"\n", 0, MAX_HEADERS)
    return head[: cut + 1] if cut > 0 else b""


def sent_mail(
    envelope: Envelope,
    raw: bytes,
    headers: Any,
    numbers: list[str],
    *,
    mmsc: str,
    message_id: str,
    now: float,
    window: float,
) -> SentMail:
    """The record of a mail (its ``envelope``, its bytes ``raw`` and their
    parsed ``headers``) that the MMSC ``mmsc`` took as ``message_id``,
    sent to ``numbers`` (one per envelope recipient, in order)."""
    params = envelope.parameters
    return SentMail(
        mmsc=mmsc,
        message_id=message_id,
        mail_from=envelope.sender,
        arrival=now,
        expires=now + window,
        recipients=tuple(
            SentRecipient(address, number, rcpt.notify, rcpt.orcpt)
            for (address, rcpt), number in zip(
                envelope.recipients, numbers, strict=True
            )
        ),
        envid=params.envid,
        ret=params.ret,
        mail_message_id=_header(headers, "Message-ID"),
        subject=_header(headers, "Subject"),
        headers=_cut_headers(raw).decode("latin-1"),
        mdn_to=disposition_notification_to(headers),
    )


def _header(headers: Any, name: str) -> str | None:
    value = headers.get(name)
    return str(value).strip() if value is not None else None


def disposition_notification_to(headers: Any) -> str | None:
    """The address a mail's ``Disposition-Notification-To`` asks a read
    receipt be sent to (RFC 8098), if it names one."""
    value = headers.get("Disposition-Notification-To")
    if value is None:
        return None
    for _, address in getaddresses([str(value)]):
        if "@" in address:
            return address
    return None


def wants_delivery_report(envelope: Envelope) -> bool:
    """Whether a SubmitReq for ``envelope`` asks for a delivery report:
    unless every recipient said NOTIFY=NEVER."""
    return not all(
        "NEVER" in (n.upper() for n in rcpt.notify) for _, rcpt in envelope.recipients
    )
