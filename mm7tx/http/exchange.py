"""One MM7 request on its way to its answer: what every stage of
:class:`~mm7tx.http.resource.MM7Resource` needs to know of it."""

from __future__ import annotations

import time
from typing import Any

from twisted.python.failure import Failure
from twisted.web.server import Request

from mm7tx.mm7 import codec
from mm7tx.mm7.codec.sniff import Sniffed
from mm7tx.mm7.peers import Account
from mm7tx.transaction import Transaction


class Exchange:
    """The state of one HTTP request to an MM7 path, from its body read to
    its answer sent: the request, its raw ``body`` until it is decoded, the
    client's address (``peer``), the ``account`` once authenticated, and
    :attr:`gone` once the connection is lost (nothing can be answered then).

    :attr:`echo` is what a fault echoes of the request: sniffed from the raw
    body when first asked (most requests never need it), then the decoded
    envelope's own.  After :meth:`decoded`, :attr:`transaction` is what the
    processor is given, and the exchange holds neither the body nor the
    message, only what the log event needs of them.
    """

    def __init__(self, request: Request, body: bytes, peer: str) -> None:
        self.request = request
        self.body = body
        self.peer = peer
        self.size = len(body)
        self.started = time.monotonic()
        self.account: Account | None = None
        self.gone = False
        self.transaction: Transaction | None = None
        # Of the decoded request, for its log event: its type, the
        # MessageID it names, its addresses as mm7_log_addresses shows them.
        self.operation: str | None = None
        self.message_id: str | None = None
        self.addresses: dict[str, Any] = {}
        # For the metrics: the size they observe (none for a request
        # refused before it was taken in) and whether it was counted.
        self.metered_size: int | None = None
        self.counted = False
        self._echo: Sniffed | None = None
        request.notifyFinish().addErrback(self._lost)

    def _lost(self, reason: Failure) -> None:
        self.gone = True

    @property
    def account_name(self) -> str | None:
        return self.account.name if self.account is not None else None

    @property
    def fault_code(self) -> int:
        """The HTTP status of a fault: the account's once it is known."""
        account = self.account
        return account.fault_http_status if account is not None else 500

    @property
    def echo(self) -> Sniffed:
        """The namespace, TransactionID and MM7Version a fault echoes."""
        if self._echo is None:
            self._echo = codec.sniff(self.header(b"content-type"), self.body)
        return self._echo

    def take_body(self) -> bytes:
        """The body, which the exchange then no longer holds; what a fault
        would echo of it is read first (a bounded look)."""
        _ = self.echo
        body, self.body = self.body, b""
        return body

    def decoded(
        self,
        transaction: Transaction,
        message: object,
        addresses: dict[str, Any],
    ) -> None:
        """The request is read: from now on it is ``transaction`` (whose
        namespace, TransactionID and MM7Version a fault echoes)."""
        self.transaction = transaction
        self.operation = type(message).__name__
        self.message_id = getattr(message, "message_id", None)
        self.addresses = addresses
        self._echo = Sniffed(
            transaction.namespace, transaction.transaction_id, transaction.mm7_version
        )
        self.body = b""

    def header(self, name: bytes) -> str | None:
        """A request header as text, its last value: bytes that are not
        UTF-8 are kept as surrogates (``getHeader`` would raise on them), so
        a boundary keeps its bytes and a bad header is refused by what reads
        it."""
        values = self.request.requestHeaders.getRawHeaders(name)
        return values[-1].decode("utf-8", "surrogateescape") if values else None

    def send(self, data: bytes) -> None:
        """Write a whole answer, with its length (not chunked), and finish."""
        request = self.request
        request.setHeader(b"content-length", b"%d" % len(data))
        request.write(data)
        request.finish()

    def can_answer(self) -> bool:
        """Whether nothing of an answer was sent yet, to a client still there."""
        request = self.request
        return not (request.startedWriting or request.finished or self.gone)
