"""Metrics and health on real ports (in memory: tests/app/test_metrics.py)."""

from __future__ import annotations

import gc
import socket

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.web.client import Agent

from mm7tx.app.service import build_service
from mm7tx.config import load
from mm7tx.testing import (
    get,
)
from tests.app.test_metrics import CONFIG, samples, value


# Twisted before 26.10 (our floor, 26.4, included) leaves the socket of a failed
# bind open (tcp.Port.startListening); the garbage collector closes it with a
# ResourceWarning. The test collects it itself, under this ignore, so that it
# does not fail whichever test the collector happens to run in next.
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
@pytest_twisted.ensureDeferred
async def test_on_real_ports_a_taken_metrics_port_leaves_mm7_serving(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        metrics_port = taken.getsockname()[1]
        http_port = await _free_port()
        config = load(
            f'HTTP_Listener {{ Listen "tcp:{http_port}:interface=127.0.0.1" {{ }} }}\n'
            + CONFIG.replace(
                "}",
                f'metrics_listen = "tcp:{metrics_port}:interface=127.0.0.1"\n'
                f'smtp_relay = "maildir:{tmp_path / "Maildir"}"\n}}',
                1,
            )
        )
        from mm7tx.app import tap

        wrapper = tap._ListeningService(config)  # twistd's: MM7 ports are fatal
        build_service(config, reactor).setServiceParent(wrapper)  # type: ignore[arg-type]
        with capturedLogs() as events:
            wrapper.privilegedStartService()
            wrapper.startService()
        assert any(
            e["log_level"] == LogLevel.error and "metrics_listen" in formatEvent(e)
            for e in events
        )
        del events  # the failure logged holds the socket, in its traceback
        gc.collect()
        try:
            code, _ = await _get(f"http://127.0.0.1:{http_port}/vasp/")
            assert code == 405  # MM7 answers (POST only)
        finally:
            await wrapper.stopService()
    finally:
        taken.close()


@pytest_twisted.ensureDeferred
async def test_on_real_ports_metrics_and_readyz(relay, tmp_path):
    http_port, metrics_port = await _free_port(), await _free_port()
    config = load(
        f'HTTP_Listener {{ Listen "tcp:{http_port}:interface=127.0.0.1" {{ }} }}\n'
        + CONFIG.replace(
            "}",
            f'metrics_listen = "tcp:{metrics_port}:interface=127.0.0.1"\n'
            f'smtp_relay = "{relay}"\n}}',
            1,
        )
    )
    service = build_service(config, reactor)  # type: ignore[arg-type]
    service.startService()
    try:
        base = f"http://127.0.0.1:{metrics_port}"
        # A check of our own (the service's may still be on its way): a real
        # EHLO and QUIT to the loopback relay.
        await service.sender.check()  # type: ignore[attr-defined]
        code, body = await _get(base + "/readyz")
        assert (code, body) == (200, b"ready\n")
        code, body = await _get(base + "/metrics")
        assert code == 200
        found = samples(body.decode())
        assert value(found, "mm7tx_in_flight") == 0
    finally:
        await service.stopService()


async def _free_port() -> int:
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(protocol.Protocol)
    )
    number = int(port.getHost().port)
    await port.stopListening()
    return number


async def _get(url: str) -> tuple[int, bytes]:
    # mm7tx.testing.get, not readBody: see tests/system/test_end_to_end.py's post.
    answer = await get(Agent(reactor), url).addTimeout(10, reactor)
    return answer.code, answer.body
