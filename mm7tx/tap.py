"""``twistd mm7``: command-line options and ``makeService``."""

from __future__ import annotations

from typing import cast

from twisted.application.service import IService
from twisted.python import usage

from mm7tx.config import EMBEDDED, ConfigError, load_file, with_overrides
from mm7tx.service import IMM7Reactor, build_service


class Options(usage.Options):
    synopsis = "[--config FILE] [--listen ENDPOINT]... [--smtp-relay ENDPOINT]"
    longdesc = (
        "Run the mm7tx MM7 gateway.  With no --config it runs on embedded "
        "defaults: listen on tcp:8080, VASP path /vasp/, mail into ./Maildir."
    )
    optParameters = [
        ["config", "c", None, "The configuration file (Momentum grammar)."],
        [
            "smtp-relay",
            None,
            None,
            "Where mail goes: an endpoint (tcp:HOST:PORT, tls:HOST:PORT) or "
            "maildir:PATH.  Overrides smtp_relay in the file.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """An endpoint to listen on (tcp:8080, :8080, ssl:443:...).
        Repeatable; overrides the file's HTTP_Listener."""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        try:
            config = load_file(self["config"]) if self["config"] else EMBEDDED
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self["mm7_config"] = with_overrides(config, self["listen"], self["smtp-relay"])


def makeService(options: Options) -> IService:
    # The one place mm7tx takes the global reactor; everything below gets it.
    from twisted.internet import reactor

    return build_service(options["mm7_config"], cast(IMM7Reactor, reactor))
