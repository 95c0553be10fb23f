"""Processors that turn MM7 transactions into email.

:class:`EmailProcessor` is what a VASP path is bound to by default: a
DeliverReq becomes the MMS as a MIME email, a DeliveryReportReq an RFC 3464
delivery status notification, a ReadReplyReq an RFC 8098 read receipt.  Each
goes to an :class:`~mm7tx.interfaces.IMailSender`, and the MM7 answer is 1000
only once the sender has accepted the mail.

Subclass it to change a rule: every address goes through
:meth:`EmailProcessor.sender_address` and :meth:`EmailProcessor.recipient_address`,
and every email through one ``*_message`` method.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from email.message import EmailMessage, Message
from email.utils import make_msgid
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from mm7tx.gateway.conversations import Conversations
from mm7tx.gateway.fields import FIELD_LIMITS as FIELD_LIMITS
from mm7tx.gateway.fields import MAX_ADDRESS as MAX_ADDRESS
from mm7tx.gateway.fields import (
    MEDIA_TYPE,
    TOKEN,
    bounded,
    mailbox,
    mm7_address,
    mm7_addresses,
    number,
    part_filename,
    part_text,
    text_body,
)
from mm7tx.gateway.reports import DeliveryReporter
from mm7tx.gateway.return_path import ReturnPath
from mm7tx.gateway.submit_reports import report_submit
from mm7tx.interfaces import (
    IDeliverProcessor,
    IDeliveryReportProcessor,
    IMailSender,
    IReadReplyProcessor,
    ISubmitProcessor,
    SendResult,
)
from mm7tx.mail.compose import BUILD_POLICY as BUILD_POLICY
from mm7tx.mail.compose import DSN_ACTIONS as DSN_ACTIONS
from mm7tx.mail.compose import MDN_DISPOSITIONS as MDN_DISPOSITIONS
from mm7tx.mail.compose import Mail as Mail
from mm7tx.mail.compose import clean as clean
from mm7tx.mail.compose import (
    disposition,
    email_date,
    header_block,
    make_report,
    set_boundaries,
)
from mm7tx.mail.rules import AddressRules as AddressRules
from mm7tx.mm7.codec.encoding import base64_lines
from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.messages import (
    Address,
    Content,
    ContentPart,
    DeliverReq,
    DeliverRsp,
    DeliveryReportReq,
    DeliveryReportRsp,
    ReadReplyReq,
    ReadReplyRsp,
    Recipients,
    Status,
    SubmitReq,
    SubmitRsp,
)
from mm7tx.mm7.status import StatusCode
from mm7tx.transaction import Transaction

# Also importable from here, as before they moved (users' subclasses use them).
__all__ = [
    "BUILD_POLICY",
    "DSN_ACTIONS",
    "FIELD_LIMITS",
    "MAX_ADDRESS",
    "MDN_DISPOSITIONS",
    "AddressRules",
    "EmailProcessor",
    "Mail",
    "bounded",
    "clean",
    "email_date",
    "result_status",
]


@implementer(
    IDeliverProcessor, IDeliveryReportProcessor, IReadReplyProcessor, ISubmitProcessor
)
class EmailProcessor:
    """Turns Deliver, DeliveryReport, ReadReply and Submit requests into email.

    It does not provide ICancelProcessor or IReplaceProcessor: a mail once
    handed to the relay cannot be recalled, so those are answered 4003.

    ``return_path``, when set (on VASP paths, with a state store), takes
    the reports on mail that became MMS first: they go back to that mail's
    sender as DSN and MDN; any other report is mailed as here.
    ``conversations``, when set (with a state store), sends a handset's
    DeliverReq that answers a mail to that mail's sender, as a reply, and
    keeps each mailed DeliverReq for the mail that answers it.
    """

    return_path: ReturnPath | None = None
    conversations: Conversations | None = None

    def __init__(
        self,
        sender: IMailSender,
        rules: AddressRules,
        mm7_version: str = "6.8.0",
        keep_smil: bool = False,
        reporter: DeliveryReporter | None = None,
        options: Any = None,
    ) -> None:
        self.mail_sender = sender
        self.reporter = reporter
        self.rules = rules
        # The configured mm7_server_version, for subclasses: answers carry
        # the request's own (``transaction.mm7_version``), which falls back
        # to it.
        self.mm7_version = mm7_version
        self.keep_smil = keep_smil
        # A subclass's own options: an instance of its ``Options`` dataclass,
        # filled from its Path scope (None for a class that declares none).
        self.options = options
        self._msgid_domain = rules.from_domain or "mm7tx.invalid"

    # Address mapping: override these to change who mail comes from and goes to.

    def sender_address(self, address: Address | None) -> str:
        """The email address for an MM7 sender (or a report's handset)."""
        if address is not None and address.is_email:
            return mailbox(address.value, "sender")
        digits = number(address, "sender")
        if digits and self.rules.from_domain:
            return mailbox(f"{digits}@{self.rules.from_domain}", "sender")
        if self.rules.from_address:
            return self.rules.from_address
        raise MM7Error(
            StatusCode.ADDRESS_ERROR,
            details="no sender address: set mm7_server_default_email_from_address",
        )

    def recipient_address(self, address: Address | None) -> str:
        """The email address for an MM7 recipient (or a report's sender)."""
        if address is not None and address.is_email:
            return mailbox(address.value, "recipient")
        digits = number(address, "recipient")
        if digits and self.rules.to_domain:
            return mailbox(f"{digits}@{self.rules.to_domain}", "recipient")
        if self.rules.to_address:
            return self.rules.to_address
        raise MM7Error(
            StatusCode.ADDRESS_ERROR,
            details="no recipient address: set mm7_server_default_email_to_address",
        )

    # Building the emails.

    def _new_message(
        self,
        transaction: Transaction,
        sender: str,
        mm7_sender: Address | None = None,
        mm7_recipients: Sequence[Address] = (),
    ) -> EmailMessage:
        """A message with the headers every mail has; ``mm7_sender`` and
        ``mm7_recipients`` (To and Cc: never Bcc) are the request's MM7
        addresses, named in ``X-MM7-Sender`` and ``X-MM7-Recipients``
        whatever the address mapping made of them."""
        msg = EmailMessage(policy=BUILD_POLICY)
        msg["MIME-Version"] = "1.0"
        msg["From"] = sender
        msg["Message-ID"] = message_id_header(transaction, self._msgid_domain)
        # An X-MM7-* header only with a value: no empty ones.
        tid = bounded(transaction.transaction_id, "TransactionID", transaction)
        if tid:
            msg["X-MM7-TransactionID"] = tid
        path = clean(transaction.path)
        if path:
            msg["X-MM7-Path"] = path
        if mm7_sender is not None:
            named = mm7_address(mm7_sender, "Sender", transaction)
            if named:
                msg["X-MM7-Sender"] = named
        listed = mm7_addresses(mm7_recipients, transaction)
        if listed:
            msg["X-MM7-Recipients"] = listed
        return msg

    def _attach(
        self,
        msg: EmailMessage,
        part: ContentPart,
        first: bool,
        transaction: Transaction | None = None,
    ) -> None:
        media = part.media_type.lower()
        original = None
        if not MEDIA_TYPE.match(media):
            original, media = media, "application/octet-stream"
        maintype = media.partition("/")[0]
        if maintype in ("multipart", "message"):
            # RFC 2045 allows no base64 for these, and a leaf is no valid
            # multipart: they go as bytes, their type kept beside.
            original, media = media, "application/octet-stream"
            maintype = "application"
        text = part_text(part) if maintype == "text" else None
        filename = part_filename(part.filename, transaction)
        if filename is None and original == "message/rfc822":
            filename = "message.eml"
        if text is not None:
            leaf = msg if first else EmailMessage(policy=BUILD_POLICY)
            charset, data = part.charset, part.data
            if not (charset and TOKEN.match(charset)):
                # No charset (the text was read as UTF-8) or one that cannot
                # be a parameter: the same characters, in UTF-8.
                charset, data = "utf-8", text.encode("utf-8", "replace")
            cte, payload = text_body(data, charset)
            leaf["Content-Type"] = f'{media}; charset="{charset}"'
            leaf["Content-Transfer-Encoding"] = cte
            leaf.set_payload(payload)
            if first:
                return
            leaf["Content-Disposition"] = disposition("inline", filename)
        else:
            # What add_attachment(bytes) makes, with the base64 done in one
            # call to the C encoder rather than line by line.
            leaf = EmailMessage(policy=BUILD_POLICY)
            charset = part.charset if maintype == "text" else None
            if charset and TOKEN.match(charset):
                leaf["Content-Type"] = f'{media}; charset="{charset}"'
            else:
                leaf["Content-Type"] = media
            original = bounded(original, "Content-Type", transaction)
            if original:
                leaf["X-MM7-Content-Type"] = original
            leaf["Content-Transfer-Encoding"] = "base64"
            leaf["Content-Disposition"] = disposition("attachment", filename)
            # Received as valid base64: carried as it came (mm7tx.codec.mime's
            # mime_base64), not decoded and encoded again.
            lines = part.base64
            if lines is None:
                lines = base64_lines(part.data)
            leaf.set_payload(lines.decode("ascii"))
        if part.content_id:
            leaf["Content-ID"] = (
                f"<{bounded(part.content_id, 'Content-ID', transaction)}>"
            )
        if not msg.is_multipart():
            msg.make_mixed()
        msg.attach(leaf)

    def _mms(
        self,
        transaction: Transaction,
        sender_address: Address | None,
        recipients: Recipients,
        subject: str | None,
        timestamp: str | None,
        content: Content,
        headers: dict[str, str | None],
    ) -> Mail:
        """An MMS as a MIME email: To and Cc in the headers, Bcc only in the
        envelope, text parts first, SMIL dropped unless ``keep_smil``."""
        sender = self.sender_address(sender_address)
        to = [self.recipient_address(a) for a in recipients.to]
        cc = [self.recipient_address(a) for a in recipients.cc]
        bcc = [self.recipient_address(a) for a in recipients.bcc]
        if not (to or cc or bcc):
            to = [self.recipient_address(None)]
        msg = self._new_message(
            transaction, sender, sender_address, recipients.to + recipients.cc
        )
        if to:
            msg["To"] = ", ".join(to)
        if cc:
            msg["Cc"] = ", ".join(cc)
        subject = bounded(subject, "Subject", transaction)
        if subject:  # no empty header for an MMS without one
            msg["Subject"] = subject
        msg["Date"] = email_date(timestamp)
        for header, value in headers.items():
            field = header.removeprefix("X-MM7-")
            value = bounded(
                value, field if field in FIELD_LIMITS else "MessageID", transaction
            )
            if value:
                msg[header] = value
        parts = [p for p in content if self.keep_smil or not p.is_smil]
        parts.sort(key=lambda p: not p.media_type.startswith("text/"))
        for index, part in enumerate(parts):
            self._attach(msg, part, index == 0, transaction)
        if not parts:
            msg.set_content("")
        set_boundaries(msg)
        return Mail(sender, list(dict.fromkeys(to + cc + bcc)), msg)

    def deliver_message(self, request: DeliverReq, transaction: Transaction) -> Mail:
        """The MMS of a DeliverReq as a MIME email."""
        return self._mms(
            transaction,
            request.sender,
            request.recipients,
            request.subject,
            request.timestamp,
            request.content,
            {
                "X-MM7-LinkedID": request.linked_id,
                "X-MM7-MMSRelayServerID": request.mms_relay_server_id,
                "X-MM7-VASPID": request.vasp_id,
                "X-MM7-VASID": request.vas_id,
                "X-MM7-Priority": request.priority,
            },
        )

    def submit_message(
        self, request: SubmitReq, transaction: Transaction, message_id: str
    ) -> Mail:
        """The MMS of a SubmitReq as one MIME email to all its recipients."""
        account = transaction.account
        return self._mms(
            transaction,
            request.sender_address,
            request.recipients,
            request.subject,
            request.timestamp,
            request.content,
            {
                "X-MM7-MessageID": message_id,
                "X-MM7-VASP-Account": account.name if account else None,
                "X-MM7-VASPID": request.vasp_id,
                "X-MM7-VASID": request.vas_id,
                "X-MM7-ServiceCode": request.service_code,
                "X-MM7-LinkedID": request.linked_id,
                "X-MM7-Priority": request.priority,
            },
        )

    def _report(
        self,
        transaction: Transaction,
        handset: Address | None,
        originator: Address | None,
        what: str,
        status: str,
        status_text: str | None,
        report_type: str,
        fields: list[Message],
        message_id: str,
        date: str | None,
    ) -> Mail:
        """A ``multipart/report``: a readable part, then the notification.

        It reports on another message, so it goes from the null sender (or
        ``mm7_report_mail_from``) and says ``Auto-Submitted: auto-replied``
        (RFC 3834): a bounce of it goes nowhere, never back into the
        system, and no auto-responder answers it.  Its From is still the
        handset's address."""
        recipient_value = (
            bounded(handset.value, "Recipient", transaction) if handset else ""
        )
        text = (
            f"MM7 {what} for message {message_id or '(unknown)'}\n\n"
            f"Recipient:   {recipient_value or '(unknown)'}\n"
            f"MMStatus:    {status}\n"
            f"StatusText:  {bounded(status_text, 'StatusText') or '-'}\n"
            f"Date:        {bounded(date, 'Date') or '-'}\n"
        )
        sender = self.sender_address(handset)
        recipient = self.recipient_address(originator)
        # The request's own Sender and Recipient: the originator and the
        # handset, the other way round from the mail's From and To.
        msg = self._new_message(
            transaction, sender, originator, (handset,) if handset else ()
        )
        msg["To"] = recipient
        msg["Auto-Submitted"] = "auto-replied"
        msg["Subject"] = f"{what.capitalize()}: {status}"
        msg["Date"] = email_date(date)
        if message_id:
            msg["X-MM7-MessageID"] = message_id
        make_report(msg, text, report_type, fields)
        set_boundaries(msg)
        return Mail(self.rules.report_mail_from, [recipient], msg)

    def delivery_report_message(
        self, request: DeliveryReportReq, transaction: Transaction
    ) -> Mail:
        """A DeliveryReportReq as an RFC 3464 delivery status notification."""
        status = bounded(request.mm_status, "MMStatus", transaction) or "Indeterminate"
        action, code = DSN_ACTIONS.get(status.lower(), ("failed", "5.0.0"))
        handset = request.recipient
        final = self.sender_address(handset)
        message_id = bounded(request.message_id, "MessageID", transaction)
        relay = bounded(request.mms_relay_server_id, "MMSRelayServerID", transaction)
        status_text = bounded(request.status_text, "StatusText", transaction)
        per_message = header_block(
            ("Reporting-MTA", f"dns; {relay or 'mm7tx'}"),
            ("Original-Envelope-Id", message_id),
            ("Arrival-Date", email_date(request.date)),
        )
        per_recipient = header_block(
            ("Final-Recipient", f"rfc822; {final}"),
            ("X-MM7-Recipient", bounded(handset.value, "Recipient") if handset else ""),
            ("Action", action),
            ("Status", code),
            ("Diagnostic-Code", f"X-MM7; {status} {status_text}".strip()),
            ("X-MM7-MMStatus", status),
            ("X-MM7-StatusText", status_text),
        )
        return self._report(
            transaction,
            handset,
            request.sender,
            "delivery report",
            status,
            request.status_text,
            "delivery-status",
            [per_message, per_recipient],
            message_id,
            request.date,
        )

    def read_reply_message(
        self, request: ReadReplyReq, transaction: Transaction
    ) -> Mail:
        """A ReadReplyReq as an RFC 8098 message disposition notification."""
        status = bounded(request.mm_status, "MMStatus", transaction) or "Indeterminate"
        disposition = MDN_DISPOSITIONS.get(status.lower(), "processed")
        handset = request.recipient
        final = self.sender_address(handset)
        message_id = bounded(request.message_id, "MessageID", transaction)
        relay = bounded(request.mms_relay_server_id, "MMSRelayServerID", transaction)
        notification = header_block(
            ("Reporting-UA", f"{relay or 'mm7tx'}; mm7tx"),
            ("Final-Recipient", f"rfc822; {final}"),
            ("X-MM7-Recipient", bounded(handset.value, "Recipient") if handset else ""),
            ("Original-Message-ID", f"<{message_id}>" if message_id else ""),
            ("Disposition", f"automatic-action/MDN-sent-automatically; {disposition}"),
            ("X-MM7-MMStatus", status),
            (
                "X-MM7-StatusText",
                bounded(request.status_text, "StatusText", transaction),
            ),
        )
        return self._report(
            transaction,
            handset,
            request.sender,
            "read reply",
            status,
            request.status_text,
            "disposition-notification",
            [notification],
            message_id,
            request.timestamp,
        )

    # The transactions.

    def _hand_over(
        self, mail: Mail, transaction: Transaction | None = None
    ) -> defer.Deferred[Any]:
        """Send ``mail``: the sender's result, its reply noted on the
        transaction for the log."""
        d = self.mail_sender.send(mail.sender, mail.recipients, mail.message)

        def noted(result: Any) -> Any:
            if transaction is not None and isinstance(result, SendResult):
                transaction.outcome.relay_reply = result.reply
            return result

        return d.addCallback(noted)

    def _send(
        self, mail: Mail, transaction: Transaction | None = None
    ) -> defer.Deferred[Status]:
        return self._hand_over(mail, transaction).addCallback(result_status)

    def submit(
        self, request: SubmitReq, transaction: Transaction
    ) -> defer.Deferred[SubmitRsp]:
        """Mail a SubmitReq; answer with a new MessageID once the relay took it,
        and post a delivery report back when the VASP asked for one.  The
        MessageID is derived from the transaction's key, when it has one, so
        that a retry mailed again (the first answer's write to the store
        lost in a crash) gets the same one.

        A report goes back only for a MessageID the VASP was given in a
        SubmitRsp: none for a fault (the VASP never learnt the MessageID;
        it resubmits or gives up), none when the VASP's connection was gone
        before the answer.  On a partial success (1100) each recipient is
        reported Forwarded or Rejected by what the relay said to its mapped
        address (recipients mapped to one address share its fate)."""
        message_id = mm7_message_id(transaction)
        mail = self.submit_message(request, transaction, message_id)
        d = self._hand_over(mail, transaction)

        def accepted(result: Any) -> SubmitRsp:
            status = result_status(result)
            refused = (
                {address for address, _, _ in result.refused}
                if isinstance(result, SendResult)
                else set()
            )
            self._report_submit(request, transaction, message_id, refused)
            return SubmitRsp(status, transaction.mm7_version, message_id)

        return d.addCallback(accepted)

    def _report_submit(
        self,
        request: SubmitReq,
        transaction: Transaction,
        message_id: str,
        refused: set[str],
    ) -> None:
        """Post the delivery reports an accepted SubmitReq asked for
        (:func:`~mm7tx.gateway.submit_reports.report_submit`): a recipient is
        Forwarded unless the relay refused its mapped address."""
        if self.reporter is None:
            return
        report_submit(
            self.reporter,
            request,
            transaction,
            message_id,
            lambda recipient: self.recipient_address(recipient) not in refused,
        )

    def deliver(
        self, request: DeliverReq, transaction: Transaction
    ) -> defer.Deferred[DeliverRsp]:
        if self.conversations is None:
            d = self._send(self.deliver_message(request, transaction), transaction)
        else:
            d = self.conversations.deliver(
                request, transaction, self.deliver_message, self._send
            )
        return d.addCallback(lambda status: DeliverRsp(status, transaction.mm7_version))

    def delivery_report(
        self, request: DeliveryReportReq, transaction: Transaction
    ) -> defer.Deferred[DeliveryReportRsp]:
        def mailed() -> defer.Deferred[Status]:
            mail = self.delivery_report_message(request, transaction)
            return self._send(mail, transaction)

        if self.return_path is None:
            d = mailed()
        else:
            d = self.return_path.delivery_report(request, transaction).addCallback(
                _handled_or, mailed
            )
        return d.addCallback(
            lambda status: DeliveryReportRsp(status, transaction.mm7_version)
        )

    def read_reply(
        self, request: ReadReplyReq, transaction: Transaction
    ) -> defer.Deferred[ReadReplyRsp]:
        def mailed() -> defer.Deferred[Status]:
            mail = self.read_reply_message(request, transaction)
            return self._send(mail, transaction)

        if self.return_path is None:
            d = mailed()
        else:
            d = self.return_path.read_reply(request, transaction).addCallback(
                _handled_or, mailed
            )
        return d.addCallback(
            lambda status: ReadReplyRsp(status, transaction.mm7_version)
        )


def _handled_or(
    handled: bool, mailed: Callable[[], defer.Deferred[Status]]
) -> defer.Deferred[Status]:
    """1000 for a report the return path handled, else it mailed as before."""
    return defer.succeed(Status.of(StatusCode.SUCCESS)) if handled else mailed()


def message_id_header(transaction: Transaction, domain: str) -> str:
    """The email's ``Message-ID``: derived from the transaction's key, so
    that each retry mailed again carries the same one and mail stores fold
    the duplicates; a new one for a transaction without a key."""
    if transaction.key is None:
        return make_msgid("mm7", domain=domain)
    return f"<mm7.{transaction.key[:32]}@{domain}>"


def mm7_message_id(transaction: Transaction) -> str:
    """A SubmitRsp's MessageID: the key's first 32 hex digits (as long as
    the random one a transaction without a key gets)."""
    if transaction.key is None:
        return uuid.uuid4().hex
    return transaction.key[:32]


def result_status(result: Any) -> Status:
    """1000, or 1100 Partial success naming the refused recipients."""
    if isinstance(result, SendResult) and result.refused:
        refused = "; ".join(f"{a} {c} {clean(r)}" for a, c, r in result.refused)
        return Status.of(StatusCode.PARTIAL_SUCCESS, details=f"refused: {refused}")
    return Status.of(StatusCode.SUCCESS)
