"""Fixtures shared by the tests: a real ESMTP server on loopback."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint

from mm7tx.testing import RecordingDelivery, smtp_server_factory


@pytest.fixture
def delivery() -> RecordingDelivery:
    """What the loopback SMTP server received."""
    return RecordingDelivery()


@pytest_twisted.async_yield_fixture(params=["one-by-one", "pipelining"])
async def relay(delivery, request):
    """Twisted's ESMTP server on a free loopback port; yields its endpoint.
    Tests using it run twice: with a relay that offers PIPELINING (commands
    sent in groups) and with one that does not (one command at a time)."""
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        smtp_server_factory(delivery, pipelining=request.param == "pipelining")
    )
    yield f"tcp:127.0.0.1:{port.getHost().port}"
    await port.stopListening()
