"""HTTP <-> codec <-> processor: the ``twisted.web`` side of mm7tx.

:class:`MM7Resource` answers MM7 POSTs on one configured path; :func:`build_root`
puts several of them in a tree that can be served alone or mounted in any
other ``twisted.web`` site.  Served by a site that is not an
:class:`~mm7tx.site.MM7Site`, a resource refuses a body over its size limit
itself (413), once Twisted has received it, and warns once that the site
does not bound what it reads nor how long it waits.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from weakref import WeakKeyDictionary

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, pages
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface.interface import InterfaceClass

from mm7tx import logs
from mm7tx.http.auth import (
    Account,
    IMMSCAccount,
    IPAddressCredentials,
    IVASPAccount,
    Network,
    client_address,
    credentials_from,
)
from mm7tx.http.limits import LoginThrottle, RateLimiter, TransactionGate
from mm7tx.http.site import DEFAULT_MAX_REQUEST_SIZE, MM7Site
from mm7tx.interfaces import (
    ICancelProcessor,
    IDeliverProcessor,
    IDeliveryReportProcessor,
    IReadReplyProcessor,
    IReplaceProcessor,
    ISubmitProcessor,
)
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.mm7.codec.sniff import Sniffed, clean_version
from mm7tx.mm7.codec.soap import XMLLimits
from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.status import StatusCode
from mm7tx.offload import OFFLOAD_SIZE, Offload
from mm7tx.transaction import Transaction

if TYPE_CHECKING:
    from mm7tx.metrics import Metrics

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.resource")

Role = Literal["vasp", "mmsc"]

# Request type -> (interface, method) and the role of the path that takes it.
DISPATCH: dict[type[Any], tuple[InterfaceClass, str, Role]] = {
    m.DeliverReq: (IDeliverProcessor, "deliver", "vasp"),
    m.DeliveryReportReq: (IDeliveryReportProcessor, "delivery_report", "vasp"),
    m.ReadReplyReq: (IReadReplyProcessor, "read_reply", "vasp"),
    m.SubmitReq: (ISubmitProcessor, "submit", "mmsc"),
    m.CancelReq: (ICancelProcessor, "cancel", "mmsc"),
    m.ReplaceReq: (IReplaceProcessor, "replace", "mmsc"),
}
XML = b"text/xml; charset=utf-8"
NOT_ALLOWED = b"MM7 requests are POSTed here\n"


class MM7Resource(Resource):
    """Answers MM7 requests POSTed to one path with one processor.

    On a VASP path (``role="vasp"``) it takes DeliverReq, DeliveryReportReq and
    ReadReplyReq and faults with ``VASPErrorRsp``; on an MMSC path SubmitReq,
    CancelReq and ReplaceReq, faulting with ``RSErrorRsp``.  Any sub-path is
    served too (``/mm7/account=password``).  With a ``portal`` every request
    must authenticate (401 and 4001 otherwise): on an MMSC path as a VASP
    account, whose limits apply (the rate through ``limiter``); on a VASP
    path as an MMSC account, by HTTP Basic or its address.  ``throttle``
    refuses at once an address with too many failed logins;
    ``X-Forwarded-For`` names the peer only when sent by one of
    ``trusted_proxies``.  With an ``offload`` (:mod:`mm7tx.offload`), a
    body over ``OFFLOAD_SIZE`` is decoded there, off the reactor thread;
    ``in_thread`` runs a processor's blocking work
    (:meth:`Transaction.in_thread`).

    A body over ``max_request_size`` is refused (413, unread) when the site
    serving the resource is not an :class:`~mm7tx.site.MM7Site`, which
    refuses it itself before it is received (and applies its own limit,
    the one a keep-alive connection started with).
    ``log_addresses`` (``masked``, ``full``, ``none``) says how the log
    event shows the request's sender and recipients.
    """

    isLeaf = True
    allowedMethods = (b"POST",)

    def __init__(
        self,
        processor: object,
        path: str,
        role: Role = "vasp",
        mm7_version: str = m.DEFAULT_MM7_VERSION,
        portal: Portal | None = None,
        limiter: RateLimiter | None = None,
        gate: TransactionGate | None = None,
        xml_limits: XMLLimits | None = None,
        throttle: LoginThrottle | None = None,
        trusted_proxies: tuple[Network, ...] = (),
        metrics: Metrics | None = None,
        offload: Offload | None = None,
        in_thread: Offload | None = None,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        log_addresses: str = "masked",
    ) -> None:
        super().__init__()
        self.processor = processor
        self.path = path
        self.role = role
        self.mm7_version = mm7_version
        self.portal = portal
        self.limiter = limiter
        self.gate = gate if gate is not None else TransactionGate()
        self.xml_limits = xml_limits
        self.throttle = throttle
        self.trusted_proxies = trusted_proxies
        self.metrics = metrics
        self.offload = offload
        self.in_thread = in_thread
        self.max_request_size = max_request_size
        # mm7_log_addresses: how the transaction event shows addresses.
        self.log_addresses = log_addresses
        self._meters: WeakKeyDictionary[Request, _Meter] = WeakKeyDictionary()
        self._warned = False  # of being served by a plain Site

    def render(self, request: Request) -> bytes | int:
        """POST, or 405 with ``Allow: POST``; an error of ours is a 4000
        fault, never Twisted's HTML "Processing Failed" page."""
        if request.method != b"POST":
            request.setResponseCode(http.NOT_ALLOWED)
            request.setHeader(b"allow", b"POST")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.setHeader(b"content-length", b"%d" % len(NOT_ALLOWED))
            # HEAD: the headers of the answer a GET gets, without its body
            # (Twisted would log a warning for a body, and drop it).
            return b"" if request.method == b"HEAD" else NOT_ALLOWED
        if not isinstance(getattr(request, "site", None), MM7Site):
            refused = self._plain_site(request)
            if refused is not None:
                return refused
        body = b""
        if request.content is not None:
            body = request.content.read()
            request.content.truncate(0)  # the body lives on only as ``body``
        try:
            return self._post(request, body)
        except Exception:
            self._internal_error(request, Failure(), self._echo(request, body))
            return NOT_DONE_YET

    def _plain_site(self, request: Request) -> bytes | None:
        """Under a site that is not an ``MM7Site``: warn once, and the 413
        answer for a body over ``max_request_size`` (its size as received:
        Twisted has read it whole, chunked or not, before rendering)."""
        if not self._warned:
            self._warned = True
            log.warn(
                "MM7 on {path} is served by {site}, not mm7tx.site.MM7Site: "
                "Twisted receives each request whole (past 100 kB into a "
                "temporary file) before mm7tx sees it, so a body over "
                "mm7_max_request_size ({limit} bytes) is refused only once "
                "received, and no deadline bounds how long a request takes "
                "to arrive (mm7_request_timeout); serve the tree with "
                "MM7Site (README.md, Co-hosting)",
                path=self.path,
                site=type(getattr(request, "site", None)).__qualname__,
                limit=self.max_request_size,
            )
        content = request.content
        if content is None:
            return None
        size = content.seek(0, 2)
        content.seek(0)
        if size <= self.max_request_size:
            return None
        why = f"the request of {size} bytes is over the limit"
        log.info(
            "Refused a request from {peer}: {why} of {limit} bytes",
            peer=_peer(request),
            why=why,
            limit=self.max_request_size,
        )
        content.truncate(0)
        text = f"{why} of {self.max_request_size} bytes\n".encode()
        request.setResponseCode(http.REQUEST_ENTITY_TOO_LARGE)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % len(text))
        return text

    def _internal_error(
        self,
        request: Request,
        reason: Failure,
        echo: Sniffed,
        code: int = http.INTERNAL_SERVER_ERROR,
    ) -> None:
        """A 4000 fault for a bug of ours (logged), if nothing was sent yet."""
        log.failure("Answering failed on {path}", reason, path=self.path)
        if request.startedWriting or request.finished or request._disconnected:
            return
        status = m.Status.of(StatusCode.GENERAL_SERVICE_ERROR, details="internal error")
        _send(request, self._fault(request, status, echo, code))

    def _echo(self, request: Request, body: bytes) -> Sniffed:
        """What a fault echoes of a request not decoded (yet): its
        namespace, TransactionID and MM7Version, sniffed from the raw body
        (only when there is a fault: most requests never need it)."""
        return codec.sniff(_header(request, b"content-type"), body)

    def _log_transaction(
        self,
        peer: str,
        started: float,
        status: m.Status,
        request_bytes: int,
        fault: bool = True,
        **fields: Any,
    ) -> None:
        """The one log event of a transaction (:mod:`mm7tx.logs`)."""
        logs.log_transaction(
            log,
            path=self.path,
            peer=peer,
            status=status.code,
            status_text=status.details or status.text,
            ms=1000 * (time.monotonic() - started),
            request_bytes=request_bytes,
            fault=fault,
            **fields,
        )

    def _post(self, request: Request, body: bytes) -> bytes | int:
        peer = client_address(
            _peer(request),
            request.requestHeaders.getRawHeaders(b"x-forwarded-for"),
            self.trusted_proxies,
        )
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        if self.role == "mmsc" and request.getHeader("content-length") is None:
            status = m.Status.of(
                StatusCode.VALIDATION_ERROR, details="the POST has no Content-Length"
            )
            echo = self._echo(request, body)
            self._log_transaction(
                peer,
                time.monotonic(),
                status,
                len(body),
                transaction_id=echo.transaction_id,
            )
            return self._fault(request, status, echo, http.LENGTH_REQUIRED)
        started = time.monotonic()
        self._meters[request] = _Meter(started, len(body))
        if self.portal is None:
            self._transact(request, body, peer, None, gone, started)
            return NOT_DONE_YET
        tail = _raw_tail(request)
        if self.role == "vasp":
            tail = b""  # an MMSC uses Basic or its address, not the URI
        creds = credentials_from(tail, _header(request, b"authorization"), peer)
        locked = self.throttle.locked(peer) if self.throttle is not None else 0
        if locked:
            why = f"too many failed logins, locked out for {locked:.0f} s"
            status = m.Status.of(StatusCode.IMPROPER_IDENTIFICATION, details=why)
            echo = self._echo(request, body)
            self._log_transaction(
                peer, started, status, len(body), transaction_id=echo.transaction_id
            )
            self._auth_failed("locked_out")
            request.setHeader(b"retry-after", b"%d" % max(1, round(locked)))
            self._unauthorized(request, echo, gone, why)
            return NOT_DONE_YET
        if creds is None:
            login: defer.Deferred[Any] = defer.fail(UnauthorizedLogin("bad header"))
        else:
            avatar = IVASPAccount if self.role == "mmsc" else IMMSCAccount
            login = self.portal.login(creds, None, avatar)

        def authenticated(result: tuple[Any, Any, Any]) -> None:
            account: Account = result[1].account
            if not account.allows(peer):
                status = m.Status.of(
                    StatusCode.IMPROPER_IDENTIFICATION,
                    details="not from an allowed network",
                )
                echo = self._echo(request, body)
                self._log_transaction(
                    peer,
                    started,
                    status,
                    len(body),
                    account=account.name,
                    transaction_id=echo.transaction_id,
                )
                self._auth_failed("network")
                self._unauthorized(request, echo, gone)
                return
            self._transact(request, body, peer, account, gone, started)

        def refused(reason: Failure) -> None:
            reason.trap(UnauthorizedLogin)
            kind = "VASP" if self.role == "mmsc" else "MMSC"
            status = m.Status.of(
                StatusCode.IMPROPER_IDENTIFICATION,
                details=f"no valid {kind} credentials",
            )
            echo = self._echo(request, body)
            self._log_transaction(
                peer, started, status, len(body), transaction_id=echo.transaction_id
            )
            guessed = creds is not None and not isinstance(creds, IPAddressCredentials)
            self._auth_failed("bad_credentials" if guessed else "no_credentials")
            if self.throttle is not None and guessed and self.throttle.failed(peer):
                log.warn(
                    "Locking out {peer} for {lockout:g} s: {count} failed logins "
                    "within {window:g} s",
                    peer=peer,
                    lockout=self.throttle.lockout,
                    count=self.throttle.max_failures,
                    window=self.throttle.window,
                )
            self._unauthorized(request, echo, gone)

        login.addCallbacks(authenticated, refused).addErrback(
            lambda f: log.failure("Authentication failed", f)
        )
        return NOT_DONE_YET

    def _unauthorized(
        self,
        request: Request,
        echo: Sniffed,
        gone: list[bool],
        details: str | None = None,
    ) -> None:
        if gone:
            return
        status = m.Status.of(StatusCode.IMPROPER_IDENTIFICATION, details=details)
        request.setHeader(b"www-authenticate", b'Basic realm="mm7tx"')
        _send(request, self._fault(request, status, echo, http.UNAUTHORIZED))

    def _limit(self, account: Account | None, body: bytes) -> m.Status | None:
        """The fault status for an account over one of its limits, if any."""
        if account is None:
            return None
        if (
            account.max_message_size is not None
            and len(body) > account.max_message_size
        ):
            return m.Status.of(
                StatusCode.MULTIMEDIA_CONTENT_REFUSED,
                details=f"the request of {len(body)} bytes is over this account's "
                f"limit of {account.max_message_size}",
            )
        if (
            account.rate is not None
            and self.limiter is not None
            and not self.limiter.allow(account.name, account.rate)
        ):
            return m.Status.of(
                StatusCode.SERVICE_UNAVAILABLE,
                text=f"Rate limit of {account.rate:g} requests/s exceeded",
                details=f"account {account.name} sends faster than {account.rate:g}/s",
            )
        return None

    def _check(
        self, envelope: m.Envelope, account: Account | None, content_type: str | None
    ) -> m.Status | None:
        """MMSC-side rules for a decoded request."""
        message = envelope.message
        if not isinstance(message, (m.SubmitReq, m.ReplaceReq)):
            return None
        media = (content_type or "").split(";")[0].strip().lower()
        if envelope.content_href and not media.startswith("multipart/"):
            return m.Status.of(
                StatusCode.VALIDATION_ERROR,
                details=f"{type(message).__name__} with Content must be multipart, "
                f"not {media or 'untyped'}",
            )
        if isinstance(message, m.SubmitReq):
            count = len(message.recipients.all)
            if count == 0:
                return m.Status.of(
                    StatusCode.ADDRESS_ERROR,
                    text="No recipient",
                    details="the SubmitReq names no To, Cc or Bcc recipient",
                )
            limit = account.max_recipients if account is not None else None
            if limit is not None and count > limit:
                return m.Status.of(
                    StatusCode.OPERATION_RESTRICTED,
                    details=f"{count} recipients, this account may send to "
                    f"{limit} per request",
                )
        return None

    def _transact(
        self,
        request: Request,
        body: bytes,
        peer: str,
        account: Account | None,
        gone: list[bool],
        started: float,
    ) -> None:
        """Take a place at the gate, or answer 4006 at once if there is none."""
        code = _fault_code(account)
        busy = self.gate.enter()
        if busy is not None:
            status = m.Status.of(StatusCode.SERVICE_UNAVAILABLE, details=busy)
            self._log_transaction(
                peer, started, status, len(body), account=_name(account)
            )
            if not gone:
                echo = self._echo(request, body)
                _send(request, self._fault(request, status, echo, code))
            return
        try:
            pending = self._run(request, body, peer, account, gone, started)
        except Exception:
            self.gate.leave()
            self._internal_error(request, Failure(), self._echo(request, body), code)
            return
        except BaseException:
            self.gate.leave()
            raise
        if pending is None:
            self.gate.leave()
        else:
            pending.addBoth(lambda _: self.gate.leave())

    def _run(
        self,
        request: Request,
        body: bytes,
        peer: str,
        account: Account | None,
        gone: list[bool],
        started: float,
    ) -> defer.Deferred[None] | None:
        """Decode, check, dispatch to the processor, and answer; the Deferred
        of the answer if the processor has not answered yet."""

        code = _fault_code(account)

        def fault(status: m.Status, echo: Sniffed) -> None:
            if not gone:
                _send(request, self._fault(request, status, echo, code))

        limited = self._limit(account, body)
        if limited is not None:
            echo = self._echo(request, body)
            self._log_transaction(
                peer,
                started,
                limited,
                len(body),
                account=_name(account),
                transaction_id=echo.transaction_id,
            )
            fault(limited, echo)
            return None
        content_type = _header(request, b"content-type")

        size = len(body)

        def undecodable(status: m.Status, echo: Sniffed) -> None:
            self._log_transaction(
                peer,
                started,
                status,
                size,
                account=_name(account),
                transaction_id=echo.transaction_id,
            )
            fault(status, echo)

        if self.offload is not None and size > OFFLOAD_SIZE:
            # Tens of megabytes: read in a thread, the reactor free meanwhile.
            # What a fault would echo is read now (a bounded look), so that
            # nothing below keeps the body alive once it is decoded.
            echo = self._echo(request, body)
            decoding = self.offload(codec.decode, content_type, body, self.xml_limits)
            del body

            def decoded(envelope: m.Envelope) -> defer.Deferred[None] | None:
                return self._dispatch(
                    request, envelope, content_type, size, peer, account, gone, started
                )

            def refused(reason: Failure) -> None:
                reason.trap(MM7Error)
                undecodable(reason.value.status, echo)  # type: ignore[union-attr]

            def failed(reason: Failure) -> None:
                self._internal_error(request, reason, echo, code)

            return decoding.addCallbacks(decoded, refused).addErrback(failed)
        try:
            envelope = codec.decode(content_type, body, self.xml_limits)
        except MM7Error as e:
            undecodable(e.status, self._echo(request, body))
            return None
        return self._dispatch(
            request, envelope, content_type, size, peer, account, gone, started
        )

    def _dispatch(
        self,
        request: Request,
        envelope: m.Envelope,
        content_type: str | None,
        size: int,
        peer: str,
        account: Account | None,
        gone: list[bool],
        started: float,
    ) -> defer.Deferred[None] | None:
        """Check a decoded request, hand it to the processor, and answer;
        the Deferred of the answer if the processor has not answered yet."""
        code = _fault_code(account)

        def fault(status: m.Status, echo: Sniffed) -> None:
            if not gone:
                _send(request, self._fault(request, status, echo, code))

        message = envelope.message
        name = type(message).__name__
        self._meter(request, name)
        transaction = Transaction(
            transaction_id=envelope.transaction_id,
            path=self.path,
            namespace=envelope.namespace,
            peer=peer,
            account=account,
            # The request's own version, else the configured one.
            mm7_version=clean_version(envelope.mm7_version) or self.mm7_version,
            connection_gone=lambda: bool(gone),
            threads=self.in_thread,
        )
        # From the transaction, not the envelope: the request and its
        # content need not live until the answer.
        echo = Sniffed(
            transaction.namespace, transaction.transaction_id, transaction.mm7_version
        )

        # For the log, taken now: the closures below must not keep the
        # request alive until the answer.
        named = getattr(message, "message_id", None)
        addresses = logs.logged_addresses(message, self.log_addresses)

        def outcome(
            status: m.Status, prefix: str = "", response: m.Response | None = None
        ) -> None:
            self._count(request, status.code)
            self._log_transaction(
                peer,
                started,
                status,
                size,
                fault=bool(prefix),
                account=_name(account),
                operation=name,
                transaction_id=transaction.transaction_id,
                # A SubmitRsp's new MessageID, or the one a request names.
                message_id=getattr(response, "message_id", None) or named,
                relay_reply=transaction.outcome.relay_reply,
                answered=not gone,
                **addresses,
            )

        entry = DISPATCH.get(type(message))
        if (
            entry is None
            or entry[2] != self.role
            or not entry[0].providedBy(self.processor)
        ):
            status: m.Status | None = m.Status.of(
                StatusCode.UNSUPPORTED_OPERATION,
                details=f"{name} is not accepted on {self.path}",
            )
        else:
            status = self._check(envelope, account, content_type)
        if status is not None:
            outcome(status, "fault ")
            fault(status, echo)
            return None
        assert entry is not None
        d = defer.maybeDeferred(getattr(self.processor, entry[1]), message, transaction)

        def answered(response: m.Response) -> None:
            outcome(response.status, response=response)
            if not gone:
                if response.mm7_version in (m.DEFAULT_MM7_VERSION, self.mm7_version):
                    # Left at a default: answer in the request's version.
                    response = dataclasses.replace(
                        response, mm7_version=transaction.mm7_version
                    )
                reply = m.Envelope(
                    transaction.transaction_id, response, transaction.namespace
                )
                _, data = codec.encode(reply)
                request.setResponseCode(http.OK)
                request.setHeader(b"content-type", XML)
                _send(request, data)

        def failed(reason: Failure) -> None:
            if reason.check(MM7Error):
                status = reason.value.status  # type: ignore[union-attr]
            else:
                log.failure(
                    "Processor failed on {kind} {tid}",
                    reason,
                    kind=name,
                    tid=transaction.transaction_id,
                )
                status = m.Status.of(
                    StatusCode.GENERAL_SERVICE_ERROR, details="internal error"
                )
            outcome(status, "fault ")
            fault(status, echo)

        def unanswered(reason: Failure) -> None:
            # A bug of ours, or a response that cannot be written: a 4000
            # fault if nothing was sent yet, never a request left open.
            self._internal_error(request, reason, echo, code)

        return d.addCallbacks(answered, failed).addErrback(unanswered)

    def _fault(
        self,
        request: Request,
        status: m.Status,
        echo: Sniffed,
        code: int = http.INTERNAL_SERVER_ERROR,
    ) -> bytes:
        """A SOAP fault with ``status``, in the request's namespace, with its
        TransactionID and MM7Version as far as ``echo`` knows them."""
        self._count(request, status.code)
        version = clean_version(echo.mm7_version) or self.mm7_version
        detail: m.Response = (
            m.VASPErrorRsp(status, version)
            if self.role == "vasp"
            else m.RSErrorRsp(status, version)
        )
        namespace = echo.namespace or m.DEFAULT_NAMESPACE
        envelope = m.Envelope(echo.transaction_id or "", detail, namespace)
        _, data = codec.encode(envelope)
        request.setResponseCode(code)
        request.setHeader(b"content-type", XML)
        return data

    # Metrics: one count per request, with the status it was answered.

    def _meter(self, request: Request, operation: str) -> None:
        """The request turned out to be ``operation`` (a request type)."""
        meter = self._meters.get(request)
        if meter is not None:
            meter.operation = operation

    def _count(self, request: Request, status: int) -> None:
        """Count the request (once) as answered ``status``."""
        if self.metrics is None:
            return
        meter = self._meters.setdefault(request, _Meter(time.monotonic(), None))
        if meter.counted:
            return
        meter.counted = True
        self.metrics.transaction(
            self.path,
            meter.operation,
            status,
            time.monotonic() - meter.started,
            meter.size,
        )

    def _auth_failed(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.auth_failure(reason)


@dataclass
class _Meter:
    """What the metrics need of one request until it is counted."""

    started: float
    size: int | None
    operation: str = "unknown"
    counted: bool = False


def _fault_code(account: Account | None) -> int:
    """The HTTP status of faults once ``account`` is known: its own."""
    return account.fault_http_status if account is not None else 500


def _send(request: Request, data: bytes) -> None:
    """Write a whole answer, with its length (not chunked), and finish."""
    request.setHeader(b"content-length", b"%d" % len(data))
    request.write(data)
    request.finish()


def _header(request: Request, name: bytes) -> str | None:
    """A request header as text, its last value: bytes that are not UTF-8
    are kept as surrogates (``getHeader`` would raise on them), so a
    boundary keeps its bytes and a bad header is refused by what reads it.
    """
    values = request.requestHeaders.getRawHeaders(name)
    return values[-1].decode("utf-8", "surrogateescape") if values else None


def _raw_tail(request: Request) -> bytes:
    """The request's path after this resource's, as sent (not decoded):
    ``postpath`` is already percent-decoded, and decoding it again (as the
    credentials are) would read ``%2541`` as ``A``; a ``%2F`` in it would
    look like a separator too."""
    segments = request.path[1:].split(b"/")
    return b"/".join(segments[len(request.prepath or []) :])


def _name(account: Account | None) -> str | None:
    return account.name if account is not None else None


def _peer(request: Request) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


class Folder(Resource):
    """A resource that only holds children: any other path is Twisted's
    escaped 404 page (``Resource.getChild`` would make the deprecated
    ``NoResource``)."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return pages.notFound()


def build_root(
    resources: Mapping[str, Resource], root: Resource | None = None
) -> Resource:
    """A resource tree serving each resource at its path (``/a/b/`` or ``/a/b``).

    Pass ``root`` to mount into an existing tree; intermediate resources are
    created as needed.
    """
    root = root if root is not None else Folder()
    for path, resource in resources.items():
        segments = [s for s in path.strip("/").split("/") if s]
        if not segments:
            raise ValueError(f"cannot serve MM7 at the site root ({path!r})")
        parent = root
        for segment in segments[:-1]:
            key = segment.encode()
            child = parent.children.get(key)
            if child is None:
                child = Folder()
                parent.putChild(key, child)
            parent = child
        parent.putChild(segments[-1].encode(), resource)
    return root
