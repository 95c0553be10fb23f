"""The way back to a mail's sender (:class:`ReturnPath`): the MMSC's
DeliveryReportReq and ReadReplyReq for a mail that became an MMS become a
DSN (RFC 3464) and an MDN (RFC 8098) to that mail's sender, by the
envelope the ESMTP listener kept in the store (:mod:`mm7tx.gateway.envelopes`).

:data:`DSN_ACTIONS` (MMStatus → Action and Status) and
:data:`MDN_DISPOSITIONS` are the tables the README shows.  A report for a
MessageID with no envelope is not ours to handle: the processor mails it
as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mm7tx.gateway.envelopes import SentMail, SentRecipient, record_key
from mm7tx.gateway.store_calls import Outage, bounded
from mm7tx.interfaces import IMailSender, IRecordStore
from mm7tx.mail.compose import DSN_ACTIONS, MDN_DISPOSITIONS, Mail, email_date
from mm7tx.mail.notifications import (
    Original,
    Reported,
    dsn_mail,
    mdn_mail,
    notify_wants,
)
from mm7tx.mm7.messages import DeliveryReportReq, ReadReplyReq
from mm7tx.transaction import Transaction

log = Logger(namespace="mm7tx.return_path")

__all__ = ["DSN_ACTIONS", "MDN_DISPOSITIONS", "ReturnPath"]


def dsn_status(mm_status: str | None) -> tuple[str, str]:
    """The RFC 3464 Action and Status for an MMStatus (failed 5.0.0 for
    one the table does not name)."""
    return DSN_ACTIONS.get((mm_status or "").lower(), ("failed", "5.0.0"))


class ReturnPath:
    """Turns the MMSC's reports on mail that became MMS into DSNs and MDNs.

    ``store`` holds the envelopes (kept by
    :class:`~mm7tx.gateway.mail_in.MailToMMS`), ``sender`` sends the
    notifications, from ``report_mail_from`` (``""``: the null sender).
    ``mmscs`` are the upstream MMSCs' names: a report from an
    authenticated MMSC is looked up under its own name, one on an open
    path under each.  ``reporting_mta`` names us in the notifications.

    Reports on one MessageID are handled one at a time, each reading the
    envelope only once the one before has written it back, so that two
    arriving together (a 1100 partial success, Mbuni's burst of Rejected)
    keep both recipients' states.  This holds within one process only.
    """

    def __init__(
        self,
        store: IRecordStore,
        sender: IMailSender,
        clock: IReactorTime,
        mmscs: Sequence[str],
        *,
        report_mail_from: str = "",
        reporting_mta: str = "mm7tx",
    ) -> None:
        self.store = store
        self.sender = sender
        self.clock = clock
        self.mmscs = tuple(mmscs)
        self.report_mail_from = report_mail_from
        self.reporting_mta = reporting_mta
        # One lock per MessageID being reported on, dropped when idle.
        self._locks: dict[str, defer.DeferredLock] = {}
        # A store outage is logged once, not per report (nor with its keys).
        self._outage = Outage(
            log,
            "The state store failed ({error}): delivery reports and read "
            "replies are mailed as before (no DSN or MDN) until it answers again",
            "The state store answers again: DSNs and MDNs go to mail senders",
        )

    async def _one_at_a_time(
        self, message_id: str | None, work: Callable[[], Awaitable[bool]]
    ) -> bool:
        """Run ``work`` once no other report on ``message_id`` runs: the
        envelope it reads is the one the report before wrote back."""
        if not message_id:
            return await work()
        lock = self._locks.setdefault(message_id, defer.DeferredLock())
        await lock.acquire()
        try:
            return await work()
        finally:
            # release() may run the next report to its end at once, which
            # drops the entry itself; drop it here only if it is still ours.
            lock.release()
            if not lock.locked and self._locks.get(message_id) is lock:
                del self._locks[message_id]

    async def _find(
        self, message_id: str | None, transaction: Transaction
    ) -> SentMail | None:
        """The envelope for ``message_id``, if the store has one; a store
        that fails (or takes over 2 s) is logged and counts as none (the
        report is mailed as before)."""
        if not message_id:
            return None
        account = transaction.account
        names = (account.name,) if account is not None else self.mmscs
        for name in names:
            try:
                data = await bounded(
                    self.store.get(record_key(name, message_id)), self.clock
                )
            except Exception as e:
                self._outage.failed(e)
                return None
            self._outage.answered()
            if data is None:
                continue
            try:
                return SentMail.from_bytes(data)
            except ValueError as e:
                log.warn(
                    "Envelope of {message_id} unreadable: {error}",
                    message_id=message_id,
                    error=str(e),
                )
                return None
        return None

    def _original(self, record: SentMail) -> Original:
        return Original(
            record.mail_from,
            record.envid,
            record.arrival,
            record.mail_message_id,
            record.subject,
            record.header_bytes,
        )

    async def _keep(self, record: SentMail) -> None:
        """Write ``record`` back for the rest of its window; a failure is
        logged (a retried report may then be notified twice)."""
        ttl = record.expires - self.clock.seconds()
        if ttl <= 0:
            return
        try:
            await bounded(
                self.store.put(record.key, record.to_bytes(), ttl), self.clock
            )
        except Exception as e:
            self._outage.failed(e)
        else:
            self._outage.answered()

    async def _send(self, mail: Mail) -> None:
        await self.sender.send(mail.sender, mail.recipients, mail.message)

    def delivery_report(
        self, request: DeliveryReportReq, transaction: Transaction
    ) -> defer.Deferred[bool]:
        """Fire with ``True`` once the report is handled here (a DSN sent
        to the mail's sender, or none due), ``False`` for a MessageID with
        no envelope.  Fails as the sender fails (4006: the MMSC retries)."""
        return defer.ensureDeferred(
            self._one_at_a_time(
                request.message_id,
                lambda: self._delivery_report(request, transaction),
            )
        )

    async def _delivery_report(
        self, request: DeliveryReportReq, transaction: Transaction
    ) -> bool:
        record = await self._find(request.message_id, transaction)
        if record is None:
            return False
        # Mbuni swaps Sender and Recipient in its reports: either may be
        # the handset.
        recipient = record.recipient_for(
            _value(request.recipient), _value(request.sender)
        )
        if recipient is None:
            log.warn(
                "Delivery report for {message_id} names none of its recipients",
                message_id=record.message_id,
            )
            return True
        action, status = dsn_status(request.mm_status)
        moved = recipient.step(action)
        if moved is None:
            return True  # the same status again, or after a final one
        notify = notify_wants(recipient.notify, action) and action not in moved.sent
        if notify:
            reported = self._reported(
                request.mm_status,
                request.status_text,
                request.date,
                recipient,
                action,
                status,
            )
            mail = dsn_mail(
                self._original(record),
                reported,
                reporting_mta=self.reporting_mta,
                envelope_sender=self.report_mail_from,
                now=self.clock.seconds(),
            )
            await self._send(mail)
            transaction.outcome.returned = ("DSN", record.mail_from)
            moved = replace(moved, sent=(*moved.sent, action))
        await self._keep(record.with_recipient(moved))
        return True

    def read_reply(
        self, request: ReadReplyReq, transaction: Transaction
    ) -> defer.Deferred[bool]:
        """Fire with ``True`` once the read reply is handled here (an MDN
        sent to the mail's ``Disposition-Notification-To``, or none due),
        ``False`` for a MessageID with no envelope."""
        return defer.ensureDeferred(
            self._one_at_a_time(
                request.message_id,
                lambda: self._read_reply(request, transaction),
            )
        )

    async def _read_reply(
        self, request: ReadReplyReq, transaction: Transaction
    ) -> bool:
        record = await self._find(request.message_id, transaction)
        if record is None:
            return False
        recipient = record.recipient_for(
            _value(request.recipient), _value(request.sender)
        )
        disposition = MDN_DISPOSITIONS.get((request.mm_status or "").lower())
        if (
            record.mdn_to is None
            or recipient is None
            or disposition is None
            or recipient.mdn_sent
        ):
            return True  # not asked for, not known, or sent already
        reported = self._reported(
            request.mm_status,
            request.status_text,
            request.timestamp,
            recipient,
            disposition,
            "",
        )
        mail = mdn_mail(
            self._original(record),
            reported,
            record.mdn_to,
            reporting_ua=self.reporting_mta,
            envelope_sender=self.report_mail_from,
            now=self.clock.seconds(),
        )
        await self._send(mail)
        transaction.outcome.returned = ("MDN", record.mdn_to)
        await self._keep(record.with_recipient(replace(recipient, mdn_sent=True)))
        return True

    @staticmethod
    def _reported(
        mm_status: str | None,
        status_text: str | None,
        date: str | None,
        recipient: SentRecipient,
        action: str,
        status: str,
    ) -> Reported:
        return Reported(
            final_recipient=recipient.address,
            original_recipient=recipient.orcpt,
            action=action,
            status=status,
            mm_status=mm_status or "Indeterminate",
            status_text=status_text or "",
            date=email_date(date),
        )


def _value(address: object) -> str | None:
    return getattr(address, "value", None)
