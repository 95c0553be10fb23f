"""The ``--workers`` parent's processes: :class:`WorkerPool` keeps N worker
processes running (started again after a backoff when one dies, stopped
with SIGTERM then SIGKILL), :class:`WorkerProtocol` logs what each writes.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.logger import Logger, eventFromJSON
from twisted.python.failure import Failure

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.workers")

# A worker that dies within this many seconds of its start doubles the
# wait before the next start of its slot (from BACKOFF to BACKOFF_MAX).
STEADY = 10.0
BACKOFF = 1.0
BACKOFF_MAX = 30.0
# The longest line a worker's output may have: a longer one is dropped,
# with a warning (its size and its start), rather than held in the parent.
MAX_LINE = 64 * 1024


@dataclass
class Slot:
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

    def __init__(self, pool: WorkerPool, slot: Slot) -> None:
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
        self.slots = [Slot(n) for n in range(1, count + 1)]
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

    def _spawn(self, slot: Slot) -> None:
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

    def ended(self, slot: Slot, reason: Failure) -> None:
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
