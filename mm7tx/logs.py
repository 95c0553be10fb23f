"""Structured logs: one event per MM7 transaction, and JSON lines.

Every request the resource answers is logged once, at info level, as an
event with ``mm7tx_event="transaction"`` and the fields of
:data:`TRANSACTION_FIELDS` (README, "Logs"); observers (metrics, a log
pipeline) pick it out with :func:`is_transaction`.

``twistd --logger=mm7tx.logs.json mm7 ...`` writes every event as one JSON
object per line, to the ``-l`` file or to stdout, as twistd's text log
would go (:func:`json`).
"""

from __future__ import annotations

import getopt
import json as _json
import math
import re
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import IO, Any, cast

from twisted.logger import FileLogObserver, Logger, formatEvent
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile

# The value of ``mm7tx_event`` that marks the transaction event.
TRANSACTION = "transaction"
# The fields of the transaction event, beside ``mm7tx_event``.
TRANSACTION_FIELDS = (
    "path",
    "account",
    "operation",
    "transaction_id",
    "message_id",
    "status",
    "status_text",
    "request_bytes",
    "ms",
    "peer",
    "relay_reply",
    "answered",
    "sender",
    "recipients",
    "recipient_count",
)
# Only on a retry answered with the answer already given: ``deduplicated``
# (True), beside those; only when a DSN, an MDN or a reply in a conversation
# went back: ``returned`` (``DSN to a***@example.org``).
# The text line; the fields named with a leading ``_`` are only for it
# (:func:`event_as_json` leaves them out).  No format spec (``{ms:.1f}``):
# Twisted's flatFormat, which formats an event relayed as JSON (from a
# worker), ignores them.
TRANSACTION_FORMAT = (
    "{_what} from {peer} on {path}: {_fault}{status} {status_text} ({_ms} ms){_more}"
)


def is_transaction(event: dict[str, Any]) -> bool:
    """Whether ``event`` is the one logged for each transaction."""
    return event.get("mm7tx_event") == TRANSACTION


def log_transaction(
    logger: Logger,
    *,
    path: str,
    peer: str,
    status: int,
    status_text: str,
    ms: float,
    request_bytes: int,
    operation: str | None = None,
    transaction_id: str | None = None,
    account: str | None = None,
    message_id: str | None = None,
    relay_reply: str | None = None,
    fault: bool = False,
    answered: bool = True,
    sender: str | None = None,
    recipients: Sequence[str] | None = None,
    recipient_count: int | None = None,
    deduplicated: bool = False,
    returned: str | None = None,
) -> None:
    """Log the transaction event.  ``path`` is the configured path, never
    the request's (which may hold ``account=password``); ``operation`` is
    the request type (``DeliverReq``), ``None`` when refused before it was
    read; ``answered`` is false when the connection was gone.  What the
    peer chose (TransactionID, MessageID, status text) is cut to
    :data:`MAX_FIELD` characters: a line is never a multiple of a request.
    ``sender``, ``recipients`` and ``recipient_count`` are what
    :func:`logged_addresses` makes of the request, ``None`` before it was
    read.  ``deduplicated``: a retry answered with the answer already given
    (nothing mailed again).  ``returned``: what went back to a mail's
    sender and to whom (``DSN to a***@example.org``), only when something
    did."""
    transaction_id = _cut(transaction_id)
    message_id = _cut(message_id)
    status_text = _cut(status_text) or ""
    to = ""
    if recipients:
        to = ", ".join(recipients)
        more = (recipient_count or 0) - len(recipients)
        if more > 0:
            to += f" and {more} more"
    notes = [
        f"; {label} {value}"
        for label, value in (
            ("account", account),
            ("sender", sender),
            ("to", to),
            ("MessageID", message_id),
            ("relay", relay_reply),
        )
        if value
    ]
    if returned:
        notes.append(f"; {returned}")
    if deduplicated:
        notes.append("; deduplicated, the answer already given")
    if not answered:
        # The peer never sees this answer: it will send again.
        notes.append("; not answered, the connection was gone")
    logger.info(
        TRANSACTION_FORMAT,
        mm7tx_event=TRANSACTION,
        path=path,
        account=account,
        operation=operation,
        transaction_id=transaction_id,
        message_id=message_id,
        status=int(status),
        status_text=status_text,
        request_bytes=request_bytes,
        ms=round(ms, 3),
        peer=peer,
        relay_reply=relay_reply,
        answered=answered,
        sender=sender,
        recipients=list(recipients) if recipients is not None else None,
        recipient_count=recipient_count,
        **({"deduplicated": True} if deduplicated else {}),
        **({"returned": returned} if returned else {}),
        _what=" ".join(filter(None, (operation or "Request", transaction_id))),
        _fault="fault " if fault else "",
        _ms=f"{ms:.1f}",
        _more="".join(notes),
    )


# The longest a peer's text is logged (the SOAP TransactionID has no limit
# of its own; a fault echoes at most 256 characters of one it sniffed).
MAX_FIELD = 256


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_FIELD:
        return text
    return f"{text[:MAX_FIELD]}… ({len(text)} characters)"


# Addresses in the transaction event --------------------------------------------

# ``mm7_log_addresses``: how the event shows the sender and the recipients.
LOG_ADDRESSES = ("masked", "full", "none")
# How many recipients the event names; ``recipient_count`` counts them all.
LOGGED_RECIPIENTS = 5
# Control characters and line separators: a value never adds a log line.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_DIGITS = re.compile("[0-9]")


def _one_line(text: str) -> str:
    return " ".join(_CONTROLS.sub(" ", text).split())


def mask_address(value: str) -> str:
    """An MM7 address as ``mm7_log_addresses = masked`` logs it.

    An email address (any value with an ``@``) keeps its domain and the
    first character of its local part, ``j***@example.com``
    (``***@example.com`` for a local part of one or two characters); any
    other value (a Number, a ShortCode) keeps only its last four digits,
    each other digit a ``*`` and nothing else (``+44 7700 900123`` →
    ``********0123``; ``7255`` as it is), ``***`` if it has no digit."""
    text = _one_line(value)
    if "@" in text:
        # (parseaddr only on a value that could be an address: RFC 5321
        # allows 254 characters, and it is not linear on every input.)
        address = parseaddr(text)[1] if len(text) <= 1024 else ""
        local, _, domain = (address if "@" in address else text).rpartition("@")
        head = local[0] if len(local) > 2 else ""
        return _cut(f"{head}***@{domain}") or ""
    digits = "".join(_DIGITS.findall(text))
    if not digits:
        return "***"
    return _cut("*" * (len(digits) - 4) + digits[-4:]) or ""


def _as_sent(value: str) -> str:
    return _cut(_one_line(value)) or ""


def returned_note(returned: tuple[str, str] | None, mode: str) -> str | None:
    """``("DSN", "ann@example.org")`` as the event says it by
    ``mm7_log_addresses`` (``mode``): ``DSN to a***@example.org``, or
    ``DSN sent`` when addresses are not logged."""
    if returned is None:
        return None
    what, address = returned
    if mode == "none":
        return f"{what} sent"
    show = mask_address if mode == "masked" else _as_sent
    return f"{what} to {show(address)}"


def logged_addresses(message: object, mode: str) -> dict[str, Any]:
    """The ``sender``, ``recipients`` and ``recipient_count`` fields of the
    event for an MM7 request, by ``mm7_log_addresses`` (``mode``).

    The sender is the request's ``Sender`` or ``SenderAddress``; the
    recipients its To and Cc (never Bcc), or a report's ``Recipient``: the
    first :data:`LOGGED_RECIPIENTS`, each masked (``masked``), as sent
    (``full``, one line, cut to :data:`MAX_FIELD`) or left out (``none``:
    ``sender`` and ``recipients`` are ``None``); ``recipient_count`` counts
    them all, whatever the mode."""
    sender = getattr(message, "sender", None) or getattr(
        message, "sender_address", None
    )
    listed = getattr(message, "recipients", None)
    if listed is not None:
        recipients = tuple(listed.to) + tuple(listed.cc)
    else:
        one = getattr(message, "recipient", None)
        recipients = (one,) if one is not None else ()
    if mode == "none":
        return {"sender": None, "recipients": None, "recipient_count": len(recipients)}
    show = mask_address if mode == "masked" else _as_sent
    return {
        "sender": show(sender.value) if sender is not None else None,
        "recipients": [show(a.value) for a in recipients[:LOGGED_RECIPIENTS]],
        "recipient_count": len(recipients),
    }


# Keys of twisted.python.log (legacy) events, which the message already says.
_LEGACY = frozenset(
    {"message", "format", "isError", "system", "why", "time", "printed", "failure"}
)
# ``scheme://user:password@``: the password goes, wherever it shows.  The
# scheme is bounded: tried at every word in "a.a.a.a…", an unbounded one
# made the search quadratic.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]{0,31}+://[^/@\s:]*+):[^/@\s]*+@")


def _redacted(text: str) -> str:
    return _USERINFO.sub(r"\1:***@", text)


def _jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON can hold it: numbers, text, lists and objects as
    they are (a few levels deep), anything else as its text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum (a status code) as its number
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _redacted(value)
    if isinstance(value, bytes):
        return _redacted(value.decode("utf-8", "replace"))
    if isinstance(value, Failure):
        return _redacted(value.getTraceback())
    if depth < 3 and isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, depth + 1) for v in value]
    if depth < 3 and isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    return _redacted(str(value))


def event_as_json(event: dict[str, Any]) -> str:
    """One log event as one line of JSON: ``time`` (ISO 8601, UTC),
    ``level``, ``namespace``, ``message`` (the text line), ``system`` and
    ``failure`` (its traceback) when there are, then the event's own
    fields; not Twisted's own keys (``log_*``), nor those for the text only
    (``_*``).  A ``user:password@`` in a URL is masked everywhere."""
    when = datetime.fromtimestamp(event.get("log_time") or 0, UTC)
    level = event.get("log_level")  # a LogLevel constant
    record: dict[str, Any] = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": _redacted(formatEvent(event)),
    }
    system = event.get("log_system")
    if system not in (None, "-"):
        record["system"] = _jsonable(system)
    failure = event.get("log_failure")
    if failure is not None:
        record["failure"] = _jsonable(failure)
    for key, value in event.items():
        if key.startswith(("log_", "_")) or key in _LEGACY or key in record:
            continue
        try:
            record[key] = _jsonable(value)
        except Exception:
            record[key] = "(unprintable)"
    # ASCII only: text from a request may hold lone surrogates, which no
    # file in UTF-8 could take.
    return _json.dumps(record, ensure_ascii=True, separators=(",", ":"))


def json_lines_observer(out: IO[Any]) -> FileLogObserver:
    """An observer writing each event to ``out`` as a line of JSON."""
    return FileLogObserver(out, lambda event: event_as_json(event) + "\n")


def json() -> FileLogObserver:
    """The ``--logger`` for ``twistd``: JSON lines where twistd's text log
    would go.

    twistd calls a ``--logger`` with no arguments, so this reads twistd's
    own ``-l``/``--logfile`` and ``-n`` from the command line, as twistd
    parses them: ``-l FILE`` (rotated at 1 MB and on SIGUSR1, as twistd's
    own), ``-l -`` or ``-n`` without ``-l`` stdout, a daemon without ``-l``
    ``twistd.log``.  ``--syslog`` does not apply.
    """
    return json_lines_observer(_twistd_log_file(sys.argv[1:]))


def _twistd_log_file(argv: list[str]) -> IO[Any]:
    # The options class twistd runs with on this platform.
    from twisted.scripts.twistd import ServerOptions  # type: ignore[attr-defined]

    options = ServerOptions()
    try:
        # twistd's own options end where its subcommand (``mm7``) starts.
        given, _ = getopt.getopt(argv, options.shortOpt, options.longOpt)
    except getopt.GetoptError:
        return sys.stdout  # twistd itself will say what is wrong
    names = {options.synonyms.get(o.lstrip("-"), o.lstrip("-")): v for o, v in given}
    path = names.get("logfile") or ""
    unix = hasattr(signal, "SIGUSR1")  # twistd daemonizes only there
    daemon = unix and "nodaemon" not in names
    if path == "-" or (not path and not daemon):
        if daemon:
            sys.exit("Daemons cannot log to stdout, exiting!")
        return sys.stdout
    log_file: LogFile = LogFile.fromFullPath(path or "twistd.log")
    if unix and not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: Any) -> None:
            # twistd calls a logger with no arguments, so no reactor can be
            # passed in: the global one, as twistd's own rotation takes it
            # (the one other place is mm7tx.app.tap's makeService).
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return cast("IO[Any]", log_file)  # it writes, flushes and closes as one
