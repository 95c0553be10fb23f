"""What the HTTP side's options hold, apart from the code that uses them, so
that the configuration can name it: who may connect, the defaults of the
limits, credentials in a URL.  Pure: no Twisted here."""

from __future__ import annotations

from dataclasses import dataclass, field
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


# An upstream MMSC's submit settings: the defaults of its options.
DEFAULT_SUBMIT_MAX_SIZE = 300 * 1024
DEFAULT_SUBMIT_MAX_RECIPIENTS = 10
DEFAULT_SUBMIT_TIMEOUT = 60.0
DEFAULT_SUBMIT_NAMESPACE = "REL-6-MM7-1-4"
DEFAULT_SUBMIT_VERSION = "6.8.0"


@dataclass(frozen=True, slots=True)
class SubmitSettings:
    """How mail becomes a SubmitReq to one upstream MMSC (``MMSC "name"
    { submit_url = … }``): where to post (``url``, without credentials;
    ``user`` and ``password`` for HTTP Basic), the SubmitReq's VASPID,
    VASID, ServiceCode and SenderAddress (a short code; with
    ``sender_from_mail`` the mail's sender as an RFC2822Address instead),
    the MM7 namespace and version spoken, the largest SubmitReq body
    (``max_size`` bytes), recipients per SubmitReq, the timeout (seconds)
    and ``numbers``, the number prefixes routed to it (digits, ``+`` kept
    off: ``"+44"`` is ``"44"``)."""

    name: str
    url: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    vasp_id: str | None = None
    vas_id: str | None = None
    service_code: str | None = None
    sender_address: str | None = None
    sender_from_mail: bool = False
    namespace: str = DEFAULT_SUBMIT_NAMESPACE
    mm7_version: str = DEFAULT_SUBMIT_VERSION
    max_size: int = DEFAULT_SUBMIT_MAX_SIZE
    max_recipients: int = DEFAULT_SUBMIT_MAX_RECIPIENTS
    timeout: float = DEFAULT_SUBMIT_TIMEOUT
    numbers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("submit_url must be an http(s) URL with a host")
        if parts.username is not None:
            raise ValueError("submit_url: give its credentials apart (url_credentials)")
        if self.password is not None and self.user is None:
            raise ValueError("submit_password is set but submit_user is not")
        if self.max_size < 1024:
            raise ValueError("submit_max_size must be at least 1K")
        if self.max_recipients < 1:
            raise ValueError("submit_max_recipients must be at least 1")
        if self.timeout <= 0:
            raise ValueError("submit_timeout must be a positive number of seconds")
        prefixes = tuple(n.strip().lstrip("+") for n in self.numbers)
        for given, prefix in zip(self.numbers, prefixes, strict=True):
            if not prefix.isdigit():
                raise ValueError(f"numbers: {given!r} is not a number prefix")
        object.__setattr__(self, "numbers", prefixes)

    def longest_prefix(self, digits: str) -> int:
        """The length of the longest of ``numbers`` that ``digits`` starts
        with; -1 for none."""
        return max((len(p) for p in self.numbers if digits.startswith(p)), default=-1)
