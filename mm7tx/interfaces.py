"""Every interface of mm7tx, in one place: the processors', the mail
sender's (and the relay check readiness rests on), the avatars and
credentials of authentication, the state store's and the ESMTP server's
policy.

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
from typing import TYPE_CHECKING, Protocol, runtime_checkable

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


@runtime_checkable
class Checkable(Protocol):
    """A sender whose relay can be checked (:class:`~mm7tx.smtp.esmtp.ESMTPSender`):
    what :class:`~mm7tx.app.health.RelayWatch` asks for readiness.  A
    structural type, not a zope interface: a sender that has these is one."""

    last_answer: float | None

    def check(self) -> Deferred[None]: ...


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


# The state store (mm7tx.store) ----------------------------------------------
#
# The records that outlive one transaction: the answers given (to answer a
# peer's retry with the same answer), the delivery reports still to post, and
# small keyed records of later features.  Every method returns a Deferred and
# fails with :class:`mm7tx.store.records.StoreError` when the store cannot be
# reached, so that a caller can serve without it.  Times are the store's
# clock's seconds; every record expires.

if TYPE_CHECKING:
    from mm7tx.store.records import Answer, Claim, Report, StoreSize


class IExactlyOnceStore(Interface):
    """Exactly once across a peer's retries: a key is claimed while its
    transaction is in flight, then holds the answer given for it."""

    def claim(key: str, lease: float) -> Deferred[Claim]:
        """Claim ``key`` for ``lease`` seconds.  Fires with :class:`New`
        (yours: complete or release it), :class:`InFlight` (another
        holder's lease is live) or :class:`Done` (with the answer given)."""

    def complete(key: str, token: str, answer: Answer, ttl: float) -> Deferred[None]:
        """Keep ``answer`` for ``key`` for ``ttl`` seconds (the dedup
        window).  The first answer kept stays: a later one is dropped."""

    def release(key: str, token: str) -> Deferred[None]:
        """Forget the claim ``token`` holds on ``key`` (a transient fault:
        the retry is tried afresh); another holder's claim is left alone."""

    def wait(key: str, timeout: float) -> Deferred[Answer | None]:
        """Fire with ``key``'s answer once it is given, or with ``None``
        when the key is free (released, its lease passed: claim it again)
        or ``timeout`` seconds passed first."""


class IReportStore(Interface):
    """Delivery reports still to post, durable and leased: a report is
    written before it is first posted and removed once answered.  Its owner
    holds it until ``lease`` seconds after its next attempt is due; then
    any instance may take it over."""

    def put_report(
        report_id: str, payload: bytes, owner: str, due: float, lease: float, ttl: float
    ) -> Deferred[None]:
        """Keep a new report (no attempt yet) owned by ``owner``, due at
        ``due``, for ``ttl`` seconds at most."""

    def due_reports(owner: str, limit: int) -> Deferred[list[Report]]:
        """At most ``limit`` reports due now that ``owner`` owns or whose
        owner's lease passed (take them with :meth:`lease_report`)."""

    def lease_report(
        report_id: str, owner: str, lease: float
    ) -> Deferred[Report | None]:
        """Make ``owner`` the owner, until ``lease`` seconds after the
        report is due (or after now, if later); ``None`` if it is gone or
        another owner's lease is live."""

    def update_report(
        report_id: str, owner: str, attempts: int, due: float, lease: float
    ) -> Deferred[bool]:
        """Record a failed attempt: the count, the next due time, the lease
        renewed from it.  ``False`` if ``owner`` no longer owns it."""

    def remove_report(report_id: str) -> Deferred[None]:
        """Forget a report (answered, or given up)."""


class IRecordStore(Interface):
    """Small keyed records with an expiry (conversations, envelopes)."""

    def put(key: str, value: bytes, ttl: float) -> Deferred[None]:
        """Keep ``value`` under ``key`` for ``ttl`` seconds."""

    def get(key: str) -> Deferred[bytes | None]:
        """The value under ``key``, or ``None`` if none is live."""

    def delete(key: str) -> Deferred[None]:
        """Forget ``key``."""


class IStateStore(IExactlyOnceStore, IReportStore, IRecordStore):
    """One store for all three (memory, SQLite or Redis: mm7tx.store)."""

    description = Attribute("Where the records are, for the log (no secrets).")

    def size() -> Deferred[StoreSize]:
        """How many records the store holds, and their bytes."""

    def close() -> Deferred[None]:
        """Stop its timers and connections; fires once done."""


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


class FailedLogins(Protocol):
    """Failed logins counted per source address across connections and
    protocols (:class:`~mm7tx.http.limits.LoginThrottle`): the ESMTP server
    counts its failed AUTHs where HTTP counts its failed logins."""

    lockout: float

    def locked(self, address: str) -> float:
        """Seconds ``address`` is still locked out for (0: it is not)."""
        ...

    def failed(self, address: str) -> bool:
        """Count a failed login; whether it locked the address out."""
        ...


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
