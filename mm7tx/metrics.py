"""Prometheus metrics: what mm7tx counts, and the page that shows it.

One :class:`Metrics` per service, with its own ``CollectorRegistry`` (never
``prometheus_client``'s global one, so that two services in one process
count apart).  :func:`~mm7tx.service.build_service` hands it to what it
wires; each of those calls one method of it per event.  Labels take values
from small fixed sets only: the configured path (never the request's, which
may carry a password), the request type, the MM7 status code, an outcome,
the configured endpoint of a listener.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from twisted.web.resource import Resource
from twisted.web.server import Request

# Seconds: an MM7 answer is due within the peer's timeout, often 30 s.
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60)
# Bytes of a request: a text message to the 5 MiB default limit and beyond.
_BYTES = tuple(1024 * 4**n for n in range(8))  # 1 KiB .. 16 MiB

# The operation of a request that could not be read (or was refused before).
UNKNOWN = "unknown"


class Metrics:
    """The counters of one mm7tx service, in its own :attr:`registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        ProcessCollector(registry=registry)
        self._transactions = Counter(
            "mm7tx_transactions",
            "MM7 requests answered, by configured path, request type and MM7 status",
            ["path", "operation", "status"],
            registry=registry,
        )
        self._transaction_seconds = Histogram(
            "mm7tx_transaction_seconds",
            "Time from a request's body to its answer",
            ["operation"],
            buckets=_SECONDS,
            registry=registry,
        )
        self._request_bytes = Histogram(
            "mm7tx_request_bytes",
            "Size of MM7 request bodies",
            buckets=_BYTES,
            registry=registry,
        )
        self._in_flight = Gauge(
            "mm7tx_in_flight", "MM7 transactions in flight", registry=registry
        )
        self._smtp_messages = Counter(
            "mm7tx_smtp_messages",
            "Messages handed to the relay: accepted (250), refused (5xx), "
            "failed (relay down, timed out, 4xx)",
            ["outcome"],
            registry=registry,
        )
        self._smtp_seconds = Histogram(
            "mm7tx_smtp_seconds",
            "Time from a message's send to the relay's final answer",
            buckets=_SECONDS,
            registry=registry,
        )
        self._smtp_connections = Gauge(
            "mm7tx_smtp_connections",
            "SMTP sessions open or being opened",
            registry=registry,
        )
        self._auth_failures = Counter(
            "mm7tx_auth_failures",
            "Requests refused 4001: no_credentials, bad_credentials, network "
            "(account not allowed from the address), locked_out",
            ["reason"],
            registry=registry,
        )
        self._delivery_reports = Counter(
            "mm7tx_delivery_reports",
            "Delivery reports posted to VASPs: accepted (answered 1000), "
            "failed (refused, or given up), abandoned (at stop)",
            ["outcome"],
            registry=registry,
        )
        self._connections_refused = Counter(
            "mm7tx_connections_refused",
            "Connections closed at once, by listener (its endpoint) and bound: "
            "per_address (mm7_max_connections_per_address), per_listener "
            "(mm7_max_connections)",
            ["listener", "reason"],
            registry=registry,
        )

        self._mail_in = Counter(
            "mm7tx_mail_in",
            "Mails to MMS answered after their data: accepted (250, the MMSC took "
            "it), deferred (4xx), refused (5xx)",
            ["outcome"],
            registry=registry,
        )
        self._mail_in_upstream = Histogram(
            "mm7tx_mail_in_upstream_seconds",
            "Time from a mail's SubmitReq to the upstream MMSC's answer",
            buckets=_SECONDS,
            registry=registry,
        )
        self._dedup_hits = Counter(
            "mm7tx_dedup_hits",
            "Retries answered with the answer already given (exactly once), "
            "by request type",
            ["operation"],
            registry=registry,
        )
        self._dedup_waits = Counter(
            "mm7tx_dedup_waits",
            "Retries that waited for the same transaction in flight",
            registry=registry,
        )
        self._store_errors = Counter(
            "mm7tx_store_errors",
            "State store calls that failed or timed out (the request was "
            "served without exactly once), by call",
            ["operation"],
            registry=registry,
        )
        self._store_seconds = Histogram(
            "mm7tx_store_seconds",
            "Time of a state store call, by call",
            ["operation"],
            buckets=_SECONDS,
            registry=registry,
        )

    def watch(
        self,
        in_flight: Callable[[], float],
        smtp_connections: Callable[[], float] | None = None,
    ) -> None:
        """Gauges read when scraped: transactions in flight, SMTP sessions."""
        self._in_flight.set_function(in_flight)
        if smtp_connections is not None:
            self._smtp_connections.set_function(smtp_connections)

    def transaction(
        self,
        path: str,
        operation: str,
        status: int,
        seconds: float,
        size: int | None,
    ) -> None:
        """One MM7 request answered (or refused) with ``status``."""
        self._transactions.labels(path, operation, str(int(status))).inc()
        self._transaction_seconds.labels(operation).observe(seconds)
        if size is not None:
            self._request_bytes.observe(size)

    def smtp_message(self, outcome: str, seconds: float) -> None:
        """The relay's final answer to one message: ``accepted``,
        ``refused`` or ``failed``."""
        self._smtp_messages.labels(outcome).inc()
        self._smtp_seconds.observe(seconds)

    def mail_in(self, outcome: str) -> None:
        """A mail to MMS answered: ``accepted``, ``deferred`` or ``refused``."""
        self._mail_in.labels(outcome).inc()

    def mail_in_upstream(self, seconds: float) -> None:
        """The upstream MMSC answered a SubmitReq (or failed to) in ``seconds``."""
        self._mail_in_upstream.observe(seconds)

    def auth_failure(self, reason: str) -> None:
        """A request refused for its credentials (see the counter's help)."""
        self._auth_failures.labels(reason).inc()

    def delivery_report(self, outcome: str) -> None:
        """A delivery report's end here: ``accepted``, ``failed``,
        ``abandoned`` or ``left`` (in the state store, for another start)."""
        self._delivery_reports.labels(outcome).inc()

    def connection_refused(self, listener: str, reason: str) -> None:
        """A connection to ``listener`` closed at once for a bound:
        ``per_address`` or ``per_listener``."""
        self._connections_refused.labels(listener, reason).inc()

    def dedup_hit(self, operation: str) -> None:
        """A retry answered with the stored answer."""
        self._dedup_hits.labels(operation).inc()

    def in_flight_wait(self) -> None:
        """A retry waiting for the same transaction in flight."""
        self._dedup_waits.inc()

    def store_error(self, operation: str) -> None:
        """A state store call (``claim``, ``complete``…) failed."""
        self._store_errors.labels(operation).inc()

    def store_call(self, operation: str, seconds: float) -> None:
        """A state store call answered or failed after ``seconds``."""
        self._store_seconds.labels(operation).observe(seconds)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class MetricsPage(Resource):
    """``GET /metrics``: the Prometheus text format, made in the reactor
    thread (``prometheus_client.twisted`` would use the global reactor and
    its thread pool)."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return self.metrics.exposition()
