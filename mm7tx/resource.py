"""HTTP <-> codec <-> processor: the ``twisted.web`` side of mm7tx.

:class:`MM7Resource` answers MM7 POSTs on one configured path; :func:`build_root`
puts several of them in a tree that can be served alone or mounted in any
other ``twisted.web`` site.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface.interface import InterfaceClass

from mm7tx import codec
from mm7tx import messages as m
from mm7tx.errors import MM7Error
from mm7tx.interfaces import (
    ICancelProcessor,
    IDeliverProcessor,
    IDeliveryReportProcessor,
    IReadReplyProcessor,
    IReplaceProcessor,
    ISubmitProcessor,
)
from mm7tx.status import StatusCode
from mm7tx.transaction import Transaction

log = Logger()

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


class MM7Resource(Resource):
    """Answers MM7 requests POSTed to one path with one processor.

    On a VASP path (``role="vasp"``) it takes DeliverReq, DeliveryReportReq and
    ReadReplyReq and faults with ``VASPErrorRsp``; on an MMSC path SubmitReq,
    CancelReq and ReplaceReq, faulting with ``RSErrorRsp``.  Any sub-path is
    served too (``/mm7/account=password``).
    """

    isLeaf = True

    def __init__(
        self,
        processor: object,
        path: str,
        role: Role = "vasp",
        mm7_version: str = m.DEFAULT_MM7_VERSION,
    ) -> None:
        super().__init__()
        self.processor = processor
        self.path = path
        self.role = role
        self.mm7_version = mm7_version

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None
        body = request.content.read()
        peer = _peer(request)
        try:
            envelope = codec.decode(request.getHeader("content-type"), body)
        except MM7Error as e:
            log.info(
                "Refused a request from {peer} on {path}: {code} {details}",
                peer=peer,
                path=self.path,
                code=e.status.code,
                details=e.status.details,
            )
            return self._fault(request, m.DEFAULT_NAMESPACE, "", e.status)
        message = envelope.message
        name = type(message).__name__
        transaction = Transaction(
            transaction_id=envelope.transaction_id,
            path=self.path,
            namespace=envelope.namespace,
            peer=peer,
            mm7_version=self.mm7_version,
        )
        entry = DISPATCH.get(type(message))
        if (
            entry is None
            or entry[2] != self.role
            or not entry[0].providedBy(self.processor)
        ):
            status = m.Status.of(
                StatusCode.UNSUPPORTED_OPERATION,
                details=f"{name} is not accepted on {self.path}",
            )
            return self._fault(
                request, envelope.namespace, envelope.transaction_id, status
            )
        method = getattr(self.processor, entry[1])
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = defer.maybeDeferred(method, message, transaction)

        def answered(response: m.Response) -> None:
            log.info(
                "{kind} {tid} from {peer} on {path}: {code} {text}",
                kind=name,
                tid=transaction.transaction_id,
                peer=peer,
                path=self.path,
                code=response.status.code,
                text=response.status.details or response.status.text,
            )
            if not gone:
                reply = m.Envelope(
                    envelope.transaction_id, response, envelope.namespace
                )
                _, data = codec.encode(reply)
                _write(request, http.OK, data)

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
            log.info(
                "{kind} {tid} from {peer} on {path}: fault {code} {details}",
                kind=name,
                tid=transaction.transaction_id,
                peer=peer,
                path=self.path,
                code=status.code,
                details=status.details or status.text,
            )
            if not gone:
                data = self._fault(
                    request, envelope.namespace, envelope.transaction_id, status
                )
                request.write(data)
                request.finish()

        d.addCallbacks(answered, failed).addErrback(
            lambda f: log.failure("Answering failed", f)
        )
        return NOT_DONE_YET

    def _fault(
        self, request: Request, namespace: str, transaction_id: str, status: m.Status
    ) -> bytes:
        detail: m.Response = (
            m.VASPErrorRsp(status, self.mm7_version)
            if self.role == "vasp"
            else m.RSErrorRsp(status, self.mm7_version)
        )
        _, data = codec.encode(m.Envelope(transaction_id, detail, namespace))
        request.setResponseCode(http.INTERNAL_SERVER_ERROR)
        request.setHeader(b"content-type", XML)
        return data


def _write(request: Request, code: int, data: bytes) -> None:
    request.setResponseCode(code)
    request.setHeader(b"content-type", XML)
    request.write(data)
    request.finish()


def _peer(request: Request) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


def build_root(
    resources: Mapping[str, Resource], root: Resource | None = None
) -> Resource:
    """A resource tree serving each resource at its path (``/a/b/`` or ``/a/b``).

    Pass ``root`` to mount into an existing tree; intermediate resources are
    created as needed.
    """
    root = root if root is not None else Resource()
    for path, resource in resources.items():
        segments = [s for s in path.strip("/").split("/") if s]
        if not segments:
            raise ValueError(f"cannot serve MM7 at the site root ({path!r})")
        parent = root
        for segment in segments[:-1]:
            key = segment.encode()
            child = parent.children.get(key)
            if child is None:
                child = Resource()
                parent.putChild(key, child)
            parent = child
        parent.putChild(segments[-1].encode(), resource)
    return root
