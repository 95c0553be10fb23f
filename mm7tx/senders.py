"""Choosing the mail sender for a relay option."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from mm7tx.esmtp import ESMTPSender, SMTPSettings
from mm7tx.interfaces import IMailSender
from mm7tx.maildir import MaildirSender


def sender_for(reactor: IReactorTime, settings: SMTPSettings) -> IMailSender:
    """The sender for a relay option: ``maildir:PATH`` or an endpoint string."""
    if settings.endpoint.startswith("maildir:"):
        return MaildirSender(settings.endpoint[len("maildir:") :])
    return ESMTPSender(reactor, settings)
