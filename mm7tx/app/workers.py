"""``--workers N``: N worker processes behind listeners bound once.

The parent (:class:`Supervisor`) binds every MM7 listener through Twisted's
own endpoint parser on the real reactor and never accepts on them; it
spawns N ``twistd mm7`` workers, each given the listening sockets as file
descriptors 3, 4, … (one per listener, in order) and adopting them with
``reactor.adoptStreamPort`` (:class:`Adopting`): the kernel hands each
connection to one worker.  TLS (``ssl:``) and the PROXY protocol
(``haproxy:``) are done in the worker, by the same endpoint string.  This
is the way Twisted's "Using processes" and ``adoptStreamPort`` documents;
unlike ``SO_REUSEPORT`` it works with UNIX and systemd-passed sockets, and a
dead worker's share of new connections goes to the others at once.

Each worker is the whole single-process mm7tx (:func:`build_service`): its
own SMTP pool, limits and metrics, the latter served on a private UNIX
socket that the parent reads to answer ``/metrics`` (every worker's
samples with a ``worker`` label) and ``/readyz`` (ready when every worker
is).  Workers log JSON events to the parent, which logs them as its own.

Workers read no configuration file: the parent reads it (at start, and again
on SIGHUP, when it checks it before anything changes) and writes the text it
accepted on each worker's standard input (:func:`frame`), at the worker's
start and after each good SIGHUP.  A worker started at any time, a
replacement too, thus runs what the parent last accepted, never a file
changed since; its listeners stay the ones the parent bound.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.endpoints import UNIXClientEndpoint, serverFromString
from twisted.internet.error import ConnectError, ProcessDone, ProcessTerminated
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProcessTransport,
)
from twisted.logger import (
    ILogObserver,
    Logger,
    eventFromJSON,
    jsonFileLogObserver,
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.client import Agent
from twisted.web.resource import Resource

from mm7tx.app.drain import CLOSE_GRACE
from mm7tx.app.health import Alive, Ready
from mm7tx.app.monitor import MonitorListener, MonitorSite
from mm7tx.app.reload import Sighup, listener_changes
from mm7tx.config import ConfigError, inner_endpoint
from mm7tx.http.client import read_body
from mm7tx.http.resource import Folder

if TYPE_CHECKING:
    from mm7tx.config import Config

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.workers")

# The first descriptor a worker finds its listeners at (as systemd does).
FIRST_FD = 3
# A worker that dies within this many seconds of its start doubles the
# wait before the next start of its slot (from BACKOFF to BACKOFF_MAX).
STEADY = 10.0
BACKOFF = 1.0
BACKOFF_MAX = 30.0
# Seconds the parent waits for a worker's metrics or readiness.
ASK_TIMEOUT = 5.0
# The longest line a worker's output may have: a longer one is dropped,
# with a warning (its size and its start), rather than held in the parent.
MAX_LINE = 64 * 1024


# The parent: binding ---------------------------------------------------------


class _Unused(protocol.Factory):
    """What the parent's listening ports are made with: they never accept."""

    noisy = False

    def logPrefix(self) -> str:
        return "MM7 listener for the workers"


def bind(reactor: Any, endpoint: str) -> IListeningPort:
    """Listen on ``endpoint`` (one of :data:`~mm7tx.config.SHARED_KINDS`)
    without ever accepting: the socket is for workers to adopt.  A
    ``CannotListenError`` is raised as from ``listenTCP``."""
    results: list[Any] = []
    serverFromString(reactor, endpoint).listen(_Unused()).addBoth(results.append)
    if not results:  # cannot happen for the kinds checked by check_shared
        raise RuntimeError(f"{endpoint} did not listen at once")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    port = results[0]
    port.stopReading()
    return port  # type: ignore[no-any-return]


def systemd_names(listen: Sequence[str], first: int = FIRST_FD) -> tuple[str, str]:
    """``LISTEN_FDS``-like descriptors and names for a worker, so that its
    ``systemd:`` listeners (by ``index=`` or ``name=``) parse and find the
    socket its parent passed it for that listener (``first + i``)."""
    descriptors: dict[int, int] = {}
    names: dict[int, str] = {}
    by_name: list[tuple[str, int]] = []
    for i, endpoint in enumerate(listen):
        kind, _, keywords = inner_endpoint(endpoint)
        if kind != "systemd":
            continue
        if keywords.get("index", "").isdigit():
            descriptors[int(keywords["index"])] = first + i
        else:
            by_name.append((keywords.get("name", "unknown"), first + i))
    # Those found by name after those found by index.
    for name, fd in by_name:
        at = max(descriptors, default=-1) + 1
        descriptors[at], names[at] = fd, name
    if not descriptors:
        return "", ""
    top = max(descriptors) + 1
    return (
        ",".join(str(descriptors.get(at, -1)) for at in range(top)),
        ":".join(names.get(at, "unknown") for at in range(top)),
    )


# The configuration the parent accepted ----------------------------------------


@dataclass(frozen=True)
class Accepted:
    """A configuration as the parent accepted it: the file's ``text`` as
    read (None: the embedded defaults) and ``source``, its name in messages.
    Relative paths in it resolve as in the parent: a worker has its folder."""

    source: str
    text: str | None

    def load(self) -> Config:
        from mm7tx.config import EMBEDDED, load

        return EMBEDDED if self.text is None else load(self.text, self.source)


def frame(payload: bytes) -> bytes:
    """``payload`` as the parent writes it on a worker's standard input:
    its length in decimal, a newline, then the bytes."""
    return b"%d\n%s" % (len(payload), payload)


def configuration_frame(bound: Accepted, accepted: Accepted) -> bytes:
    """What a worker runs: ``accepted``, with the listeners of ``bound``
    (the configuration the parent bound its sockets for)."""
    payload = {"accepted": [accepted.source, accepted.text]}
    if bound != accepted:
        payload["bound"] = [bound.source, bound.text]
    return frame(json.dumps(payload).encode("utf-8"))


def configuration(
    payload: bytes, listen: Sequence[str], smtp_relay: str | None
) -> Config:
    """The configuration a worker runs from a frame's ``payload``, with its
    command line's ``--listen`` and ``--smtp-relay`` over it; a
    :class:`~mm7tx.config.ConfigError` as for the file."""
    from dataclasses import replace

    from mm7tx.config import with_overrides

    found = json.loads(payload)
    accepted = Accepted(*found["accepted"])
    config = with_overrides(accepted.load(), list(listen), smtp_relay, "1")
    if "bound" not in found:
        return config
    bound = with_overrides(Accepted(*found["bound"]).load(), list(listen), None, "1")
    # Listener i adopts the parent's socket i: the listeners it was bound for.
    return replace(
        config,
        listen=bound.listen,
        listen_origins=bound.listen_origins,
        listen_access=bound.listen_access,
    )


class Frames:
    """A worker's standard input as it comes: :meth:`feed` returns the
    payloads of the frames it completes."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        found = []
        while (end := self._buffer.find(b"\n")) >= 0:
            size = int(self._buffer[:end])
            if len(self._buffer) < end + 1 + size:
                break
            found.append(self._buffer[end + 1 : end + 1 + size])
            self._buffer = self._buffer[end + 1 + size :]
        return found


def read_frame(fd: int) -> bytes | None:
    """The next frame's payload on ``fd``, waiting for all of it and reading
    no byte past it (the frames after it are the running worker's); None if
    ``fd`` ends first (the parent is gone)."""
    header = b""
    while not header.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            return None
        header += byte
    size = int(header)
    pieces: list[bytes] = []
    while size:
        piece = os.read(fd, min(size, 1 << 16))
        if not piece:
            return None
        pieces.append(piece)
        size -= len(piece)
    return b"".join(pieces)


# The worker: adopting --------------------------------------------------------


class Adopting:
    """The reactor a worker's listener listens on: any ``listen*`` (or
    ``adoptStreamPort``) adopts the socket at ``fd`` instead, with TLS
    around the factory for ``listenSSL``, as Twisted's own ``listenSSL``
    does; everything else is the real reactor's."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def _adopt(self, factory: Any) -> Any:
        import socket

        probe = socket.socket(fileno=os.dup(self._fd))
        family = probe.family
        probe.close()
        port = self._reactor.adoptStreamPort(self._fd, family, factory)
        if family == socket.AF_UNIX:
            # The parent owns the path: a worker stopping must not unlink it
            # (Twisted's UNIX port unlinks its path on close).
            from twisted.internet import tcp

            port.connectionLost = functools.partial(tcp.Port.connectionLost, port)
        return port

    def listenTCP(self, port: int, factory: Any, *args: Any, **kw: Any) -> Any:
        return self._adopt(factory)

    def listenUNIX(self, address: Any, factory: Any, *args: Any, **kw: Any) -> Any:
        return self._adopt(factory)

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, *args: Any, **kw: Any
    ) -> Any:
        listening = self._adopt(TLSMemoryBIOFactory(contextFactory, False, factory))
        listening._type = "TLS"
        return listening

    def adoptStreamPort(self, fileDescriptor: int, family: Any, factory: Any) -> Any:
        return self._adopt(factory)


def worker_log_observer() -> ILogObserver:
    """A worker's log (``twistd --logger``): JSON events, one a line, on its
    standard output, for the parent to log as its own."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")


class ParentWatch(service.Service):
    """A worker's link to its parent: its standard input, which the parent
    holds open.  Each configuration the parent accepts on SIGHUP comes
    there as a frame, whose payload goes to ``received``.  When it closes
    (the parent is gone, even killed with SIGKILL) the worker stops as on
    SIGTERM, draining.  SIGINT (a terminal's Ctrl-C reaches the whole
    process group) is left to the parent, which sends SIGTERM."""

    def __init__(
        self,
        reactor: Any,
        fd: int = 0,
        received: Callable[[bytes], object] | None = None,
    ) -> None:
        self.reactor = reactor
        self.fd = fd
        self.received = received
        self._frames = Frames()

    def startService(self) -> None:
        from twisted.internet.process import ProcessReader

        super().startService()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self._reader = ProcessReader(self.reactor, self, "parent", self.fd)

    def childDataReceived(self, name: str, data: bytes) -> None:
        for payload in self._frames.feed(data):
            if self.received is None:
                continue
            try:
                self.received(payload)
            except Exception:
                # Not the end of the link to the parent, as raising would be.
                log.failure("Reloading what the parent passed on")

    def childConnectionLost(self, name: str, reason: Failure | None = None) -> None:
        if self.running:
            log.warn("The parent is gone: stopping")
            self.reactor.stop()


# The parent: processes -------------------------------------------------------


@dataclass
class _Slot:
    number: int
    process: IProcessTransport | None = None
    pid: int | None = None
    started: float = 0.0
    backoff: float = BACKOFF
    restart: IDelayedCall | None = None
    # Processes started in this slot: more than one, and it is a replacement.
    spawned: int = 0


def _how(reason: Failure) -> str:
    """How a process ended, in words."""
    value = reason.value
    if isinstance(value, ProcessTerminated) and value.signal is not None:
        try:
            name = signal.Signals(value.signal).name
        except ValueError:
            name = str(value.signal)
        return f"signal {value.signal} ({name})"
    if isinstance(value, (ProcessDone, ProcessTerminated)):
        return f"exit status {value.exitCode}"
    return str(value)


class WorkerProtocol(protocol.ProcessProtocol):
    """One worker: its JSON log lines are logged in the parent (``log_system``
    ``worker N``); its standard error line by line; its end told to the pool.
    A line over :data:`MAX_LINE` bytes is not kept: a warning gives its size."""

    def __init__(self, pool: WorkerPool, slot: _Slot) -> None:
        self.pool = pool
        self.slot = slot
        # Each descriptor's line so far: its pieces, their size, and whether
        # it is over MAX_LINE (then only its size and start are kept).
        self._pieces: dict[int, list[bytes]] = {1: [], 2: []}
        self._sizes: dict[int, int] = {1: 0, 2: 0}
        self._heads: dict[int, bytes | None] = {1: None, 2: None}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD not in self._pieces:
            return
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._add(childFD, data[start:end])
            self._end(childFD)
            start = end + 1
        if start < len(data):
            self._add(childFD, data[start:])

    def _add(self, childFD: int, piece: bytes) -> None:
        self._sizes[childFD] += len(piece)
        if self._heads[childFD] is not None:
            return
        self._pieces[childFD].append(piece)
        if self._sizes[childFD] > MAX_LINE:
            self._heads[childFD] = b"".join(self._pieces[childFD])[:200]
            self._pieces[childFD] = []

    def _end(self, childFD: int) -> None:
        head, size = self._heads[childFD], self._sizes[childFD]
        pieces = self._pieces[childFD]
        self._pieces[childFD], self._sizes[childFD] = [], 0
        self._heads[childFD] = None
        if head is None:
            self._line(childFD, b"".join(pieces))
            return
        log.warn(
            "Worker {slot} wrote a line of {size} bytes, over {limit}: dropped; "
            "it began {head!r}",
            slot=self.slot.number,
            size=size,
            limit=MAX_LINE,
            head=head.decode("utf-8", "replace"),
            log_system=f"worker {self.slot.number}",
        )

    def _line(self, childFD: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if not text.strip():
            return
        system = f"worker {self.slot.number}"
        if childFD == 1:
            try:
                event = eventFromJSON(text)
            except ValueError:
                pass
            else:
                own = event.get("log_system")
                event["log_system"] = (
                    system if own in (None, "-") else f"{system},{own}"
                )
                log.observer(event)
                return
        log.warn("{text}", text=text, log_system=system)

    def processEnded(self, reason: Failure) -> None:
        for fd, size in self._sizes.items():
            if size:
                self._end(fd)
        self.pool.ended(self.slot, reason)


class WorkerPool(service.Service):
    """``count`` worker processes kept running: each spawned with
    ``command(slot)`` and ``child_fds()``, and given ``hello()`` on its
    standard input; one that dies is logged and started again, no sooner
    than its backoff after its previous start.  Stopping sends each SIGTERM
    and waits for all to exit (SIGKILL after ``stop_timeout``)."""

    def __init__(
        self,
        reactor: Any,
        count: int,
        command: Callable[[int], Sequence[str]],
        child_fds: Callable[[], Mapping[int, int | str]],
        stop_timeout: float,
        env: Mapping[str, str] | None = None,
        before_start: Callable[[int], None] | None = None,
        hello: Callable[[], bytes] | None = None,
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.command = command
        self.child_fds = child_fds
        self.stop_timeout = stop_timeout
        self.env = dict(os.environ if env is None else env)
        self.before_start = before_start
        self.hello = hello
        self.slots = [_Slot(n) for n in range(1, count + 1)]
        self.restarts = 0
        self._stopping = False
        self._all_ended: defer.Deferred[None] | None = None

    @property
    def running_count(self) -> int:
        return sum(1 for slot in self.slots if slot.process is not None)

    def pids(self) -> list[int | None]:
        return [slot.process.pid if slot.process else None for slot in self.slots]

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        for slot in self.slots:
            self._spawn(slot)
        log.info(
            "Started {count} workers: pids {pids}",
            count=self.count,
            pids=" ".join(str(pid) for pid in self.pids()),
        )

    def _spawn(self, slot: _Slot) -> None:
        slot.restart = None
        slot.started = self.reactor.seconds()
        try:
            if self.before_start is not None:
                self.before_start(slot.number)
            argv = list(self.command(slot.number))
            slot.process = self.reactor.spawnProcess(
                WorkerProtocol(self, slot),
                argv[0],
                argv,
                env=self.env,
                childFDs=dict(self.child_fds()),
            )
        except Exception as e:  # EMFILE, EAGAIN: tried again, as a death is
            slot.process = None
            delay = slot.backoff
            slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)
            log.error(
                "Cannot start worker {slot}: {why}; trying again in {delay:.1f} s",
                slot=slot.number,
                why=e,
                delay=delay,
            )
            if not self._stopping:
                slot.restart = self.reactor.callLater(delay, self._spawn, slot)
            return
        slot.pid = slot.process.pid
        slot.spawned += 1
        if self.hello is not None:
            slot.process.writeToChild(0, self.hello())

    def ended(self, slot: _Slot, reason: Failure) -> None:
        pid = slot.pid
        slot.process = None
        if self._stopping:
            log.info(
                "Worker {slot} (pid {pid}) exited: {how}",
                slot=slot.number,
                pid=pid,
                how=_how(reason),
            )
            if self._all_ended is not None and not self.running_count:
                self._all_ended.callback(None)
            return
        now = self.reactor.seconds()
        lived = now - slot.started
        if lived < STEADY:
            delay = max(0.0, slot.started + slot.backoff - now)
            slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)
        else:
            delay = 0.0
            slot.backoff = BACKOFF
        log.error(
            "Worker {slot} (pid {pid}) died: {how}; starting another in {delay:.1f} s",
            slot=slot.number,
            pid=pid,
            how=_how(reason),
            delay=delay,
        )
        self.restarts += 1
        slot.restart = self.reactor.callLater(delay, self._spawn, slot)

    def signal_all(self, signame: str) -> None:
        """Send ``signame`` (``"TERM"``, ``"HUP"``) to every running worker."""
        for slot in self.slots:
            if slot.process is not None:
                # OSError: it just exited, and its end is on the way.
                with contextlib.suppress(OSError):
                    slot.process.signalProcess(signame)

    def tell_all(self, data: bytes) -> None:
        """Write ``data`` on every running worker's standard input."""
        for slot in self.slots:
            if slot.process is not None:
                slot.process.writeToChild(0, data)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self._stopping = True
        for slot in self.slots:
            if slot.restart is not None and slot.restart.active():
                slot.restart.cancel()
            slot.restart = None
        if not self.running_count:
            return defer.succeed(None)
        log.info("Stopping {count} workers (SIGTERM)", count=self.running_count)
        self._all_ended = defer.Deferred()
        self.signal_all("TERM")
        kill = self.reactor.callLater(self.stop_timeout, self._kill)

        def done(result: None) -> None:
            if kill.active():
                kill.cancel()

        return self._all_ended.addCallback(done)

    def _kill(self) -> None:
        log.warn(
            "{count} workers still running after {timeout:g} s: SIGKILL",
            count=self.running_count,
            timeout=self.stop_timeout,
        )
        self.signal_all("KILL")


# The parent: metrics and health ---------------------------------------------


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
        from mm7tx.http.client import QuietConnectionPool

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

    async def _readiness(self, slot: _Slot) -> str | None:
        being_replaced = f"worker {slot.number} is not running (being restarted)"
        if slot.process is None:
            return being_replaced
        try:
            code, body = await self._ask(slot.number, "/readyz")
        except ConnectError as e:
            # The parent removes a worker's socket before starting it: none
            # yet, and the worker is still starting.
            if os.path.exists(self.socket(slot.number)):
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


# The parent ------------------------------------------------------------------

# Set by the parent for its workers: the folder of their metrics sockets,
# and what their systemd: listeners find (see systemd_names).
FOLDER_ENV = "MM7TX_WORKER_FOLDER"
FDS_ENV, FDNAMES_ENV = "MM7TX_WORKER_LISTEN_FDS", "MM7TX_WORKER_LISTEN_FDNAMES"


def metrics_socket(folder: str, slot: int) -> str:
    """Where worker ``slot`` serves its metrics and health."""
    return os.path.join(folder, f"{slot}.sock")


class Supervisor(service.MultiService):
    """The parent of ``--workers N``: binds every listener of ``config``
    (in ``privilegedStartService``, as a single process would), runs the
    :class:`WorkerPool` with ``command(slot)``, gives each worker the
    configuration it accepted (``accepted``: at start, then what ``load``
    returns at each SIGHUP that loads cleanly), and serves the workers'
    metrics and health on ``metrics_listen``.  Stopping closes the
    parent's copies of the listening sockets, drains every worker
    (SIGTERM), then stops."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        command: Callable[[int], Sequence[str]],
        accepted: Accepted | None = None,
        load: Callable[[], tuple[Config, Accepted]] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        # The configuration the listeners were bound for, and the one the
        # workers run.
        self.bound = self.accepted = accepted or Accepted(config.source, None)
        self.load = load
        self.ports: list[IListeningPort] = []
        self.folder: str | None = None
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
        }
        env[FDS_ENV], env[FDNAMES_ENV] = systemd_names(config.listen)
        self.pool = WorkerPool(
            reactor,
            config.workers,
            command,
            self._child_fds,
            stop_timeout=_stop_timeout(config),
            env=env,
            before_start=self._before_start,
            hello=self.frame,
        )
        self.pool.setServiceParent(self)
        self.monitor: WorkersMonitor | None = None
        self._monitor_listener: MonitorListener | None = None
        self._sighup = Sighup(reactor, self.reload)

    def frame(self) -> bytes:
        """What a worker is given at its start: the configuration accepted."""
        return configuration_frame(self.bound, self.accepted)

    def _child_fds(self) -> dict[int, int | str]:
        fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        for i, port in enumerate(self.ports):
            fds[FIRST_FD + i] = port.fileno()  # type: ignore[attr-defined]
        return fds

    def _before_start(self, slot: int) -> None:
        if self.folder is not None:  # a killed worker's socket stays behind
            with contextlib.suppress(FileNotFoundError):
                os.unlink(metrics_socket(self.folder, slot))

    def privilegedStartService(self) -> None:
        for endpoint in self.config.listen:
            self.ports.append(bind(self.reactor, endpoint))
        super().privilegedStartService()

    def startService(self) -> None:
        import tempfile

        from mm7tx import __version__

        log.info(
            "mm7tx {version} on {source}: {count} workers listening on {listen}",
            version=__version__,
            source=self.config.source,
            count=self.config.workers,
            listen=", ".join(self.config.listen),
        )
        if self.config.metrics_listen is not None:
            self.folder = tempfile.mkdtemp(prefix="mm7tx-workers-")
            self.pool.env[FOLDER_ENV] = self.folder
            folder = self.folder
            self.monitor = WorkersMonitor(
                self.reactor, self.pool, lambda slot: metrics_socket(folder, slot)
            )
        self._sighup.install()
        super().startService()
        if self.monitor is not None and self.config.metrics_listen is not None:
            site = MonitorSite(monitor_root(self.monitor), self.reactor)
            self._monitor_listener = MonitorListener(
                self.reactor, self.config.metrics_listen, site, log
            )
            self._monitor_listener.start()

    def reload(self) -> bool:
        """SIGHUP: the file read again (``load``) and, if it loads cleanly,
        passed on to every worker, and to every worker started from now on;
        a mistake in it is logged and changes nothing.  Whether it was."""
        if self.load is None:
            return False
        try:
            config, accepted = self.load()
        except ConfigError as e:
            log.error(
                "Not reloading, the running configuration is kept: {error}",
                error=str(e),
            )
            return False
        changed = listener_changes(self.config, config)
        if config.workers != self.config.workers:
            changed.append(f"workers ({self.config.workers} -> {config.workers})")
        if changed:
            log.warn(
                "Reloading {source}: {changed} changed, which takes a restart; "
                "the running listeners are kept",
                source=config.source,
                changed=" and ".join(changed),
            )
        self.accepted = accepted
        self.pool.stop_timeout = _stop_timeout(config)
        log.info(
            "SIGHUP: passing {source} on to {count} workers",
            source=config.source,
            count=self.pool.running_count,
        )
        self.pool.tell_all(self.frame())
        return True

    async def _stop(self) -> None:
        if self.monitor is not None:
            self.monitor.draining = True
        for port in self.ports:
            # The workers close theirs as they stop: then nothing listens.
            await defer.maybeDeferred(port.stopListening)
        self.ports = []
        await super().stopService()
        if self._monitor_listener is not None:
            await self._monitor_listener.stop()
        if self.folder is not None:
            import shutil

            shutil.rmtree(self.folder, ignore_errors=True)
        log.info("All workers stopped")

    def stopService(self) -> defer.Deferred[None]:
        self._sighup.restore()
        return defer.ensureDeferred(self._stop())


def _stop_timeout(config: Config) -> float:
    """How long the parent's stop waits for its workers before SIGKILL."""
    # A worker drains, then takes up to CLOSE_GRACE to close.
    return config.drain_timeout + CLOSE_GRACE + 5


# The worker ------------------------------------------------------------------


def passed_to_worker(environ: Mapping[str, str] = os.environ) -> Any:
    """The sockets a worker's ``systemd:`` listeners find (its parent's,
    at the descriptors :func:`systemd_names` says)."""
    from twisted.python.systemd import ListenFDs

    fds = environ.get(FDS_ENV, "")
    names = environ.get(FDNAMES_ENV, "")
    if not fds:
        return ListenFDs([], ())
    return ListenFDs([int(fd) for fd in fds.split(",")], tuple(names.split(":")))


def worker_config(
    config: Config, slot: int, environ: Mapping[str, str] = os.environ
) -> Config:
    """A worker's configuration: its metrics on its own socket in the
    parent's folder (or none, when the parent serves none)."""
    from dataclasses import replace

    folder = environ.get(FOLDER_ENV)
    listen = f"unix:{metrics_socket(folder, slot)}:mode=600" if folder else None
    return replace(config, metrics_listen=listen)


def adopting(reactor: Any) -> Callable[[int], Adopting]:
    """For :func:`~mm7tx.service.build_service`: listener ``i`` adopts the
    socket at descriptor ``FIRST_FD + i``."""
    return lambda index: Adopting(reactor, FIRST_FD + index)
