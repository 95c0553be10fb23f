"""The configuration file: Momentum's grammar, read into a typed :class:`Config`.

The grammar: case-insensitive option names, ``#`` comments, ``name = value``,
quoted strings, lists in ``( )``, scopes in ``{ }`` and named scopes such as
``Listen "tcp:8080" { }``.  Every mistake is reported with the file, the line
and the option, so a bad file stops the start with a message an operator can
act on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.python.reflect import namedAny

from mm7tx.auth import Account, network
from mm7tx.codec.soap import XMLLimits
from mm7tx.esmtp import SMTPSettings
from mm7tx.messages import DEFAULT_MM7_VERSION
from mm7tx.processors import AddressRules
from mm7tx.site import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_REQUEST_SIZE,
    DEFAULT_REQUEST_TIMEOUT,
)


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names file and line."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}, line {line}: {message}")
        self.source = source
        self.line = line


# Parsing the grammar -------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r]+) |
    (?P<newline>\n) |
    (?P<comment>\#[^\n]*) |
    (?P<string>"(?:[^"\\\n]|\\.)*") |
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


@dataclass(frozen=True, slots=True)
class Config:
    """Everything mm7tx needs to start, from a file or the embedded defaults."""

    listen: tuple[str, ...] = ("tcp:8080",)
    rules: AddressRules = field(default_factory=AddressRules)
    mm7_version: str = DEFAULT_MM7_VERSION
    vasp_paths: tuple[str, ...] = ()
    mmsc_paths: tuple[str, ...] = ("/mm7/",)
    vasps: tuple[Account, ...] = ()
    delivery_report_attempts: int = 8
    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_transactions: int = 200
    drain_timeout: float = 30.0
    xml_limits: XMLLimits = field(default_factory=XMLLimits)
    smtp: SMTPSettings = field(default_factory=SMTPSettings)
    processor: str | None = None
    path_processors: tuple[tuple[str, str], ...] = ()
    keep_smil: bool = False
    source: str = "embedded defaults"

    def processor_for(self, path: str) -> str | None:
        return dict(self.path_processors).get(path, self.processor)


EMBEDDED = Config(
    listen=("tcp:8080",),
    rules=AddressRules(
        from_address="mm7tx@localhost", to_address="postmaster@localhost"
    ),
    vasp_paths=("/vasp/",),
    smtp=SMTPSettings(endpoint="maildir:Maildir"),
)

_RULES = {
    "mm7_server_default_email_from_address": "from_address",
    "mm7_server_default_email_from_domain": "from_domain",
    "mm7_server_default_email_to_address": "to_address",
    "mm7_server_default_email_to_domain": "to_domain",
}
_SMTP_TEXT = {
    "smtp_relay": "endpoint",
    "smtp_ca_file": "ca_file",
    "smtp_tls_hostname": "tls_hostname",
    "smtp_username": "username",
    "smtp_password": "password",
    "smtp_helo": "helo",
}
_SMTP_SECONDS = {
    "smtp_connect_timeout": "connect_timeout",
    "smtp_command_timeout": "command_timeout",
    "smtp_timeout": "total_timeout",
    "smtp_idle_timeout": "idle_timeout",
}
_STARTTLS = {
    "off": "off",
    "no": "off",
    "opportunistic": "opportunistic",
    "when_offered": "opportunistic",
    "required": "required",
    "yes": "required",
}


def normalise_endpoint(text: str) -> str:
    """Momentum's ``:8080`` / ``*:8080`` / ``1.2.3.4:8080`` as a Twisted endpoint."""
    match = re.fullmatch(r"(\*|[\d.]+|\[[0-9a-fA-F:]+\])?:(\d+)", text.strip())
    if match is None:
        return text
    host, port = match.groups()
    if host in (None, "*"):
        return f"tcp:{port}"
    return f"tcp:{port}:interface={host.strip('[]').replace(':', chr(92) + ':')}"


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

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
        """A processor's dotted name, checked now so a typo stops the start."""
        name = self.text(option)
        try:
            found = namedAny(name)
        except Exception as e:
            raise self.error(
                option, f"cannot load processor {name!r}: {type(e).__name__}: {e}"
            ) from None
        if not callable(found):
            raise self.error(option, f"processor {name!r} is not a class or factory")
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

    def account(self, scope: Scope) -> Account:
        """A ``VASP "name" { … }`` scope."""
        if not scope.label:
            raise self.error(
                scope, 'VASP needs a name: VASP "vasp1" { password = "…" }'
            )
        values: dict[str, Any] = {}
        for option in scope.body:
            name = option.name.lower()
            if isinstance(option, Scope):
                raise self.error(option, f"unknown VASP scope {option.name!r}")
            if name == "password":
                values["password"] = self.text(option)
            elif name == "allowed_networks":
                items = (
                    option.value if isinstance(option.value, list) else [option.value]
                )
                networks = []
                for item in items:
                    net = network(item)
                    if net is None:
                        raise self.error(
                            option, f"{item!r} is not an IP address or range"
                        )
                    networks.append(net)
                values["networks"] = tuple(networks)
            elif name == "max_message_size":
                values["max_message_size"] = int(self.number(option))
            elif name == "max_recipients":
                values["max_recipients"] = int(self.number(option))
            elif name == "rate":
                values["rate"] = self.number(option, integer=False)
            elif name == "delivery_report_url":
                url = self.text(option)
                if not url.startswith(("http://", "https://")):
                    raise self.error(
                        option, "delivery_report_url must be an http(s) URL"
                    )
                values["delivery_report_url"] = url
            elif name == "delivery_report_user":
                values["delivery_report_user"] = self.text(option)
            elif name == "delivery_report_password":
                values["delivery_report_password"] = self.text(option)
            else:
                raise self.error(option, f"unknown VASP option {option.name!r}")
        if network(scope.label) is None and "password" not in values:
            raise self.error(
                scope,
                f'VASP "{scope.label}" needs a password (or name it by an IP address)',
            )
        return Account(scope.label, **values)

    def boolean(self, option: Option) -> bool:
        text = self.text(option).lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
        raise self.error(option, f"{option.name} must be true or false")


def load(text: str, source: str = "<config>") -> Config:
    """Read a configuration text into a :class:`Config`."""
    reader = _Reader(source)
    listen: list[str] = []
    rules: dict[str, Any] = {}
    smtp: dict[str, Any] = {}
    values: dict[str, Any] = {}
    path_processors: list[tuple[str, str]] = []
    vasps: list[Account] = []
    xml: dict[str, int] = {}
    seen_mm7 = False
    for item in parse(text, source):
        kind = item.name.lower()
        if isinstance(item, Option):
            raise reader.error(item, f"unknown top-level option {item.name!r}")
        if kind == "http_listener":
            for entry in item.body:
                if isinstance(entry, Scope) and entry.name.lower() == "listen":
                    if not entry.label:
                        raise reader.error(
                            entry, 'Listen needs an address: Listen ":8080" { }'
                        )
                    if entry.body:
                        raise reader.error(
                            entry.body[0],
                            f"unknown Listen option {entry.body[0].name!r}",
                        )
                    listen.append(normalise_endpoint(entry.label))
                else:
                    raise reader.error(
                        entry, f"unknown HTTP_Listener entry {entry.name!r}"
                    )
        elif kind == "vasp":
            vasps.append(reader.account(item))
        elif kind == "mm7_serv":
            seen_mm7 = True
            for entry in item.body:
                name = entry.name.lower()
                if isinstance(entry, Scope):
                    if name != "path" or not entry.label:
                        raise reader.error(
                            entry, f"unknown mm7_serv scope {entry.name!r}"
                        )
                    for option in entry.body:
                        if (
                            isinstance(option, Scope)
                            or option.name.lower() != "processor"
                        ):
                            raise reader.error(
                                option, f"unknown Path option {option.name!r}"
                            )
                        path_processors.append((entry.label, reader.processor(option)))
                elif name in _RULES:
                    rules[_RULES[name]] = reader.text(entry)
                elif name in _SMTP_TEXT:
                    smtp[_SMTP_TEXT[name]] = reader.text(entry)
                elif name in _SMTP_SECONDS:
                    smtp[_SMTP_SECONDS[name]] = reader.seconds(entry)
                elif name == "smtp_starttls":
                    mode = _STARTTLS.get(reader.text(entry).lower())
                    if mode is None:
                        raise reader.error(
                            entry,
                            "smtp_starttls must be off, opportunistic or required",
                        )
                    smtp["starttls"] = mode
                elif name == "mm7_server_version":
                    values["mm7_version"] = reader.text(entry)
                elif name == "mm7_vasp_uri_paths":
                    values["vasp_paths"] = reader.paths(entry)
                elif name == "mm7_mmsc_uri_paths":
                    values["mmsc_paths"] = reader.paths(entry)
                elif name == "mm7_delivery_report_attempts":
                    values["delivery_report_attempts"] = int(reader.number(entry))
                elif name == "mm7_max_request_size":
                    values["max_request_size"] = int(reader.number(entry))
                elif name == "mm7_request_timeout":
                    values["request_timeout"] = reader.seconds(entry)
                elif name == "mm7_idle_timeout":
                    values["idle_timeout"] = reader.seconds(entry)
                elif name == "mm7_max_transactions":
                    values["max_transactions"] = int(reader.number(entry))
                elif name == "mm7_drain_timeout":
                    values["drain_timeout"] = reader.seconds(entry)
                elif name == "mm7_xml_max_depth":
                    xml["max_depth"] = int(reader.number(entry))
                elif name == "mm7_xml_max_elements":
                    xml["max_elements"] = int(reader.number(entry))
                elif name == "smtp_max_connections":
                    smtp["max_connections"] = int(reader.number(entry))
                elif name == "mm7_processor":
                    values["processor"] = reader.processor(entry)
                elif name == "mm7_keep_smil":
                    values["keep_smil"] = reader.boolean(entry)
                else:
                    raise reader.error(entry, f"unknown mm7_serv option {entry.name!r}")
        else:
            raise reader.error(item, f"unknown scope {item.name!r}")
    if not seen_mm7:
        raise ConfigError(source, 1, "no mm7_serv { } scope")
    if not values.get("vasp_paths"):
        raise ConfigError(source, 1, "mm7_vasp_uri_paths is required in mm7_serv")
    for path, _ in path_processors:
        if path not in values["vasp_paths"] + values.get("mmsc_paths", ("/mm7/",)):
            raise ConfigError(
                source, 1, f"Path {path!r} is not a configured VASP or MMSC path"
            )
    names = [vasp.name for vasp in vasps]
    for vasp in vasps:
        if names.count(vasp.name) > 1:
            raise ConfigError(source, 1, f'VASP "{vasp.name}" is defined twice')
    overlap = set(values.get("vasp_paths", ())) & set(
        values.get("mmsc_paths", ("/mm7/",))
    )
    if overlap:
        raise ConfigError(
            source, 1, f"{sorted(overlap)[0]} is both a VASP path and an MMSC path"
        )
    if "username" in smtp and "password" not in smtp:
        raise ConfigError(source, 1, "smtp_username is set but smtp_password is not")
    return Config(
        listen=tuple(listen) or ("tcp:8080",),
        rules=AddressRules(**rules),
        smtp=SMTPSettings(**smtp),
        path_processors=tuple(path_processors),
        vasps=tuple(vasps),
        xml_limits=XMLLimits(**xml),
        source=source,
        **values,
    )


def load_file(path: str) -> Config:
    """Read a configuration file; :class:`ConfigError` names the file on error."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, 0, f"cannot read the file: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, 0, "the file is not UTF-8 text") from None
    return load(text, path)


def with_overrides(
    config: Config, listen: list[str] | None = None, smtp_relay: str | None = None
) -> Config:
    """The command line's ``--listen`` and ``--smtp-relay`` over the file."""
    if listen:
        config = replace(config, listen=tuple(normalise_endpoint(e) for e in listen))
    if smtp_relay:
        config = replace(config, smtp=replace(config.smtp, endpoint=smtp_relay))
    return config
