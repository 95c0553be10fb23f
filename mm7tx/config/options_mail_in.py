"""The options of mail to MMS: the ``ESMTP_Listener`` scope and its
``Listen`` scopes, the ``mms_*`` options in ``mm7_serv``, and the submit
settings of an ``MMSC "name" { }`` scope (the upstream the SubmitReq goes
to)."""

from __future__ import annotations

from mm7tx.config.reader import ESMTP_LISTENER, MM7_SERV, MMSC, OptionSpec, Reader

MAIL_IN_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "Listen",
        ESMTP_LISTENER,
        Reader.listen,
        "config.esmtp_listeners",
        "starts the ESMTP listener for mail to MMS on these Twisted server "
        "endpoints (`tcp:2525:interface=127.0.0.1`, `systemd:domain=INET:index=1`, "
        "`haproxy:tcp:2525`); `always_allow` / `always_deny` as for HTTP",
        shown="none: no SMTP port",
        syntax='ESMTP_Listener { Listen "ENDPOINT" { } ... }',
        is_scope=True,
    ),
    OptionSpec(
        "tls_certificate",
        ESMTP_LISTENER,
        Reader.text,
        "mail_in.tls_certificate",
        "a PEM file: the listener's certificate, then its chain; EHLO offers "
        "STARTTLS, and AUTH is offered only after it (or on loopback); read at "
        "start and on each reload",
        shown="none: no STARTTLS",
    ),
    OptionSpec(
        "tls_private_key",
        ESMTP_LISTENER,
        Reader.text,
        "mail_in.tls_private_key",
        "a PEM file: the certificate's private key, unencrypted",
        shown="in `tls_certificate`",
    ),
    OptionSpec(
        "mms_domains",
        MM7_SERV,
        Reader.domains,
        "mail_in.domains",
        'the domains whose numeric local parts are MMS recipients, e.g. `("mms.example")`: '
        "`+15551234567@`, `15551234567@`, a short code; required with `ESMTP_Listener`",
    ),
    OptionSpec(
        "mms_relay_networks",
        MM7_SERV,
        Reader.networks,
        "mail_in.relay_networks",
        "the networks mail is taken from without AUTH (anyone else AUTHs as a VASP "
        "account)",
        shown="`127.0.0.0/8`, `::1`",
    ),
    OptionSpec(
        "mms_rate",
        MM7_SERV,
        Reader.real,
        "mail_in.rate",
        "mails a minute per sender address and per network (→ 450 4.7.1 above it)",
        default="60",
    ),
    OptionSpec(
        "mms_max_mail_size",
        MM7_SERV,
        Reader.integer,
        "mail_in.max_mail_size",
        "the largest mail taken (SIZE), before its images are scaled to fit the "
        "MMSC (→ 552 5.3.4 above it)",
        default="20M",
    ),
    OptionSpec(
        "mms_refuse_unsupported",
        MM7_SERV,
        Reader.boolean,
        "mail_in.refuse_unsupported",
        "`true`: a mail with a part that cannot be sent as MMS is refused (554 "
        "5.6.1) rather than sent without it",
        default="false",
    ),
    OptionSpec(
        "submit_url",
        MMSC,
        Reader.url,
        "submit.url",
        "where mail to MMS is submitted (SubmitReq): an http(s) URL; a "
        "`user:password@` in it is the HTTP Basic user and password",
    ),
    OptionSpec(
        "submit_user",
        MMSC,
        Reader.text,
        "submit.user",
        "HTTP Basic user of the SubmitReq",
    ),
    OptionSpec(
        "submit_password",
        MMSC,
        Reader.text,
        "submit.password",
        "HTTP Basic password of the SubmitReq; needs `submit_user`",
    ),
    OptionSpec(
        "vasp_id", MMSC, Reader.text, "submit.vasp_id", "the SubmitReq's VASPID"
    ),
    OptionSpec("vas_id", MMSC, Reader.text, "submit.vas_id", "the SubmitReq's VASID"),
    OptionSpec(
        "service_code",
        MMSC,
        Reader.text,
        "submit.service_code",
        "the SubmitReq's ServiceCode",
    ),
    OptionSpec(
        "sender_address",
        MMSC,
        Reader.text,
        "submit.sender_address",
        "the SubmitReq's SenderAddress: the short code the handset sees",
    ),
    OptionSpec(
        "sender_from_mail",
        MMSC,
        Reader.boolean,
        "submit.sender_from_mail",
        "`true`: the mail's sender is the SenderAddress, as an RFC2822Address "
        "(where the MMSC allows it)",
        default="false",
    ),
    OptionSpec(
        "mm7_namespace",
        MMSC,
        Reader.text,
        "submit.namespace",
        "the MM7 namespace of the SubmitReq",
        default="REL-6-MM7-1-4",
    ),
    OptionSpec(
        "mm7_version",
        MMSC,
        Reader.text,
        "submit.mm7_version",
        "the MM7Version of the SubmitReq",
        default="6.8.0",
    ),
    OptionSpec(
        "submit_max_size",
        MMSC,
        Reader.integer,
        "submit.max_size",
        "the largest SubmitReq body the MMSC takes: images are scaled to fit",
        default="300K",
    ),
    OptionSpec(
        "submit_max_recipients",
        MMSC,
        Reader.integer,
        "submit.max_recipients",
        "recipients per SubmitReq (more → 452 4.5.3: the sender sends them again)",
        default="10",
    ),
    OptionSpec(
        "submit_timeout",
        MMSC,
        Reader.seconds,
        "submit.timeout",
        "for the MMSC's answer to a SubmitReq (→ 451 4.4.2 past it)",
        default="60",
        unit=" s",
    ),
    OptionSpec(
        "numbers",
        MMSC,
        Reader.prefixes,
        "submit.numbers",
        'number prefixes routed to this MMSC, e.g. `("+44" "+353")` (longest '
        "match wins; an MMSC without `numbers` takes the rest)",
        shown="all",
    ),
)
