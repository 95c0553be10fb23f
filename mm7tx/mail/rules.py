"""The address rules: which addresses the mails made from MM7 are sent from and to."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AddressRules:
    """The four ``mm7_server_default_email_*`` options (see DESIGN.md), and
    ``mm7_report_mail_from``: the envelope sender of the mails that report
    on another message, ``""`` for the null sender ``<>``."""

    from_address: str | None = None
    from_domain: str | None = None
    to_address: str | None = None
    to_domain: str | None = None
    report_mail_from: str = ""
