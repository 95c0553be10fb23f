"""A fake :class:`~mm7tx.interfaces.IMailSender` that records mail, or fails."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage

from twisted.internet import defer
from zope.interface import implementer

from mm7tx.interfaces import (
    IMailSender,
    SendResult,
)
from mm7tx.mm7.errors import MM7Error


@dataclass
class SentMail:
    sender: str
    recipients: list[str]
    message: EmailMessage


@implementer(IMailSender)
class FakeMailSender:
    """Records every message; fails each with ``error`` if one is set."""

    description = "a fake sender"

    def __init__(self, error: MM7Error | None = None) -> None:
        self.sent: list[SentMail] = []
        self.error = error

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def send(
        self, sender: str, recipients: list[str], message: EmailMessage
    ) -> defer.Deferred[SendResult]:
        if self.error is not None:
            return defer.fail(self.error)
        self.sent.append(SentMail(sender, list(recipients), message))
        return defer.succeed(SendResult(tuple(recipients)))
