"""The typed configuration: :class:`Config` and its :class:`Listener`
records, the defaults a file starts from and the embedded ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    SubmitSettings,
)
from mm7tx.mail.rules import AddressRules
from mm7tx.mm7.codec.soap import XMLLimits
from mm7tx.mm7.messages import DEFAULT_MM7_VERSION
from mm7tx.mm7.peers import Account, Network
from mm7tx.smtp.settings import MailInSettings, SMTPSettings
from mm7tx.store.spec import StoreSpec

# state_store's default: a file in the working folder (under systemd, the
# unit's StateDirectory), as the embedded Maildir is.
DEFAULT_STATE_STORE = StoreSpec(kind="sqlite", path="mm7tx.sqlite3")


@dataclass(frozen=True, slots=True)
class Listener:
    """One listener: a Twisted server endpoint string, where it was set
    ("FILE, line N" or "--listen"; empty for the default, which errors
    name by the configuration's source) and its always_allow / always_deny."""

    endpoint: str
    origin: str = ""
    access: ListenAccess = field(default_factory=ListenAccess)


# The metrics and health listener: on loopback only, unless configured.
DEFAULT_METRICS_LISTEN = "tcp:9107:interface=127.0.0.1"


@dataclass(frozen=True, slots=True)
class Config:
    """Everything mm7tx needs to start, from a file or the embedded defaults."""

    listeners: tuple[Listener, ...] = (Listener("tcp:8080"),)
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
    delivery_report_timeout: float = 30.0
    # How long the envelope of a mail that became MMS is kept for its DSN
    # and MDN (seconds).
    report_window: float = 604800.0
    # How long a conversation (mail to handset, handset to mail) is kept for
    # its replies (seconds).
    reply_window: float = 604800.0
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
    # Where the answers given are kept (state_store, its password folded
    # in), and how long (mm7_dedup_window, seconds).
    state_store: StoreSpec = DEFAULT_STATE_STORE
    # As given, for the record: loading folds it into state_store.
    state_store_password: str | None = field(default=None, repr=False)
    dedup_window: float = 86400.0
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
    # Mail to MMS: the ESMTP listeners (none: no SMTP port), what mail they
    # take, and the upstream MMSCs it is submitted to (the MMSC scopes with
    # a submit_url, in order).
    esmtp_listeners: tuple[Listener, ...] = ()
    mail_in: MailInSettings = field(default_factory=MailInSettings)
    upstreams: tuple[SubmitSettings, ...] = ()
    source: str = "embedded defaults"

    def processor_for(self, path: str) -> str | None:
        return dict(self.path_processors).get(path, self.processor)

    def options_for(self, path: str) -> dict[str, Any]:
        """The options set in ``path``'s Path scope for its processor (none
        for a path served by ``mm7_processor``: its defaults apply)."""
        return dict(dict(self.path_options).get(path, ()))

    @property
    def listen(self) -> tuple[str, ...]:
        """The endpoint of each listener, in order."""
        return tuple(listener.endpoint for listener in self.listeners)

    @property
    def listen_access(self) -> tuple[ListenAccess, ...]:
        """The always_allow / always_deny of each listener, in order."""
        return tuple(listener.access for listener in self.listeners)


# What a file leaves unset.
DEFAULTS = Config()
# What mm7tx runs without a file.
EMBEDDED = Config(
    listeners=(Listener("tcp:8080"),),
    rules=AddressRules(
        from_address="mm7tx@localhost", to_address="postmaster@localhost"
    ),
    vasp_paths=("/vasp/",),
    smtp=SMTPSettings(endpoint="maildir:Maildir"),
)
