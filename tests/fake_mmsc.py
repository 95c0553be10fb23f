"""A fake upstream MMSC for the loopback tests of mail to MMS: a real
Twisted HTTP server that reads each SubmitReq with mm7tx's codec and
answers with the MM7 statuses it is given, in turn (a 4xxx or 2xxx as a
SOAP fault with HTTP 500, as MMSCs do; 1000 as a SubmitRsp with a
MessageID)."""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import Site

from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m


class FakeMMSC(Resource):
    isLeaf = True

    def __init__(self, statuses: list[int]) -> None:
        super().__init__()
        self.statuses = list(statuses)
        # Each SubmitReq read, with the status it was answered.
        self.received: list[tuple[m.SubmitReq, int]] = []

    def render_POST(self, request: Any) -> bytes:
        body = request.content.read()
        envelope = codec.decode(
            request.getHeader(b"content-type").decode("latin-1"), body
        )
        submit = envelope.message
        assert isinstance(submit, m.SubmitReq), submit
        code = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        self.received.append((submit, code))
        if code in (1000, 1100):
            answer: Any = m.SubmitRsp(
                m.Status(code, "Success"), message_id=f"fake-{len(self.received)}"
            )
        else:
            answer = m.RSErrorRsp(m.Status(code, "Service unavailable"))
            request.setResponseCode(500)
        ctype, out = codec.encode(
            m.Envelope(envelope.transaction_id, answer, envelope.namespace)
        )
        request.setHeader(b"content-type", ctype.encode())
        return out


async def listen_fake_mmsc(reactor: Any, statuses: list[int]) -> tuple[FakeMMSC, Any]:
    """A :class:`FakeMMSC` listening on a free loopback port: it and the port."""
    mmsc = FakeMMSC(statuses)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Site(mmsc)
    )
    return mmsc, port
