"""The configuration file: Momentum's grammar, read into a typed :class:`Config`.

Every mistake is reported with the file, the line and the option, so a bad
file stops the start with a message an operator can act on.  The modules,
one idea each: :mod:`~mm7tx.config.grammar` (the syntax tree),
:mod:`~mm7tx.config.model` (:class:`Config`, :class:`Listener`),
:mod:`~mm7tx.config.endpoints` (endpoint strings, checked),
:mod:`~mm7tx.config.processors` (processors and their options),
:mod:`~mm7tx.config.reader` (how options are declared and read), the
``options_*`` modules (the options of each area, gathered in
:mod:`~mm7tx.config.options`) and :mod:`~mm7tx.config.loading` (load, the
checks across options, the command line's overrides).  Their public names
are all importable from here.
"""

from mm7tx.config.endpoints import (
    check_listen,
    check_relay,
    endpoint_fields,
    inner_endpoint,
    listens_beyond_loopback,
    normalise_endpoint,
)
from mm7tx.config.errors import ConfigError
from mm7tx.config.grammar import Option, Scope, Token, parse
from mm7tx.config.loading import (
    SHARED_KINDS,
    check_shared,
    load,
    load_file,
    read_text,
    with_overrides,
)
from mm7tx.config.model import (
    DEFAULT_METRICS_LISTEN,
    DEFAULTS,
    EMBEDDED,
    Config,
    Listener,
)
from mm7tx.config.options import BY_SCOPE, OPTIONS, fill_option_tables, options_markdown
from mm7tx.config.processors import declared_options, find_processor, option_value
from mm7tx.config.reader import (
    HTTP_LISTENER,
    LISTEN,
    MM7_SERV,
    MMSC,
    VASP,
    OptionSpec,
    Reader,
    ScopeValues,
    did_you_mean,
    read_workers,
)

__all__ = [
    "BY_SCOPE",
    "DEFAULTS",
    "DEFAULT_METRICS_LISTEN",
    "EMBEDDED",
    "HTTP_LISTENER",
    "LISTEN",
    "MM7_SERV",
    "MMSC",
    "OPTIONS",
    "SHARED_KINDS",
    "VASP",
    "Config",
    "ConfigError",
    "Listener",
    "Option",
    "OptionSpec",
    "Reader",
    "Scope",
    "ScopeValues",
    "Token",
    "check_listen",
    "check_relay",
    "check_shared",
    "declared_options",
    "did_you_mean",
    "endpoint_fields",
    "fill_option_tables",
    "find_processor",
    "inner_endpoint",
    "listens_beyond_loopback",
    "load",
    "load_file",
    "normalise_endpoint",
    "option_value",
    "options_markdown",
    "parse",
    "read_text",
    "read_workers",
    "with_overrides",
]
