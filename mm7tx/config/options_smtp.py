"""The options of the SMTP side in ``mm7_serv``: the relay, its TLS, its
AUTH and the pool's timeouts and size."""

from __future__ import annotations

from mm7tx.config.reader import MM7_SERV, OptionSpec, Reader

SMTP_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "smtp_relay",
        MM7_SERV,
        Reader.relay,
        "smtp.endpoint",
        "where mail goes: a client endpoint (`tcp:HOST:PORT`, `tls:HOST:PORT` for "
        "implicit TLS) or `maildir:PATH`",
        default="tcp:127.0.0.1:25",
    ),
    OptionSpec(
        "smtp_starttls",
        MM7_SERV,
        Reader.starttls,
        "smtp.starttls",
        "`off`, `opportunistic` (when offered; certificate checked only with "
        "`smtp_ca_file`), `required` (certificate checked)",
        default="opportunistic",
    ),
    OptionSpec(
        "smtp_ca_file",
        MM7_SERV,
        Reader.ca_file,
        "smtp.ca_file",
        "PEM CA to check the relay's certificate (read at start)",
        shown="system CAs",
    ),
    OptionSpec(
        "smtp_tls_hostname",
        MM7_SERV,
        Reader.text,
        "smtp.tls_hostname",
        "the name the relay's certificate must carry",
        shown="endpoint host",
    ),
    OptionSpec(
        "smtp_username",
        MM7_SERV,
        Reader.text,
        "smtp.username",
        "AUTH (CRAM-MD5, LOGIN, PLAIN), required once set; needs `smtp_password`",
    ),
    OptionSpec(
        "smtp_password",
        MM7_SERV,
        Reader.text,
        "smtp.password",
        "the AUTH password; needs `smtp_username`",
    ),
    OptionSpec(
        "smtp_helo",
        MM7_SERV,
        Reader.text,
        "smtp.helo",
        "our name in mail: the EHLO name, the ESMTP listener's greeting and "
        "the `Reporting-MTA` of DSNs (set it to the host's public name)",
        shown="`localhost`",
    ),
    OptionSpec(
        "smtp_connect_timeout",
        MM7_SERV,
        Reader.seconds,
        "smtp.connect_timeout",
        "to connect to the relay",
        default="10",
        unit=" s",
    ),
    OptionSpec(
        "smtp_command_timeout",
        MM7_SERV,
        Reader.seconds,
        "smtp.command_timeout",
        "to wait for each relay reply (mid-DATA: for the connection to take more)",
        default="20",
        unit=" s",
    ),
    OptionSpec(
        "smtp_timeout",
        MM7_SERV,
        Reader.seconds,
        "smtp.total_timeout",
        "for the whole message, from its request to the relay's 250 (→ 4006): keep it under the peers' timeout, often 30 s",
        default="25",
        unit=" s",
    ),
    OptionSpec(
        "smtp_max_connections",
        MM7_SERV,
        Reader.integer,
        "smtp.max_connections",
        "SMTP sessions open at once; more messages wait within `smtp_timeout`",
        default="20",
    ),
    OptionSpec(
        "smtp_idle_timeout",
        MM7_SERV,
        Reader.seconds,
        "smtp.idle_timeout",
        "an unused pooled SMTP session is closed",
        default="30",
        unit=" s",
    ),
)
