"""The ``--workers`` parent's ``/metrics`` and ``/readyz``: asked of every
worker's own metrics listener (:class:`WorkersMonitor`), every worker's
samples with a ``worker`` label, ready when every worker is.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ConnectError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.client import Agent
from twisted.web.resource import Resource

from mm7tx.app.health import Alive, Ready
from mm7tx.app.pool import Slot, WorkerPool
from mm7tx.http.client import QuietConnectionPool, read_body
from mm7tx.http.resource import Folder

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.workers")

# Seconds the parent waits for a worker's metrics or readiness.
ASK_TIMEOUT = 5.0


class _Sockets:
    """Agent endpoints: ``http://worker-N/…`` is worker N's socket."""

    def __init__(self, reactor: Any, path: Callable[[int], str]) -> None:
        self.reactor = reactor
        self.path = path

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        slot = int(uri.host.decode("ascii").rsplit("-", 1)[1])
        return UNIXClientEndpoint(self.reactor, self.path(slot), timeout=2)


class WorkersMonitor:
    """What the parent's ``/metrics`` and ``/readyz`` say, asked of every
    worker's own metrics listener (``socket(slot)``)."""

    def __init__(self, reactor: Any, pool: WorkerPool, socket: Callable[[int], str]):
        self.reactor = reactor
        self.pool = pool
        self.socket = socket
        self.agent = Agent.usingEndpointFactory(
            reactor,
            _Sockets(reactor, socket),
            QuietConnectionPool(reactor, persistent=False),
        )
        self.draining = False
        self.registry = CollectorRegistry(auto_describe=True)
        Gauge(
            "mm7tx_workers", "Worker processes running", registry=self.registry
        ).set_function(lambda: pool.running_count)
        restarts = Counter(
            "mm7tx_worker_restarts",
            "Workers that died and were started again",
            registry=self.registry,
        )
        restarts.inc(0)
        self._restarts = restarts
        self._counted = 0

    async def _ask(self, slot: int, path: str) -> tuple[int, bytes]:
        """Worker ``slot``'s answer to ``GET path``: its status and body,
        within ASK_TIMEOUT for the whole of it (a TimeoutError then)."""

        async def asking() -> tuple[int, bytes]:
            response = await self.agent.request(
                b"GET", f"http://worker-{slot}{path}".encode()
            )
            # Not readBody: a timeout must close the connection, and an
            # Agent's response has no abortConnection for readBody to call.
            return response.code, await read_body(response)

        # Cancelled on time out, which closes the connection.
        whole = defer.ensureDeferred(asking())
        whole.addTimeout(ASK_TIMEOUT, self.reactor)
        try:
            return await whole
        except defer.TimeoutError:
            raise defer.TimeoutError(f"timed out after {ASK_TIMEOUT:g} s") from None

    async def _families(self, slot: int) -> list[Metric]:
        code, body = await self._ask(slot, "/metrics")
        if code != 200:
            raise ValueError(f"HTTP status {code}")
        return list(text_string_to_metric_families(body.decode("utf-8")))

    async def metrics(self) -> bytes:
        """Every worker's metrics with a ``worker`` label, then the parent's;
        ``mm7tx_worker_up`` says which workers answered (all asked at once)."""
        self._restarts.inc(self.pool.restarts - self._counted)
        self._counted = self.pool.restarts
        running = [slot.number for slot in self.pool.slots if slot.process]
        answers = await defer.DeferredList(
            [defer.ensureDeferred(self._families(number)) for number in running],
            consumeErrors=True,
        )
        up = Metric("mm7tx_worker_up", "Whether the worker answered", "gauge")
        answered = dict(zip(running, answers, strict=True))
        families: dict[str, Metric] = {}
        for slot in self.pool.slots:
            worker = str(slot.number)
            ok, found = answered.get(slot.number, (False, None))
            up.add_sample("mm7tx_worker_up", {"worker": worker}, float(ok))
            if isinstance(found, Failure):
                log.warn(
                    "No metrics from worker {slot}: {why}",
                    slot=slot.number,
                    why=found.getErrorMessage(),
                )
            if not ok or not isinstance(found, list):
                continue
            for family in found:
                merged = families.get(family.name)
                if merged is None:
                    merged = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                    families[family.name] = merged
                for sample in family.samples:
                    labels = {**sample.labels, "worker": worker}
                    merged.samples.append(sample._replace(labels=labels))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed([*families.values(), up]))  # type: ignore[arg-type]
        return generate_latest(registry) + generate_latest(self.registry)

    async def _readiness(self, slot: Slot) -> str | None:
        being_replaced = f"worker {slot.number} is not running (being restarted)"
        if slot.process is None:
            return being_replaced
        try:
            code, body = await self._ask(slot.number, "/readyz")
        except ConnectError as e:
            # The parent removes a worker's socket before starting it: none
            # yet (the connect said so, or the file is still missing), and
            # the worker is still starting.  The connect's own error counts
            # first: the file may appear between the two.
            missing = getattr(e, "osError", None) == errno.ENOENT
            if not missing and os.path.exists(self.socket(slot.number)):
                return f"worker {slot.number} does not answer: {e}"
            if slot.spawned > 1:
                return being_replaced
            return f"worker {slot.number} is starting"
        except Exception as e:
            return f"worker {slot.number} does not answer: {e}"
        if code != 200:
            return f"worker {slot.number}: {body.decode('utf-8', 'replace').strip()}"
        return None

    async def problem(self) -> str | None:
        """Why the workers are not all ready (every worker that is not), or
        None; all are asked at once."""
        if self.draining:
            return "draining: the service is stopping"
        problems = await defer.gatherResults(
            [defer.ensureDeferred(self._readiness(slot)) for slot in self.pool.slots]
        )
        return "; ".join(p for p in problems if p) or None


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


class _Asking(Resource):
    """A GET answered when ``answer(request)`` (a coroutine) gives the body."""

    isLeaf = True

    def __init__(self, answer: Callable[[server.Request], Any]) -> None:
        super().__init__()
        self.answer = answer

    def render_GET(self, request: server.Request) -> Any:
        def write(body: bytes) -> None:
            if not request._disconnected:
                request.write(body)
                request.finish()

        def failed(reason: Failure) -> None:
            log.failure("Answering {uri}", reason, uri=request.uri)
            if not request._disconnected:
                request.setResponseCode(500)
                request.finish()

        defer.ensureDeferred(self.answer(request)).addCallbacks(write, failed)
        return server.NOT_DONE_YET


def monitor_root(monitor: WorkersMonitor) -> Resource:
    """The parent's ``/metrics``, ``/healthz`` and ``/readyz``."""

    async def metrics(request: server.Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return await monitor.metrics()

    async def ready(request: server.Request) -> bytes:
        problem = await monitor.problem()
        # Ready's own page, so the answers read as a single process's.
        return Ready(lambda: problem).render_GET(request)  # type: ignore[no-any-return]

    root = Folder()
    root.putChild(b"metrics", _Asking(metrics))
    root.putChild(b"healthz", Alive())
    root.putChild(b"readyz", _Asking(ready))
    return root
