"""The metrics and health listener (``metrics_listen``): its site, its pages
and its start and stop, the same for a single process and for the parent of
``--workers`` (each gives the resource tree it answers with).

Its failing to listen is logged as an error, and MM7 runs on without it.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource

from mm7tx.app.drain import within
from mm7tx.app.health import Alive, Ready
from mm7tx.app.wiring import IMM7Reactor
from mm7tx.http.resource import Folder
from mm7tx.http.site import MM7Site
from mm7tx.metrics import Metrics, MetricsPage

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.service")


class MonitorSite(MM7Site):
    """The metrics and health listener's site: small GETs, and no access
    log line for each scrape.  Its refusals are counted under its endpoint
    and warned of apart from the MM7 listeners'."""

    noisy = False  # no "Starting factory" line either
    refusing = (
        "Refusing connections to the metrics listener from {peer}: {count} "
        "open, its limit"
    )

    def __init__(
        self,
        root: Resource,
        reactor: IReactorTime,
        metrics: Metrics | None = None,
        endpoint: str = "metrics",
    ) -> None:
        super().__init__(
            root,
            reactor,
            max_request_size=64 * 1024,
            request_timeout=10,
            max_connections_per_address=16,
            metrics=metrics,
            name=endpoint,
        )

    def log(self, request: http.Request) -> None:
        pass

    def logPrefix(self) -> str:
        return "Metrics and health"


def monitor_root(
    metrics: Metrics,
    problem: Callable[[], str | None],
    notes: Callable[[], str | None] | None = None,
) -> Resource:
    """``/metrics``, ``/healthz`` and ``/readyz`` (ready unless ``problem``
    gives a reason; what ``notes`` gives said beside ``ready``), to serve
    on a listener of their own or mount in a site."""
    root = Folder()
    root.putChild(b"metrics", MetricsPage(metrics))
    root.putChild(b"healthz", Alive())
    root.putChild(b"readyz", Ready(problem, notes))
    return root


class MonitorListener:
    """``site`` served on ``endpoint`` from :meth:`start` to :meth:`stop`,
    logging to ``logger`` (its owner's)."""

    def __init__(
        self,
        reactor: IMM7Reactor,
        endpoint: str,
        site: MonitorSite,
        logger: Logger = log,
    ) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.site = site
        self.log = logger
        # The listen under way or done (None once it failed or stopped).
        self._listening: defer.Deferred[IListeningPort] | None = None

    @property
    def serving(self) -> bool:
        """Started, not stopped, and not failed to listen."""
        return self._listening is not None

    def start(self, up: Callable[[], None] | None = None) -> None:
        """Listen, then call ``up``; a failure to listen is logged."""
        endpoint = self.endpoint
        listening = serverFromString(self.reactor, endpoint).listen(self.site)

        def listened(port: IListeningPort) -> IListeningPort:
            self.log.info("Metrics and health on {endpoint}", endpoint=endpoint)
            if up is not None:
                up()
            return port

        def failed(reason: Failure) -> None:
            self._listening = None
            self.log.error(
                "Cannot serve metrics and health on {endpoint} (metrics_listen): "
                "{why}; MM7 goes on without them",
                endpoint=endpoint,
                why=reason.getErrorMessage(),
            )

        # Set first: a listen that fails at once has called failed by the
        # time addCallbacks returns.
        self._listening = listening
        listening.addCallbacks(listened, failed)

    async def stop(self) -> None:
        """Stop listening (a listen under way is cancelled), then close its
        connections (cut after a second)."""
        listening, self._listening = self._listening, None
        if listening is None:
            return
        if not listening.called:
            listening.cancel()
        # None: the listen failed (logged then) or was cancelled just now.
        port: IListeningPort | None = await listening
        stopping = port.stopListening() if port is not None else None
        if stopping is not None:
            await stopping
        await within(
            self.reactor,
            self.site.close_connections(abort=True),
            self.reactor.seconds() + 1,
        )
