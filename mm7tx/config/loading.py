"""Loading a configuration: a file or a text read into a :class:`Config`,
with the checks that span options, the command line's overrides over it,
and the listeners workers can share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from mm7tx.config.endpoints import check_listen, check_relay, inner_endpoint
from mm7tx.config.errors import ConfigError
from mm7tx.config.grammar import Option, Scope, parse
from mm7tx.config.model import DEFAULTS, Config, Listener
from mm7tx.config.options import BY_SCOPE
from mm7tx.config.reader import (
    ESMTP_LISTENER,
    HTTP_LISTENER,
    MM7_SERV,
    MMSC,
    VASP,
    Reader,
    ScopeValues,
    did_you_mean,
    read_workers,
)
from mm7tx.http.settings import SubmitSettings, url_credentials
from mm7tx.mail.rules import AddressRules
from mm7tx.mm7.codec.soap import XMLLimits
from mm7tx.mm7.peers import Account, network
from mm7tx.smtp.settings import MailInSettings, SMTPSettings, load_tls_files

# The scopes a file may have at its top level.
_TOP_SCOPES = [HTTP_LISTENER, ESMTP_LISTENER, MM7_SERV, VASP, MMSC]


def load(text: str, source: str = "<config>") -> Config:
    """Read a configuration text into a :class:`Config`."""
    reader = Reader(source, BY_SCOPE)
    top = ScopeValues(reader)
    mm7_servs: list[Scope] = []
    vasps: list[tuple[Scope, Account]] = []
    mmscs: list[tuple[Scope, Account | None]] = []
    upstreams: list[SubmitSettings] = []
    for item in parse(text.removeprefix("\ufeff"), source):
        kind = item.name.lower()
        if isinstance(item, Option):
            homes = [
                scope
                for scope in _TOP_SCOPES
                if item.name.lower() in BY_SCOPE.get(scope, {})
            ]
            where = f"; it belongs in {homes[0]} {{ }}" if homes else ""
            raise reader.error(item, f"unknown top-level option {item.name!r}{where}")
        if kind == "http_listener":
            top.read(item, HTTP_LISTENER)
        elif kind == "vasp":
            vasps.append((item, _account(reader, item)))
        elif kind == "mmsc":
            account, upstream = _mmsc(reader, item)
            mmscs.append((item, account))
            if upstream is not None:
                upstreams.append(upstream)
        elif kind == "esmtp_listener":
            top.read(item, ESMTP_LISTENER)
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
    mmsc_paths = values.get("mmsc_paths", DEFAULTS.mmsc_paths)
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
    _fold_store_password(values, line, source)
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
    for kind, scopes in (("VASP", vasps), ("MMSC", mmscs)):
        seen: set[str] = set()
        for scope, _ in scopes:
            # Every scope here has its label: an account needs a name.
            if (scope.label or "") in seen:
                raise ConfigError(
                    source, scope.line, f'{kind} "{scope.label}" is defined twice'
                )
            seen.add(scope.label or "")
    mail_in = _mail_in(source, top, values, upstreams, mm7_serv.line)
    return Config(
        listeners=tuple(values.pop("listeners", ())) or DEFAULTS.listeners,
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
        mmscs=tuple(mmsc for _, mmsc in mmscs if mmsc is not None),
        esmtp_listeners=tuple(values.pop("esmtp_listeners", ())),
        mail_in=mail_in,
        upstreams=tuple(upstreams),
        xml_limits=XMLLimits(**top.get("xml")),
        source=source,
        **values,
    )


def _fold_store_password(
    values: dict[str, Any], line: Callable[[str], int], source: str = ""
) -> None:
    """``state_store_password`` into the ``state_store`` it is for: a Redis
    one whose URL carries no password (a ConfigError if it carries one)."""
    password = values.get("state_store_password")
    if password is None:
        return
    spec = values.get("state_store", DEFAULTS.state_store)
    if spec.kind != "redis":
        raise ConfigError(
            source,
            line("state_store_password"),
            f"state_store_password is set but state_store is {spec.describe()}, "
            "not a redis:// or rediss:// one",
        )
    if spec.password is not None:
        raise ConfigError(
            source,
            line("state_store"),
            "state_store carries a password (:PASSWORD@) and "
            "state_store_password is set too; keep one",
        )
    values["state_store"] = replace(spec, password=password)


def _mail_in(
    source: str,
    top: ScopeValues,
    values: dict[str, object],
    upstreams: list[SubmitSettings],
    line: int,
) -> MailInSettings:
    """The mms_* options, checked against the ESMTP listeners and the
    upstream MMSCs: a listener needs domains and an MMSC to submit to."""
    try:
        mail_in = MailInSettings(**top.get("mail_in"))
    except ValueError as e:
        raise ConfigError(source, line, str(e)) from None
    if mail_in.tls_private_key is not None and mail_in.tls_certificate is None:
        raise ConfigError(
            source,
            top.lines["tls_private_key"],
            "tls_private_key needs tls_certificate in ESMTP_Listener",
        )
    if mail_in.tls_certificate is not None:
        try:
            load_tls_files(mail_in.tls_certificate, mail_in.tls_private_key)
        except OSError as e:
            raise ConfigError(
                source,
                top.lines["tls_certificate"],
                f"ESMTP_Listener: cannot read {e.filename!r}: {e.strerror}",
            ) from None
        except ValueError as e:
            raise ConfigError(
                source, top.lines["tls_certificate"], f"ESMTP_Listener: {e}"
            ) from None
    if not values.get("esmtp_listeners"):
        return mail_in
    if not mail_in.domains:
        raise ConfigError(
            source,
            line,
            'ESMTP_Listener needs mms_domains = ("mms.example") in mm7_serv: '
            "without it every recipient is refused",
        )
    if not upstreams:
        raise ConfigError(
            source,
            line,
            'ESMTP_Listener needs an MMSC "name" { submit_url = "…" } to submit '
            "mail to",
        )
    return mail_in


def _mmsc(reader: Reader, scope: Scope) -> tuple[Account | None, SubmitSettings | None]:
    """An ``MMSC "name" { … }`` scope: the account it authenticates with on
    VASP paths (none when it has only submit settings: no password, not
    named by an address) and its submit settings (none without
    ``submit_url``)."""
    found = _read_account_scope(reader, scope, MMSC)
    name = scope.label or ""  # a label: checked by _read_account_scope
    submit = found.get("submit")
    upstream = None
    if submit:
        if "url" not in submit:
            raise reader.error(
                scope,
                f'MMSC "{scope.label}" has submit settings but no submit_url',
            )
        bare, in_url = url_credentials(submit["url"])
        if in_url is not None:
            if "user" in submit or "password" in submit:
                raise ConfigError(
                    reader.source,
                    found.lines["submit_url"],
                    "submit_url carries credentials (user:password@) and "
                    "submit_user or submit_password is set too; keep one",
                )
            submit["user"], submit["password"] = in_url
        submit["url"] = bare
        try:
            upstream = SubmitSettings(name, **submit)
        except ValueError as e:
            at = found.lines.get("submit_url", scope.line)
            raise ConfigError(reader.source, at, str(e)) from None
    values = found.get("account")
    if upstream is not None and network(name) is None and not values:
        return None, upstream
    return _checked_account(reader, scope, found, MMSC), upstream


def _read_account_scope(reader: Reader, scope: Scope, kind: str) -> ScopeValues:
    if not scope.label:
        raise reader.error(
            scope, f'{kind} needs a name: {kind} "{kind.lower()}1" {{ password = "…" }}'
        )
    found = ScopeValues(reader)
    found.read(scope, kind)
    return found


def _account(reader: Reader, scope: Scope, kind: str = VASP) -> Account:
    """A ``VASP "name" { … }`` or ``MMSC "name" { … }`` scope."""
    return _checked_account(
        reader, scope, _read_account_scope(reader, scope, kind), kind
    )


def _checked_account(
    reader: Reader, scope: Scope, found: ScopeValues, kind: str
) -> Account:
    name = scope.label or ""  # a label: checked by _read_account_scope
    values = found.get("account")
    if network(name) is None and "password" not in values:
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
    return Account(name, **values)


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
        # The file's always_allow / always_deny go with its listeners.
        config = replace(
            config,
            listeners=tuple(Listener(endpoint, "--listen") for endpoint in endpoints),
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
    """Every listener of ``config``, its ESMTP listeners too, is one the
    parent can bind and pass to workers as a socket; a :class:`ConfigError`
    names the one that is not."""
    scopes = [("Listen", listener) for listener in config.listeners]
    scopes += [
        ("ESMTP_Listener Listen", listener) for listener in config.esmtp_listeners
    ]
    for scope, listener in scopes:
        kind, _, _ = inner_endpoint(listener.endpoint)
        if kind not in SHARED_KINDS:
            raise ConfigError(
                listener.origin or config.source,
                0,
                f"{scope} {listener.endpoint!r} cannot be shared by workers "
                f"(workers = {config.workers}): with workers, listen on "
                f"{', '.join(SHARED_KINDS)} (or haproxy: over one of them)",
            )
