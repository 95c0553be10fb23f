"""All the options, gathered from their areas, and the README's option
tables generated from them."""

from __future__ import annotations

import re

from mm7tx.config.options_accounts import ACCOUNT_OPTIONS
from mm7tx.config.options_http import HTTP_OPTIONS
from mm7tx.config.options_mail_in import MAIL_IN_OPTIONS
from mm7tx.config.options_mm7 import MM7_OPTIONS
from mm7tx.config.options_service import SERVICE_OPTIONS
from mm7tx.config.options_smtp import SMTP_OPTIONS
from mm7tx.config.options_store import STORE_OPTIONS
from mm7tx.config.reader import ESMTP_LISTENER, HTTP_LISTENER, OptionSpec

# Every option, declared once in the module of its area; each scope's README
# table lists its options in this order.
OPTIONS: tuple[OptionSpec, ...] = (
    *MM7_OPTIONS,
    *HTTP_OPTIONS,
    *SERVICE_OPTIONS,
    *STORE_OPTIONS,
    *SMTP_OPTIONS,
    *ACCOUNT_OPTIONS,
    *MAIL_IN_OPTIONS,
)

# The options of each scope, by lower-case name: what the reader goes by.
BY_SCOPE: dict[str, dict[str, OptionSpec]] = {}
for _option in OPTIONS:
    BY_SCOPE.setdefault(_option.scope, {})[_option.name.lower()] = _option
del _option


def options_markdown(scope: str) -> str:
    """The README's text for one scope's options, generated from
    :data:`OPTIONS` so the documentation cannot drift from the parser."""
    specs = [spec for spec in OPTIONS if spec.scope == scope]
    if scope in (HTTP_LISTENER, ESMTP_LISTENER):
        # The Listen scopes in a sentence; the listener's own options (the
        # ESMTP listener's certificate) in a table below it.
        spec, *rest = specs
        default = f"`{spec.default}`" if spec.default else spec.shown
        text = f"`{spec.syntax}` {spec.help} (default {default}).\n"
        if not rest:
            return text
        lines = [f"| option (in `{scope}`) | default | meaning |", "|---|---|---|"]
        lines += [other.markdown_row() for other in rest]
        return text + "\n" + "\n".join(lines) + "\n"
    lines = [f"| option (in `{scope}`) | default | meaning |", "|---|---|---|"]
    lines += [spec.markdown_row() for spec in specs]
    return "\n".join(lines) + "\n"


def fill_option_tables(markdown: str) -> str:
    """``markdown`` with the text between ``<!-- options:SCOPE -->`` and
    ``<!-- /options -->`` replaced by :func:`options_markdown` (how the
    README is kept up to date)."""

    def fill(match: re.Match[str]) -> str:
        table = options_markdown(match.group(2))
        return f"{match.group(1)}\n\n{table}\n<!-- /options -->"

    return re.sub(
        r"(<!-- options:(\w+) -->)\n.*?<!-- /options -->", fill, markdown, flags=re.S
    )
