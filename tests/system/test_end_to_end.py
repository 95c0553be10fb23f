"""End to end: the relay being down, in memory; and the helpers of
tests/loopback/test_end_to_end.py, which runs the real service on loopback
(real HTTP in, a real ESMTP server out).  Every wait is bounded by a Deferred
timeout; nothing sleeps."""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.client import Agent

from mm7tx.app.service import build_service
from mm7tx.config import load, with_overrides
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.testing import MemoryGateway
from mm7tx.testing import post as http_post
from tests import samples

# The seed's Example 7.1, plus plain SMTP to the loopback relay.
CONFIG = samples.EXAMPLE_7_1.replace("}", "  smtp_starttls = off\n}")


async def free_port() -> int:
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(protocol.Protocol)
    )
    number = int(port.getHost().port)
    await port.stopListening()
    return number


async def start(
    relay_endpoint: str, config_text: str = CONFIG
) -> tuple[MultiService, str]:
    http_port = await free_port()
    config = with_overrides(
        load(config_text, "e2e.conf"),
        [f"tcp:{http_port}:interface=127.0.0.1"],
        relay_endpoint,
    )
    service = build_service(config, reactor)  # type: ignore[arg-type]
    application = MultiService()  # the service joins any other application
    service.setServiceParent(application)
    application.startService()
    return application, f"http://127.0.0.1:{http_port}"


async def post(url: str, ctype: str, body: bytes) -> tuple[int, m.Envelope]:
    # mm7tx.testing reads the body as the MM7 client does: unlike readBody
    # on an Agent's response, without a DeprecationWarning (Twisted #8227).
    answer = await http_post(
        Agent(reactor), url, body, {"Content-Type": ctype}
    ).addTimeout(20, reactor)
    return answer.code, codec.decode(answer.headers["content-type"], answer.body)


def test_relay_down_gives_4006_and_no_success():
    gateway = MemoryGateway(CONFIG)
    gateway.relay.stop()
    ctype, body = samples.body_sample("instantcom-mm7/deliver-req2.txt")
    answer = gateway.post("/email_gateway/", body, {"Content-Type": ctype})
    assert answer.code == 500
    envelope = codec.decode(answer.headers["content-type"], answer.body)
    assert isinstance(envelope.message, m.VASPErrorRsp)
    assert envelope.message.status.code == 4006
    assert envelope.transaction_id == "vas00324-dlvr"
    assert gateway.relay.received == []
    # Up again, the same request goes through.
    gateway.relay.start()
    answer = gateway.post("/email_gateway/", body, {"Content-Type": ctype})
    assert answer.code == 200
    assert len(gateway.relay.accepted) == 1
