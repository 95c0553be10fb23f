"""Every interface of mm7tx, in one place: the processors', the mail
sender's (and the relay check readiness rests on), and the avatars and
credentials of authentication.

A processor is bound to a URI path and provides one interface per MM7
transaction it handles; the resource answers 4003 (Unsupported operation) for
a transaction the processor does not provide.  Each method returns a Deferred
(or a plain value) firing with the matching response, or fails with
:class:`mm7tx.errors.MM7Error` to answer a fault with that status.
"""

from __future__ import annotations

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
