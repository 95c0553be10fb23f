"""The options of the HTTP side: the listeners (``HTTP_Listener`` and its
``Listen`` scopes) and, in ``mm7_serv``, logins, proxies, and the limits on
requests, connections and transactions."""

from __future__ import annotations

from mm7tx.config.reader import HTTP_LISTENER, LISTEN, MM7_SERV, OptionSpec, Reader
from mm7tx.http.settings import (
    DEFAULT_LOGIN_LOCKOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    DEFAULT_MAX_FAILED_LOGINS,
)

HTTP_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "Listen",
        HTTP_LISTENER,
        Reader.listen,
        "config.listeners",
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
        Reader.networks,
        "access.allow",
        "only connections from these addresses/ranges are taken, e.g. "
        '`("192.0.2.0/24" "2001:db8::/32")`',
        shown="any",
    ),
    OptionSpec(
        "always_deny",
        LISTEN,
        Reader.networks,
        "access.deny",
        "connections from these addresses/ranges are refused (even if also in "
        "`always_allow`)",
        shown="none",
    ),
    OptionSpec(
        "mm7_trusted_proxies",
        MM7_SERV,
        Reader.networks,
        "config.trusted_proxies",
        "HTTP proxies (addresses/ranges) whose `X-Forwarded-For` names the client "
        "for accounts, `allowed_networks` and failed-login counts",
        shown="none",
    ),
    OptionSpec(
        "mm7_max_failed_logins",
        MM7_SERV,
        Reader.integer,
        "config.max_failed_logins",
        "failed logins from one address within 60 s that lock it out "
        "(401 at once, no password checked)",
        default=str(DEFAULT_MAX_FAILED_LOGINS),
    ),
    OptionSpec(
        "mm7_login_lockout",
        MM7_SERV,
        Reader.seconds,
        "config.login_lockout",
        "how long such an address is locked out",
        default=f"{DEFAULT_LOGIN_LOCKOUT:g}",
        unit=" s",
    ),
    OptionSpec(
        "mm7_max_request_size",
        MM7_SERV,
        Reader.integer,
        "config.max_request_size",
        "larger `Content-Length` → 413 before the body is read; a chunked body is "
        "cut off at the limit (`K`, `M` suffixes); in a plain `Site`, 413 once "
        "received (Co-hosting)",
        default="5M",
    ),
    OptionSpec(
        "mm7_request_timeout",
        MM7_SERV,
        Reader.seconds,
        "config.request_timeout",
        "a request must arrive whole within this of its first byte (slowloris) "
        "→ 408 and close",
        default="30",
        unit=" s",
    ),
    OptionSpec(
        "mm7_idle_timeout",
        MM7_SERV,
        Reader.seconds,
        "config.idle_timeout",
        "idle keep-alive connections are closed",
        default="60",
        unit=" s",
    ),
    OptionSpec(
        "mm7_max_connections",
        MM7_SERV,
        Reader.integer,
        "config.max_connections",
        "open connections on each listener; past it a new one is closed at once "
        "(the soft open-file limit is raised to the hard one at start)",
        default=str(DEFAULT_MAX_CONNECTIONS),
    ),
    OptionSpec(
        "mm7_max_connections_per_address",
        MM7_SERV,
        Reader.integer,
        "config.max_connections_per_address",
        "open connections from one source address, over all listeners; past it a "
        "new one is closed at once (raise it behind a load balancer or proxy)",
        default=str(DEFAULT_MAX_CONNECTIONS_PER_ADDRESS),
    ),
    OptionSpec(
        "mm7_max_transactions",
        MM7_SERV,
        Reader.integer,
        "config.max_transactions",
        "transactions in flight; past it → 4006 at once, never an endless queue",
        default="200",
    ),
)
