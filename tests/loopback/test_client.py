"""The MM7 client over real HTTPS with a CA file, and the installed ``mm7tx``
script run as a process (in memory: tests/http/test_client.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.server import Site

from mm7tx import cli
from mm7tx.http.client import (
    MM7Client,
    Unreachable,
)
from mm7tx.http.resource import MM7Resource, build_root
from tests.certs import make_certificate, server_options
from tests.http.test_client import SUBMIT, Recorder

MM7TX = str(Path(sys.executable).parent / "mm7tx")


@pytest_twisted.ensureDeferred
async def test_https_with_a_ca_file(tmp_path, capsys):
    cert, key = make_certificate(tmp_path)
    options = server_options(cert, key)
    mmsc = Recorder()
    site = Site(build_root({"/mm7/": MM7Resource(mmsc, "/mm7/", "mmsc")}))
    port = await SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1").listen(
        site
    )
    url = f"https://localhost:{port.getHost().port}/mm7/"
    trusting = MM7Client(reactor, url, ca_file=str(cert), timeout=20)
    doubting = MM7Client(reactor, url, timeout=20)
    try:
        response = await trusting.submit(SUBMIT)
        assert response.message_id == "MID-1"
        with pytest.raises(Unreachable) as caught:
            await doubting.submit(SUBMIT)
        assert str(caught.value).startswith(f"TLS with {url} failed: ")
        assert len(mmsc.requests) == 1
        # The command's own agent, on the real reactor, trusting the CA file.
        args = cli.parser().parse_args(
            ["submit", url, "--to", "1", "--text", "x", "--ca-file", str(cert)]
        )
        code = await defer.ensureDeferred(cli.run(reactor, args)).addTimeout(
            30, reactor
        )
        assert (code, capsys.readouterr().out) == (
            0,
            "1000 Success\nMessageID: MID-2\n",
        )
    finally:
        await trusting.close()
        await doubting.close()
        await port.stopListening()


# The installed script ---------------------------------------------------------


async def run_script(*args: str) -> tuple[str, str, int]:
    out, err, code = await getProcessOutputAndValue(
        MM7TX, args, env={}, reactor=reactor
    ).addTimeout(30, reactor)
    return out.decode(), err.decode(), code


@pytest_twisted.ensureDeferred
async def test_the_installed_command_helps_and_refuses_usage_errors():
    (out, _, helped), (_, err, refused) = await defer.gatherResults(
        [
            defer.ensureDeferred(run_script("--help")),
            defer.ensureDeferred(run_script("submit", "--to", "1")),
        ]
    )
    assert helped == 0
    for name in ("submit", "deliver", "delivery-report", "read-reply", "hash-password"):
        assert name in out
    assert refused == 2
    assert err.startswith("usage: mm7tx submit")
    assert "the following arguments are required: URL" in err
