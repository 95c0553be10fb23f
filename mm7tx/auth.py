"""Who may submit on MMSC paths: VASP accounts checked with ``twisted.cred``.

A VASP authenticates with ``/mm7/account=password`` in the URI, with HTTP
Basic, or, presenting nothing, by its source address matching an account
named by an IP address or CIDR range.  Presented credentials must be right:
a wrong password is refused even from an address that has an IP account.
Secrets are compared in constant time and may be stored as salted scrypt
hashes (``mm7tx hash-password``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorThreads
from zope.interface import Attribute, Interface, implementer

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

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


def network(text: str) -> Network | None:
    """An IP address or CIDR range, or None if ``text`` is neither."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def address_in(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


@dataclass(frozen=True, slots=True)
class Account:
    """A VASP account (``VASP "name" { … }``) and its limits."""

    name: str
    password: str | None = field(default=None, repr=False)
    networks: tuple[Network, ...] = ()
    max_message_size: int | None = None
    max_recipients: int | None = None
    rate: float | None = None
    delivery_report_url: str | None = None
    delivery_report_user: str | None = None
    delivery_report_password: str | None = field(default=None, repr=False)

    @property
    def ip_network(self) -> Network | None:
        """The network an IP-named account stands for."""
        return network(self.name)

    def allows(self, address: str) -> bool:
        """Whether a request from ``address`` may use this account."""
        allowed = self.networks
        if self.ip_network is not None:
            allowed = (*allowed, self.ip_network)
        return not allowed or address_in(address, allowed)


class IVASPAccount(Interface):
    """The avatar of an authenticated VASP: its :class:`Account`."""

    account = Attribute("The Account")


@implementer(IVASPAccount)
@dataclass(frozen=True, slots=True)
class VASPAvatar:
    account: Account


class IIPAddress(credentials.ICredentials):
    """Credentials that are only the source address of the request."""

    address = Attribute("The client's IP address, as text")


@implementer(IIPAddress)
@dataclass(frozen=True, slots=True)
class IPAddressCredentials:
    address: str


@implementer(ICredentialsChecker)
class PasswordChecker:
    """Checks an account name and password; the avatar id is the name.

    A hashed password is checked in the reactor's thread pool (scrypt takes
    tens of milliseconds), and remembered once right, as a SHA-256 of the
    account and password, so a VASP's every request does not pay it again.
    """

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, accounts: dict[str, Account], reactor: IReactorThreads) -> None:
        self.accounts = accounts
        self.reactor = reactor
        self._verified: set[bytes] = set()

    def requestAvatarId(self, creds: Any) -> defer.Deferred[Any]:
        name: str = creds.username.decode("utf-8", "replace")
        given: str = creds.password.decode("utf-8", "replace")
        account = self.accounts.get(name)
        if account is None or account.password is None:
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

        checking: defer.Deferred[bool] = threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), password_matches, stored, given
        )
        return checking.addCallback(checked)


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
    def __init__(self, accounts: dict[str, Account]) -> None:
        self.accounts = accounts

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if IVASPAccount not in interfaces:
            raise NotImplementedError("only IVASPAccount")
        return IVASPAccount, VASPAvatar(self.accounts[avatarId]), lambda: None


def portal_for(accounts: tuple[Account, ...], reactor: IReactorThreads) -> Portal:
    """A Portal over the VASP accounts, with password and IP checkers."""
    by_name = {account.name: account for account in accounts}
    return Portal(
        AccountRealm(by_name), [PasswordChecker(by_name, reactor), IPChecker(by_name)]
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
