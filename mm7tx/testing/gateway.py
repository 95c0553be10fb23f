"""The whole gateway in memory: :class:`MemoryGateway`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from mm7tx.app.service import (
    ProcessorFactory,
    build_service,
    configured_processor,
    make_processor,
)
from mm7tx.app.wiring import CONFIGURED
from mm7tx.config import EMBEDDED, Config, load
from mm7tx.config.model import DEFAULT_STATE_STORE
from mm7tx.gateway.reports import DeliveryReporter
from mm7tx.http.client import MM7Client
from mm7tx.interfaces import (
    ICancelProcessor,
    IDeliverProcessor,
    IDeliveryReportProcessor,
    IMailSender,
    IReadReplyProcessor,
    IReplaceProcessor,
    IStateStore,
    ISubmitProcessor,
)
from mm7tx.smtp.esmtp import ESMTPSender
from mm7tx.store import StoreSpec
from mm7tx.testing.http import HTTPResponse, MemoryAgent, get, post
from mm7tx.testing.reactor import MemoryReactor, result_of
from mm7tx.testing.relay import MemorySMTPRelay

if TYPE_CHECKING:
    from mm7tx.app.service import IMM7Reactor


T = TypeVar("T")


_PROCESSOR_INTERFACES = (
    IDeliverProcessor,
    IDeliveryReportProcessor,
    IReadReplyProcessor,
    ISubmitProcessor,
    ICancelProcessor,
    IReplaceProcessor,
)


def _serving(
    processor: Any, options: Mapping[str, Any] | None = None
) -> ProcessorFactory:
    """A :data:`~mm7tx.app.service.ProcessorFactory` that serves every path
    with ``processor``: a processor object as it is, a class called as the
    configuration's processors are (with ``options`` as its ``Options`` if
    it declares them)."""

    def make(
        config: Config,
        path: str,
        sender: IMailSender,
        reporter: DeliveryReporter | None,
    ) -> object:
        if any(i.providedBy(processor) for i in _PROCESSOR_INTERFACES):
            return processor
        return make_processor(processor, config, sender, reporter, options)

    return make


class MemoryGateway:
    """The whole gateway in memory: the real resources, processors, pooled
    ESMTP sender and ``MM7Site`` on a :class:`MemoryReactor`, mailing to a
    :class:`MemorySMTPRelay`.

    ``config`` is a :class:`~mm7tx.config.Config` or its text (default: the
    embedded one, VASP path ``/vasp/`` and MMSC path ``/mm7/``); its
    ``smtp_relay`` is replaced by the relay's endpoint.  ``processor``, a
    processor class (called as the configuration's processors are, with
    ``processor_options`` as its ``Options`` if it declares them) or a
    processor object, serves every path instead of the configured ones.
    The state store is the one the configuration names, in memory for the
    default (``sqlite:mm7tx.sqlite3``), or ``store`` if given (an
    :class:`~mm7tx.interfaces.IStateStore`: two gateways given one are two
    instances of a fleet; ``None``: no store).
    ``pipelining`` and ``smtputf8`` say what the relay offers, ``strict``
    whether it refuses lines RFC 5321 forbids (:class:`MemorySMTPRelay`).  With
    ``metrics``, the configuration's ``metrics_listen`` (by default
    ``127.0.0.1:9107``, in memory) serves ``/metrics``, ``/healthz`` and
    ``/readyz`` (read them with :meth:`get`), and the relay is checked every
    10 s; without, nothing listens there and nothing checks the relay.

    Nothing moves until the test calls :meth:`flush` or :meth:`advance`
    (:meth:`post` and :meth:`result` flush for you).  :meth:`reload` swaps
    in another configuration as SIGHUP does.
    """

    def __init__(
        self,
        config: Config | str | None = None,
        *,
        processor: Any = None,
        processor_options: Mapping[str, Any] | None = None,
        pipelining: bool = True,
        smtputf8: bool = False,
        strict: bool = False,
        metrics: bool = False,
        store: IStateStore | None = CONFIGURED,
    ) -> None:
        if isinstance(config, str):
            config = load(config, "<MemoryGateway>")
        config = config if config is not None else EMBEDDED
        self.reactor = MemoryReactor()
        self.clock: Clock = self.reactor
        self.relay = MemorySMTPRelay(
            self.reactor, pipelining=pipelining, smtputf8=smtputf8, strict=strict
        )
        self._metrics = metrics
        self.service = build_service(
            self._to_relay(config),
            cast("IMM7Reactor", self.reactor),
            processors=(
                configured_processor
                if processor is None
                else _serving(processor, processor_options)
            ),
            store=store,
        )
        self.site = self.service.site
        self.service.startService()
        if metrics:
            self.flush()  # the relay check at start
        self.url = self._base_url()

    def _to_relay(self, config: Config) -> Config:
        smtp_settings = dataclasses.replace(config.smtp, endpoint=self.relay.endpoint)
        state_store = config.state_store
        if state_store == DEFAULT_STATE_STORE:
            state_store = StoreSpec(kind="memory")
        return dataclasses.replace(
            config,
            smtp=smtp_settings,
            metrics_listen=config.metrics_listen if self._metrics else None,
            state_store=state_store,
        )

    @property
    def config(self) -> Config:
        """The running configuration (its relay this gateway's)."""
        return self.service.config

    @property
    def root(self) -> Resource:
        """The resource tree new requests go to."""
        return self.service.root

    @property
    def sender(self) -> ESMTPSender:
        """The pooled ESMTP sender of new transactions."""
        sender = self.service.sender
        assert isinstance(sender, ESMTPSender)
        return sender

    def reload(self, config: Config | str, source: str = "<MemoryGateway>") -> bool:
        """Reload as SIGHUP does, with ``config`` or its text (read as the
        file ``source``; a mistake in it is logged and changes nothing);
        whether it reloaded.  The relay stays this gateway's, and a
        ``processor`` given at the start serves again."""

        def read() -> Config:
            loaded = load(config, source) if isinstance(config, str) else config
            return self._to_relay(loaded)

        return self.service.reload_from(read)

    def _base_url(self) -> str:
        # Every listenTCP is in Twisted's MemoryReactor.tcpServers, as
        # (port, factory, backlog, interface).
        for port, factory, _, interface in self.reactor.tcpServers:
            # The site behind the endpoint's Listener (and its access guard).
            factory = getattr(factory, "wrappedFactory", factory)
            if getattr(factory, "site", None) is self.site:
                host = interface if interface not in ("", "0.0.0.0") else "127.0.0.1"
                return f"http://{host}:{port}"
        raise ValueError("the configuration listens on no TCP endpoint")

    @property
    def metrics_url(self) -> str:
        """``http://HOST:PORT`` of the metrics and health listener."""
        monitor = self.service.monitor
        for port, factory, _, interface in reversed(self.reactor.tcpServers):
            # Listening now: its port started it and has not stopped it.
            if monitor is not None and factory is monitor and monitor.numPorts:
                return f"http://{interface or '127.0.0.1'}:{port}"
        raise ValueError("no metrics listener: MemoryGateway(metrics=True)?")

    def get(self, url: str) -> HTTPResponse:
        """GET ``url`` (a path: on the metrics listener); the answer must
        come without time passing."""
        if url.startswith("/"):
            url = self.metrics_url + url
        return self.result(get(self.agent(), url))

    # HTTP in.

    def agent(self, peer: str = "127.0.0.1") -> MemoryAgent:
        """An ``IAgent`` reaching this gateway (and anything else listening
        on its reactor) from the address ``peer``."""
        return MemoryAgent(self.reactor, peer)

    def client(
        self,
        path: str = "/mm7/",
        credentials: tuple[str, str] | None = None,
        *,
        peer: str = "127.0.0.1",
        **options: Any,
    ) -> MM7Client:
        """An :class:`~mm7tx.client.MM7Client` posting to ``path``, its
        timeouts on the gateway's clock; ``options`` go to ``MM7Client``."""
        return MM7Client(
            self.agent(peer),
            self.url + path,
            credentials,
            reactor=self.reactor,
            **options,
        )

    def post_later(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        peer: str = "127.0.0.1",
    ) -> defer.Deferred[HTTPResponse]:
        """POST to ``path``; fires with the answer as the test moves things."""
        return post(self.agent(peer), self.url + path, body, headers)

    def post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        peer: str = "127.0.0.1",
    ) -> HTTPResponse:
        """POST to ``path`` and return the answer, which must come without
        time passing (use :meth:`post_later` and :meth:`advance` otherwise)."""
        return self.result(self.post_later(path, body, headers, peer=peer))

    # Moving things.

    def flush(self) -> None:
        """Move bytes over every connection until all are quiet."""
        self.reactor.flush()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, every timer and its consequences in order."""
        self.reactor.advance(seconds)

    def result(self, d: defer.Deferred[T]) -> T:
        """Flush, then the result of ``d`` (its failure raised); an
        ``AssertionError`` if it is still waiting."""
        self.flush()
        return result_of(d)

    def stop(self) -> None:
        """Stop the service as ``twistd`` would (drain, close the HTTP
        connections and the SMTP pool), letting time pass as needed."""
        stopping = defer.ensureDeferred(self._stopping())
        self.flush()
        deadline = self.reactor.seconds() + self.config.drain_timeout + 60
        while not stopping.called and self.reactor.calls:
            if self.reactor.calls[0].getTime() > deadline:
                break
            self.advance(self.reactor.calls[0].getTime() - self.reactor.seconds())
        result_of(stopping)

    async def _stopping(self) -> None:
        await self.service.stopService()
