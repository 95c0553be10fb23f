"""What the HTTP side's options hold, apart from the code that uses them, so
that the configuration can name it: who may connect, the defaults of the
limits, credentials in a URL.  Pure: no Twisted here."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from mm7tx.mm7.peers import Network, address_in

DEFAULT_MAX_REQUEST_SIZE = 5 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 200

# The most of an answer's body read (MM7 answers are a few KB).
DEFAULT_MAX_ANSWER_SIZE = 1024 * 1024

# Failed logins from one address: this many within the window refuse that
# address's logins at once, without checking, for the lockout.
DEFAULT_MAX_FAILED_LOGINS = 10
DEFAULT_FAILED_LOGIN_WINDOW = 60.0
DEFAULT_LOGIN_LOCKOUT = 300.0


@dataclass(frozen=True, slots=True)
class ListenAccess:
    """``always_allow`` / ``always_deny`` in a ``Listen`` scope: a connection
    from a denied address, or from outside ``allow`` when it is set, is
    refused; deny wins over allow."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    def admits(self, address: str) -> bool:
        if address_in(address, self.deny):
            return False
        return not self.allow or address_in(address, self.allow)


def url_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its userinfo, and the ``(user, password)`` that was
    there, percent-decoded (``None`` when it had none): Mbuni writes its
    URLs ``http://user:pass@host/mm7``, and they mean HTTP Basic."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, None
    user, _, password = userinfo.partition(":")
    bare = urlunsplit(parts._replace(netloc=host))
    return bare, (unquote(user), unquote(password))
