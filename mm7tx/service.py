"""Building the running service from a :class:`~mm7tx.config.Config`.

:func:`build_resources` gives the resource tree alone (to mount in another
site); :func:`build_service` gives a ``MultiService`` with one HTTP listener
per endpoint, to run under ``twistd mm7`` or inside any other application.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service, strports
from twisted.logger import Logger
from twisted.python.reflect import namedAny
from twisted.web.resource import Resource
from twisted.web.server import Site

from mm7tx.auth import portal_for
from mm7tx.config import Config
from mm7tx.interfaces import IMailSender
from mm7tx.limits import RateLimiter
from mm7tx.processors import EmailProcessor
from mm7tx.reports import DeliveryReporter
from mm7tx.resource import MM7Resource, access_log_formatter, build_root
from mm7tx.senders import sender_for

log = Logger()


def make_processor(
    name: str | None,
    config: Config,
    sender: IMailSender,
    reporter: DeliveryReporter | None = None,
) -> object:
    """The processor for a path: :class:`EmailProcessor` or the class named
    by dotted name, called with the same arguments."""
    factory: Any = EmailProcessor if name is None else namedAny(name)
    return factory(
        sender,
        config.rules,
        mm7_version=config.mm7_version,
        keep_smil=config.keep_smil,
        reporter=reporter,
    )


def build_resources(
    config: Config, sender: IMailSender, reactor: Any = None
) -> dict[str, Resource]:
    """One :class:`MM7Resource` per configured VASP and MMSC path.

    MMSC paths share one Portal over the VASP accounts, one rate limiter and
    one delivery reporter; they need a ``reactor`` for those.
    """
    resources: dict[str, Resource] = {}
    for path in config.vasp_paths:
        processor = make_processor(config.processor_for(path), config, sender)
        resources[path] = MM7Resource(processor, path, "vasp", config.mm7_version)
    if config.mmsc_paths:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        portal = portal_for(config.vasps, reactor)
        limiter = RateLimiter(reactor)
        reporter = DeliveryReporter(reactor, attempts=config.delivery_report_attempts)
        for path in config.mmsc_paths:
            processor = make_processor(
                config.processor_for(path), config, sender, reporter
            )
            resources[path] = MM7Resource(
                processor, path, "mmsc", config.mm7_version, portal, limiter
            )
    return resources


class MM7Service(service.MultiService):
    """The listeners of one mm7tx configuration; logs where it listens and
    where mail goes when it starts."""

    def __init__(self, config: Config, sender: IMailSender, root: Resource) -> None:
        super().__init__()
        self.config = config
        self.sender = sender
        self.root = root
        self.site = Site(root, logFormatter=access_log_formatter)
        for endpoint in config.listen:
            strports.service(endpoint, self.site).setServiceParent(self)

    def startService(self) -> None:
        log.info(
            "mm7tx on {source}: listening on {listen}, VASP paths {paths}, "
            "MMSC paths {mmsc} for {accounts} VASP accounts, mail to {mail}",
            source=self.config.source,
            listen=", ".join(self.config.listen),
            paths=" ".join(self.config.vasp_paths) or "-",
            mmsc=" ".join(self.config.mmsc_paths) or "-",
            accounts=len(self.config.vasps),
            mail=self.sender.description,
        )
        super().startService()


def build_service(config: Config, reactor: Any = None) -> MM7Service:
    """The whole service for ``config``; pass a reactor to avoid the global one."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    sender = sender_for(reactor, config.smtp)
    root = build_root(build_resources(config, sender, reactor))
    return MM7Service(config, sender, root)
