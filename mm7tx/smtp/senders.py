"""Which sender serves the relay option (its settings: :mod:`mm7tx.smtp.settings`).

Nothing here imports ``twisted.mail``, which installs the global reactor as
it is imported: the ESMTP sender is imported only when a relay needs it, so
importing mm7tx (its configuration, its service) leaves the choice of
reactor to the application.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime

from mm7tx.interfaces import IMailSender
from mm7tx.offload import in_threads
from mm7tx.smtp.maildir import MaildirSender
from mm7tx.smtp.settings import SMTPSettings as SMTPSettings
from mm7tx.smtp.settings import StartTLS as StartTLS

if TYPE_CHECKING:
    from mm7tx.metrics import Metrics


def sender_for(
    reactor: IReactorTime, settings: SMTPSettings, metrics: Metrics | None = None
) -> IMailSender:
    """The sender for a relay option: ``maildir:PATH`` or an endpoint string
    (whose messages ``metrics`` counts)."""
    if settings.endpoint.startswith("maildir:"):
        return MaildirSender(
            settings.endpoint[len("maildir:") :], offload=in_threads(reactor)
        )
    # Here, not at the top: see the module's docstring.
    from mm7tx.smtp.esmtp import ESMTPSender

    return ESMTPSender(reactor, settings, metrics=metrics, offload=in_threads(reactor))
