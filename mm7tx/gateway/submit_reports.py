"""Which delivery reports a VASP's accepted SubmitReq earns: one per
recipient, ``Forwarded`` where the relay took the mail, ``Rejected`` where
it refused it (a 1100 partial success), posted by the
:class:`~mm7tx.gateway.reports.DeliveryReporter`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from twisted.logger import Logger

from mm7tx.gateway.reports import DeliveryReporter
from mm7tx.mm7 import messages as m
from mm7tx.transaction import Transaction

# Logged as it was from the processor: the namespace is in every log event.
_submit_log = Logger(namespace="mm7tx.processors")


def report_submit(
    reporter: DeliveryReporter,
    request: m.SubmitReq,
    transaction: Transaction,
    message_id: str,
    forwarded: Callable[[m.Address], bool],
) -> None:
    """Post one DeliveryReportReq per recipient of an accepted SubmitReq, if
    it asked for reports and the account has a URL for them: ``Forwarded``
    for a recipient ``forwarded`` says the relay took, else ``Rejected``.
    None when the SubmitRsp could not reach the VASP: it never learnt the
    MessageID."""
    account = transaction.account
    if not (
        request.delivery_report and account is not None and account.delivery_report_url
    ):
        return
    if transaction.answer_lost():
        _submit_log.info(
            "No delivery report for {message_id} to {vasp}: its SubmitRsp "
            "could not be sent, the connection was gone",
            message_id=message_id,
            vasp=account.name,
        )
        return
    for recipient in request.recipients.all:
        taken = forwarded(recipient)
        reporter.report(
            account,
            m.DeliveryReportReq(
                # The client makes it fit the namespace.
                mm7_version=transaction.mm7_version,
                message_id=message_id,
                recipient=recipient,
                sender=request.sender_address,
                date=datetime.now(UTC).isoformat(timespec="seconds"),
                mm_status="Forwarded" if taken else "Rejected",
                status_text="Accepted by the mail relay"
                if taken
                else "Refused by the mail relay",
            ),
            transaction.namespace,
        )
