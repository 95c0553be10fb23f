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
from typing import TYPE_CHECKING, Any, Literal

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
from mm7tx.http.exchange import Exchange
from mm7tx.http.limits import LoginThrottle, RateLimiter, TransactionGate
from mm7tx.http.once import Answer, ExactlyOnce, Ticket, replayed_status, request_key
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
from mm7tx.mm7.codec.sniff import clean_version
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
INTERNAL_ERROR = m.Status.of(StatusCode.GENERAL_SERVICE_ERROR, details="internal error")
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

    With ``once`` (:mod:`mm7tx.http.once`), a request with a TransactionID
    is run exactly once across its retries: a retry of a transaction
    answered with a success gets the same answer, without running the
    processor again; one arriving while it is in flight waits for it (up
    to ``lease`` seconds, the transaction's own bound).
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
        once: ExactlyOnce | None = None,
        lease: float = 30.0,
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
        self.once = once
        self.lease = lease
        self._warned = False  # of being served by a plain Site

    def render(self, request: Request) -> bytes | int:
        """The methods in ``allowedMethods`` (POST), else 405 with ``Allow``
        and a line of text: Twisted's own 405 is an HTML page."""
        if request.method not in self.allowedMethods:
            text = NOT_ALLOWED
            request.setResponseCode(http.NOT_ALLOWED)
            request.setHeader(b"allow", b", ".join(self.allowedMethods))
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.setHeader(b"content-length", b"%d" % len(text))
            # HEAD: the headers of the answer a GET gets, without its body
            # (Twisted would log a warning for a body, and drop it).
            return b"" if request.method == b"HEAD" else text
        return self.render_POST(request)

    def render_POST(self, request: Request) -> bytes | int:
        """Take the body and start the exchange that answers it."""
        if not isinstance(getattr(request, "site", None), MM7Site):
            refused = self._plain_site(request)
            if refused is not None:
                return refused
        body = b""
        if request.content is not None:
            body = request.content.read()
            request.content.truncate(0)  # the body lives on in the exchange
        exchange = Exchange(request, body, _peer(request))
        self._settle(defer.maybeDeferred(self._start, exchange), exchange)
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

    # The stages of an exchange.  Each returns, or raises an MM7Error that
    # _failed turns into the answer; a Deferred stage fails the same way.

    def _start(self, exchange: Exchange) -> defer.Deferred[None]:
        """Check the request's framing, authenticate it, and take it in."""
        request = exchange.request
        exchange.peer = client_address(
            exchange.peer,
            request.requestHeaders.getRawHeaders(b"x-forwarded-for"),
            self.trusted_proxies,
        )
        if self.role == "mmsc" and request.getHeader("content-length") is None:
            status = m.Status.of(
                StatusCode.VALIDATION_ERROR, details="the POST has no Content-Length"
            )
            raise _Refused(status, http_status=http.LENGTH_REQUIRED)
        exchange.metered_size = exchange.size
        login = defer.maybeDeferred(self._login, exchange)
        return login.addCallback(lambda _: self._in_gate(exchange))

    def _login(self, exchange: Exchange) -> defer.Deferred[None] | None:
        """With a ``portal``: the exchange's account, or a refusal (401)."""
        if self.portal is None:
            return None
        peer = exchange.peer
        # An MMSC uses Basic or its address, not the URI.
        tail = _raw_tail(exchange.request) if self.role == "mmsc" else b""
        creds = credentials_from(tail, exchange.header(b"authorization"), peer)
        locked = self.throttle.locked(peer) if self.throttle is not None else 0
        if locked:
            self._auth_failed("locked_out")
            why = f"too many failed logins, locked out for {locked:.0f} s"
            raise _unauthorized(why, shown=why, retry_after=max(1, round(locked)))
        if creds is None:
            login: defer.Deferred[Any] = defer.fail(UnauthorizedLogin("bad header"))
        else:
            avatar = IVASPAccount if self.role == "mmsc" else IMMSCAccount
            login = self.portal.login(creds, None, avatar)

        def authenticated(result: tuple[Any, Any, Any]) -> None:
            account: Account = result[1].account
            exchange.account = account
            if not account.allows(peer):
                self._auth_failed("network")
                raise _unauthorized("not from an allowed network")

        def refused(reason: Failure) -> None:
            reason.trap(UnauthorizedLogin)
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
            kind = "VASP" if self.role == "mmsc" else "MMSC"
            raise _unauthorized(f"no valid {kind} credentials")

        return login.addCallbacks(authenticated, refused)

    def _in_gate(self, exchange: Exchange) -> defer.Deferred[None]:
        """Take a place at the gate (4006 at once if there is none), and
        keep it until the exchange is answered."""
        busy = self.gate.enter()
        if busy is not None:
            status = m.Status.of(StatusCode.SERVICE_UNAVAILABLE, details=busy)
            raise _Refused(status, echo_logged=False)
        decoded = defer.maybeDeferred(self._decode, exchange)
        answering = decoded.addCallback(self._dispatch, exchange)
        self._settle(answering, exchange)
        return answering.addBoth(lambda _: self.gate.leave())

    def _decode(self, exchange: Exchange) -> defer.Deferred[m.Envelope]:
        """The account's limits, then the request decoded."""
        limited = self._limit(exchange)
        if limited is not None:
            raise _Refused(limited)
        content_type = exchange.header(b"content-type")
        if self.offload is not None and exchange.size > OFFLOAD_SIZE:
            # Tens of megabytes: read in a thread, the reactor free meanwhile;
            # the exchange no longer holds the body.
            body = exchange.take_body()
            return self.offload(codec.decode, content_type, body, self.xml_limits)
        return defer.succeed(codec.decode(content_type, exchange.body, self.xml_limits))

    def _limit(self, exchange: Exchange) -> m.Status | None:
        """The fault status for an account over one of its limits, if any."""
        account = exchange.account
        if account is None:
            return None
        size = exchange.size
        if account.max_message_size is not None and size > account.max_message_size:
            return m.Status.of(
                StatusCode.MULTIMEDIA_CONTENT_REFUSED,
                details=f"the request of {size} bytes is over this account's "
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

    def _dispatch(
        self, envelope: m.Envelope, exchange: Exchange
    ) -> defer.Deferred[None]:
        """The one place a decoded request becomes its answer: checked,
        handed to the processor, and its response (or fault) sent."""
        message = envelope.message
        key = request_key(envelope, exchange.account_name, self.path, exchange.peer)
        transaction = Transaction(
            transaction_id=envelope.transaction_id,
            path=self.path,
            namespace=envelope.namespace,
            peer=exchange.peer,
            account=exchange.account,
            # The request's own version, else the configured one.
            mm7_version=clean_version(envelope.mm7_version) or self.mm7_version,
            key=key,
            connection_gone=lambda: exchange.gone,
            threads=self.in_thread,
        )
        exchange.decoded(
            transaction, message, logs.logged_addresses(message, self.log_addresses)
        )
        entry = DISPATCH.get(type(message))
        if (
            entry is None
            or entry[2] != self.role
            or not entry[0].providedBy(self.processor)
        ):
            raise MM7Error(
                StatusCode.UNSUPPORTED_OPERATION,
                details=f"{exchange.operation} is not accepted on {self.path}",
            )
        status = self._check(envelope, exchange)
        if status is not None:
            raise _Refused(status)
        process = getattr(self.processor, entry[1])
        if self.once is None or key is None:
            return self._process(process, message, exchange, None)
        # The answer already given to this transaction, if any; else the
        # processor's, kept for its retries (a success) or not (a fault).
        op = exchange.operation or "unknown"
        claiming = defer.ensureDeferred(self.once.claim(key, self.lease, op))
        return claiming.addCallback(self._claimed, process, message, exchange)

    def _claimed(
        self, claimed: Answer | Ticket | None, process: Any, message: Any, ex: Exchange
    ) -> defer.Deferred[None] | None:
        if not isinstance(claimed, Answer):
            return self._process(process, message, ex, claimed)
        self._replay(claimed, ex)
        return None

    def _process(
        self,
        process: Any,
        message: m.Request,
        exchange: Exchange,
        ticket: Ticket | None,
    ) -> defer.Deferred[None]:
        """Hand ``message`` to the processor and answer with its response
        or fault; with a ``ticket``, a success is kept (before it is sent:
        a retry then gets it, whatever becomes of this answer) and a fault
        released."""
        assert exchange.transaction is not None
        d = defer.maybeDeferred(process, message, exchange.transaction)
        d.addErrback(self._processor_failed, exchange)

        def responded(response: m.Response) -> defer.Deferred[None] | None:
            if ticket is None:
                self._respond(response, exchange)
                return None
            kept = ticket.settle_as(response, lambda: self._encode(response, exchange))
            return kept.addCallback(lambda xml: self._respond(response, exchange, xml))

        def failed(reason: Failure) -> None:
            if ticket is not None:
                ticket.release()
            self._failed(reason, exchange)

        d.addCallbacks(responded, failed)
        # A response that cannot be written is a bug of ours.
        return d.addErrback(self._internal_error, exchange)

    def _replay(self, answer: Answer, exchange: Exchange) -> None:
        """A retry: the answer already given, as it was sent, logged and
        counted as a transaction ``deduplicated``."""
        status = replayed_status(answer)
        self._count(exchange, status.code)
        exchange.message_id = answer.metadata.get("message_id") or exchange.message_id
        self._log(exchange, status, fault=False, deduplicated=True)
        if exchange.gone:
            return
        exchange.request.setResponseCode(http.OK)
        exchange.request.setHeader(b"content-type", XML)
        exchange.send(answer.body)

    def _check(self, envelope: m.Envelope, exchange: Exchange) -> m.Status | None:
        """MMSC-side rules for a decoded request."""
        message = envelope.message
        if not isinstance(message, (m.SubmitReq, m.ReplaceReq)):
            return None
        content_type = exchange.header(b"content-type")
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
            account = exchange.account
            limit = account.max_recipients if account is not None else None
            if limit is not None and count > limit:
                return m.Status.of(
                    StatusCode.OPERATION_RESTRICTED,
                    details=f"{count} recipients, this account may send to "
                    f"{limit} per request",
                )
        return None

    def _processor_failed(self, reason: Failure, exchange: Exchange) -> Failure:
        """A processor's MM7Error as it is; anything else, logged, is a 4000."""
        if reason.check(MM7Error):
            return reason
        assert exchange.transaction is not None
        log.failure(
            "Processor failed on {kind} {tid}",
            reason,
            kind=exchange.operation,
            tid=exchange.transaction.transaction_id,
        )
        return Failure(_Refused(INTERNAL_ERROR))

    def _respond(
        self, response: m.Response, exchange: Exchange, data: bytes | None = None
    ) -> None:
        """The processor's response: logged, and sent (``data``, if it is
        encoded already)."""
        self._count(exchange, response.status.code)
        self._log(exchange, response.status, fault=False, response=response)
        if exchange.gone or exchange.transaction is None:
            return
        if data is None:
            data = self._encode(response, exchange)
        exchange.request.setResponseCode(http.OK)
        exchange.request.setHeader(b"content-type", XML)
        exchange.send(data)

    def _encode(self, response: m.Response, exchange: Exchange) -> bytes:
        """``response`` encoded in the request's namespace and version."""
        transaction = exchange.transaction
        assert transaction is not None
        if response.mm7_version in (m.DEFAULT_MM7_VERSION, self.mm7_version):
            # Left at a default: answer in the request's version.
            response = dataclasses.replace(
                response, mm7_version=transaction.mm7_version
            )
        reply = m.Envelope(transaction.transaction_id, response, transaction.namespace)
        _, data = codec.encode(reply)
        return data

    # Errors: the one place each kind becomes the answer.

    def _settle(self, d: defer.Deferred[Any], exchange: Exchange) -> None:
        """Answer whatever error ``d`` ends with."""
        d.addErrback(self._failed, exchange).addErrback(self._internal_error, exchange)

    def _failed(self, reason: Failure, exchange: Exchange) -> None:
        """An MM7Error from any stage (a refusal of ours, the codec's, the
        processor's) becomes the transaction's log event and the SOAP fault
        that echoes what is known of the request; anything else is a bug."""
        error = reason.value
        if not isinstance(error, MM7Error):
            self._internal_error(reason, exchange)
            return
        refused = error if isinstance(error, _Refused) else _Refused(error.status)
        if exchange.transaction is not None:
            self._count(exchange, refused.status.code)
        self._log(exchange, refused.status, echoed=refused.echo_logged)
        if exchange.gone:
            return
        for name, value in refused.headers:
            exchange.request.setHeader(name, value)
        code = refused.http_status or exchange.fault_code
        exchange.send(self._fault(exchange, refused.shown, code))

    def _internal_error(self, reason: Failure, exchange: Exchange) -> None:
        """A 4000 fault for a bug of ours (logged), if nothing was sent yet."""
        log.failure("Answering failed on {path}", reason, path=self.path)
        if exchange.can_answer():
            exchange.send(self._fault(exchange, INTERNAL_ERROR, exchange.fault_code))

    def _fault(self, exchange: Exchange, status: m.Status, code: int) -> bytes:
        """A SOAP fault with ``status``, in the request's namespace, with its
        TransactionID and MM7Version as far as the exchange's echo knows
        them."""
        self._count(exchange, status.code)
        echo = exchange.echo
        version = clean_version(echo.mm7_version) or self.mm7_version
        detail: m.Response = (
            m.VASPErrorRsp(status, version)
            if self.role == "vasp"
            else m.RSErrorRsp(status, version)
        )
        namespace = echo.namespace or m.DEFAULT_NAMESPACE
        envelope = m.Envelope(echo.transaction_id or "", detail, namespace)
        _, data = codec.encode(envelope)
        exchange.request.setResponseCode(code)
        exchange.request.setHeader(b"content-type", XML)
        return data

    # What is seen of an exchange: one log event, one count.

    def _log(
        self,
        exchange: Exchange,
        status: m.Status,
        fault: bool = True,
        echoed: bool = True,
        response: m.Response | None = None,
        deduplicated: bool = False,
    ) -> None:
        """The one log event of a transaction (:mod:`mm7tx.logs`); once the
        request is decoded, with what it is."""
        fields: dict[str, Any] = {}
        transaction = exchange.transaction
        if transaction is not None:
            fields = dict(
                operation=exchange.operation,
                # A SubmitRsp's new MessageID, or the one a request names.
                message_id=getattr(response, "message_id", None) or exchange.message_id,
                relay_reply=transaction.outcome.relay_reply,
                returned=logs.returned_note(
                    transaction.outcome.returned, self.log_addresses
                ),
                answered=not exchange.gone,
                **exchange.addresses,
            )
        logs.log_transaction(
            log,
            path=self.path,
            peer=exchange.peer,
            status=status.code,
            status_text=status.details or status.text,
            ms=1000 * (time.monotonic() - exchange.started),
            request_bytes=exchange.size,
            fault=fault,
            account=exchange.account_name,
            transaction_id=exchange.echo.transaction_id if echoed else None,
            deduplicated=deduplicated,
            **fields,
        )

    def _count(self, exchange: Exchange, status: int) -> None:
        """Count the request (once) as answered ``status``."""
        if self.metrics is None or exchange.counted:
            return
        exchange.counted = True
        self.metrics.transaction(
            self.path,
            exchange.operation or "unknown",
            status,
            time.monotonic() - exchange.started,
            exchange.metered_size,
        )

    def _auth_failed(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.auth_failure(reason)


class _Refused(MM7Error):
    """An MM7Error with what its answer needs beyond the status: the HTTP
    status (else the account's), headers, the status the fault ``shown``
    when it tells the peer less than the log event, and whether the log
    event names the TransactionID the fault echoes."""

    def __init__(
        self,
        status: m.Status,
        http_status: int | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        shown: m.Status | None = None,
        echo_logged: bool = True,
    ) -> None:
        super().__init__(status.code, status.text, status.details)
        self.status = status
        self.http_status = http_status
        self.headers = headers
        self.shown = shown if shown is not None else status
        self.echo_logged = echo_logged


def _unauthorized(
    why: str, shown: str | None = None, retry_after: int | None = None
) -> _Refused:
    """A refused login: 401, logged with ``why``, the fault showing only
    ``shown`` (the reason for a lockout, not which credentials failed)."""
    headers: tuple[tuple[bytes, bytes], ...]
    headers = ((b"www-authenticate", b'Basic realm="mm7tx"'),)
    if retry_after is not None:
        headers = ((b"retry-after", b"%d" % retry_after), *headers)
    return _Refused(
        m.Status.of(StatusCode.IMPROPER_IDENTIFICATION, details=why),
        http_status=http.UNAUTHORIZED,
        headers=headers,
        shown=m.Status.of(StatusCode.IMPROPER_IDENTIFICATION, details=shown),
    )


def _raw_tail(request: Request) -> bytes:
    """The request's path after this resource's, as sent (not decoded):
    ``postpath`` is already percent-decoded, and decoding it again (as the
    credentials are) would read ``%2541`` as ``A``; a ``%2F`` in it would
    look like a separator too."""
    segments = request.path[1:].split(b"/")
    return b"/".join(segments[len(request.prepath or []) :])


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
