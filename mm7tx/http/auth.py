"""Who may post where: VASP accounts on MMSC paths, MMSC accounts on VASP
paths, checked with ``twisted.cred``.

A VASP authenticates with ``/mm7/account=password`` in the URI, with HTTP
Basic, or, presenting nothing, by its source address matching an account
named by an IP address or CIDR range; an MMSC the same way, without the URI
form.  Presented credentials must be right: a wrong password is refused even
from an address that has an IP account.  Secrets are compared in constant
time and may be stored as salted scrypt hashes (``mm7tx hash-password``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, threads
from twisted.internet.interfaces import IAddress, IReactorThreads
from twisted.logger import Logger
from twisted.protocols import policies
from zope.interface import implementer

from mm7tx.http.settings import ListenAccess as ListenAccess
from mm7tx.interfaces import IIPAddress as IIPAddress
from mm7tx.interfaces import IMMSCAccount as IMMSCAccount
from mm7tx.interfaces import IVASPAccount as IVASPAccount
from mm7tx.mm7.peers import Account as Account
from mm7tx.mm7.peers import Network as Network
from mm7tx.mm7.peers import address_in as address_in
from mm7tx.mm7.peers import network as network

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.auth")

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A salted scrypt hash for ``password = "…"`` in a VASP scope."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    encode = base64.b64encode
    return f"scrypt${encode(salt).decode()}${encode(digest).decode()}"


def password_matches(stored: str, given: str) -> bool:
    """Whether ``given`` is the password ``stored`` (plain text or a hash),
    compared in constant time."""
    if stored.startswith("scrypt$"):
        try:
            _, salt, digest = stored.split("$")
            expected = base64.b64decode(digest)
            actual = hashlib.scrypt(
                given.encode(), salt=base64.b64decode(salt), dklen=32, **_SCRYPT
            )
        except ValueError:
            return False
        return hmac.compare_digest(expected, actual)
    return hmac.compare_digest(stored.encode(), given.encode())


def client_address(
    peer: str, forwarded: Sequence[bytes] | None, trusted: tuple[Network, ...]
) -> str:
    """The client's address: ``peer``, or, when ``peer`` is a trusted proxy,
    the nearest address in ``X-Forwarded-For`` (read from the right) that is
    not one.  A malformed entry stops the walk at the proxy that sent it."""
    if not trusted or not forwarded:
        return peer
    hops = [
        hop.strip() for value in forwarded for hop in value.decode("latin-1").split(",")
    ]
    address = peer
    while hops and address_in(address, trusted):
        hop = hops.pop()
        if network(hop) is None or "/" in hop:
            break
        address = hop
    return address


@implementer(IVASPAccount)
@dataclass(frozen=True, slots=True)
class VASPAvatar:
    account: Account


@implementer(IMMSCAccount)
@dataclass(frozen=True, slots=True)
class MMSCAvatar:
    account: Account


@implementer(IIPAddress)
@dataclass(frozen=True, slots=True)
class IPAddressCredentials:
    address: str


# Hash checks in flight at once, for all accounts: each scrypt takes ~40 ms
# of a core and 16 MiB, so twelve guessers took 147% CPU and 224 MB; the
# rest wait their turn.  A password once right is remembered, so VASPs that
# know theirs do not queue behind guessers.
SCRYPT_CONCURRENCY = 2

# A hash no password matches (its digest is zeros), checked in place of an
# unknown account's so that it costs what a wrong password costs.
_DUMMY_HASH = "scrypt$" + "A" * 22 + "==$" + "A" * 43 + "="


@implementer(ICredentialsChecker)
class PasswordChecker:
    """Checks an account name and password; the avatar id is the name.

    A hashed password is checked in the reactor's thread pool (scrypt takes
    tens of milliseconds), at most ``scrypt.limit`` at once, and remembered
    once right, as a SHA-256 of the account and password, so a VASP's every
    request does not pay it again.  When any account is hashed, an unknown
    account (or one without a password) costs a check of a dummy hash, so
    the time of the answer does not tell which accounts exist.
    """

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(
        self,
        accounts: dict[str, Account],
        reactor: IReactorThreads,
        scrypt: defer.DeferredSemaphore | None = None,
    ) -> None:
        self.accounts = accounts
        self.reactor = reactor
        self.scrypt = scrypt or defer.DeferredSemaphore(SCRYPT_CONCURRENCY)
        self._hashed = any(
            (a.password or "").startswith("scrypt$") for a in accounts.values()
        )
        self._verified: set[bytes] = set()

    def requestAvatarId(self, creds: Any) -> defer.Deferred[Any]:
        name: str = creds.username.decode("utf-8", "replace")
        given: str = creds.password.decode("utf-8", "replace")
        account = self.accounts.get(name)
        if account is None or account.password is None:
            if self._hashed:
                return self._hash_check(_DUMMY_HASH, given).addCallback(
                    lambda _: _refused()
                )
            hmac.compare_digest(b"-", given.encode())  # as long as a plain check
            return _refused()
        stored = account.password
        if not stored.startswith("scrypt$"):
            return (
                defer.succeed(name) if password_matches(stored, given) else _refused()
            )
        key = hashlib.sha256(f"{name}\0{stored}\0{given}".encode()).digest()
        if key in self._verified:
            return defer.succeed(name)

        def checked(right: bool) -> str:
            if not right:
                raise error.UnauthorizedLogin("wrong account or password")
            if len(self._verified) > 10000:
                self._verified.clear()
            self._verified.add(key)
            return name

        return self._hash_check(stored, given).addCallback(checked)

    def _hash_check(self, stored: str, given: str) -> defer.Deferred[bool]:
        """``password_matches`` in the thread pool, within the bound."""
        pool = self.reactor.getThreadPool()
        return self.scrypt.run(
            threads.deferToThreadPool,
            self.reactor,
            pool,
            password_matches,
            stored,
            given,
        )


def _refused() -> defer.Deferred[Any]:
    return defer.fail(error.UnauthorizedLogin("wrong account or password"))


@implementer(ICredentialsChecker)
class IPChecker:
    """Finds the IP-named account whose address or range holds the client."""

    credentialInterfaces = (IIPAddress,)

    def __init__(self, accounts: dict[str, Account]) -> None:
        self.accounts = accounts

    def requestAvatarId(self, creds: Any) -> defer.Deferred[Any]:
        for name, account in self.accounts.items():
            net = account.ip_network
            if net is not None and address_in(creds.address, (net,)):
                return defer.succeed(name)
        return defer.fail(error.UnauthorizedLogin("no account for this address"))


@implementer(IRealm)
class AccountRealm:
    """Gives the account as an ``IVASPAccount`` (VASP accounts, for MMSC
    paths) or an ``IMMSCAccount`` (MMSC accounts, for VASP paths)."""

    def __init__(self, accounts: dict[str, Account], mmsc: bool = False) -> None:
        self.accounts = accounts
        self.interface = IMMSCAccount if mmsc else IVASPAccount
        self.avatar = MMSCAvatar if mmsc else VASPAvatar

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if self.interface not in interfaces:
            raise NotImplementedError(f"only {self.interface.__name__}")
        return self.interface, self.avatar(self.accounts[avatarId]), lambda: None


def portal_for(
    accounts: tuple[Account, ...],
    reactor: IReactorThreads,
    mmsc: bool = False,
    scrypt: defer.DeferredSemaphore | None = None,
) -> Portal:
    """A Portal over VASP accounts (or MMSC accounts with ``mmsc``), with
    password and IP checkers; ``scrypt`` bounds the hash checks in flight
    (share one between portals; default its own of
    :data:`SCRYPT_CONCURRENCY`)."""
    by_name = {account.name: account for account in accounts}
    return Portal(
        AccountRealm(by_name, mmsc),
        [PasswordChecker(by_name, reactor, scrypt), IPChecker(by_name)],
    )


def credentials_from(
    uri_tail: bytes | str, authorization: str | None, peer: str
) -> credentials.ICredentials | None:
    """The credentials a request presents: ``account=password`` after the
    MMSC path, else HTTP Basic, else only its address.  None for a malformed
    Authorization header.

    ``uri_tail`` is the path after the MMSC path as sent, percent-decoded
    here, once: ``account=p%2541ss%2F`` is the password ``p%41ss/``.  The
    password runs to the end of the path (a raw ``/`` or ``"`` in it is
    its own), less a trailing ``/``."""
    raw = uri_tail.encode("utf-8") if isinstance(uri_tail, str) else uri_tail
    tail = raw.split(b"?", 1)[0].strip(b"/")
    if b"=" in tail:
        name, _, password = tail.partition(b"=")
        return credentials.UsernamePassword(
            unquote_to_bytes(name), unquote_to_bytes(password)
        )
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, secret = base64.b64decode(
                token.strip(), validate=True
            ).partition(b":")
        except ValueError:
            return None
        if not sep:
            return None
        return credentials.UsernamePassword(user, secret)
    return IPAddressCredentials(peer)


class _CheckedWhenProxied(policies.ProtocolWrapper):
    """Behind ``haproxy:``, the client's address is known only once the
    PROXY header is read: checked on the first bytes after it."""

    factory: ListenerGuard
    _checked = False

    def dataReceived(self, data: bytes) -> None:
        if not self._checked:
            self._checked = True
            peer = self.transport.getPeer()  # type: ignore[union-attr]
            if not self.factory.admits(peer):
                self.transport.abortConnection()  # type: ignore[union-attr]
                return
        super().dataReceived(data)


class ListenerGuard(policies.WrappingFactory):
    """The site as one listener serves it, refusing connections that its
    ``always_allow`` / ``always_deny`` lists do not admit: at once (the
    protocol is never built), or, on a ``proxied`` (``haproxy:``) listener,
    as soon as the PROXY header names the client."""

    protocol = _CheckedWhenProxied

    def __init__(self, site: Any, access: ListenAccess, proxied: bool = False) -> None:
        super().__init__(site)
        self.access = access
        self.proxied = proxied

    def admits(self, address: IAddress) -> bool:
        host = str(getattr(address, "host", ""))
        if self.access.admits(host):
            return True
        log.info(
            "Refused a connection from {peer}: always_allow/always_deny", peer=host
        )
        return False

    def buildProtocol(self, addr: IAddress | None) -> Any:
        if self.proxied:
            return super().buildProtocol(addr)
        if addr is None or not self.admits(addr):
            return None
        return self.wrappedFactory.buildProtocol(addr)
