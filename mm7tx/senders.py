"""The relay option: how to reach the relay, and which sender serves it.

Nothing here imports ``twisted.mail``, which installs the global reactor as
it is imported: the ESMTP sender is imported only when a relay needs it, so
importing mm7tx (its configuration, its service) leaves the choice of
reactor to the application.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from twisted.internet.interfaces import IReactorTime

from mm7tx.interfaces import IMailSender
from mm7tx.maildir import MaildirSender
from mm7tx.offload import in_threads

if TYPE_CHECKING:
    from mm7tx.metrics import Metrics

StartTLS = Literal["off", "opportunistic", "required"]


@dataclass(frozen=True, slots=True)
class SMTPSettings:
    """How to reach the relay.  Timeouts are in seconds.

    A message waits at most ``total_timeout`` from ``send`` to the relay's
    250, whatever happens: the wait for a session, ``connect_timeout``, and
    each reply awaited up to ``command_timeout`` (restarted by each chunk of
    a big message the connection takes).  The defaults keep the whole under
    the 30 s many MM7 peers (and mm7tx's own client) wait for an answer, so
    that a silent relay gets them a 4006, not a timeout of their own.
    """

    endpoint: str = "tcp:127.0.0.1:25"
    starttls: StartTLS = "opportunistic"
    ca_file: str | None = None
    tls_hostname: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    helo: str | None = None
    connect_timeout: float = 10.0
    command_timeout: float = 20.0
    total_timeout: float = 25.0
    max_connections: int = 20
    idle_timeout: float = 30.0

    @property
    def host(self) -> str:
        """The relay's host name, from the endpoint string (for TLS checks)."""
        if self.tls_hostname:
            return self.tls_hostname
        parts = self.endpoint.split(":")
        for part in parts[1:]:
            if part.startswith("host="):
                return part[5:]
        return parts[1] if len(parts) > 1 and "=" not in parts[1] else "localhost"


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
    from mm7tx.esmtp import ESMTPSender

    return ESMTPSender(reactor, settings, metrics=metrics, offload=in_threads(reactor))
