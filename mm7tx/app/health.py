"""Health: ``/healthz`` (the process runs), ``/readyz`` (send it traffic),
and the relay check readiness rests on.

A load balancer or an orchestrator asks ``/readyz``: 200 once every MM7
listener is up and the relay answered within :data:`FRESH` seconds, 503
with a one-line reason otherwise (not listening yet, the relay not
answering, draining on stop).  The relay counts as answering after a
message it took with 250 or a check (EHLO then QUIT): :class:`RelayWatch`
checks every :data:`INTERVAL` seconds, unless a message went through since.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request

from mm7tx.interfaces import Checkable as Checkable  # its home before

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.health")

# A relay that answered within this many seconds is up.
FRESH = 30.0
# How often the relay is checked when no message went through meanwhile.
INTERVAL = 10.0


class RelayWatch:
    """Whether the relay answered recently, checking it when nothing else
    says so: every ``interval`` seconds on ``clock``, a :meth:`Checkable.check`
    unless the relay answered within the interval."""

    def __init__(
        self,
        clock: IReactorTime,
        sender: Checkable,
        fresh: float = FRESH,
        interval: float = INTERVAL,
    ) -> None:
        self.clock = clock
        self.sender = sender
        self.fresh = fresh
        self.interval = interval
        # Why the last check failed, while no answer came after it.
        self.error: str | None = None
        self._failed_at = 0.0
        self._checking: defer.Deferred[None] | None = None
        self._loop = task.LoopingCall(self._check)
        self._loop.clock = clock

    def start(self) -> None:
        """Check now, and every ``interval`` from now on."""
        if not self._loop.running:
            self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        """No more checks; one under way is cancelled."""
        if self._loop.running:
            self._loop.stop()
        if self._checking is not None:
            self._checking.cancel()

    def _check(self) -> None:
        answered = self.sender.last_answer
        now = self.clock.seconds()
        if self._checking is not None:
            return
        if answered is not None and now - answered < self.interval:
            return  # a message went through: no need to ask
        checking = self.sender.check()
        self._checking = checking

        def answered_check(_: None) -> None:
            if self.error is not None:
                log.info("The mail relay answers a check again")
            self.error = None

        def failed(reason: Failure) -> None:
            if reason.check(defer.CancelledError):
                return
            why = reason.getErrorMessage() or type(reason.value).__name__
            if self.error is None:
                log.warn("The mail relay does not answer a check: {why}", why=why)
            self.error = why
            self._failed_at = self.clock.seconds()

        def done(_: object) -> None:
            self._checking = None

        checking.addCallbacks(answered_check, failed).addBoth(done)

    def problem(self) -> str | None:
        """Why the relay does not count as up, or None if it does."""
        answered = self.sender.last_answer
        if self.error is not None and (answered is None or answered < self._failed_at):
            return f"the mail relay does not answer: {self.error}"
        if answered is None:
            return "the mail relay has not answered yet"
        quiet = self.clock.seconds() - answered
        if quiet > self.fresh:
            return f"the mail relay has not answered for {quiet:.0f} s"
        return None


def _text(request: Request, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return text.encode("utf-8") + b"\n"


class Alive(Resource):
    """``GET /healthz``: 200 while the service runs."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return _text(request, http.OK, "ok")


class Ready(Resource):
    """``GET /readyz``: 200 ``ready``, or 503 and the one-line reason that
    ``problem`` gives.  While ready, what ``notes`` gives (a degraded part
    that is no reason to take the instance out: the state store failing)
    follows ``ready``, still 200: ``ready; degraded: …``."""

    isLeaf = True

    def __init__(
        self,
        problem: Callable[[], str | None],
        notes: Callable[[], str | None] | None = None,
    ) -> None:
        super().__init__()
        self.problem = problem
        self.notes = notes

    def render_GET(self, request: Request) -> bytes:
        problem = self.problem()
        if problem is None:
            note = self.notes() if self.notes is not None else None
            if note is not None:
                return _text(request, http.OK, f"ready; degraded: {note}")
            return _text(request, http.OK, "ready")
        return _text(request, http.SERVICE_UNAVAILABLE, problem)
