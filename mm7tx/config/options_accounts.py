"""The options of the peers' accounts: the ``VASP "name" { }`` and
``MMSC "name" { }`` scopes."""

from __future__ import annotations

from mm7tx.config.reader import MMSC, VASP, OptionSpec, Reader

ACCOUNT_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "password",
        VASP,
        Reader.text,
        "account.password",
        "plain text, or a salted hash made by `mm7tx hash-password`",
        shown="required unless the name is an address",
    ),
    OptionSpec(
        "allowed_networks",
        VASP,
        Reader.networks,
        "account.networks",
        "source addresses/ranges that may use the account, e.g. "
        '`("192.0.2.0/24" "2001:db8::/32")`',
        shown="any",
    ),
    OptionSpec(
        "max_message_size",
        VASP,
        Reader.integer,
        "account.max_message_size",
        "largest request in bytes (`K`, `M` suffixes) → 2004 above it",
    ),
    OptionSpec(
        "max_recipients",
        VASP,
        Reader.integer,
        "account.max_recipients",
        "most To+Cc+Bcc per SubmitReq → 2001 above it",
    ),
    OptionSpec(
        "rate",
        VASP,
        Reader.real,
        "account.rate",
        'requests per second → 4006 "Rate limit of N requests/s exceeded" above it',
    ),
    OptionSpec(
        "delivery_report_url",
        VASP,
        Reader.url,
        "account.delivery_report_url",
        "where to post `DeliveryReportReq` when a SubmitReq asks for a delivery "
        "report: an http(s) URL; a `user:password@` in it (percent-encoded, as "
        "Mbuni writes it) is the HTTP Basic user and password of that post",
    ),
    OptionSpec(
        "delivery_report_user",
        VASP,
        Reader.text,
        "account.delivery_report_user",
        "HTTP Basic user for that post",
    ),
    OptionSpec(
        "delivery_report_password",
        VASP,
        Reader.text,
        "account.delivery_report_password",
        "HTTP Basic password for that post; needs `delivery_report_user`",
    ),
    OptionSpec(
        "fault_http_status",
        VASP,
        Reader.fault_status,
        "account.fault_http_status",
        "HTTP status of our faults to it once authenticated, `200` or `500`: "
        "`200` for peers that read faults only there (Mbuni's mmsbox)",
        shown="`500`",
    ),
    OptionSpec(
        "password",
        MMSC,
        Reader.text,
        "account.password",
        "for HTTP Basic: plain text, or a salted hash made by `mm7tx hash-password`",
        shown="required unless the name is an address",
    ),
    OptionSpec(
        "allowed_networks",
        MMSC,
        Reader.networks,
        "account.networks",
        "source addresses/ranges that may use the account",
        shown="any",
    ),
    OptionSpec(
        "fault_http_status",
        MMSC,
        Reader.fault_status,
        "account.fault_http_status",
        "HTTP status of our faults to it once authenticated, `200` or `500`",
        shown="`500`",
    ),
)
