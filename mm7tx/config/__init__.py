"""The configuration file: Momentum's grammar, read into a typed :class:`Config`.

The grammar: case-insensitive option names, ``#`` comments, ``name = value``,
quoted strings, lists in ``( )``, scopes in ``{ }`` and named scopes such as
``Listen "tcp:8080" { }``.  Every mistake is reported with the file, the line
and the option, so a bad file stops the start with a message an operator can
act on.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import os
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from mm7tx.http.settings import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LOGIN_LOCKOUT,
    DEFAULT_MAX_ANSWER_SIZE,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    DEFAULT_MAX_FAILED_LOGINS,
    DEFAULT_MAX_REQUEST_SIZE,
    DEFAULT_REQUEST_TIMEOUT,
    ListenAccess,
    url_credentials,
)
from mm7tx.logs import LOG_ADDRESSES
from mm7tx.mail.rules import AddressRules
from mm7tx.mm7.codec.soap import XMLLimits
from mm7tx.mm7.messages import DEFAULT_MM7_VERSION
from mm7tx.mm7.peers import Account, Network, network
from mm7tx.smtp.settings import SMTPSettings


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names file and
    line (line 0: the whole file, or a command-line option named as source)."""

    def __init__(self, source: str, line: int, message: str) -> None:
        where = f"{source}, line {line}" if line else source
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line


# Parsing the grammar -------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r]+) |
    (?P<newline>\n) |
    (?P<comment>\#[^\n]*) |
    (?P<string>"(?:[^"\\\n]|\\.)*") |
    (?P<unterminated>") |
    (?P<punct>[=(){},]) |
    (?P<word>[^\s=(){}",\#]+) |
    (?P<bad>.)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str
    line: int


@dataclass(slots=True)
class Option:
    name: str
    value: str | list[str]
    line: int


@dataclass(slots=True)
class Scope:
    name: str
    label: str | None
    body: list[Option | Scope]
    line: int


def _tokens(text: str, source: str) -> list[Token]:
    tokens, line = [], 1
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup or "bad"
        value = match.group()
        if kind == "newline":
            line += 1
        elif kind == "string":
            tokens.append(Token("string", re.sub(r"\\(.)", r"\1", value[1:-1]), line))
        elif kind == "unterminated":
            # A string may not span lines: its closing quote is missing.
            raise ConfigError(
                source, line, "unterminated string (no closing '\"' on this line)"
            )
        elif kind == "bad":
            raise ConfigError(source, line, f"unexpected character {value!r}")
        elif kind in ("punct", "word"):
            tokens.append(Token(kind if kind == "word" else value, value, line))
    return tokens


def parse(text: str, source: str = "<config>") -> list[Option | Scope]:
    """The syntax tree of a configuration text."""
    tokens = _tokens(text, source)
    position = 0

    def peek() -> Token | None:
        return tokens[position] if position < len(tokens) else None

    def take(*kinds: str) -> Token:
        nonlocal position
        token = peek()
        if token is None:
            last = tokens[-1].line if tokens else 1
            raise ConfigError(
                source, last, f"unexpected end of file, expected {kinds[0]}"
            )
        if token.kind not in kinds:
            raise ConfigError(
                source,
                token.line,
                f"expected {' or '.join(kinds)}, found {token.text!r}",
            )
        position += 1
        return token

    def block(closing: bool) -> list[Option | Scope]:
        items: list[Option | Scope] = []
        while True:
            token = peek()
            if token is None:
                if closing:
                    raise ConfigError(
                        source, tokens[-1].line if tokens else 1, "missing '}'"
                    )
                return items
            if token.kind == "}":
                if not closing:
                    raise ConfigError(source, token.line, "'}' without a scope")
                take("}")
                return items
            name = take("word")
            following = take("=", "{", "string", "word")
            if following.kind == "=":
                items.append(Option(name.text, value(), name.line))
            elif following.kind == "{":
                items.append(Scope(name.text, None, block(True), name.line))
            else:
                take("{")
                items.append(Scope(name.text, following.text, block(True), name.line))

    def value() -> str | list[str]:
        token = take("string", "word", "(")
        if token.kind != "(":
            return token.text
        values: list[str] = []
        while True:
            item = take("string", "word", ")", ",")
            if item.kind == ")":
                return values
            if item.kind != ",":
                values.append(item.text)

    return block(False)


# The typed configuration ---------------------------------------------------

# The metrics and health listener: on loopback only, unless configured.
DEFAULT_METRICS_LISTEN = "tcp:9107:interface=127.0.0.1"


@dataclass(frozen=True, slots=True)
class Config:
    """Everything mm7tx needs to start, from a file or the embedded defaults."""

    listen: tuple[str, ...] = ("tcp:8080",)
    # Where each listener was set ("FILE, line N" or "--listen"), for errors.
    listen_origins: tuple[str, ...] = ()
    # always_allow / always_deny of each listener, in the order of ``listen``
    # (none for a listener past the end).
    listen_access: tuple[ListenAccess, ...] = ()
    rules: AddressRules = field(default_factory=AddressRules)
    mm7_version: str = DEFAULT_MM7_VERSION
    vasp_paths: tuple[str, ...] = ()
    mmsc_paths: tuple[str, ...] = ("/mm7/",)
    vasps: tuple[Account, ...] = ()
    # MMSC accounts: once there is one, VASP paths require one.
    mmscs: tuple[Account, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    max_failed_logins: int = DEFAULT_MAX_FAILED_LOGINS
    login_lockout: float = DEFAULT_LOGIN_LOCKOUT
    delivery_report_attempts: int = 8
    # The most of an answer's body mm7tx reads when it posts (delivery reports).
    client_max_answer_size: int = DEFAULT_MAX_ANSWER_SIZE
    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
    max_transactions: int = 200
    drain_timeout: float = 30.0
    # Worker processes behind the listeners (1: this process serves alone).
    workers: int = 1
    # Where /metrics, /healthz and /readyz are served; None: nowhere.
    metrics_listen: str | None = DEFAULT_METRICS_LISTEN
    xml_limits: XMLLimits = field(default_factory=XMLLimits)
    smtp: SMTPSettings = field(default_factory=SMTPSettings)
    # Where smtp_relay was set ("FILE, line N", "--smtp-relay", or the
    # source alone for its default), for errors found when it is used: a
    # Maildir that cannot be made.
    smtp_relay_origin: str = "embedded defaults"
    processor: str | None = None
    path_processors: tuple[tuple[str, str], ...] = ()
    # The options of each Path scope's processor, converted to the types its
    # Options declares: (path, ((name, value), ...)).
    path_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    keep_smil: bool = False
    # Twisted's access line per request beside the transaction event.
    access_log: bool = False
    # How the transaction event shows addresses: masked, full or none.
    log_addresses: str = "masked"
    source: str = "embedded defaults"

    def processor_for(self, path: str) -> str | None:
        return dict(self.path_processors).get(path, self.processor)

    def options_for(self, path: str) -> dict[str, Any]:
        """The options set in ``path``'s Path scope for its processor (none
        for a path served by ``mm7_processor``: its defaults apply)."""
        return dict(dict(self.path_options).get(path, ()))

    def access_for(self, index: int) -> ListenAccess:
        """The always_allow / always_deny lists of the ``index``-th listener."""
        if index < len(self.listen_access):
            return self.listen_access[index]
        return ListenAccess()


_DEFAULTS = Config()
EMBEDDED = Config(
    listen=("tcp:8080",),
    rules=AddressRules(
        from_address="mm7tx@localhost", to_address="postmaster@localhost"
    ),
    vasp_paths=("/vasp/",),
    smtp=SMTPSettings(endpoint="maildir:Maildir"),
)

# The values of the boolean and enumerated options: exactly the words the
# README lists (in any case), no aliases: "smtp_starttls = yes" could mean
# opportunistic or required, and a reader of the file should not have to know.
_STARTTLS = ("off", "opportunistic", "required")
_BOOLEANS = {"true": True, "false": False}


def normalise_endpoint(text: str) -> str:
    """Momentum's ``:8080`` / ``*:8080`` / ``1.2.3.4:8080`` as a Twisted endpoint."""
    match = re.fullmatch(r"(\*|[\d.]+|\[[0-9a-fA-F:]+\])?:(\d+)", text.strip())
    if match is None:
        return text
    host, port = match.groups()
    if host in (None, "*"):
        return f"tcp:{port}"
    return f"tcp:{port}:interface={host.strip('[]').replace(':', chr(92) + ':')}"


def read_workers(text: str) -> int:
    """``workers``: ``auto`` (``os.cpu_count()``) or a whole number from 1;
    ``ValueError`` says what is expected."""
    text = text.strip().lower()
    if text == "auto":
        return os.cpu_count() or 1
    if not text.isdigit() or int(text) < 1:
        raise ValueError(
            f"workers must be a whole number from 1, or auto, not {text!r}"
        )
    return int(text)


# Endpoint strings, checked without listening or connecting -----------------

# Endpoint types whose port we check ourselves: Twisted takes tcp:99999.
_SERVER_PORT_KINDS = ("tcp", "tcp6", "ssl")
_CLIENT_PORT_KINDS = ("tcp", "tls", "ssl")
# ssl: server arguments naming files that must exist and be readable.
_SERVER_FILES = ("privateKey", "certKey", "extraCertChain", "dhParameters")


def listens_beyond_loopback(endpoint: str) -> bool:
    """Whether a listener may take connections from other hosts: anything but
    a UNIX socket or a TCP listener on a loopback interface."""
    kind, _, keywords = inner_endpoint(endpoint)
    if kind == "unix":
        return False
    if kind in _SERVER_PORT_KINDS:
        net = network(keywords.get("interface", ""))
        return net is None or not net.is_loopback
    return True


def inner_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """The type, positional and keyword arguments of the endpoint a listener
    string names under any ``haproxy:`` (PROXY protocol over another
    endpoint), as :func:`_fields` splits them."""
    kind, positional, keywords = _fields(description)
    inner = description
    while kind == "haproxy" and ":" in inner:
        inner = inner.split(":", 1)[1]
        kind, positional, keywords = _fields(inner)
    return kind, positional, keywords


def _fields(description: str) -> tuple[str, list[str], dict[str, str]]:
    """An endpoint string's type, positional and keyword arguments, split as
    Twisted's endpoint parser does (``\\:`` is an escaped colon)."""
    kind, *rest = re.split(r"(?<!\\):", description)
    positional: list[str] = []
    keywords: dict[str, str] = {}
    for part in rest:
        part = part.replace("\\:", ":")
        name, equals, value = part.partition("=")
        if equals:
            keywords[name] = value
        else:
            positional.append(part)
    return kind.lower(), positional, keywords


def _check_port(text: str | None) -> None:
    if text is None:
        return
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} is not a number from 0 to 65535")


def check_listen(description: str) -> str:
    """A listener, as Twisted's server endpoint string (Momentum's ``:8080``
    forms translated), checked without listening; ``ValueError`` says why not."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    endpoint = normalise_endpoint(description)
    kind, positional, keywords = inner_endpoint(endpoint)
    if kind in _SERVER_PORT_KINDS:
        _check_port(keywords.get("port", positional[0] if positional else None))
    for name in _SERVER_FILES:
        path = keywords.get(name)
        if path is not None and not os.access(path, os.R_OK):
            problem = "it does not exist" if not os.path.exists(path) else "no access"
            raise ValueError(f"cannot read the {name} file {path!r}: {problem}")
    try:
        serverFromString(MemoryReactor(), endpoint)
    except ValueError as e:
        if str(e).startswith("Unknown endpoint type"):
            raise ValueError(
                f"{description!r} is not a server endpoint (unknown type "
                f"{kind!r}); write tcp:8080, tcp:8080:interface=127.0.0.1, "
                "ssl:8443:privateKey=key.pem:certKey=cert.pem or :8080"
            ) from None
        raise ValueError(f"{description!r} is not a usable endpoint: {e}") from None
    except (IndexError, KeyError) as e:
        if kind != "systemd":
            raise
        which = "index (LISTEN_FDS)" if isinstance(e, IndexError) else "name"
        raise ValueError(
            f"{description!r}: systemd passed no socket with that {which}; "
            "start mm7tx from a .socket unit or with systemd-socket-activate"
        ) from None
    except Exception as e:
        raise ValueError(
            f"{description!r} is not a usable endpoint: {type(e).__name__}: {e}"
        ) from None
    return endpoint


def check_relay(description: str) -> str:
    """``smtp_relay``: ``maildir:PATH`` or a Twisted client endpoint string,
    checked without connecting; ``ValueError`` says why not."""
    from twisted.internet.endpoints import clientFromString
    from twisted.internet.testing import MemoryReactor

    if description.startswith("maildir:"):
        if not description[len("maildir:") :]:
            raise ValueError("maildir: needs a folder, as in maildir:/var/spool/mm7")
        return description
    if "://" in description:
        raise ValueError(
            f"{description!r} is a URL, not an endpoint; write tcp:HOST:PORT, "
            "tls:HOST:PORT (implicit TLS) or maildir:PATH"
        )
    kind, positional, keywords = _fields(description)
    if kind in _CLIENT_PORT_KINDS:
        _check_port(keywords.get("port", positional[1] if positional[1:] else None))
    try:
        clientFromString(MemoryReactor(), description)
    except Exception as e:
        reason = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        raise ValueError(
            f"{description!r} is not a client endpoint ({reason}); write "
            "tcp:HOST:PORT, tls:HOST:PORT (implicit TLS) or maildir:PATH"
        ) from None
    return description


# One declaration per option ------------------------------------------------

# mm7_report_mail_from: a mailbox with no space, bracket, quote or control
# character, which no relay could misread in MAIL FROM.
_NOT_IN_SENDER = r'\s<>@"(),;:\\\[\]\x00-\x1f\x7f-\x9f'
_ENVELOPE_SENDER = re.compile(f"[^{_NOT_IN_SENDER}]+@[^{_NOT_IN_SENDER}]+")

MM7_SERV, VASP, HTTP_LISTENER = "mm7_serv", "VASP", "HTTP_Listener"
MMSC, LISTEN = "MMSC", "Listen"


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One option: where it goes, how it is read, and what the README says.

    ``field`` is ``group.attribute``: ``config``, ``rules``
    (:class:`AddressRules`), ``smtp`` (:class:`SMTPSettings`), ``xml``
    (:class:`XMLLimits`) or ``account`` (:class:`Account`).  ``default`` is
    the default written as in a file (a test loads it and checks it changes
    nothing); ``shown`` is what the table says when there is none.  An
    ``is_scope`` option (``Listen "…" { }``, ``Path "…" { }``) may appear
    many times: its reader takes the scope and returns a list to add to.
    """

    name: str
    scope: str
    reader: Callable[[_Reader, Any], Any]
    field: str
    help: str
    default: str | None = None
    shown: str = "none"
    unit: str = ""
    syntax: str | None = None
    is_scope: bool = False

    def markdown_row(self) -> str:
        name = f"`{self.syntax or self.name}`"
        default = f"`{self.default}`{self.unit}" if self.default else self.shown
        return f"| {name} | {default} | {self.help} |"


class _Reader:
    """The readers options are declared with; each raises a
    :class:`ConfigError` at the option's line."""

    def __init__(self, source: str) -> None:
        self.source = source
        # The access lists of the Listen scopes read so far, in order.
        self.listen_access: list[ListenAccess] = []
        # The processor options of the Path scopes read so far.
        self.path_options: list[tuple[str, tuple[tuple[str, Any], ...]]] = []

    def error(self, item: Option | Scope, message: str) -> ConfigError:
        return ConfigError(self.source, item.line, message)

    def text(self, option: Option) -> str:
        if isinstance(option.value, list):
            raise self.error(option, f"{option.name} takes one value, not a list")
        return option.value

    def paths(self, option: Option) -> tuple[str, ...]:
        values = option.value if isinstance(option.value, list) else [option.value]
        for path in values:
            if not path.startswith("/") or path.strip("/") == "":
                raise self.error(
                    option, f'{option.name}: {path!r} is not a path like "/photos/"'
                )
        return tuple(values)

    def seconds(self, option: Option) -> float:
        try:
            number = float(self.text(option))
        except ValueError:
            number = -1
        if number <= 0:
            raise self.error(
                option, f"{option.name} must be a positive number of seconds"
            )
        return number

    def processor(self, option: Option) -> str:
        """A processor's dotted name, checked now so a typo stops the start;
        ``mm7_processor`` serves paths without a Path scope, so its class may
        not need options (it gets the defaults of those it declares)."""
        name = self.text(option)
        try:
            found = find_processor(name)
            fields = declared_options(found, name)
        except ValueError as e:
            raise self.error(option, str(e)) from None
        if not callable(found):
            raise self.error(option, f"processor {name!r} is not a class or factory")
        needed = [key for key, (_, required) in (fields or {}).items() if required]
        if needed and option.name.lower() == "mm7_processor":
            raise self.error(
                option,
                f"{name} needs option {needed[0]}: bind it in a "
                f'Path "/p/" {{ processor = "…" {needed[0]} = "…" }} scope',
            )
        return name

    def number(self, option: Option, integer: bool = True) -> float:
        """A positive number; sizes may end in K or M (KiB, MiB)."""
        text = self.text(option).strip().upper()
        scale = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
        if scale != 1:
            text = text[:-1]
        try:
            number = (int(text) if integer else float(text)) * scale
        except ValueError:
            number = 0
        if number <= 0:
            raise self.error(option, f"{option.name} must be a positive number")
        return number

    def integer(self, option: Option) -> int:
        return int(self.number(option))

    def real(self, option: Option) -> float:
        return self.number(option, integer=False)

    def choice(self, option: Option, values: tuple[str, ...]) -> str:
        """One of ``values`` (in any case); anything else is refused with
        the accepted values."""
        text = self.text(option)
        if text.lower() in values:
            return text.lower()
        accepted = ", ".join(values[:-1]) + " or " + values[-1]
        raise self.error(option, f"{option.name} must be {accepted}, not {text!r}")

    def boolean(self, option: Option) -> bool:
        return _BOOLEANS[self.choice(option, tuple(_BOOLEANS))]

    def starttls(self, option: Option) -> str:
        return self.choice(option, _STARTTLS)

    def relay(self, option: Option) -> str:
        try:
            return check_relay(self.text(option))
        except ValueError as e:
            raise self.error(option, f"smtp_relay: {e}") from None

    def ca_file(self, option: Option) -> str:
        """A PEM CA certificate, read now: a missing file stops the start."""
        from twisted.internet import ssl

        path = self.text(option)
        try:
            with open(path, "rb") as f:
                ssl.Certificate.loadPEM(f.read())
        except OSError as e:
            raise self.error(
                option, f"smtp_ca_file: cannot read {path!r}: {e.strerror}"
            ) from None
        except Exception:
            raise self.error(
                option, f"smtp_ca_file: {path!r} is not a PEM certificate"
            ) from None
        return path

    def networks(self, option: Option) -> tuple[Any, ...]:
        items = option.value if isinstance(option.value, list) else [option.value]
        networks = []
        for item in items:
            net = network(item)
            if net is None:
                raise self.error(option, f"{item!r} is not an IP address or range")
            networks.append(net)
        return tuple(networks)

    def fault_status(self, option: Option) -> int:
        text = self.text(option).strip()
        if text not in ("200", "500"):
            raise self.error(option, f"{option.name} must be 200 or 500, not {text!r}")
        return int(text)

    def url(self, option: Option) -> str:
        """An http(s) URL with a host (never echoed: it may carry
        credentials, which :func:`_account` takes out)."""
        url = self.text(option)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.error(
                option, "delivery_report_url must be an http(s) URL with a host"
            )
        try:
            parts.port  # noqa: B018 - raises on a port out of range
        except ValueError:
            raise self.error(
                option, "delivery_report_url has a port that is not 0 to 65535"
            ) from None
        return url

    def report_mail_from(self, option: Option) -> str:
        """An envelope sender: one plain address (``<a@b>`` too), or empty
        (``""`` or ``<>``) for the null sender."""
        text = self.text(option).strip()
        if text.startswith("<") and text.endswith(">"):
            text = text[1:-1].strip()
        if text and not (len(text) <= 254 and _ENVELOPE_SENDER.fullmatch(text)):
            raise self.error(
                option,
                f"mm7_report_mail_from must be one address such as "
                f'"bounces@example.com", or "" for the null sender <>, not '
                f"{self.text(option)[:80]!r}",
            )
        return text

    def log_addresses(self, option: Option) -> str:
        return self.choice(option, tuple(LOG_ADDRESSES))

    def workers(self, option: Option) -> int:
        """``auto`` (one per core) or a whole number from 1."""
        try:
            return read_workers(self.text(option))
        except ValueError as e:
            raise self.error(option, str(e)) from None

    def metrics_listen(self, option: Option) -> str | None:
        """``none``, or a server endpoint checked as a ``Listen`` one."""
        text = self.text(option)
        if text.strip().lower() == "none":
            return None
        try:
            return check_listen(text)
        except ValueError as e:
            raise self.error(option, f"metrics_listen: {e}") from None

    def listen(self, scope: Scope) -> list[str]:
        """A ``Listen "ENDPOINT" { }`` scope."""
        if not scope.label:
            raise self.error(scope, 'Listen needs an address: Listen ":8080" { }')
        found = _Values(self)
        found.read(scope, LISTEN)
        try:
            endpoint = check_listen(scope.label)
        except ValueError as e:
            raise self.error(scope, f"Listen: {e}") from None
        self.listen_access.append(ListenAccess(**found.get("access")))
        return [endpoint]

    def path(self, scope: Scope) -> list[tuple[str, str]]:
        """A ``Path "/p/" { processor = "…"  OPTION = … }`` scope: its
        processor, and the options that processor declares (its ``Options``
        dataclass), each converted to its declared type."""
        if not scope.label:
            raise self.error(scope, 'Path needs a path: Path "/p/" { processor = "…" }')
        named: Option | None = None
        given: dict[str, Option] = {}
        for entry in scope.body:
            if isinstance(entry, Scope):
                raise self.error(entry, f"unknown Path option {entry.name!r}")
            key = entry.name.lower()
            earlier = named if key == "processor" else given.get(key)
            if earlier is not None:
                raise self.error(
                    entry,
                    f"{entry.name} is set twice (first on line {earlier.line}); "
                    "keep one",
                )
            if key == "processor":
                named = entry
            else:
                given[key] = entry
        if named is None:
            if given:
                raise self.error(
                    scope, f'Path "{scope.label}" has options but no processor'
                )
            return []
        name = self.processor(named)
        fields = declared_options(find_processor(name), name)
        values: list[tuple[str, Any]] = []
        for key, entry in given.items():
            if fields is None:
                raise self.error(
                    entry,
                    f"{name} has no option {entry.name!r} (it declares no Options)",
                )
            if key not in fields:
                raise self.error(
                    entry,
                    f"{name} has no option {entry.name!r} "
                    f"(its options: {', '.join(fields)})",
                )
            try:
                values.append((key, option_value(fields[key][0], entry.value)))
            except ValueError as e:
                raise self.error(entry, f"option {key} of {name} {e}") from None
        missing = [
            key
            for key, (_, required) in (fields or {}).items()
            if required and key not in given
        ]
        if missing:
            many = "s" if len(missing) > 1 else ""
            raise self.error(
                scope,
                f"{name} needs option{many} {', '.join(missing)} in its Path scope",
            )
        self.path_options.append((scope.label, tuple(values)))
        return [(scope.label, name)]


# Processors and their options ----------------------------------------------

# The types a processor's option may be declared with, as a configuration
# value can give them.
_OPTION_KINDS = (str, int, float, bool)


def find_processor(name: str) -> Any:
    """The object a processor's dotted name names; ``ValueError`` says, in
    one line, why it cannot be loaded: for a module not found, where Python
    looked and that ``twistd`` does not put the current folder there."""
    where = f"cannot load processor {name!r}"
    parts = name.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        raise ValueError(f"{where}: not a dotted name like package.module.Class")
    prefixes = {".".join(parts[:i]) for i in range(1, len(parts))}
    for end in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:end])
        try:
            spec = importlib.util.find_spec(module_name)
            module = importlib.import_module(module_name) if spec else None
        except ModuleNotFoundError as e:
            if e.name in prefixes:
                continue  # a parent is a module, not a package: look higher
            raise ValueError(f"{where}: importing {module_name!r} failed: {e}") from e
        except Exception as e:
            raise ValueError(
                f"{where}: importing {module_name!r} failed: {type(e).__name__}: {e}"
            ) from e
        if module is None:
            continue
        found: Any = module
        for attribute in parts[end:]:
            try:
                found = getattr(found, attribute)
            except AttributeError:
                rest = ".".join(parts[end:])
                raise ValueError(
                    f"{where}: module {module_name!r} has no {rest}"
                ) from None
        return found
    raise ValueError(f"{where}: {_not_on_path(parts[0])}")


def _not_on_path(top: str) -> str:
    """Why ``top`` was not imported: the import path, and the hint that
    ``twistd`` (unlike ``python``) leaves the current folder out of it."""
    looked = ", ".join(entry or "." for entry in sys.path)
    folder = os.getcwd()
    fix = "start it with PYTHONPATH=. or install the package"
    for candidate in (f"{top}.py", f"{top}/"):
        if os.path.exists(os.path.join(folder, candidate)) and not any(
            os.path.abspath(entry or ".") == folder for entry in sys.path
        ):
            return (
                f"no module {top!r} on the import path ({looked}); {candidate} is "
                f"in the current folder {folder}, which twistd does not put on "
                f"the import path: {fix}"
            )
    return (
        f"no module {top!r} on the import path ({looked}; twistd does not put "
        f"the current folder on it: {fix})"
    )


def declared_options(found: Any, name: str) -> dict[str, tuple[Any, bool]] | None:
    """The options a processor declares in its ``Options`` dataclass, by
    name: (the type a value is converted to, whether it is required);
    ``None`` when it declares none.  ``ValueError`` for a declaration a
    configuration cannot fill."""
    declared = getattr(found, "Options", None)
    if declared is None:
        return None
    if not (isinstance(declared, type) and dataclasses.is_dataclass(declared)):
        raise ValueError(f"Options of {name} is not a dataclass")
    try:
        hints = typing.get_type_hints(declared)
    except Exception as e:
        raise ValueError(
            f"Options of {name}: cannot read its types: {type(e).__name__}: {e}"
        ) from None
    fields: dict[str, tuple[Any, bool]] = {}
    for spec in dataclasses.fields(declared):
        if not spec.init:
            continue
        kind = _option_kind(hints.get(spec.name, Any))
        if kind is None:
            hint = hints.get(spec.name)
            shown = hint.__name__ if isinstance(hint, type) else str(hint)
            raise ValueError(
                f"option {spec.name} of {name} is declared {shown}: a "
                "configuration gives only str, int, float, bool or tuple[str, ...]"
            )
        required = (
            spec.default is dataclasses.MISSING
            and spec.default_factory is dataclasses.MISSING
        )
        fields[spec.name.lower()] = (kind, required)
    return fields


def _option_kind(hint: Any) -> Any:
    """``str``, ``int``, ``float``, ``bool`` or ``tuple`` (of strings) for
    a declared type (``X | None`` as ``X``); ``None`` for any other."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        others = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(others) != 1:
            return None
        hint = others[0]
    if hint in _OPTION_KINDS:
        return hint
    if typing.get_origin(hint) is tuple and typing.get_args(hint) == (str, ...):
        return tuple
    return None


def option_value(kind: Any, value: str | list[str]) -> Any:
    """A configuration value as ``kind`` (:func:`_option_kind`);
    ``ValueError`` ends "option NAME of PROCESSOR …" with what is wrong."""
    if kind is tuple:
        return tuple(value) if isinstance(value, list) else (value,)
    if isinstance(value, list):
        raise ValueError("takes one value, not a list")
    if kind is bool:
        text = value.lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
        raise ValueError(f"must be true or false, not {value!r}")
    if kind is int:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"must be a whole number, not {value!r}") from None
    if kind is float:
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"must be a number, not {value!r}") from None
    return value


R = _Reader
OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "Listen",
        HTTP_LISTENER,
        R.listen,
        "config.listen",
        "sets the listeners: Twisted server endpoints (`tcp:8080`, "
        "`tcp:8080:interface=127.0.0.1`, "
        "`ssl:8443:privateKey=key.pem:certKey=cert.pem`) or Momentum's `:8080`, "
        "`*:8080`, `192.0.2.1:8080`",
        default="tcp:8080",
        syntax='HTTP_Listener { Listen "ENDPOINT" { } ... }',
        is_scope=True,
    ),
    OptionSpec(
        "always_allow",
        LISTEN,
        R.networks,
        "access.allow",
        "only connections from these addresses/ranges are taken, e.g. "
        '`("192.0.2.0/24" "2001:db8::/32")`',
        shown="any",
    ),
    OptionSpec(
        "always_deny",
        LISTEN,
        R.networks,
        "access.deny",
        "connections from these addresses/ranges are refused (even if also in "
        "`always_allow`)",
        shown="none",
    ),
    OptionSpec(
        "mm7_server_default_email_from_address",
        MM7_SERV,
        R.text,
        "rules.from_address",
        "From for a sender with no number, or when no from domain is set",
    ),
    OptionSpec(
        "mm7_server_default_email_from_domain",
        MM7_SERV,
        R.text,
        "rules.from_domain",
        "sender Number/ShortCode → `<digits>@domain`",
    ),
    OptionSpec(
        "mm7_server_default_email_to_address",
        MM7_SERV,
        R.text,
        "rules.to_address",
        "To for a recipient with no number, or when no to domain is set",
    ),
    OptionSpec(
        "mm7_server_default_email_to_domain",
        MM7_SERV,
        R.text,
        "rules.to_domain",
        "recipient Number/ShortCode → `<digits>@domain`",
    ),
    OptionSpec(
        "mm7_server_version",
        MM7_SERV,
        R.text,
        "config.mm7_version",
        "the MM7Version of our answers to a request without one of its own",
        default="6.8.0",
    ),
    OptionSpec(
        "mm7_vasp_uri_paths",
        MM7_SERV,
        R.paths,
        "config.vasp_paths",
        "the paths MMSCs post to; each served with and without its `/`",
        shown="required",
    ),
    OptionSpec(
        "mm7_mmsc_uri_paths",
        MM7_SERV,
        R.paths,
        "config.mmsc_paths",
        "the paths VASPs submit to (also `/mm7/account=password`)",
        default='("/mm7/")',
    ),
    OptionSpec(
        "mm7_processor",
        MM7_SERV,
        R.processor,
        "config.processor",
        "dotted name of the processor class for every path",
        shown="the email processor",
    ),
    OptionSpec(
        "Path",
        MM7_SERV,
        R.path,
        "config.path_processors",
        "the processor for one path (a VASP or MMSC path), and the options "
        "it declares ([its own options](#a-processors-own-options))",
        shown="",
        syntax='Path "/p/" { processor = "…" OPTION = … }',
        is_scope=True,
    ),
    OptionSpec(
        "mm7_trusted_proxies",
        MM7_SERV,
        R.networks,
        "config.trusted_proxies",
        "HTTP proxies (addresses/ranges) whose `X-Forwarded-For` names the client "
        "for accounts, `allowed_networks` and failed-login counts",
        shown="none",
    ),
    OptionSpec(
        "mm7_max_failed_logins",
        MM7_SERV,
        R.integer,
        "config.max_failed_logins",
        "failed logins from one address within 60 s that lock it out "
        "(401 at once, no password checked)",
        default=str(DEFAULT_MAX_FAILED_LOGINS),
    ),
    OptionSpec(
        "mm7_login_lockout",
        MM7_SERV,
        R.seconds,
        "config.login_lockout",
        "how long such an address is locked out",
        default=f"{DEFAULT_LOGIN_LOCKOUT:g}",
        unit=" s",
    ),
    OptionSpec(
        "mm7_keep_smil",
        MM7_SERV,
        R.boolean,
        "config.keep_smil",
        "keep the SMIL part in the email: `true` or `false`",
        default="false",
    ),
    OptionSpec(
        "mm7_access_log",
        MM7_SERV,
        R.boolean,
        "config.access_log",
        "also log Twisted's combined access line per request (the transaction "
        "line, always logged, says as much): `true` or `false`",
        default="false",
    ),
    OptionSpec(
        "mm7_report_mail_from",
        MM7_SERV,
        R.report_mail_from,
        "rules.report_mail_from",
        "the envelope sender (`MAIL FROM`) of the mails that report on another "
        "message (from a DeliveryReportReq or ReadReplyReq, marked "
        "`Auto-Submitted: auto-replied`): empty, the null sender `<>`, so that "
        "a bounce of one goes nowhere; an address for relays that refuse `<>`",
        default='""',
    ),
    OptionSpec(
        "mm7_log_addresses",
        MM7_SERV,
        R.log_addresses,
        "config.log_addresses",
        "the sender and recipients in the transaction log: `masked` (numbers "
        "to their last four digits, `*******4567`; email addresses to the "
        "first character of the local part, `j***@example.com`), `full` or "
        "`none` (see Logs)",
        default="masked",
    ),
    OptionSpec(
        "mm7_delivery_report_attempts",
        MM7_SERV,
        R.integer,
        "config.delivery_report_attempts",
        "tries to post a delivery report back (1 s, 2 s, 4 s … apart, at most 300 s)",
        default="8",
    ),
    OptionSpec(
        "mm7_client_max_answer_size",
        MM7_SERV,
        R.integer,
        "config.client_max_answer_size",
        "the most of an answer's body read when mm7tx posts (delivery reports): a "
        "larger `Content-Length`, or a body going past it, aborts the post, logged "
        "as failed and not retried; the answer's headers are at most 16 KiB "
        "(`K`, `M` suffixes)",
        default="1M",
    ),
    OptionSpec(
        "mm7_max_request_size",
        MM7_SERV,
        R.integer,
        "config.max_request_size",
        "larger `Content-Length` → 413 before the body is read; a chunked body is "
        "cut off at the limit (`K`, `M` suffixes); in a plain `Site`, 413 once "
        "received (Co-hosting)",
        default="5M",
    ),
    OptionSpec(
        "mm7_request_timeout",
        MM7_SERV,
        R.seconds,
        "config.request_timeout",
        "a request must arrive whole within this of its first byte (slowloris) "
        "→ 408 and close",
        default="30",
        unit=" s",
    ),
    OptionSpec(
        "mm7_idle_timeout",
        MM7_SERV,
        R.seconds,
        "config.idle_timeout",
        "idle keep-alive connections are closed",
        default="60",
        unit=" s",
    ),
    OptionSpec(
        "mm7_max_connections",
        MM7_SERV,
        R.integer,
        "config.max_connections",
        "open connections on each listener; past it a new one is closed at once "
        "(the soft open-file limit is raised to the hard one at start)",
        default=str(DEFAULT_MAX_CONNECTIONS),
    ),
    OptionSpec(
        "mm7_max_connections_per_address",
        MM7_SERV,
        R.integer,
        "config.max_connections_per_address",
        "open connections from one source address, over all listeners; past it a "
        "new one is closed at once (raise it behind a load balancer or proxy)",
        default=str(DEFAULT_MAX_CONNECTIONS_PER_ADDRESS),
    ),
    OptionSpec(
        "mm7_max_transactions",
        MM7_SERV,
        R.integer,
        "config.max_transactions",
        "transactions in flight; past it → 4006 at once, never an endless queue",
        default="200",
    ),
    OptionSpec(
        "mm7_drain_timeout",
        MM7_SERV,
        R.seconds,
        "config.drain_timeout",
        "on SIGTERM, how long in-flight transactions may take to finish",
        default="30",
        unit=" s",
    ),
    OptionSpec(
        "workers",
        MM7_SERV,
        R.workers,
        "config.workers",
        "worker processes serving the listeners (bound once, by the parent), "
        "or `auto`: one per core; `--workers` overrides it (see Workers)",
        default="1",
    ),
    OptionSpec(
        "metrics_listen",
        MM7_SERV,
        R.metrics_listen,
        "config.metrics_listen",
        "where `/metrics` (Prometheus), `/healthz` and `/readyz` are served: a "
        "server endpoint, or `none`; one that cannot listen is logged, and MM7 "
        "goes on without it",
        default=f'"{DEFAULT_METRICS_LISTEN}"',
    ),
    OptionSpec(
        "mm7_xml_max_depth",
        MM7_SERV,
        R.integer,
        "xml.max_depth",
        "how deep a SOAP document may be → 2007 beyond",
        default="32",
    ),
    OptionSpec(
        "mm7_xml_max_elements",
        MM7_SERV,
        R.integer,
        "xml.max_elements",
        "how many elements a SOAP document may have → 2007 beyond",
        default="10000",
    ),
    OptionSpec(
        "smtp_relay",
        MM7_SERV,
        R.relay,
        "smtp.endpoint",
        "where mail goes: a client endpoint (`tcp:HOST:PORT`, `tls:HOST:PORT` for "
        "implicit TLS) or `maildir:PATH`",
        default="tcp:127.0.0.1:25",
    ),
    OptionSpec(
        "smtp_starttls",
        MM7_SERV,
        R.starttls,
        "smtp.starttls",
        "`off`, `opportunistic` (when offered; certificate checked only with "
        "`smtp_ca_file`), `required` (certificate checked)",
        default="opportunistic",
    ),
    OptionSpec(
        "smtp_ca_file",
        MM7_SERV,
        R.ca_file,
        "smtp.ca_file",
        "PEM CA to check the relay's certificate (read at start)",
        shown="system CAs",
    ),
    OptionSpec(
        "smtp_tls_hostname",
        MM7_SERV,
        R.text,
        "smtp.tls_hostname",
        "the name the relay's certificate must carry",
        shown="endpoint host",
    ),
    OptionSpec(
        "smtp_username",
        MM7_SERV,
        R.text,
        "smtp.username",
        "AUTH (CRAM-MD5, LOGIN, PLAIN), required once set; needs `smtp_password`",
    ),
    OptionSpec(
        "smtp_password",
        MM7_SERV,
        R.text,
        "smtp.password",
        "the AUTH password; needs `smtp_username`",
    ),
    OptionSpec(
        "smtp_helo",
        MM7_SERV,
        R.text,
        "smtp.helo",
        "our EHLO name",
        shown="`localhost`",
    ),
    OptionSpec(
        "smtp_connect_timeout",
        MM7_SERV,
        R.seconds,
        "smtp.connect_timeout",
        "to connect to the relay",
        default="10",
        unit=" s",
    ),
    OptionSpec(
        "smtp_command_timeout",
        MM7_SERV,
        R.seconds,
        "smtp.command_timeout",
        "to wait for each relay reply (mid-DATA: for the connection to take more)",
        default="20",
        unit=" s",
    ),
    OptionSpec(
        "smtp_timeout",
        MM7_SERV,
        R.seconds,
        "smtp.total_timeout",
        "for the whole message, from its request to the relay's 250 (→ 4006): keep it under the peers' timeout, often 30 s",
        default="25",
        unit=" s",
    ),
    OptionSpec(
        "smtp_max_connections",
        MM7_SERV,
        R.integer,
        "smtp.max_connections",
        "SMTP sessions open at once; more messages wait within `smtp_timeout`",
        default="20",
    ),
    OptionSpec(
        "smtp_idle_timeout",
        MM7_SERV,
        R.seconds,
        "smtp.idle_timeout",
        "an unused pooled SMTP session is closed",
        default="30",
        unit=" s",
    ),
    OptionSpec(
        "password",
        VASP,
        R.text,
        "account.password",
        "plain text, or a salted hash made by `mm7tx hash-password`",
        shown="required unless the name is an address",
    ),
    OptionSpec(
        "allowed_networks",
        VASP,
        R.networks,
        "account.networks",
        "source addresses/ranges that may use the account, e.g. "
        '`("192.0.2.0/24" "2001:db8::/32")`',
        shown="any",
    ),
    OptionSpec(
        "max_message_size",
        VASP,
        R.integer,
        "account.max_message_size",
        "largest request in bytes (`K`, `M` suffixes) → 2004 above it",
    ),
    OptionSpec(
        "max_recipients",
        VASP,
        R.integer,
        "account.max_recipients",
        "most To+Cc+Bcc per SubmitReq → 2001 above it",
    ),
    OptionSpec(
        "rate",
        VASP,
        R.real,
        "account.rate",
        'requests per second → 4006 "Rate limit of N requests/s exceeded" above it',
    ),
    OptionSpec(
        "delivery_report_url",
        VASP,
        R.url,
        "account.delivery_report_url",
        "where to post `DeliveryReportReq` when a SubmitReq asks for a delivery "
        "report: an http(s) URL; a `user:password@` in it (percent-encoded, as "
        "Mbuni writes it) is the HTTP Basic user and password of that post",
    ),
    OptionSpec(
        "delivery_report_user",
        VASP,
        R.text,
        "account.delivery_report_user",
        "HTTP Basic user for that post",
    ),
    OptionSpec(
        "delivery_report_password",
        VASP,
        R.text,
        "account.delivery_report_password",
        "HTTP Basic password for that post; needs `delivery_report_user`",
    ),
    OptionSpec(
        "fault_http_status",
        VASP,
        R.fault_status,
        "account.fault_http_status",
        "HTTP status of our faults to it once authenticated, `200` or `500`: "
        "`200` for peers that read faults only there (Mbuni's mmsbox)",
        shown="`500`",
    ),
    OptionSpec(
        "password",
        MMSC,
        R.text,
        "account.password",
        "for HTTP Basic: plain text, or a salted hash made by `mm7tx hash-password`",
        shown="required unless the name is an address",
    ),
    OptionSpec(
        "allowed_networks",
        MMSC,
        R.networks,
        "account.networks",
        "source addresses/ranges that may use the account",
        shown="any",
    ),
    OptionSpec(
        "fault_http_status",
        MMSC,
        R.fault_status,
        "account.fault_http_status",
        "HTTP status of our faults to it once authenticated, `200` or `500`",
        shown="`500`",
    ),
)
del R

_BY_SCOPE: dict[str, dict[str, OptionSpec]] = {}
for _option in OPTIONS:
    _BY_SCOPE.setdefault(_option.scope, {})[_option.name.lower()] = _option


def options_markdown(scope: str) -> str:
    """The README's text for one scope's options, generated from
    :data:`OPTIONS` so the documentation cannot drift from the parser."""
    specs = [spec for spec in OPTIONS if spec.scope == scope]
    if scope == HTTP_LISTENER:
        [spec] = specs
        return f"`{spec.syntax}` {spec.help} (default `{spec.default}`).\n"
    lines = [f"| option (in `{scope}`) | default | meaning |", "|---|---|---|"]
    lines += [spec.markdown_row() for spec in specs]
    return "\n".join(lines) + "\n"


def fill_option_tables(markdown: str) -> str:
    """``markdown`` with the text between ``<!-- options:SCOPE -->`` and
    ``<!-- /options -->`` replaced by :func:`options_markdown` (how the
    README is kept up to date)."""

    def fill(match: re.Match[str]) -> str:
        table = options_markdown(match.group(2))
        return f"{match.group(1)}\n\n{table}\n<!-- /options -->"

    return re.sub(
        r"(<!-- options:(\w+) -->)\n.*?<!-- /options -->", fill, markdown, flags=re.S
    )


# Reading the tree ----------------------------------------------------------


class _Values:
    """What the options of a scope set, by group, and the line of each."""

    def __init__(self, reader: _Reader) -> None:
        self.reader = reader
        self.groups: dict[str, dict[str, Any]] = {}
        self.lines: dict[str, int] = {}

    def read(self, scope: Scope, scope_name: str) -> None:
        specs = _BY_SCOPE[scope_name]
        for entry in scope.body:
            spec = specs.get(entry.name.lower())
            if spec is None or spec.is_scope != isinstance(entry, Scope):
                kind = "scope" if isinstance(entry, Scope) else "option"
                if scope_name == HTTP_LISTENER:
                    kind = "entry"
                names = [
                    other.name
                    for other in specs.values()
                    if other.is_scope == isinstance(entry, Scope)
                ]
                raise self.reader.error(
                    entry,
                    f"unknown {scope_name} {kind} {entry.name!r}"
                    + did_you_mean(entry.name, names),
                )
            if not spec.is_scope and spec.name in self.lines:
                raise self.reader.error(
                    entry,
                    f"{spec.name} is set twice (first on line "
                    f"{self.lines[spec.name]}); keep one",
                )
            group, attribute = spec.field.split(".")
            values = self.groups.setdefault(group, {})
            if spec.is_scope:
                values.setdefault(attribute, []).extend(spec.reader(self.reader, entry))
            else:
                values[attribute] = spec.reader(self.reader, entry)
            self.lines[spec.name] = entry.line

    def get(self, group: str) -> dict[str, Any]:
        return self.groups.get(group, {})


def did_you_mean(name: str, names: list[str]) -> str:
    """``; did you mean 'x'?`` for the name in ``names`` closest to
    ``name`` (names are case-insensitive), or nothing when none is close."""
    by_lower = {other.lower(): other for other in names}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""


# The scopes a file may have at its top level.
_TOP_SCOPES = [HTTP_LISTENER, MM7_SERV, VASP, MMSC]


def load(text: str, source: str = "<config>") -> Config:
    """Read a configuration text into a :class:`Config`."""
    reader = _Reader(source)
    top = _Values(reader)
    mm7_servs: list[Scope] = []
    vasps: list[tuple[Scope, Account]] = []
    mmscs: list[tuple[Scope, Account]] = []
    origins: list[str] = []
    for item in parse(text.removeprefix("\ufeff"), source):
        kind = item.name.lower()
        if isinstance(item, Option):
            homes = [
                scope
                for scope in _TOP_SCOPES
                if item.name.lower() in _BY_SCOPE.get(scope, {})
            ]
            where = f"; it belongs in {homes[0]} {{ }}" if homes else ""
            raise reader.error(item, f"unknown top-level option {item.name!r}{where}")
        if kind == "http_listener":
            top.read(item, HTTP_LISTENER)
            origins += [f"{source}, line {entry.line}" for entry in item.body]
        elif kind == "vasp":
            vasps.append((item, _account(reader, item)))
        elif kind == "mmsc":
            mmscs.append((item, _account(reader, item, MMSC)))
        elif kind == "mm7_serv":
            mm7_servs.append(item)
            top.read(item, MM7_SERV)
        else:
            raise reader.error(
                item,
                f"unknown scope {item.name!r}" + did_you_mean(item.name, _TOP_SCOPES),
            )
    if not mm7_servs:
        raise ConfigError(source, 1, "no mm7_serv { } scope")
    mm7_serv = mm7_servs[0]
    values = top.get("config")
    smtp = top.get("smtp")

    def line(option: str) -> int:
        return top.lines.get(option, mm7_serv.line)

    if not values.get("vasp_paths"):
        raise ConfigError(
            source,
            line("mm7_vasp_uri_paths"),
            "mm7_vasp_uri_paths is required in mm7_serv",
        )
    vasp_paths = values["vasp_paths"]
    mmsc_paths = values.get("mmsc_paths", _DEFAULTS.mmsc_paths)
    overlap = sorted(set(vasp_paths) & set(mmsc_paths))
    if overlap:
        # The later of the two options is at fault (the VASP one if the MMSC
        # paths are the default).
        at = max(line("mm7_vasp_uri_paths"), top.lines.get("mm7_mmsc_uri_paths", 0))
        raise ConfigError(
            source, at, f"{overlap[0]} is both a VASP path and an MMSC path"
        )
    for entry in (entry for scope in mm7_servs for entry in scope.body):
        # The Path scopes, the only scopes there.
        if isinstance(entry, Scope) and entry.label not in vasp_paths + mmsc_paths:
            raise ConfigError(
                source,
                entry.line,
                f"Path {entry.label!r} is not a configured VASP or MMSC path",
            )
    if "username" in smtp and "password" not in smtp:
        raise ConfigError(
            source,
            line("smtp_username"),
            "smtp_username is set but smtp_password is not",
        )
    if "password" in smtp and "username" not in smtp:
        raise ConfigError(
            source,
            line("smtp_password"),
            "smtp_password is set but smtp_username is not",
        )
    rules = top.get("rules")
    for side, role in (("from", "sender"), ("to", "recipient")):
        if not rules.get(f"{side}_domain") and not rules.get(f"{side}_address"):
            # Every message with a Number or ShortCode there would be 2002.
            raise ConfigError(
                source,
                mm7_serv.line,
                f"mm7_serv needs mm7_server_default_email_{side}_domain (or "
                f"mm7_server_default_email_{side}_address): without either, "
                f"every message whose {role} is a number is refused (2002)",
            )
    for kind, accounts in (("VASP", vasps), ("MMSC", mmscs)):
        seen: set[str] = set()
        for scope, account in accounts:
            if account.name in seen:
                raise ConfigError(
                    source, scope.line, f'{kind} "{account.name}" is defined twice'
                )
            seen.add(account.name)
    return Config(
        listen=tuple(values.pop("listen", ())) or _DEFAULTS.listen,
        listen_origins=tuple(origins),
        listen_access=tuple(reader.listen_access),
        rules=AddressRules(**top.get("rules")),
        smtp=SMTPSettings(**smtp),
        smtp_relay_origin=(
            f"{source}, line {top.lines['smtp_relay']}"
            if "smtp_relay" in top.lines
            else source
        ),
        path_processors=tuple(values.pop("path_processors", ())),
        path_options=tuple(reader.path_options),
        vasps=tuple(vasp for _, vasp in vasps),
        mmscs=tuple(mmsc for _, mmsc in mmscs),
        xml_limits=XMLLimits(**top.get("xml")),
        source=source,
        **values,
    )


def _account(reader: _Reader, scope: Scope, kind: str = VASP) -> Account:
    """A ``VASP "name" { … }`` or ``MMSC "name" { … }`` scope."""
    if not scope.label:
        raise reader.error(
            scope, f'{kind} needs a name: {kind} "{kind.lower()}1" {{ password = "…" }}'
        )
    found = _Values(reader)
    found.read(scope, kind)
    values = found.get("account")
    if network(scope.label) is None and "password" not in values:
        raise reader.error(
            scope,
            f'{kind} "{scope.label}" needs a password (or name it by an IP address)',
        )
    url = values.get("delivery_report_url")
    bare, in_url = url_credentials(url) if url is not None else (url, None)
    if in_url is not None:
        # Mbuni's http://user:pass@host/…: HTTP Basic credentials.
        if "delivery_report_user" in values or "delivery_report_password" in values:
            raise ConfigError(
                reader.source,
                found.lines["delivery_report_url"],
                "delivery_report_url carries credentials (user:password@) and "
                "delivery_report_user or delivery_report_password is set too; "
                "keep one",
            )
        values["delivery_report_url"] = bare
        values["delivery_report_user"], values["delivery_report_password"] = in_url
    if "delivery_report_password" in values and "delivery_report_user" not in values:
        raise ConfigError(
            reader.source,
            found.lines["delivery_report_password"],
            "delivery_report_password is set but delivery_report_user is not",
        )
    return Account(scope.label, **values)


def load_file(path: str) -> Config:
    """Read a configuration file; :class:`ConfigError` names the file on error."""
    return load(read_text(path), path)


def read_text(path: str) -> str:
    """A configuration file's text; :class:`ConfigError` if it cannot be
    read or is not UTF-8."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(path, 0, f"cannot read the file: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            path, line, f"the file is not UTF-8 text (byte 0x{data[e.start]:02x})"
        ) from None
    return text


def with_overrides(
    config: Config,
    listen: list[str] | None = None,
    smtp_relay: str | None = None,
    workers: str | None = None,
) -> Config:
    """The command line's ``--listen``, ``--smtp-relay`` and ``--workers``
    over the file.

    Each is checked as the file's options are; a :class:`ConfigError` names
    the command-line option.
    """
    if listen:
        endpoints = []
        for endpoint in listen:
            try:
                endpoints.append(check_listen(endpoint))
            except ValueError as e:
                raise ConfigError("--listen", 0, str(e)) from None
        config = replace(
            config,
            listen=tuple(endpoints),
            listen_origins=("--listen",) * len(endpoints),
            # The file's always_allow / always_deny went with its listeners.
            listen_access=(),
        )
    if smtp_relay:
        try:
            check_relay(smtp_relay)
        except ValueError as e:
            raise ConfigError("--smtp-relay", 0, str(e)) from None
        config = replace(
            config,
            smtp=replace(config.smtp, endpoint=smtp_relay),
            smtp_relay_origin="--smtp-relay",
        )
    if workers is not None:
        try:
            config = replace(config, workers=read_workers(workers))
        except ValueError as e:
            raise ConfigError("--workers", 0, str(e)) from None
    if config.workers > 1:
        check_shared(config)
    return config


# Listeners workers can share: the parent binds them and passes each worker
# the socket (ssl: TLS is done in the worker; haproxy: over these).
SHARED_KINDS = ("tcp", "tcp6", "ssl", "unix", "systemd")


def check_shared(config: Config) -> None:
    """Every listener of ``config`` is one the parent can bind and pass to
    workers as a socket; a :class:`ConfigError` names the one that is not."""
    for index, endpoint in enumerate(config.listen):
        kind, _, _ = inner_endpoint(endpoint)
        if kind not in SHARED_KINDS:
            origins = config.listen_origins
            origin = origins[index] if index < len(origins) else config.source
            raise ConfigError(
                origin,
                0,
                f"Listen {endpoint!r} cannot be shared by workers (workers = "
                f"{config.workers}): with workers, listen on "
                f"{', '.join(SHARED_KINDS)} (or haproxy: over one of them)",
            )
