"""Every interface of mm7tx, in one place: the processors', the mail
sender's, the avatars and credentials of authentication, and the ESMTP
server's policy.

A processor is bound to a URI path and provides one interface per MM7
transaction it handles; the resource answers 4003 (Unsupported operation) for
a transaction the processor does not provide.  Each method returns a Deferred
(or a plain value) firing with the matching response, or fails with
:class:`mm7tx.errors.MM7Error` to answer a fault with that status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TYPE_CHECKING

from twisted.cred.credentials import ICredentials
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from mm7tx.mm7.messages import (
        CancelReq,
        CancelRsp,
        DeliverReq,
        DeliverRsp,
        DeliveryReportReq,
        DeliveryReportRsp,
        ReadReplyReq,
        ReadReplyRsp,
        ReplaceReq,
        ReplaceRsp,
        SubmitReq,
        SubmitRsp,
    )
    from mm7tx.transaction import Transaction


class IDeliverProcessor(Interface):
    """Handles MM7_deliver.REQ (an MMSC delivers a handset's message to us)."""

    def deliver(
        request: DeliverReq, transaction: Transaction
    ) -> Deferred[DeliverRsp] | DeliverRsp:
        """Process a DeliverReq; fire with the DeliverRsp to answer."""


class IDeliveryReportProcessor(Interface):
    """Handles MM7_delivery_report.REQ."""

    def delivery_report(
        request: DeliveryReportReq, transaction: Transaction
    ) -> Deferred[DeliveryReportRsp] | DeliveryReportRsp:
        """Process a DeliveryReportReq; fire with the DeliveryReportRsp."""


class IReadReplyProcessor(Interface):
    """Handles MM7_read_reply.REQ."""

    def read_reply(
        request: ReadReplyReq, transaction: Transaction
    ) -> Deferred[ReadReplyRsp] | ReadReplyRsp:
        """Process a ReadReplyReq; fire with the ReadReplyRsp."""


class ISubmitProcessor(Interface):
    """Handles MM7_submit.REQ (a VASP submits a message to us as MMSC)."""

    def submit(
        request: SubmitReq, transaction: Transaction
    ) -> Deferred[SubmitRsp] | SubmitRsp:
        """Process a SubmitReq; fire with the SubmitRsp (with a MessageID)."""


class ICancelProcessor(Interface):
    """Handles MM7_cancel.REQ."""

    def cancel(
        request: CancelReq, transaction: Transaction
    ) -> Deferred[CancelRsp] | CancelRsp:
        """Process a CancelReq; fire with the CancelRsp."""


class IReplaceProcessor(Interface):
    """Handles MM7_replace.REQ."""

    def replace(
        request: ReplaceReq, transaction: Transaction
    ) -> Deferred[ReplaceRsp] | ReplaceRsp:
        """Process a ReplaceReq; fire with the ReplaceRsp."""


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the relay did with each recipient of an accepted message, and
    its reply to the message (``250 2.0.0 Ok: queued as 4F3A2B``: its queue
    id), if it gave one, for the log."""

    accepted: tuple[str, ...]
    refused: tuple[tuple[str, int, str], ...] = ()
    reply: str | None = None


class IMailSender(Interface):
    """Hands a finished email to whatever delivers it (an SMTP relay, a Maildir).

    ``send`` fires with a :class:`SendResult` only once the
    message is durably accepted for at least one recipient, and fails with
    :class:`mm7tx.errors.MM7Error` otherwise (4006 for anything transient).
    """

    description = Attribute("Where the mail goes, for the log (no secrets).")

    def send(
        sender: str, recipients: list[str], message: EmailMessage
    ) -> Deferred[SendResult]:
        """Deliver ``message`` from envelope ``sender`` to ``recipients``."""

    def close() -> Deferred[None]:
        """Stop: release connections and timers; fires once done.  Called
        when the service stops, after the transactions in flight."""


# Authentication (mm7tx.http.auth) -------------------------------------------


class IVASPAccount(Interface):
    """The avatar of an authenticated VASP: its
    :class:`~mm7tx.mm7.peers.Account`."""

    account = Attribute("The Account")


class IMMSCAccount(Interface):
    """The avatar of an authenticated MMSC (``MMSC "name" { … }``): its
    :class:`~mm7tx.mm7.peers.Account` (only the name, password and networks
    are used)."""

    account = Attribute("The Account")


class IIPAddress(ICredentials):
    """Credentials that are only the source address of the request."""

    address = Attribute("The client's IP address, as text")


# The ESMTP server (mm7tx.smtp.server) ----------------------------------------


_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


@dataclass(frozen=True, slots=True)
class SMTPReply:
    """One reply: ``code`` (200-599), its RFC 3463 ``enhanced`` code whose
    class matches the code's first digit, and a one-line ``text``."""

    code: int
    enhanced: str
    text: str

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"SMTP reply code out of range: {self.code!r}")
        if (
            not _ENHANCED.fullmatch(self.enhanced)
            or self.enhanced[0] != str(self.code)[0]
        ):
            raise ValueError(f"enhanced code {self.enhanced!r} for {self.code}")
        if "\r" in self.text or "\n" in self.text:
            raise ValueError("SMTP reply text must be one line")

    @property
    def positive(self) -> bool:
        """A 2xx reply: the command was taken."""
        return 200 <= self.code < 300

    def line(self) -> bytes:
        """The text after the code on the wire: enhanced code and text."""
        return f"{self.enhanced} {self.text}".encode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class MailParameters:
    """MAIL FROM's parameters: the declared ``size`` (RFC 1870), ``body``
    (``7BIT`` or ``8BITMIME``, RFC 6152), and RFC 3461's ``ret`` (``FULL`` or
    ``HDRS``) and ``envid`` (xtext-decoded)."""

    size: int | None = None
    body: str | None = None
    ret: str | None = None
    envid: str | None = None


@dataclass(frozen=True, slots=True)
class RecipientParameters:
    """RCPT TO's RFC 3461 parameters: ``notify`` (``("NEVER",)`` or some of
    SUCCESS, FAILURE, DELAY) and ``orcpt`` (address type, decoded address)."""

    notify: tuple[str, ...] = ()
    orcpt: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """One mail transaction: the sender (``""`` for the null path), MAIL's
    parameters and each recipient taken so far with its parameters."""

    sender: str
    parameters: MailParameters = MailParameters()
    recipients: tuple[tuple[str, RecipientParameters], ...] = ()

    def with_recipient(self, address: str, parameters: RecipientParameters) -> Envelope:
        return Envelope(
            self.sender, self.parameters, (*self.recipients, (address, parameters))
        )


class ISMTPSession(Interface):
    """What the ESMTP server knows of one connection, for its policy."""

    peer = Attribute("The client's IP address, as text")
    helo = Attribute("The name given in HELO or EHLO, as text, or None before")
    tls = Attribute("True once STARTTLS was accepted: what follows is under TLS")
    avatar = Attribute("The ISMTPSubmitter of a successful AUTH, or None")


class ISMTPSubmitter(Interface):
    """The avatar an ESMTP server's portal gives for a successful SMTP AUTH
    (PLAIN or LOGIN, checked by the portal's checkers)."""

    name = Attribute("The authenticated account's name, as text")


class IMailPolicy(Interface):
    """Decides what an ESMTP server takes; the server does the protocol.

    Each method returns an :class:`SMTPReply` or a
    Deferred firing with one; the server sends it as given (code, enhanced
    code and text) and takes the command only on a 2xx.  A failure is
    logged and answered 451 4.3.0.  Commands pipelined behind a pending
    decision wait for its reply, in order.
    """

    def helo(session: ISMTPSession) -> Deferred[SMTPReply] | SMTPReply:
        """HELO or EHLO (``session.helo`` set); 2xx lets the session go on."""

    def mail_from(
        session: ISMTPSession, address: str, parameters: MailParameters
    ) -> Deferred[SMTPReply] | SMTPReply:
        """MAIL FROM (``""`` for the null path), its parameters parsed."""

    def rcpt_to(
        session: ISMTPSession,
        envelope: Envelope,
        address: str,
        parameters: RecipientParameters,
    ) -> Deferred[SMTPReply] | SMTPReply:
        """RCPT TO, with the envelope as taken so far."""

    def message(
        session: ISMTPSession, envelope: Envelope, pieces: tuple[bytes, ...]
    ) -> Deferred[SMTPReply] | SMTPReply:
        """The message after the final dot: its bytes (dot-unstuffed, CRLF
        line ends, our ``Received:`` first) in pieces to join or stream.
        Called only for a message within the size and hop limits."""
