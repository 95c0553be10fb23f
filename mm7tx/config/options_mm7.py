"""The options of the MM7 side in ``mm7_serv``: the default addresses, the
version, the MM7 paths, the processors and their ``Path`` scopes, the
delivery reports, and the limits on a SOAP document."""

from __future__ import annotations

from mm7tx.config.reader import MM7_SERV, OptionSpec, Reader

MM7_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "mm7_server_default_email_from_address",
        MM7_SERV,
        Reader.text,
        "rules.from_address",
        "From for a sender with no number, or when no from domain is set",
    ),
    OptionSpec(
        "mm7_server_default_email_from_domain",
        MM7_SERV,
        Reader.text,
        "rules.from_domain",
        "sender Number/ShortCode → `<digits>@domain`",
    ),
    OptionSpec(
        "mm7_server_default_email_to_address",
        MM7_SERV,
        Reader.text,
        "rules.to_address",
        "To for a recipient with no number, or when no to domain is set",
    ),
    OptionSpec(
        "mm7_server_default_email_to_domain",
        MM7_SERV,
        Reader.text,
        "rules.to_domain",
        "recipient Number/ShortCode → `<digits>@domain`",
    ),
    OptionSpec(
        "mm7_server_version",
        MM7_SERV,
        Reader.text,
        "config.mm7_version",
        "the MM7Version of our answers to a request without one of its own",
        default="6.8.0",
    ),
    OptionSpec(
        "mm7_vasp_uri_paths",
        MM7_SERV,
        Reader.paths,
        "config.vasp_paths",
        "the paths MMSCs post to; each served with and without its `/`",
        shown="required",
    ),
    OptionSpec(
        "mm7_mmsc_uri_paths",
        MM7_SERV,
        Reader.paths,
        "config.mmsc_paths",
        "the paths VASPs submit to (also `/mm7/account=password`)",
        default='("/mm7/")',
    ),
    OptionSpec(
        "mm7_processor",
        MM7_SERV,
        Reader.processor,
        "config.processor",
        "dotted name of the processor class for every path",
        shown="the email processor",
    ),
    OptionSpec(
        "Path",
        MM7_SERV,
        Reader.path,
        "config.path_processors",
        "the processor for one path (a VASP or MMSC path), and the options "
        "it declares ([its own options](#a-processors-own-options))",
        shown="",
        syntax='Path "/p/" { processor = "…" OPTION = … }',
        is_scope=True,
    ),
    OptionSpec(
        "mm7_keep_smil",
        MM7_SERV,
        Reader.boolean,
        "config.keep_smil",
        "keep the SMIL part in the email: `true` or `false`",
        default="false",
    ),
    OptionSpec(
        "mm7_report_mail_from",
        MM7_SERV,
        Reader.report_mail_from,
        "rules.report_mail_from",
        "the envelope sender (`MAIL FROM`) of the mails that report on another "
        "message (from a DeliveryReportReq or ReadReplyReq, marked "
        "`Auto-Submitted: auto-replied`): empty, the null sender `<>`, so that "
        "a bounce of one goes nowhere; an address for relays that refuse `<>`",
        default='""',
    ),
    OptionSpec(
        "mm7_report_window",
        MM7_SERV,
        Reader.seconds,
        "config.report_window",
        "how long the envelope of a mail that became MMS is kept, so that the "
        "MMSC's delivery reports and read replies on it go back to its sender as "
        "DSN and MDN (with a `state_store`)",
        default="604800",
        unit=" s",
    ),
    OptionSpec(
        "mm7_reply_window",
        MM7_SERV,
        Reader.seconds,
        "config.reply_window",
        "how long a conversation is remembered (with a `state_store`): a handset's "
        "reply to the short code a mail was sent from goes back to that mail's "
        "sender, and a mail answering one made from an MMS goes back to its handset",
        default="604800",
        unit=" s",
    ),
    OptionSpec(
        "mm7_delivery_report_attempts",
        MM7_SERV,
        Reader.integer,
        "config.delivery_report_attempts",
        "tries to post a delivery report back (1 s, 2 s, 4 s … apart, at most 300 s)",
        default="8",
    ),
    OptionSpec(
        "mm7_delivery_report_timeout",
        MM7_SERV,
        Reader.seconds,
        "config.delivery_report_timeout",
        "how long one post of a delivery report waits for the VASP's answer; with "
        "a shared `state_store`, another instance takes over the report of one "
        "that died this long plus 15 s after its next attempt was due",
        default="30",
        unit=" s",
    ),
    OptionSpec(
        "mm7_client_max_answer_size",
        MM7_SERV,
        Reader.integer,
        "config.client_max_answer_size",
        "the most of an answer's body read when mm7tx posts (delivery reports): a "
        "larger `Content-Length`, or a body going past it, aborts the post, logged "
        "as failed and not retried; the answer's headers are at most 16 KiB "
        "(`K`, `M` suffixes)",
        default="1M",
    ),
    OptionSpec(
        "mm7_xml_max_depth",
        MM7_SERV,
        Reader.integer,
        "xml.max_depth",
        "how deep a SOAP document may be → 2007 beyond",
        default="32",
    ),
    OptionSpec(
        "mm7_xml_max_elements",
        MM7_SERV,
        Reader.integer,
        "xml.max_elements",
        "how many elements a SOAP document may have → 2007 beyond",
        default="10000",
    ),
)
