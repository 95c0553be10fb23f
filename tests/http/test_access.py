"""Who may post where: MMSC accounts on VASP paths, bounds on password
guessing, always_allow / always_deny on listeners, trusted proxies."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.protocols.haproxy import proxyEndpoint
from zope.interface import implementer

from mm7tx.config import ConfigError, check_listen, load, with_overrides
from mm7tx.http import auth
from mm7tx.http.auth import (
    Account,
    AccountRealm,
    ListenAccess,
    ListenerGuard,
    PasswordChecker,
    client_address,
    hash_password,
    network,
)
from mm7tx.http.resource import MM7Resource, build_root
from mm7tx.interfaces import IIPAddress
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.testing import MemoryGateway, http_post, result_of

SERV = """
mm7_serv {
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_server_default_email_from_address = "f@example.com"
  mm7_server_default_email_to_address = "t@example.com"
  smtp_starttls = off
}
"""
LOCAL = 'HTTP_Listener { Listen "tcp:8080:interface=127.0.0.1" { } }\n'
HASH = hash_password("mmsc-pw")
MMSCS = f"""{LOCAL}{SERV}
MMSC "mmsc1" {{ password = "mmsc-pw" }}
MMSC "hashed" {{ password = "{HASH}" }}
MMSC "fenced" {{ password = "f" allowed_networks = ("10.1.0.0/16") }}
MMSC "192.0.2.0/24" {{ }}
VASP "vasp1" {{ password = "secret1" }}
"""

DELIVER = m.DeliverReq(
    sender=m.Address("+447700900123"),
    recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
    content=(m.ContentPart("text/plain", b"hi", (("charset", "utf-8"),)),),
)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def deliver(
    gateway: MemoryGateway,
    headers: dict[str, str] | None = None,
    peer: str = "127.0.0.1",
    path: str = "/vasp/",
) -> tuple[int, Any]:
    ctype, body = codec.encode(m.Envelope("tx-1", DELIVER))
    answer = gateway.post(
        path, body, {"Content-Type": ctype, **(headers or {})}, peer=peer
    )
    env = codec.decode(answer.headers.get("content-type"), answer.body)
    return answer.code, env.message


# MMSC accounts on VASP paths ------------------------------------------------


def test_mmsc_accounts_load_in_momentums_grammar():
    config = load(MMSCS)
    mmsc1, _, fenced, net = config.mmscs
    assert mmsc1 == Account("mmsc1", "mmsc-pw")
    assert fenced.allows("10.1.2.3") and not fenced.allows("10.2.0.1")
    assert net.ip_network == network("192.0.2.0/24")
    assert [v.name for v in config.vasps] == ["vasp1"]  # kept apart


@pytest.mark.parametrize(
    "text, line, words",
    [
        (f'{SERV}\nMMSC "m" {{ }}', 9, 'MMSC "m" needs a password'),
        (f'{SERV}\nMMSC {{ password = "p" }}', 9, "MMSC needs a name"),
        (f'{SERV}\nMMSC "m" {{ rate = 2 }}', 9, "unknown MMSC option 'rate'"),
        (
            f'{SERV}\nMMSC "m" {{ password = "p" }}\nMMSC "m" {{ password = "q" }}',
            10,
            'MMSC "m" is defined twice',
        ),
        (
            f'{SERV}\nMMSC "m" {{ password = "p" allowed_networks = ("x") }}',
            9,
            "'x' is not an IP address or range",
        ),
    ],
)
def test_a_bad_mmsc_account_is_refused_at_its_line(text, line, words):
    with pytest.raises(ConfigError) as caught:
        load(text, "f.conf")
    assert caught.value.line == line and words in str(caught.value)


def test_without_mmsc_accounts_vasp_paths_are_open():
    gateway = MemoryGateway(LOCAL + SERV)
    code, message = deliver(gateway, peer="203.0.113.9")
    assert code == 200 and message.status.code == 1000
    # Credentials an MMSC sends anyway are ignored.
    code, _ = deliver(gateway, basic("who", "ever"), peer="203.0.113.9")
    assert code == 200


@pytest.mark.parametrize(
    "headers, peer",
    [
        (basic("mmsc1", "mmsc-pw"), "203.0.113.5"),
        (basic("hashed", "mmsc-pw"), "203.0.113.5"),
        (basic("fenced", "f"), "10.1.2.3"),
        ({}, "192.0.2.77"),  # an MMSC account named by a range
    ],
)
def test_an_mmsc_account_may_post_on_vasp_paths(headers, peer):
    gateway = MemoryGateway(MMSCS)
    code, message = deliver(gateway, headers, peer)
    assert code == 200 and isinstance(message, m.DeliverRsp)
    assert message.status.code == 1000
    assert len(gateway.relay.accepted) == 1


@pytest.mark.parametrize(
    "headers, peer, path",
    [
        ({}, "203.0.113.5", "/vasp/"),  # no credentials, unknown address
        ({}, "127.0.0.1", "/vasp/"),  # not even loopback
        (basic("mmsc1", "wrong"), "203.0.113.5", "/vasp/"),
        (basic("hashed", "wrong"), "203.0.113.5", "/vasp/"),
        (basic("nobody", "mmsc-pw"), "203.0.113.5", "/vasp/"),
        (basic("mmsc1", "wrong"), "192.0.2.10", "/vasp/"),  # wrong, from an IP account
        (basic("fenced", "f"), "10.2.0.1", "/vasp/"),  # outside allowed_networks
        (basic("vasp1", "secret1"), "203.0.113.5", "/vasp/"),  # a VASP account
        ({}, "203.0.113.5", "/vasp/mmsc1=mmsc-pw"),  # no URI credentials here
        ({"Authorization": "Bearer x"}, "192.0.2.10", "/vasp/"),
    ],
)
def test_once_an_mmsc_account_exists_vasp_paths_require_one(headers, peer, path):
    gateway = MemoryGateway(MMSCS)
    code, message = deliver(gateway, headers, peer, path)
    assert code == 401
    assert isinstance(message, m.VASPErrorRsp) and message.status.code == 4001
    assert gateway.relay.received == []


def test_mmsc_paths_still_take_vasp_accounts_only():
    gateway = MemoryGateway(MMSCS)
    client = gateway.client("/mm7/", ("mmsc1", "mmsc-pw"))
    sent = client.submit(
        m.SubmitReq(
            sender_address=m.Address("12345", "ShortCode"),
            recipients=m.Recipients(to=(m.Address("+15551234567"),)),
            content=(m.ContentPart("text/plain", b"x"),),
        )
    )
    with pytest.raises(Exception) as caught:
        gateway.result(sent)
    assert "HTTP 401" in str(caught.value)


def _warnings(config: str) -> list[str]:
    with capturedLogs() as events:
        MemoryGateway(config).stop()
    return [
        e["log_format"].format(**e)
        for e in events
        if e["log_level"] == LogLevel.warn and "VASP paths" in e["log_format"]
    ]


def test_the_start_log_warns_of_open_vasp_paths_beyond_loopback():
    [warning] = _warnings('HTTP_Listener { Listen "tcp:8080" { } }\n' + SERV)
    assert "/vasp/" in warning and "tcp:8080" in warning
    assert "no MMSC account" in warning
    assert _warnings(LOCAL + SERV) == []
    assert _warnings('HTTP_Listener { Listen "tcp:8080" { } }\n' + MMSCS) == []


@pytest.mark.parametrize(
    "endpoint, beyond",
    [
        ("tcp:8080", True),
        ("tcp:8080:interface=127.0.0.1", False),
        ("tcp:8080:interface=127.1.2.3", False),
        ("tcp6:8080:interface=\\:\\:1", False),
        ("tcp:8080:interface=192.0.2.1", True),
        ("ssl:8443:privateKey=k.pem", True),
        ("unix:/run/mm7.sock", False),
        ("haproxy:tcp:8080", True),
        ("haproxy:tcp:8080:interface=127.0.0.1", False),
        ("systemd:domain=INET:index=0", True),
    ],
)
def test_which_listeners_are_beyond_loopback(endpoint, beyond):
    from mm7tx.config import listens_beyond_loopback

    assert listens_beyond_loopback(endpoint) is beyond


# Guessing is bounded ----------------------------------------------------------


class QueuedPool:
    """A thread pool that runs nothing until told: shows how many checks
    are in the pool at once."""

    def __init__(self) -> None:
        self.queued: list[Any] = []

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.queued.append((on_result, f, args, kwargs))

    def run_one(self) -> None:
        on_result, f, args, kwargs = self.queued.pop(0)
        on_result(True, f(*args, **kwargs))


class PoolReactor:
    def __init__(self) -> None:
        self.pool = QueuedPool()

    def getThreadPool(self) -> QueuedPool:
        return self.pool

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


@pytest.fixture
def scrypt_calls(monkeypatch) -> list[bytes]:
    """Every call to scrypt, by the password it hashed."""
    calls: list[bytes] = []
    real = hashlib.scrypt

    def counting(password: bytes, **kw: Any) -> bytes:
        calls.append(password)
        return real(password, **kw)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    return calls


def _login(checker: PasswordChecker, name: str, password: str) -> defer.Deferred[Any]:
    creds = credentials.UsernamePassword(name.encode(), password.encode())
    return checker.requestAvatarId(creds)


def test_scrypt_checks_are_bounded_in_concurrency(scrypt_calls):
    reactor = PoolReactor()
    accounts = {"h": Account("h", hash_password("right"))}
    scrypt_calls.clear()
    checker = PasswordChecker(accounts, reactor)  # type: ignore[arg-type]
    attempts = [_login(checker, "h", f"guess{i}") for i in range(12)]
    assert auth.SCRYPT_CONCURRENCY == 2
    assert len(reactor.pool.queued) == 2  # the other ten wait their turn
    while reactor.pool.queued:
        reactor.pool.run_one()
        assert len(reactor.pool.queued) <= 2
    assert len(scrypt_calls) == 12
    for attempt in attempts:
        with pytest.raises(error.UnauthorizedLogin):
            result_of(attempt)


def test_an_unknown_account_costs_what_a_wrong_password_costs(scrypt_calls):
    reactor = PoolReactor()
    accounts = {
        "h": Account("h", hash_password("right")),
        "plain": Account("plain", "p"),
        "192.0.2.1": Account("192.0.2.1"),
    }
    checker = PasswordChecker(accounts, reactor)  # type: ignore[arg-type]
    for name in ("h", "nobody", "192.0.2.1"):
        scrypt_calls.clear()
        attempt = _login(checker, name, "guess")
        reactor.pool.run_one()
        assert scrypt_calls == [b"guess"], name  # one scrypt each
        with pytest.raises(error.UnauthorizedLogin):
            result_of(attempt)
    # Without hashed accounts nothing is hashed for anyone.
    plain = PasswordChecker({"plain": Account("plain", "p")}, reactor)  # type: ignore[arg-type]
    scrypt_calls.clear()
    with pytest.raises(error.UnauthorizedLogin):
        result_of(_login(plain, "nobody", "guess"))
    assert scrypt_calls == [] and reactor.pool.queued == []


def test_failed_logins_from_one_address_lock_it_out(scrypt_calls):
    gateway = MemoryGateway(MMSCS)
    for _ in range(9):
        assert deliver(gateway, basic("hashed", "guess"), "203.0.113.5")[0] == 401
    with capturedLogs() as events:
        assert deliver(gateway, basic("hashed", "guess"), "203.0.113.5")[0] == 401
    assert any("Locking out" in e["log_format"] for e in events)
    scrypt_calls.clear()
    # Locked out: even the right password is refused at once, unchecked.
    ctype, body = codec.encode(m.Envelope("tx-1", DELIVER))
    answer = gateway.post(
        "/vasp/",
        body,
        {"Content-Type": ctype, **basic("hashed", "mmsc-pw")},
        peer="203.0.113.5",
    )
    assert answer.code == 401 and answer.headers["retry-after"] == "300"
    message = codec.decode(answer.headers["content-type"], answer.body).message
    assert message.status.code == 4001
    assert "too many failed logins" in (message.status.details or "")
    assert scrypt_calls == []
    # Other addresses are not affected, on either kind of path.
    assert deliver(gateway, basic("hashed", "mmsc-pw"), "203.0.113.6")[0] == 200
    # After the lockout the address may try again.
    gateway.advance(300)
    assert deliver(gateway, basic("hashed", "mmsc-pw"), "203.0.113.5")[0] == 200


def test_failures_outside_the_window_do_not_add_up():
    gateway = MemoryGateway(MMSCS)
    for _ in range(9):
        assert deliver(gateway, basic("mmsc1", "guess"), "203.0.113.5")[0] == 401
    gateway.advance(61)
    for _ in range(9):
        assert deliver(gateway, basic("mmsc1", "guess"), "203.0.113.5")[0] == 401
    assert deliver(gateway, basic("mmsc1", "mmsc-pw"), "203.0.113.5")[0] == 200


def test_requests_without_credentials_are_not_counted_as_guesses():
    gateway = MemoryGateway(MMSCS)
    for _ in range(20):
        assert deliver(gateway, {}, "203.0.113.5")[0] == 401
    assert deliver(gateway, basic("mmsc1", "mmsc-pw"), "203.0.113.5")[0] == 200


def test_the_lockout_is_configured():
    config = load(
        MMSCS.replace(
            "mm7_serv {", "mm7_serv {\nmm7_max_failed_logins = 2\nmm7_login_lockout = 5"
        )
    )
    assert (config.max_failed_logins, config.login_lockout) == (2, 5)
    gateway = MemoryGateway(config)
    for _ in range(2):
        deliver(gateway, basic("mmsc1", "guess"), "203.0.113.5")
    assert deliver(gateway, basic("mmsc1", "mmsc-pw"), "203.0.113.5")[0] == 401
    gateway.advance(5)
    assert deliver(gateway, basic("mmsc1", "mmsc-pw"), "203.0.113.5")[0] == 200


# always_allow / always_deny ---------------------------------------------------

LISTEN_ACL = (
    """
HTTP_Listener {
  Listen "tcp:8080" {
    always_allow = ("192.0.2.0/24" "127.0.0.1")
    always_deny = ("192.0.2.66")
  }
}
"""
    + SERV
)


def test_listen_access_lists_load():
    config = load(LISTEN_ACL)
    assert config.listen_access == (
        ListenAccess(
            (network("192.0.2.0/24"), network("127.0.0.1")),  # type: ignore[arg-type]
            (network("192.0.2.66"),),  # type: ignore[arg-type]
        ),
    )
    # --listen's listener carries none of the file's lists: it admits anyone.
    assert with_overrides(config, listen=["tcp:9090"]).listen_access == (
        ListenAccess(),
    )


@pytest.mark.parametrize(
    "listen, words",
    [
        ('always_allow = ("nowhere")', "'nowhere' is not an IP address or range"),
        ("backlog = 5", "unknown Listen option 'backlog'"),
    ],
)
def test_bad_listen_options_are_refused_at_their_line(listen, words):
    text = f'HTTP_Listener {{\n Listen "tcp:8080" {{\n  {listen}\n }}\n}}\n{SERV}'
    with pytest.raises(ConfigError) as caught:
        load(text, "f.conf")
    assert caught.value.line == 3 and words in str(caught.value)


@pytest.mark.parametrize(
    "peer, admitted",
    [
        ("192.0.2.10", True),
        ("127.0.0.1", True),
        ("192.0.2.66", False),  # denied wins over allowed
        ("203.0.113.5", False),  # not allowed
    ],
)
def test_a_listener_refuses_connections_it_does_not_admit(peer, admitted):
    gateway = MemoryGateway(LISTEN_ACL)
    if admitted:
        assert deliver(gateway, peer=peer)[0] == 200
        return
    with capturedLogs() as events, pytest.raises(ConnectionRefusedError):
        deliver(gateway, peer=peer)
    assert any("always_allow/always_deny" in e["log_format"] for e in events)
    assert gateway.relay.received == []


def test_haproxy_listeners_pass_the_config_check():
    assert check_listen("haproxy:tcp:8080") == "haproxy:tcp:8080"
    config = load('HTTP_Listener { Listen "haproxy:tcp:8080" { } }\n' + SERV)
    assert config.listen == ("haproxy:tcp:8080",)


def _behind_haproxy(factory: Any) -> Any:
    """``factory`` as a ``haproxy:`` endpoint listens with it."""

    class Inner:
        def listen(self, wrapped: Any) -> defer.Deferred[None]:
            self.factory = wrapped
            return defer.succeed(None)

    inner = Inner()
    proxyEndpoint(inner).listen(factory)  # type: ignore[arg-type]
    return inner.factory


def test_behind_haproxy_the_proxied_client_is_checked():
    class Site:
        def __init__(self) -> None:
            self.received: list[bytes] = []

        def doStart(self) -> None: ...

        def doStop(self) -> None: ...

        def buildProtocol(self, addr: Any) -> Any:
            from twisted.internet.protocol import Protocol

            site = self

            class Keep(Protocol):
                def dataReceived(self, data: bytes) -> None:
                    site.received.append(data)

            return Keep()

    access = ListenAccess(deny=(network("203.0.113.0/24"),))  # type: ignore[arg-type]
    for client, admitted in (("203.0.113.5", False), ("198.51.100.1", True)):
        site = Site()
        factory = _behind_haproxy(ListenerGuard(site, access, proxied=True))
        # The proxy itself is not denied; the client it names may be.
        protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 5))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 5))
        protocol.makeConnection(transport)
        protocol.dataReceived(
            f"PROXY TCP4 {client} 10.0.0.2 5000 8080\r\nPOST / HTTP/1.1\r\n".encode()
        )
        assert bool(site.received) is admitted
        assert transport.disconnecting is not admitted


# X-Forwarded-For from trusted proxies -----------------------------------------


@pytest.mark.parametrize(
    "peer, forwarded, expected",
    [
        ("10.0.0.1", None, "10.0.0.1"),
        ("10.0.0.1", [b"192.0.2.7"], "192.0.2.7"),
        ("10.0.0.1", [b"6.6.6.6, 192.0.2.7"], "192.0.2.7"),  # the nearest hop
        ("10.0.0.1", [b"192.0.2.7, 10.0.0.2"], "192.0.2.7"),  # through two proxies
        ("10.0.0.1", [b"192.0.2.7", b"10.0.0.2"], "192.0.2.7"),  # two headers
        ("10.0.0.1", [b"10.0.0.2"], "10.0.0.2"),  # only proxies
        ("10.0.0.1", [b"garbage"], "10.0.0.1"),
        ("10.0.0.1", [b"192.0.2.0/24"], "10.0.0.1"),
        ("203.0.113.9", [b"192.0.2.7"], "203.0.113.9"),  # not a trusted proxy
        ("::ffff:10.0.0.1", [b"2001:db8::1"], "2001:db8::1"),
    ],
)
def test_the_client_address_behind_trusted_proxies(peer, forwarded, expected):
    trusted = (network("10.0.0.0/24"),)
    assert client_address(peer, forwarded, trusted) == expected  # type: ignore[arg-type]


def test_x_forwarded_for_counts_only_from_a_trusted_proxy():
    config = MMSCS.replace(
        "mm7_serv {", 'mm7_serv {\nmm7_trusted_proxies = ("10.0.0.1")\n'
    )
    assert load(config).trusted_proxies == (network("10.0.0.1"),)
    gateway = MemoryGateway(config)
    forwarded = {"X-Forwarded-For": "192.0.2.50"}
    # From the proxy: the forwarded address matches the IP-named MMSC account.
    assert deliver(gateway, forwarded, "10.0.0.1")[0] == 200
    # From anyone else the header is ignored.
    assert deliver(gateway, forwarded, "203.0.113.5")[0] == 401
    # And failed logins are counted against the client, not the proxy.
    for _ in range(10):
        headers = {**basic("mmsc1", "guess"), "X-Forwarded-For": "198.51.100.1"}
        deliver(gateway, headers, "10.0.0.1")
    assert deliver(gateway, basic("mmsc1", "mmsc-pw"), "10.0.0.1")[0] == 200
    headers = {**basic("mmsc1", "mmsc-pw"), "X-Forwarded-For": "198.51.100.1"}
    assert deliver(gateway, headers, "10.0.0.1")[0] == 401


@pytest.mark.parametrize(
    "client, expected",
    [
        ("192.0.2.7", b"HTTP/1.1 200 "),  # the IP-named MMSC account
        ("198.51.100.1", b"HTTP/1.1 401 "),
        ("203.0.113.5", b""),  # always_deny: cut before HTTP
    ],
)
def test_a_haproxy_listener_serves_the_client_the_proxy_names(client, expected):
    gateway = MemoryGateway(f'{LOCAL}{SERV}\nMMSC "192.0.2.0/24" {{ }}')
    access = ListenAccess(deny=(network("203.0.113.0/24"),))  # type: ignore[arg-type]
    factory = _behind_haproxy(ListenerGuard(gateway.site, access, proxied=True))
    proxy = IPv4Address("TCP", "10.0.0.1", 5)
    protocol = factory.buildProtocol(proxy)
    transport = StringTransport(peerAddress=proxy)
    protocol.makeConnection(transport)
    ctype, body = codec.encode(m.Envelope("tx-1", DELIVER))
    protocol.dataReceived(
        f"PROXY TCP4 {client} 10.0.0.2 5000 8080\r\n".encode()
        + b"POST /vasp/ HTTP/1.1\r\nHost: x\r\nContent-Type: "
        + ctype.encode()
        + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    gateway.flush()
    assert transport.value().startswith(expected)
    assert transport.disconnecting is (expected == b"")
    assert len(gateway.relay.accepted) == (expected == b"HTTP/1.1 200 ")


@implementer(ICredentialsChecker)
class _BrokenChecker:
    """A checker with a bug: it raises, rather than refusing the login."""

    credentialInterfaces = (IIPAddress,)

    def requestAvatarId(self, credentials: object) -> defer.Deferred[bytes | tuple[()]]:
        raise RuntimeError("a bug in a checker")


def test_a_checker_that_fails_gets_a_4000_fault_not_an_open_request() -> None:
    """A bug behind the portal is answered (500, a 4000 fault) and logged
    with its traceback: the request is never left open."""
    portal = Portal(AccountRealm({}, True), [_BrokenChecker()])
    resource = MM7Resource(object(), "/m/", role="vasp", portal=portal)
    content_type, body = codec.encode(m.Envelope("t1", m.DeliverReq(subject="x")))
    with capturedLogs() as events:
        answer = http_post(
            build_root({"/m/": resource}), "/m/", body, {"Content-Type": content_type}
        )
    assert answer.code == 500
    envelope = codec.decode(answer.headers["content-type"], answer.body)
    assert envelope.message.status.code == 4000  # type: ignore[union-attr]
    assert any("a bug in a checker" in str(e.get("log_failure")) for e in events)
