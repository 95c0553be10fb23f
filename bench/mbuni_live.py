"""Mail to MMS and its DSN back, live against Mbuni's ``mmsc`` (an independent
MMSC in C) on loopback, every program real:

    sender --smtplib--> Postfix --> mm7tx's ESMTP listener --SubmitReq--> mmsc
    mmsc --DeliveryReportReq (Expired)--> mm7tx's /vasp/ --DSN--> Postfix --> sink

Issue 23's proof: the mail becomes a SubmitReq that mmsc takes (1000 and a
MessageID) and Postfix logs the 250 with that MessageID.  Issue 24's proof:
mmsc cannot reach the handset (its WAP push goes to a closed port), the
message expires (``--expiry`` seconds), mmsc sends a DeliveryReportReq
(Sender and Recipient swapped, as it does) to mm7tx's VASP path, and mm7tx
mails a DSN from ``<>`` to the mail's sender through Postfix into an SMTP
sink, where Python's ``email`` and ``flufl.bounce`` read it as a failure
for that recipient.  Exits non-zero where a step fails, naming it.

Build Mbuni first (takes minutes; ../shared/peers/mbuni/README.md):

    bash ../shared/peers/mbuni/build.sh /path/to/mbuni   # -> /tmp/peer-mbuni/inst
    python -m bench.mbuni_live            # --mbuni /tmp/peer-mbuni/inst --expiry 20

Starting Postfix takes root.  Everything runs in a fresh folder (printed),
with two recording taps (../shared/peers/mbuni/tap.py) keeping the bytes:
``tap-submit`` (mm7tx -> mmsc) and ``tap-vasp`` (mmsc -> mm7tx).
"""

from __future__ import annotations

import argparse
import email
import email.message
import email.policy
import re
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

from bench.common import free_port, wait_for_port
from bench.postfix import Postfix

HERE = Path(__file__).resolve().parent
PEER = HERE.parent.parent / "shared" / "peers" / "mbuni"

MM7TX_CONFIG = """
HTTP_Listener {{ Listen "tcp:{http}:interface=127.0.0.1" {{ }} }}
ESMTP_Listener {{ Listen "tcp:{smtp}:interface=127.0.0.1" {{ }} }}
mm7_serv {{
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_server_default_email_from_domain = "mms.example"
  mm7_server_default_email_to_domain = "mms.example"
  mm7_server_default_email_to_address = "postmaster@relay.test"
  metrics_listen = "none"
  mm7_mmsc_uri_paths = ()
  mms_domains = ("mms.example")
  state_store = "sqlite:mm7tx.sqlite3"
  smtp_relay = "tcp:127.0.0.1:{relay}"
  smtp_starttls = off
  smtp_helo = "mm7tx.test"
}}
MMSC "mbuni" {{
  submit_url = "http://127.0.0.1:{submit_tap}/mm7"
  submit_user = "mm7tx"
  submit_password = "vasppw"
  vasp_id = "mm7tx"
  sender_address = "7255"
}}
"""

# Mbuni's mmsc: takes SubmitReq from VASP mm7tx/vasppw; short code 7255 is
# that VASP, so reports on its messages go to vasp-url (mm7tx's /vasp/,
# through the tap).  The handset cannot be told (sendsms-url, its WAP push,
# is a closed port): after the notify attempts it waits for expiry, then
# reports Expired.
MMSC_CONFIG = """
group = core
log-file = {run}/mmsc.log
access-log = {run}/mmsc-access.log
log-level = 0
http-interface-name = 127.0.0.1

group = mbuni
name = "Interop MMSC"
hostname = mmsc.example
host-alias = mmsc
local-prefixes = +1555;1555
storage-directory = {run}/mmsc-spool
max-send-threads = 2
send-mail-prog = /bin/true
sendsms-url = http://127.0.0.1:{closed}/cgi-bin/sendsms
sendsms-username = u
sendsms-password = p
maximum-send-attempts = 2
mm1-maximum-notify-attempts = 2
default-message-expiry = {expiry}
mmsc-services = Relay,MM7,MM1
queue-run-interval = 1
send-attempt-back-off = 1
mm7-port = {mm7}
mms-port = {mms}

group = mms-vasp
vasp-id = mm7tx
type = soap
short-codes = 7255
vasp-username = mm7tx
vasp-password = vasppw
vasp-url = http://127.0.0.1:{vasp_tap}/vasp/
mm7-version = 6.8.0
mm7-soap-xmlns = http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-6-MM7-1-4
"""


def wait_until(what: str, condition: Callable[[], object], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise Failed(f"{what}: not within {seconds:.0f} s")


class Failed(Exception):
    """A step of the scenario that did not happen; its text names it."""


class Run:
    """The processes of one run in ``folder``, stopped in reverse order."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.postfix: Postfix | None = None

    def spawn(self, name: str, argv: list[str]) -> None:
        with open(self.folder / f"{name}.out", "wb") as out:
            process = subprocess.Popen(
                argv, cwd=self.folder, stdout=out, stderr=subprocess.STDOUT
            )
        self.processes.append((name, process))

    def start_postfix(self, port: int, mm7tx: int, sink: int) -> None:
        """Postfix relaying the MMS domain to mm7tx, the sender's domain to
        the sink that stands for the sender's mailbox."""
        postfix = Postfix(
            self.folder / "postfix", port, {"mms.example": mm7tx, "example.org": sink}
        )
        done = postfix.start()
        if done.returncode:
            raise Failed(f"postfix did not start: {done.stdout}{done.stderr}")
        self.postfix = postfix

    def postfix_log(self) -> str:
        return self.postfix.log_text() if self.postfix is not None else ""

    def stop(self) -> None:
        if self.postfix is not None:
            self.postfix.stop()
        for _, process in reversed(self.processes):
            process.send_signal(signal.SIGTERM)
        for _, process in reversed(self.processes):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def tell(line: str) -> None:
    print(line, flush=True)


def scenario(args: argparse.Namespace, run: Run) -> None:
    folder = run.folder
    mbuni = Path(args.mbuni)
    if not (mbuni / "bin" / "mmsc").exists():
        raise Failed(f"no Mbuni mmsc in {mbuni}/bin: run build.sh first")
    names = "http smtp mm7 mms submit_tap vasp_tap postfix sink closed"
    ports = {name: free_port() for name in names.split()}
    (folder / "mmsc.conf").write_text(
        MMSC_CONFIG.format(
            run=folder,
            closed=ports["closed"],
            expiry=args.expiry,
            mm7=ports["mm7"],
            mms=ports["mms"],
            vasp_tap=ports["vasp_tap"],
        )
    )
    (folder / "mm7tx.conf").write_text(
        MM7TX_CONFIG.format(
            http=ports["http"],
            smtp=ports["smtp"],
            relay=ports["postfix"],
            submit_tap=ports["submit_tap"],
        )
    )
    python = sys.executable
    (folder / "mailbox").mkdir()
    run.spawn(
        "sink",
        [
            python,
            str(HERE / "smtp_sink.py"),
            "--port",
            str(ports["sink"]),
            "--dir",
            str(folder / "mailbox"),
            "--control",
            str(folder / "sink-mode"),
        ],
    )
    for name, listen, to in (
        ("submit", ports["submit_tap"], ports["mm7"]),
        ("vasp", ports["vasp_tap"], ports["http"]),
    ):
        run.spawn(
            f"tap-{name}",
            [
                python,
                str(PEER / "tap.py"),
                "--listen",
                str(listen),
                "--to",
                str(to),
                "--dir",
                str(folder / f"tap-{name}"),
            ],
        )
    run.spawn("mmsc", [str(mbuni / "bin" / "mmsc"), str(folder / "mmsc.conf")])
    twistd = str(Path(python).parent / "twistd")
    run.spawn(
        "mm7tx",
        [
            twistd,
            "-n",
            "--pidfile=",
            "-l",
            "mm7tx.log",
            "mm7",
            "--config",
            "mm7tx.conf",
        ],
    )
    for name in ("sink", "submit_tap", "vasp_tap", "mm7", "smtp"):
        wait_for_port(ports[name], 30)
    run.start_postfix(ports["postfix"], ports["smtp"], ports["sink"])
    wait_for_port(ports["postfix"], 30)
    tell(
        f"up: mmsc MM7 :{ports['mm7']}, mm7tx SMTP :{ports['smtp']} "
        f"HTTP :{ports['http']}, Postfix :{ports['postfix']}, sink :{ports['sink']}"
    )

    mail = EmailMessage()
    mail["From"] = "Ann <ann@example.org>"
    mail["To"] = ", ".join(args.to)
    mail["Subject"] = "Mail to MMS through Mbuni"
    mail["Message-ID"] = f"<mbuni-live-{int(time.time())}@example.org>"
    mail.set_content("Hello, phone: a mail that became an MMS at Mbuni's mmsc.")
    with smtplib.SMTP("127.0.0.1", ports["postfix"], timeout=30) as client:
        client.send_message(
            mail, "ann@example.org", args.to, rcpt_options=["NOTIFY=FAILURE,DELAY"]
        )
    tell(f"mail {mail['Message-ID']} to {', '.join(args.to)} handed to Postfix")

    # Issue 23: Postfix's delivery to mm7tx is the 250 with mmsc's MessageID.
    def to_mm7tx() -> list[str]:
        return [
            line
            for line in run.postfix_log().splitlines()
            if "to=<" in line and "@mms.example>" in line and "status=" in line
        ]

    wait_until(
        "Postfix's delivery to mm7tx", lambda: len(to_mm7tx()) >= len(args.to), 60
    )
    message_ids = set()
    for line in to_mm7tx():
        tell(f"Postfix: {line.split(': ', 1)[-1]}")
        if "status=sent" not in line or "MessageID " not in line:
            raise Failed("mm7tx did not answer 250 with a MessageID")
        message_ids.add(line.split("MessageID ", 1)[1].split()[0].rstrip(")"))
    for capture in sorted((folder / "tap-submit").glob("*.s2c")):
        answer = capture.read_bytes()
        if b"SubmitRsp" in answer:
            tell(
                f"mmsc -> mm7tx: SubmitRsp {element(answer, 'StatusCode')}"
                f" MessageID={element(answer, 'MessageID')} ({capture.name})"
            )

    # Issue 24: mmsc's reports become DSNs in the sender's mailbox, one for
    # each recipient.
    def dsns() -> list[Path]:
        return sorted((folder / "mailbox").glob("*.eml"))

    wait_until(
        "mmsc's DeliveryReportReqs, mailed back as DSNs",
        lambda: len(dsns()) >= len(args.to),
        args.expiry + 120,
    )
    for capture in sorted((folder / "tap-vasp").glob("*.c2s")):
        # one connection may carry several requests (keep-alive)
        for request in capture.read_bytes().split(b"POST ")[1:]:
            if b"DeliveryReportReq" in request:
                tell(
                    f"mmsc -> mm7tx /vasp/: DeliveryReportReq MessageID="
                    f"{element(request, 'MessageID')} MMStatus="
                    f"{element(request, 'MMStatus')} Sender="
                    f"{element(request, 'Number')} Recipient="
                    f"{element(request, 'ShortCode')} ({capture.name})"
                )
    for line in run.postfix_log().splitlines():
        if "to=<ann@example.org>" in line or "from=<>" in line:
            tell(f"Postfix: {line.split(': ', 1)[-1]}")
    if "from=<>" not in run.postfix_log():
        raise Failed("the DSN's envelope sender was not <>")
    failed = set()
    for report in dsns():
        tell(f"DSN in the mailbox: {report.name}")
        failed |= check_dsn(report.read_bytes(), mail["Message-ID"])
    wanted = {address.encode() for address in args.to}
    if failed != wanted:
        raise Failed(f"flufl.bounce found failures for {failed}, not {wanted}")


def element(soap: bytes, name: str) -> str:
    """The text of the first element ``name`` (any prefix) in a capture."""
    found = re.search(rb"<(?:\w+:)?" + name.encode() + rb">([^<]*)<", soap)
    return found.group(1).decode() if found else "-"


def check_dsn(raw: bytes, message_id: str) -> set[bytes]:
    """The recipients a DSN reports failed, read the way mail software reads
    one: ``email``'s parser, then flufl.bounce."""
    from flufl.bounce import all_failures, scan_message

    message = email.message_from_bytes(raw, policy=email.policy.default)
    tell(
        f"  Content-Type: {message.get_content_type()};"
        f" report-type={message.get_param('report-type')};"
        f" In-Reply-To: {message.get('In-Reply-To')}"
    )
    if message.get_content_type() != "multipart/report":
        raise Failed("the DSN is not multipart/report")
    if message.get("In-Reply-To") != message_id:
        raise Failed("the DSN does not answer the mail")
    status = next(
        (
            p
            for p in message.iter_parts()
            if p.get_content_type() == "message/delivery-status"
        ),
        None,
    )
    if status is None:
        raise Failed("no message/delivery-status part")
    blocks = status.get_payload()
    if not isinstance(blocks, list):
        raise Failed("the delivery-status part holds no header blocks")
    for block in blocks[1:]:  # the first is per message, then per recipient
        assert isinstance(block, email.message.Message)
        fields = {
            name: str(block.get(name))
            for name in ("Final-Recipient", "Action", "Status", "Diagnostic-Code")
        }
        tell("  " + "; ".join(f"{k}: {v}" for k, v in fields.items()))
        if fields["Action"] != "failed":
            raise Failed(f"Action is {fields['Action']!r}, not failed")
    legacy = email.message_from_bytes(raw)  # flufl.bounce reads compat32 messages
    found = scan_message(legacy)
    temporary, permanent = all_failures(legacy)
    tell(
        f"  flufl.bounce: scan_message {sorted(found)};"
        f" permanent {sorted(permanent)}; temporary {sorted(temporary)}"
    )
    return set(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mbuni", default="/tmp/peer-mbuni/inst")
    parser.add_argument(
        "--to",
        action="append",
        help="a recipient (repeat for more); default 15551234567@mms.example, a"
        " handset of mmsc's that never answers (Expired), and"
        " 447700900123@mms.example, a number mmsc has no route to (Rejected)",
    )
    parser.add_argument(
        "--expiry", type=int, default=20, help="mmsc's default-message-expiry, seconds"
    )
    args = parser.parse_args()
    args.to = args.to or ["15551234567@mms.example", "447700900123@mms.example"]
    folder = Path(tempfile.mkdtemp(prefix="mm7tx-mbuni-live-"))
    folder.chmod(0o755)  # Postfix's own user reaches its queue in there
    tell(f"run folder: {folder}")
    run = Run(folder)
    try:
        scenario(args, run)
    except Failed as e:
        tell(f"FAILED: {e}")
        tell(f"logs and captures kept in {folder}")
        return 1
    finally:
        run.stop()
    tell(
        "OK: mail -> SubmitReq -> 1000 -> 250 with the MessageID; each report -> DSN -> bounce"
    )
    tell(f"logs and captures in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
