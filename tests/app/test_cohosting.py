"""mm7tx inside another application, on the memory reactor: stopping it
leaves nothing of its own behind, and touches nothing that is not its own."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.reflect import namedAny
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from mm7tx.app.cohost import mounted_service, site_for
from mm7tx.app.service import IMM7Reactor, MM7Service, build_resources, build_service
from mm7tx.config import load
from mm7tx.http.client import MM7Client
from mm7tx.http.resource import build_root
from mm7tx.mm7 import messages as m
from mm7tx.mm7.codec import encode
from mm7tx.smtp.senders import sender_for
from mm7tx.testing import (
    MemoryAgent,
    MemoryReactor,
    MemorySMTPRelay,
    get,
    post,
    result_of,
)

CONFIG = """
mm7_serv {
  mm7_server_default_email_from_domain = "from.example"
  mm7_server_default_email_to_domain = "to.example"
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_mmsc_uri_paths = ("/mm7/")
  smtp_relay = "tcp:relay.test:25"
  smtp_starttls = off
}
HTTP_Listener { Listen "tcp:8080:interface=127.0.0.1" { } }
VASP "vasp1" { password = "secret1" }
"""

DELIVER = m.DeliverReq(
    sender=m.Address("+447700900123"),
    recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
    subject="Entry",
    content=(m.ContentPart("text/plain", b"my photo", (("charset", "utf-8"),)),),
)


class Hello(Resource):
    """The other application: counts and greets."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.served = 0

    def render_GET(self, request: Any) -> bytes:
        self.served += 1
        return b"hello %d" % self.served


def owner(call: Any) -> Any:
    """The object a delayed call belongs to (a bound method's self)."""
    func = call.func
    return getattr(func, "__self__", getattr(func, "f", func))


def test_stopping_the_parent_leaves_nothing_of_mm7tx_and_spares_the_other():
    reactor = MemoryReactor()
    relay = MemorySMTPRelay(reactor)
    mm7 = build_service(load(CONFIG, "cohosted.conf"), cast(IMM7Reactor, reactor))
    hello = Hello()
    other_site = Site(hello, reactor=reactor)
    other = strports.service("tcp:8081", other_site, reactor=reactor)
    application = MultiService()
    mm7.setServiceParent(application)
    other.setServiceParent(application)
    application.startService()

    # Traffic through both: a DeliverReq mailed through the relay, on a
    # keep-alive connection, and a page of the other application on another.
    mm7_client = MM7Client(reactor, "http://127.0.0.1:8080/vasp/")
    pool = HTTPConnectionPool(reactor, persistent=True)
    browser = Agent(reactor, pool=pool)

    def browse() -> defer.Deferred[bytes]:
        answer = get(browser, "http://127.0.0.1:8081/")
        return answer.addCallback(lambda answer: answer.body)

    answer = mm7_client.deliver(DELIVER)
    page = browse()
    reactor.flush()
    assert result_of(answer).status.code == 1000
    assert result_of(page) == b"hello 1"
    assert len(relay.accepted) == 1
    # Open and idle now: an SMTP session with its idle timer, an HTTP
    # keep-alive connection to each site.
    assert len(relay.open_sessions) == 1
    assert len(mm7.site.channels) == 1
    assert reactor.connections == 3

    def the_others(call: Any) -> bool:
        """The other application's timers, and the test's own clients' (a
        pool keeps a timer for a connection the server closed until it
        would have used it again)."""
        mine = owner(call)
        return mine in (pool, mm7_client.pool) or getattr(mine, "site", None) is (
            other_site
        )

    assert [c for c in reactor.getDelayedCalls() if not the_others(c)]

    stopped = application.stopService()
    reactor.flush()  # no time needed: nothing was in flight
    result_of(stopped)

    # Nothing of mm7tx is left: no connection, no timer.
    assert relay.open_sessions == []
    assert mm7.site.channels == set()
    assert mm7.sender.connections == 0  # type: ignore[attr-defined]
    assert reactor.connections == 1  # the other application's
    assert [c for c in reactor.getDelayedCalls() if not the_others(c)] == []
    assert [key for key in reactor._listeners if key[1] in (8080, 8081)] == []
    # The other application's connection still serves until it is closed.
    page = browse()
    reactor.flush()
    assert result_of(page) == b"hello 2"
    closing = [pool.closeCachedConnections(), mm7_client.close()]
    reactor.flush()
    for d in closing:
        result_of(d)
    assert reactor.connections == 0
    assert [c for c in reactor.getDelayedCalls() if not the_others(c)] == []


# Mounted in a plain twisted.web Site --------------------------------------------

LIMITED = CONFIG.replace(
    "  smtp_starttls = off\n", "  smtp_starttls = off\n  mm7_max_request_size = 20K\n"
)


@implementer(IBodyProducer)
class Chunked:
    """A body of unknown length: the agent sends it chunked."""

    length = UNKNOWN_LENGTH

    def __init__(self, data: bytes) -> None:
        self.data = data

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def test_a_plain_site_gets_413_over_the_limit_and_a_warning_once():
    reactor = MemoryReactor()
    relay = MemorySMTPRelay(reactor)
    config = load(LIMITED, "cohosted.conf")
    sender = sender_for(reactor, config.smtp)
    resources = build_resources(config, sender, cast(IMM7Reactor, reactor))
    reactor.listenTCP(8081, Site(build_root(resources), reactor=reactor))
    agent = MemoryAgent(reactor)
    url = "http://127.0.0.1:8081/vasp/"
    ctype, small = encode(m.Envelope("t1", DELIVER))
    big = small.replace(b"my photo", b"x" * 30_000)
    headers = {"Content-Type": ctype}

    with capturedLogs() as events:
        answers = [post(agent, url, big, headers), post(agent, url, small, headers)]
        raw = agent.request(
            b"POST",
            url.encode(),
            Headers({b"content-type": [ctype.encode()]}),
            Chunked(big),
        )
        reactor.flush()
        chunked = result_of(raw)
    too_big, fine = (result_of(a) for a in answers)

    assert too_big.code == 413
    assert too_big.body == (
        b"the request of %d bytes is over the limit of 20480 bytes\n" % len(big)
    )
    assert fine.code == 200 and b"<StatusCode>1000</StatusCode>" in fine.body
    assert chunked.code == 413
    assert len(relay.accepted) == 1  # the small one alone
    warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert warnings == [
        "MM7 on /vasp/ is served by Site, not mm7tx.site.MM7Site: Twisted "
        "receives each request whole (past 100 kB into a temporary file) before "
        "mm7tx sees it, so a body over mm7_max_request_size (20480 bytes) is "
        "refused only once received, and no deadline bounds how long a request "
        "takes to arrive (mm7_request_timeout); serve the tree with MM7Site "
        "(README.md, Co-hosting)"
    ]


# A service mounted in a site of the application's ---------------------------------

OTHER = CONFIG.replace(
    'mm7_vasp_uri_paths = ("/vasp/")', 'mm7_vasp_uri_paths = ("/b/")'
)


def closes(service: MM7Service) -> list[bool]:
    """Records each call to the service's sender's close."""
    calls: list[bool] = []
    sender: Any = service.sender
    close = sender.close

    def recorded() -> Any:
        calls.append(True)
        return close()

    sender.close = recorded
    return calls


def test_a_mounted_service_serves_in_the_applications_site_and_closes_its_sender():
    reactor = MemoryReactor()
    relay = MemorySMTPRelay(reactor)
    mm7 = mounted_service(load(CONFIG, "cohosted.conf"), cast(IMM7Reactor, reactor))
    root = mm7.resource
    root.putChild(b"hello", Hello())
    application = MultiService()
    mm7.setServiceParent(application)
    site = site_for(root, mm7.config, reactor)
    strports.service("tcp:8081", site, reactor=reactor).setServiceParent(application)
    application.startService()
    # Its own listener (tcp:8080 in the file) is left out.
    assert [port for _, port in reactor._listeners if port in (8080, 8081)] == [8081]
    assert (site.request_timeout, site.timeOut) == (30, 60)

    client = MM7Client(reactor, "http://127.0.0.1:8081/vasp/")
    answer = client.deliver(DELIVER)
    page = get(MemoryAgent(reactor), "http://127.0.0.1:8081/hello")
    reactor.flush()
    assert result_of(answer).status.code == 1000
    assert result_of(page).body == b"hello 1"
    assert len(relay.accepted) == 1
    assert len(relay.open_sessions) == 1  # idle, kept for the next message

    # A reload moves the mounted paths with it.
    assert mm7.reload(load(OTHER, "other.conf"))
    moved = MM7Client(reactor, "http://127.0.0.1:8081/b/").deliver(DELIVER)
    gone = post(MemoryAgent(reactor), "http://127.0.0.1:8081/vasp/", b"")
    reactor.flush()
    assert result_of(moved).status.code == 1000
    assert result_of(gone).code == 404

    closed = closes(mm7)
    stopped = application.stopService()
    reactor.flush()  # no time passes: the sender closes its sessions at once
    result_of(stopped)
    assert closed == [True]
    assert relay.open_sessions == []
    assert mm7.sender.connections == 0  # type: ignore[attr-defined]
    closing = client.close()
    reactor.flush()
    result_of(closing)


def test_twistd_web_class_serves_the_factorys_resource_and_closes_on_shutdown(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "mm7tx.conf"
    conf.write_text(CONFIG)
    reactor = MemoryReactor()
    relay = MemorySMTPRelay(reactor)
    # What `twistd web --class=mm7tx.cohost.resource` calls (with no
    # arguments: the global reactor, os.environ), and the site it serves.
    factory = namedAny("mm7tx.cohost.resource")
    root = factory(reactor, {"MM7TX_CONFIG": str(conf)})
    reactor.listenTCP(8081, Site(root, reactor=reactor))
    reactor.run()  # the hooks twistd's reactor runs as it starts

    client = MM7Client(reactor, "http://127.0.0.1:8081/vasp/")
    answer = client.deliver(DELIVER)
    reactor.flush()
    assert result_of(answer).status.code == 1000
    assert len(relay.accepted) == 1
    assert len(relay.open_sessions) == 1

    [(stop, args, kw)] = reactor.triggers["before"]["shutdown"]
    stopping = stop(*args, **kw)
    reactor.flush()
    result_of(stopping)
    assert relay.open_sessions == []
    closing = client.close()
    reactor.flush()
    result_of(closing)


# The README's commands under the real twistd -----------------------------------------

ROOT = Path(__file__).parents[2]
MARK = "<!-- tests/app/test_cohosting.py runs these commands -->"


def readme_commands() -> list[str]:
    """The command lines of the README's Co-hosting block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(re.escape(MARK) + r"\n\n((?:    .*\n)+)", text)
    assert found, f"README.md has no indented block after {MARK}"
    return [line.strip() for line in found.group(1).splitlines()]


def test_the_readme_runs_the_tac_and_twistd_web_class():
    assert [line.split(" twistd ")[1].split()[:2] for line in readme_commands()] == [
        ["-ny", "etc/cohost.tac"],
        ["-n", "web"],
    ]
