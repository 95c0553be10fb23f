"""How options are declared (:class:`OptionSpec`) and read: the value
readers the declarations name, each raising a :class:`ConfigError` at the
option's line, and :class:`ScopeValues`, which reads a scope's options by
their declarations."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mm7tx.config.endpoints import check_listen, check_relay
from mm7tx.config.errors import ConfigError
from mm7tx.config.grammar import Option, Scope
from mm7tx.config.model import Listener
from mm7tx.config.processors import declared_options, find_processor, option_value
from mm7tx.http.settings import ListenAccess
from mm7tx.logs import LOG_ADDRESSES
from mm7tx.mm7.peers import network
from mm7tx.store.spec import StoreSpec, StoreSpecError, parse_store

# The scopes options are declared in.
MM7_SERV, VASP, HTTP_LISTENER = "mm7_serv", "VASP", "HTTP_Listener"
MMSC, LISTEN = "MMSC", "Listen"
ESMTP_LISTENER = "ESMTP_Listener"

# mm7_report_mail_from: a mailbox with no space, bracket, quote or control
# character, which no relay could misread in MAIL FROM.
_NOT_IN_SENDER = r'\s<>@"(),;:\\\[\]\x00-\x1f\x7f-\x9f'
_DOMAIN = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
_ENVELOPE_SENDER = re.compile(f"[^{_NOT_IN_SENDER}]+@[^{_NOT_IN_SENDER}]+")


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
    reader: Callable[[Reader, Any], Any]
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


# The values of the boolean and enumerated options: exactly the words the
# README lists (in any case), no aliases: "smtp_starttls = yes" could mean
# opportunistic or required, and a reader of the file should not have to know.
_STARTTLS = ("off", "opportunistic", "required")
_BOOLEANS = {"true": True, "false": False}


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


class Reader:
    """The readers options are declared with; each raises a
    :class:`ConfigError` at the option's line."""

    def __init__(
        self, source: str, specs: Mapping[str, Mapping[str, OptionSpec]]
    ) -> None:
        self.source = source
        # The declared options of each scope, by lower-case name.
        self.specs = specs
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
        credentials, which the loader takes out)."""
        url = self.text(option)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.error(
                option, f"{option.name} must be an http(s) URL with a host"
            )
        try:
            parts.port  # noqa: B018 - raises on a port out of range
        except ValueError:
            raise self.error(
                option, f"{option.name} has a port that is not 0 to 65535"
            ) from None
        return url

    def domains(self, option: Option) -> tuple[str, ...]:
        """Mail domains: names of letters, digits, ``-`` and ``.``."""
        items = option.value if isinstance(option.value, list) else [option.value]
        for item in items:
            if not _DOMAIN.fullmatch(item.strip().rstrip(".")):
                raise self.error(option, f"{option.name}: {item!r} is not a domain")
        return tuple(item.strip().lower().rstrip(".") for item in items)

    def prefixes(self, option: Option) -> tuple[str, ...]:
        """Number prefixes: digits, a leading ``+`` allowed."""
        items = option.value if isinstance(option.value, list) else [option.value]
        for item in items:
            if not item.strip().lstrip("+").isdigit():
                raise self.error(
                    option, f"{option.name}: {item!r} is not a number prefix"
                )
        return tuple(item.strip().lstrip("+") for item in items)

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

    def state_store(self, option: Option) -> StoreSpec:
        """``state_store``: a store :func:`~mm7tx.store.parse_store` names;
        its error never shows a password."""
        try:
            spec = parse_store(self.text(option))
        except StoreSpecError as e:
            raise self.error(option, str(e)) from None
        if spec.kind == "sqlite":
            problem = _sqlite_folder_problem(spec.path)
            if problem:
                raise self.error(option, f"state_store sqlite:{spec.path}: {problem}")
        return spec

    def listen(self, scope: Scope) -> list[Listener]:
        """A ``Listen "ENDPOINT" { }`` scope."""
        if not scope.label:
            raise self.error(scope, 'Listen needs an address: Listen ":8080" { }')
        found = ScopeValues(self)
        found.read(scope, LISTEN)
        try:
            endpoint = check_listen(scope.label)
        except ValueError as e:
            raise self.error(scope, f"Listen: {e}") from None
        origin = f"{self.source}, line {scope.line}"
        return [Listener(endpoint, origin, ListenAccess(**found.get("access")))]

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


class ScopeValues:
    """What the options of a scope set, by group, and the line of each."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.groups: dict[str, dict[str, Any]] = {}
        self.lines: dict[str, int] = {}

    def read(self, scope: Scope, scope_name: str) -> None:
        specs = self.reader.specs[scope_name]
        for entry in scope.body:
            spec = specs.get(entry.name.lower())
            if spec is None or spec.is_scope != isinstance(entry, Scope):
                kind = "scope" if isinstance(entry, Scope) else "option"
                if scope_name in (HTTP_LISTENER, ESMTP_LISTENER):
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


def _sqlite_folder_problem(path: str) -> str | None:
    """Why SQLite could never make its file (and its WAL beside it) at
    ``path``: the folder does not exist or is not writable; ``None`` if it
    could."""
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        return f"the folder {folder!r} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {folder!r} is not writable"
    return None
