"""The ``mm7tx`` command: send MM7 requests to any MM7 server from a shell.

    mm7tx submit URL --from 12345 --to +15551234567 --text "hi" --attach photo.jpg
    mm7tx deliver URL --from +15551234567 --to 12345 --subject "MO" --text "yes"
    mm7tx delivery-report URL --message-id M1 --recipient +1555... --sender 12345
    mm7tx read-reply URL --message-id M1 --recipient +1555... --sender 12345
    mm7tx hash-password < password.txt

Exit status: 0 on 1000 or 1100, 1 on any other answer or failure, 2 on a
command-line mistake.
"""

from __future__ import annotations

import argparse
import getpass
import mimetypes
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit
from xml.sax.saxutils import quoteattr

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IAgent

from mm7tx import __version__
from mm7tx.cli.runs import SUCCESS_CODES as SUCCESS_CODES
from mm7tx.cli.runs import Summary as Summary
from mm7tx.cli.runs import describe
from mm7tx.cli.runs import send_many as send_many
from mm7tx.http.auth import hash_password
from mm7tx.http.client import (
    DEFAULT_MAX_ANSWER_SIZE,
    HTTPError,
    MM7Client,
    MM7ClientError,
    MM7Fault,
    url_credentials,
)
from mm7tx.mm7 import messages as m

mimetypes.add_type("audio/amr", ".amr")
mimetypes.add_type("video/3gpp", ".3gp")
mimetypes.add_type("application/smil", ".smil")
mimetypes.add_type("text/x-vcard", ".vcf")

# The MMStatus values of TS 23.140 each report may carry, as it spells them.
DELIVERY_REPORT_STATUSES = m.STANDARD_DELIVERY_MM_STATUS
READ_REPLY_STATUSES = m.READ_MM_STATUS


class UsageError(Exception):
    """A command line that asks for something impossible: exit status 2."""


def address(text: str) -> m.Address:
    """``alice@example.com``, ``+15551234567``, ``12345``, or with an explicit
    ``email:``/``number:``/``shortcode:`` prefix.  Without a prefix, digits
    with ``+`` or more than 8 digits are a Number, shorter ones a ShortCode."""
    kind, sep, value = text.partition(":")
    explicit = {"email": "RFC2822Address", "number": "Number", "shortcode": "ShortCode"}
    if sep and kind.lower() in explicit:
        return m.Address(value, explicit[kind.lower()])  # type: ignore[arg-type]
    if "@" in text:
        return m.Address(text, "RFC2822Address")
    digits = m.Address(text).digits
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an email address or a number"
        )
    if text.startswith("+") or len(digits) > 8:
        return m.Address(text, "Number")
    return m.Address(text, "ShortCode")


def smil_for(parts: Sequence[m.ContentPart]) -> m.ContentPart:
    """A simple SMIL presentation: one slide per image/audio/video, the
    text on the first slide (or alone)."""
    texts = [p for p in parts if p.media_type.startswith("text/")]
    media = [p for p in parts if not p.media_type.startswith("text/")]
    slides = []
    for index in range(max(1, len(media))):
        items = []
        if index < len(media):
            part = media[index]
            tag = {"image": "img", "audio": "audio", "video": "video"}.get(
                part.media_type.split("/")[0], "ref"
            )
            region = ' region="Image"' if tag in ("img", "video") else ""
            items.append(
                f"<{tag} src={quoteattr('cid:' + str(part.content_id))}{region}/>"
            )
        if index == 0:
            items += [
                f'<text src={quoteattr("cid:" + str(p.content_id))} region="Text"/>'
                for p in texts
            ]
        slides.append(f'<par dur="5000ms">{"".join(items)}</par>')
    smil = (
        "<smil><head><layout>"
        '<root-layout width="100%" height="100%"/>'
        '<region id="Image" top="0" left="0" width="100%" height="70%" fit="meet"/>'
        '<region id="Text" top="70%" left="0" width="100%" height="30%" fit="scroll"/>'
        f"</layout></head><body>{''.join(slides)}</body></smil>"
    )
    return m.ContentPart(
        "application/smil",
        smil.encode(),
        (("charset", "utf-8"),),
        "mm7tx.smil",
        "mm7tx.smil",
    )


def content(texts: Sequence[str], attachments: Sequence[str], smil: str) -> m.Content:
    """The multimedia content from ``--text``, ``--attach`` and ``--smil``."""
    parts = [
        m.ContentPart(
            "text/plain",
            text.encode("utf-8"),
            (("charset", "utf-8"),),
            f"text{index}.txt",
            f"text{index}.txt",
        )
        for index, text in enumerate(texts)
    ]
    for index, name in enumerate(attachments):
        path = Path(name)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read {name}: {e.strerror}") from None
        media = (
            mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        ).lower()
        ident = f"part{index}-{path.name}"
        parts.append(
            m.ContentPart(media, data, (("name", path.name),), ident, path.name)
        )
    if smil == "auto" and parts:
        parts.insert(0, smil_for(parts))
    elif smil not in ("auto", "none"):
        try:
            data = Path(smil).read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read {smil}: {e.strerror}") from None
        parts.insert(
            0, m.ContentPart("application/smil", data, (), "mm7tx.smil", "mm7tx.smil")
        )
    return tuple(parts)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _recipients(args: argparse.Namespace) -> m.Recipients:
    return m.Recipients(tuple(args.to), tuple(args.cc), tuple(args.bcc))


def build_request(args: argparse.Namespace) -> m.Request:
    """The request a parsed command line asks for; :class:`UsageError` if
    it cannot be made (no recipient, a file that cannot be read)."""
    if args.command == "submit":
        if not (args.to or args.cc or args.bcc):
            raise UsageError("give at least one --to, --cc or --bcc")
        return m.SubmitReq(
            vasp_id=args.vasp_id,
            vas_id=args.vas_id,
            sender_address=args.sender,
            recipients=_recipients(args),
            service_code=args.service_code,
            linked_id=args.linked_id,
            timestamp=_now(),
            delivery_report=True if args.delivery_report else None,
            read_reply=True if args.read_reply else None,
            priority=args.priority,
            subject=args.subject,
            content=content(args.text, args.attach, args.smil),
        )
    if args.command == "deliver":
        return m.DeliverReq(
            mms_relay_server_id=args.relay_server_id,
            linked_id=args.linked_id,
            sender=args.sender,
            recipients=_recipients(args),
            timestamp=_now(),
            priority=args.priority,
            subject=args.subject,
            content=content(args.text, args.attach, args.smil),
        )
    if args.command == "delivery-report":
        return m.DeliveryReportReq(
            mms_relay_server_id=args.relay_server_id,
            message_id=args.message_id,
            recipient=args.recipient,
            sender=args.sender,
            date=args.date or _now(),
            mm_status=args.status,
            status_text=args.status_text,
        )
    return m.ReadReplyReq(
        mms_relay_server_id=args.relay_server_id,
        message_id=args.message_id,
        recipient=args.recipient,
        sender=args.sender,
        timestamp=args.date or _now(),
        mm_status=args.status,
        status_text=args.status_text,
    )


class _Version(argparse.Action):
    """mm7tx's version, then Twisted's and Python's, as ``twistd mm7
    --version`` prints them."""

    def __call__(self, parser: Any, *_: Any) -> None:
        from twisted.copyright import version as twisted

        print(f"mm7tx {__version__}\nTwisted {twisted}")
        print(f"Python {platform.python_version()}")
        parser.exit()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="mm7tx",
        description="Send MM7 (3GPP TS 23.140) requests to an MM7 server.",
        epilog="Addresses: alice@example.com, +15551234567 (Number), 12345 "
        "(ShortCode), or prefixed email:/number:/shortcode:.  "
        "Exit status 0 on 1000 or 1100, 2 on a command-line mistake, 1 otherwise.",
    )
    top.add_argument(
        "--version", action=_Version, nargs=0, help="show the versions and exit"
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        # For parse(): the mistakes found after parsing are this one's.
        sub.set_defaults(subparser=sub)
        sub.add_argument(
            "url",
            metavar="URL",
            type=mm7_url,
            help="the MM7 endpoint, http:// or https://",
        )
        auth = sub.add_argument_group("connection")
        auth.add_argument("--user", help="HTTP Basic user (the VASP account)")
        auth.add_argument(
            "--password",
            help="HTTP Basic password (or set MM7TX_PASSWORD, which stays out of "
            "the process list and shell history)",
        )
        auth.add_argument(
            "--timeout", type=seconds, default=30.0, help="seconds (default 30)"
        )
        auth.add_argument(
            "--max-answer-size",
            type=size,
            default=DEFAULT_MAX_ANSWER_SIZE,
            metavar="SIZE",
            help="the most of an answer's body read, in bytes or with K or M "
            "(default 1M); past it the answer is cut off, a failure",
        )
        auth.add_argument(
            "--ca-file", help="a PEM CA certificate to check an https:// server with"
        )
        auth.add_argument(
            "--mm7-version",
            type=mm7_version,
            default=m.DEFAULT_MM7_VERSION,
            help="MM7Version (default 6.8.0); one of another release than the "
            "namespace's is replaced by that release's usual one (5.3.0 for "
            "REL-5-MM7-1-x)",
        )
        auth.add_argument(
            "--namespace",
            type=namespace,
            default="REL-6-MM7-1-4",
            help="MM7 namespace: a name like REL-5-MM7-1-0 or a full URI "
            "(default REL-6-MM7-1-4)",
        )
        auth.add_argument(
            "--transaction-id",
            help="the SOAP header's TransactionID (default a new one): send a "
            "request again with the same one to see it answered as a retry",
        )
        load = sub.add_argument_group("load")
        load.add_argument(
            "--count", type=int, default=1, help="requests to send (default 1)"
        )
        load.add_argument(
            "--concurrency",
            type=int,
            default=1,
            help="connections in parallel (default 1)",
        )
        return sub

    def message(sub: argparse.ArgumentParser, sender_required: bool) -> None:
        sub.add_argument(
            "--from",
            dest="sender",
            type=address,
            required=sender_required,
            help="the sender" + (" (required)" if sender_required else ""),
        )
        sub.add_argument(
            "--to", action="append", type=address, default=[], help="repeatable"
        )
        sub.add_argument(
            "--cc", action="append", type=address, default=[], help="repeatable"
        )
        sub.add_argument(
            "--bcc", action="append", type=address, default=[], help="repeatable"
        )
        sub.add_argument("--subject")
        sub.add_argument(
            "--text", action="append", default=[], help="a text part; repeatable"
        )
        sub.add_argument(
            "--attach",
            action="append",
            default=[],
            metavar="FILE",
            help="a file; repeatable",
        )
        sub.add_argument(
            "--smil",
            default="none",
            metavar="auto|none|FILE",
            help="auto: generate a SMIL presentation; FILE: use that one (default none)",
        )
        sub.add_argument("--linked-id")
        # Sent unless told otherwise: VASPs on instantcom-mm7 crash on a
        # DeliverReq or SubmitReq without one.
        sub.add_argument(
            "--priority",
            choices=("Low", "Normal", "High"),
            default="Normal",
            help="Priority (default Normal)",
        )

    submit = common("submit", "Send a SubmitReq, as a VASP to an MMSC.")
    message(submit, sender_required=False)
    submit.add_argument("--vasp-id")
    submit.add_argument("--vas-id")
    submit.add_argument("--service-code")
    submit.add_argument("--delivery-report", action="store_true", help="ask for one")
    submit.add_argument("--read-reply", action="store_true", help="ask for one")

    deliver = common("deliver", "Send a DeliverReq, as an MMSC to a VASP.")
    # A DeliverReq's Sender is mandatory (TS 23.140): the VASP mails from it.
    message(deliver, sender_required=True)
    deliver.add_argument("--relay-server-id", help="MMSRelayServerID")

    for name, what, default, statuses in (
        (
            "delivery-report",
            "Send a DeliveryReportReq, as an MMSC to a VASP.",
            "Retrieved",
            DELIVERY_REPORT_STATUSES,
        ),
        (
            "read-reply",
            "Send a ReadReplyReq, as an MMSC to a VASP.",
            "Read",
            READ_REPLY_STATUSES,
        ),
    ):
        sub = common(name, what)
        sub.add_argument(
            "--message-id", required=True, help="the MessageID reported on"
        )
        sub.add_argument("--recipient", type=address, required=True, help="the handset")
        # Mandatory (TS 23.140), and what the VASP mails the report to: no
        # default could name the real originator of the message.
        sub.add_argument(
            "--sender",
            type=address,
            required=True,
            help="who sent the original message, to whom the report goes (required)",
        )
        sub.add_argument(
            "--status",
            type=status(name.replace("-", " "), statuses),
            default=default,
            help=f"MMStatus: {', '.join(statuses)} (default {default})",
        )
        sub.add_argument("--status-text")
        sub.add_argument("--date", type=iso_date, help="ISO 8601 (default now)")
        sub.add_argument("--relay-server-id", help="MMSRelayServerID")
    commands.add_parser(
        "hash-password",
        help="Print a salted hash of a VASP password for the configuration.",
        description="Read a password (prompted on a terminal, else the first line "
        'of standard input) and print a salted scrypt hash to use as password = "…" '
        'in a VASP "name" { } scope.',
    )
    return top


async def run(
    reactor: IReactorTime, args: argparse.Namespace, agent: IAgent | None = None
) -> int:
    """The ``mm7tx`` command's request(s); the exit status.  ``agent``, if
    given, carries them (an in-memory one in tests) instead of a new one on
    ``reactor``."""
    password = args.password or os.environ.get("MM7TX_PASSWORD")
    url, credentials = url_credentials(args.url)
    if credentials is not None:
        # http://user:password@host/… (as Mbuni writes it) is HTTP Basic;
        # http://user@host/… takes --password or MM7TX_PASSWORD.
        if args.user:
            print(
                "mm7tx: give the user in the URL or with --user, not both",
                file=sys.stderr,
            )
            return 2
        if not credentials[1] and password is not None:
            credentials = (credentials[0], password)
    elif args.user and password is None:
        print("mm7tx: --user needs --password or MM7TX_PASSWORD", file=sys.stderr)
        return 2
    elif args.user and password is not None:
        credentials = (args.user, password)
    request = getattr(args, "request", None)
    if request is None:
        try:
            request = build_request(args)
        except UsageError as e:
            print(f"mm7tx {args.command}: error: {e}", file=sys.stderr)
            return 2
    client = MM7Client(
        reactor if agent is None else agent,
        url,
        credentials,
        namespace=args.namespace,
        mm7_version=args.mm7_version,
        timeout=args.timeout,
        max_answer_size=args.max_answer_size,
        connections=max(1, args.concurrency),
        ca_file=args.ca_file,
        reactor=reactor,
    )
    try:
        if args.count <= 1:
            try:
                response = await client.send(
                    request, transaction_id=getattr(args, "transaction_id", None)
                )
            except MM7Fault as fault:
                print(f"fault {fault}", file=sys.stderr)
                return 1
            except HTTPError as e:
                hint = ""
                if e.code == 401 and not client.sends_credentials:
                    hint = (
                        " (use --user with --password or MM7TX_PASSWORD, or "
                        "user:password@ in the URL)"
                    )
                print(f"mm7tx: {e}{hint}", file=sys.stderr)
                return 1
            except MM7ClientError as e:
                print(f"mm7tx: {e}", file=sys.stderr)
                return 1
            print("\n".join(describe(response)))
            return 0 if response.status.code in SUCCESS_CODES else 1
        last = [0.0]

        def progress(summary: Summary) -> None:
            now = time.monotonic()
            if sys.stderr.isatty() and (
                now - last[0] > 0.2 or summary.sent == args.count
            ):
                last[0] = now
                sys.stderr.write(
                    f"\r{summary.sent}/{args.count} sent, {summary.succeeded} ok, "
                    f"{summary.failed} failed"
                )
                sys.stderr.flush()

        summary = await send_many(
            client, lambda _: request, args.count, args.concurrency, progress
        )
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        print("\n".join(summary.lines()))
        return 0 if summary.failed == 0 else 1
    finally:
        await client.close()


def hash_password_command() -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("VASP password: ")
        if getpass.getpass("again: ") != password:
            print("mm7tx: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("mm7tx: the password is empty", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def mm7_url(text: str) -> str:
    """An http(s) URL with a host, or a usage error (exit status 2) that
    shows the URL without its ``user:password@``."""
    shown = _USERINFO.sub(r"\1***@", text)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{shown!r} is not a URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"{shown!r} is not an http:// or https:// URL with a host, "
            "e.g. http://localhost:8080/mm7"
        )
    return text


def size(text: str) -> int:
    """A size of at least one byte: digits, or digits and ``K`` or ``M``
    (KiB, MiB), as the configuration's sizes; else a usage error."""
    match = re.fullmatch(r"([0-9]+)([KkMm]?)", text.strip())
    number = int(match[1]) if match else 0
    if match is None or number < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size in bytes like 4096, 64K or 1M"
        )
    return number * {"": 1, "K": 1024, "M": 1024 * 1024}[match[2].upper()]


def seconds(text: str) -> float:
    """A positive number of seconds; else a usage error."""
    try:
        number = float(text)
    except ValueError:
        number = 0.0
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive number of seconds"
        )
    return number


def mm7_version(text: str) -> str:
    """An MM7Version such as ``6.8.0``; else a usage error."""
    if re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not an MM7Version like 6.8.0")
    return text


def namespace(text: str) -> str:
    """A namespace name such as ``REL-6-MM7-1-4``, or a full URI (with a
    ``:``); else a usage error."""
    if ":" not in text and re.fullmatch(r"REL-[0-9]+-MM7-[0-9]+-[0-9]+", text) is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a namespace name like REL-6-MM7-1-4 or a URI"
        )
    return text


def iso_date(text: str) -> str:
    """An ISO 8601 date and time, sent as written; else a usage error."""
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date and time like 2024-05-01T12:00:00+00:00"
        ) from None
    return text


def status(what: str, statuses: Sequence[str]) -> Callable[[str], str]:
    """A reader of an MMStatus among ``statuses``, in any case, sent as
    TS 23.140 spells it; anything else is a usage error listing them."""
    by_lower = {name.lower(): name for name in statuses}

    def read(text: str) -> str:
        found = by_lower.get(text.lower())
        if found is None:
            accepted = ", ".join(statuses[:-1]) + " or " + statuses[-1]
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a {what} MMStatus: {accepted}"
            )
        return found

    return read


# A URL's userinfo: up to the last "@" of its authority.
_USERINFO = re.compile(r"^([^:/?#]*:?//)[^/?#]*@")


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line read, and its request built (``args.request``):
    every mistake, in one option or between them, is a usage error (exit
    status 2) before anything is sent."""
    top = parser()
    args, unknown = top.parse_known_args(argv)
    if unknown:  # the command's own usage line, not the top level's
        getattr(args, "subparser", top).error(
            f"unrecognized arguments: {' '.join(unknown)}"
        )
    if args.command == "hash-password":
        return args
    if args.count < 1 or args.concurrency < 1:
        args.subparser.error("--count and --concurrency must be at least 1")
    if args.count > 1 and getattr(args, "transaction_id", None) is not None:
        args.subparser.error("--transaction-id sends one request: not with --count")
    try:
        args.request = build_request(args)
    except UsageError as e:
        args.subparser.error(str(e))
    return args


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = parse(argv)
    if args.command == "hash-password":
        raise SystemExit(hash_password_command())

    async def go(reactor: Any) -> None:
        code = await run(reactor, args)
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))
    raise SystemExit(0)  # pragma: no cover - react exits
