"""Reloading: a configuration's objects as a reload swaps them (a
:class:`Generation`), what of a new configuration a reload cannot apply (the
listeners), and SIGHUP handed to the reactor.

:meth:`~mm7tx.app.service.MM7Service.reload` uses these; ``--workers``'s
parent (:class:`~mm7tx.app.workers.Supervisor`), which passes the file on
to its workers, the last two.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorThreads
from twisted.web.resource import Resource
from twisted.web.server import Request

from mm7tx.config import Config
from mm7tx.http.limits import TransactionGate
from mm7tx.interfaces import IMailSender


class Generation:
    """One configuration's objects, as a reload swaps them: its resource
    tree (paths, accounts, processors) and the mail sender its processors
    hold; and what still uses them: the requests routed into the tree and
    not finished, and the transactions in its gate."""

    def __init__(
        self, config: Config, sender: IMailSender, root: Resource, gate: TransactionGate
    ) -> None:
        self.config = config
        self.sender = sender
        self.root = root
        self.gate = gate
        self.resource = Routing(self)
        self.requests = 0
        self._idle: list[defer.Deferred[None]] = []
        # Earlier generations holding the same sender (a reload that kept
        # the relay settings) and maybe still using it: the sender closes
        # only once they are done too.
        self.sharing: list[Generation] = []

    @property
    def busy(self) -> bool:
        return bool(self.requests or self.gate.in_flight)

    def routed(self, request: Request) -> None:
        self.requests += 1
        request.notifyFinish().addBoth(self._finished)

    def _finished(self, _: object) -> None:
        self.requests -= 1
        if not self.requests:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    async def done(self) -> None:
        """Once no request and no transaction uses these objects: a request
        still authenticating has not entered the gate yet, and a transaction
        whose client went away is no request any more."""
        while self.busy:
            if self.gate.in_flight:
                await self.gate.drained()
            else:
                idle: defer.Deferred[None] = defer.Deferred()
                self._idle.append(idle)
                await idle


class Routing(Resource):
    """The site's resource: a generation's tree, each request routed into it
    counted until it finishes."""

    def __init__(self, generation: Generation) -> None:
        super().__init__()
        self.generation = generation

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:  # type: ignore[override]
        self.generation.routed(request)
        child: Resource = self.generation.root.getChildWithDefault(path, request)
        return child

    def render(self, request: Request) -> Any:
        return self.generation.root.render(request)


def listener_changes(running: Config, new: Config) -> list[str]:
    """What of the listeners differs in ``new``, in the file's words."""
    changes = []
    if new.listen != running.listen:
        changes.append(
            f"Listen ({', '.join(running.listen)} -> {', '.join(new.listen)})"
        )
    if new.listen_access != running.listen_access:
        changes.append("always_allow/always_deny")
    if new.esmtp_listeners != running.esmtp_listeners:
        changes.append("ESMTP_Listener")
    if new.metrics_listen != running.metrics_listen:
        changes.append(
            f"metrics_listen ({running.metrics_listen or 'none'} -> "
            f"{new.metrics_listen or 'none'})"
        )
    return changes


def keeping_listeners(new: Config, running: Config) -> Config:
    """``new`` with the listeners of ``running`` (which a reload keeps, and
    a later reload compares with)."""
    return replace(
        new,
        listeners=running.listeners,
        esmtp_listeners=running.esmtp_listeners,
        metrics_listen=running.metrics_listen,
    )


class Sighup:
    """SIGHUP handed to the reactor as a call of ``reload``, from
    :meth:`install` to :meth:`restore` (which puts the handler before back).
    A signal handler does nothing but that: it may run at any point of the
    reactor's own code."""

    def __init__(self, reactor: IReactorThreads, reload: Callable[[], object]) -> None:
        self.reactor = reactor
        self.reload = reload
        # SIGHUP's handler before ours, while ours is installed.
        self._previous: list[Any] = []

    def install(self) -> None:
        if not hasattr(signal, "SIGHUP") or self._previous:
            return
        previous = signal.signal(signal.SIGHUP, self._received)
        # None: a handler not set from Python, which cannot be put back.
        self._previous = [signal.SIG_DFL if previous is None else previous]

    def restore(self) -> None:
        if self._previous:
            signal.signal(signal.SIGHUP, self._previous.pop())

    def _received(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self.reload)
