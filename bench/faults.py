"""Fault injection: mm7tx must never lose a message.

    python -m bench.faults [--seconds 44] [--concurrency 4] [--no-pipelining]

Real processes on loopback only: the real ``twistd mm7`` and a real SMTP
server (bench/smtp_sink.py).  A steady stream of DeliverReq and SubmitReq with
unique TransactionIDs goes through the MM7 client while the script
(a) stops the SMTP server for a few seconds and starts it again,
(b) makes it answer 451, then 421, for a while,
(c) makes it hang mid-DATA,
(d) sends mm7tx SIGTERM and restarts it.
Then it reconciles: every request answered 1000 must have exactly one email at
the SMTP server, and every other request must have got a transient fault
(4006) or a connection error, so that its sender would retry.  Exit status 0
only when nothing was lost.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from email import message_from_bytes
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task, threads

from bench.common import free_port, mm7tx_config, wait_for_port
from mm7tx.http.client import MM7Client, MM7ClientError, MM7Fault
from mm7tx.mm7 import messages as m

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


class Rig:
    """The processes under test and the switches that break them."""

    def __init__(self, folder: Path, pipelining: bool = True) -> None:
        self.folder = folder
        self.pipelining = pipelining
        self.mail = folder / "mail"
        self.control = folder / "mode"
        self.control.write_text("ok")
        self.smtp_port, self.http_port = free_port(), free_port()
        self.config = folder / "mm7tx.conf"
        self.config.write_text(
            mm7tx_config(
                self.http_port,
                self.smtp_port,
                "  smtp_connect_timeout = 2\n  smtp_command_timeout = 2\n"
                "  smtp_timeout = 5\n  mm7_drain_timeout = 10",
                'VASP "bench" { password = "bench" }',
            )
        )
        self.smtp: subprocess.Popen[bytes] | None = None
        self.mm7: subprocess.Popen[bytes] | None = None
        self.log = open(folder / "mm7tx.log", "ab")  # noqa: SIM115

    def start_smtp(self) -> None:
        self.smtp = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "smtp_sink.py"),
                "--port",
                str(self.smtp_port),
                "--dir",
                str(self.mail),
                "--control",
                str(self.control),
                *(["--pipelining"] if self.pipelining else []),
            ]
        )
        wait_for_port(self.smtp_port)

    def stop_smtp(self) -> None:
        assert self.smtp is not None
        self.smtp.terminate()
        self.smtp.wait(10)

    def start_mm7(self) -> None:
        self.mm7 = subprocess.Popen(
            [
                str(BIN / "twistd"),
                "-n",
                "--pidfile=",
                "mm7",
                "--config",
                str(self.config),
            ],
            cwd=self.folder,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.http_port)

    def restart_mm7(self) -> float:
        """SIGTERM, wait for the drain and exit, start again; seconds down."""
        assert self.mm7 is not None
        began = time.monotonic()
        self.mm7.send_signal(signal.SIGTERM)
        self.mm7.wait(30)
        self.start_mm7()
        return time.monotonic() - began

    def stop(self) -> None:
        for process in (self.mm7, self.smtp):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(10)
        self.log.close()

    def emails(self) -> Counter[str]:
        """TransactionIDs of the mail the SMTP server kept, with counts."""
        found: Counter[str] = Counter()
        for path in self.mail.glob("*.eml"):
            message = message_from_bytes(path.read_bytes())
            found[str(message["X-MM7-TransactionID"])] += 1
        return found


def request(kind: str) -> m.Request:
    jpeg = b"\xff\xd8\xff\xe0" + os.urandom(2000)
    content = (m.ContentPart("image/jpeg", jpeg, (("name", "p.jpg"),), "p"),)
    if kind == "deliver":
        return m.DeliverReq(
            sender=m.Address("+15551234567"),
            recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
            subject="fault bench",
            content=content,
        )
    return m.SubmitReq(
        sender_address=m.Address("7255", "ShortCode"),
        recipients=m.Recipients(
            to=(m.Address("+15551234567"), m.Address("+15557654321"))
        ),
        subject="fault bench",
        content=content,
    )


async def load(
    reactor: Any, rig: Rig, seconds: float, concurrency: int
) -> dict[str, tuple[str, str]]:
    """Send requests until ``seconds`` pass; each TransactionID -> (kind, outcome)."""
    outcomes: dict[str, tuple[str, str]] = {}
    base = f"http://127.0.0.1:{rig.http_port}"
    clients = {
        "deliver": MM7Client(
            reactor, base + "/vasp/", timeout=15, connections=concurrency
        ),
        "submit": MM7Client(
            reactor,
            base + "/mm7/",
            ("bench", "bench"),
            timeout=15,
            connections=concurrency,
        ),
    }
    stop_at = reactor.seconds() + seconds

    async def worker(number: int) -> None:
        sequence = 0
        while reactor.seconds() < stop_at:
            kind = "deliver" if (number + sequence) % 2 == 0 else "submit"
            sequence += 1
            tid = uuid.uuid4().hex
            try:
                response = await clients[kind].send(request(kind), transaction_id=tid)
                outcome = str(response.status.code)
            except MM7Fault as fault:
                outcome = f"fault {fault.status.code}"
            except MM7ClientError as e:
                outcome = f"error {type(e).__name__}"
                await task.deferLater(reactor, 0.05)  # a real sender backs off
            outcomes[tid] = (kind, outcome)

    await defer.gatherResults(
        [defer.ensureDeferred(worker(n)) for n in range(concurrency)]
    )
    for client in clients.values():
        await client.close()
    return outcomes


async def run(reactor: Any, args: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp(prefix="mm7tx-faults-"))
    rig = Rig(folder, pipelining=not args.no_pipelining)
    rig.start_smtp()
    rig.start_mm7()
    events: list[str] = []

    def at(when: float, what: str, action: Any) -> None:
        def fire() -> None:
            events.append(f"t={when:>4.1f}s {what}")
            action()

        reactor.callLater(when, fire)

    def restart() -> None:
        # In a thread, so that the load goes on while mm7tx drains.
        def done(down: float) -> None:
            events.append(f"        mm7tx drained, exited and was back in {down:.2f} s")

        threads.deferToThread(rig.restart_mm7).addCallback(done)

    s = args.seconds / 44.0  # the schedule scales with the run
    at(4 * s, "(a) SMTP server stopped", rig.stop_smtp)
    at(8 * s, "    SMTP server started", rig.start_smtp)
    at(12 * s, "(b) SMTP server answers 451", lambda: rig.control.write_text("busy"))
    at(
        15 * s,
        "    SMTP server answers 421",
        lambda: rig.control.write_text("greet421"),
    )
    at(18 * s, "    SMTP server fine", lambda: rig.control.write_text("ok"))
    at(22 * s, "(c) SMTP server hangs mid-DATA", lambda: rig.control.write_text("hang"))
    at(26 * s, "    SMTP server fine", lambda: rig.control.write_text("ok"))
    at(31 * s, "(d) SIGTERM to mm7tx, restart", restart)
    try:
        outcomes = await load(reactor, rig, args.seconds, args.concurrency)
        await task.deferLater(reactor, 1.0)  # let the last mail land
        mail = rig.emails()
    finally:
        rig.stop()

    by_outcome = Counter(outcome for _, outcome in outcomes.values())
    confirmed = [tid for tid, (_, o) in outcomes.items() if o in ("1000", "1100")]
    lost = [tid for tid in confirmed if mail[tid] == 0]
    doubled = [tid for tid in confirmed if mail[tid] > 1]
    bad = [
        (tid, o)
        for tid, (_, o) in outcomes.items()
        if o not in ("1000", "1100")
        and o != "fault 4006"
        and not o.startswith("error ")
    ]
    unconfirmed_delivered = sum(
        1 for tid, (_, o) in outcomes.items() if o not in ("1000", "1100") and mail[tid]
    )
    strays = [tid for tid in mail if tid not in outcomes]
    print("\n".join(events))
    drains = [
        line.split("] ", 1)[-1]
        for line in (folder / "mm7tx.log").read_text().splitlines()
        if "Draining" in line or "still in flight" in line
    ]
    print("\n".join(f"        mm7tx: {line}" for line in drains))
    print(f"SMTP server offers PIPELINING: {'yes' if rig.pipelining else 'no'}")
    print(f"requests sent:                    {len(outcomes)}")
    for outcome, count in sorted(by_outcome.items()):
        print(f"  answered {outcome:<28} {count}")
    print(f"emails at the SMTP server:        {sum(mail.values())}")
    print(
        f"1000 with exactly one email:      {len(confirmed) - len(lost) - len(doubled)}"
    )
    print(f"1000 with no email (LOST):        {len(lost)}")
    print(f"1000 with more than one email:    {len(doubled)}")
    print(f"failures that were not transient: {len(bad)}")
    print(
        f"not confirmed, yet delivered:     {unconfirmed_delivered} (a retry would duplicate, not lose)"
    )
    print(f"emails for no request:            {len(strays)}")
    print(f"logs and mail kept in {folder}")
    ok = not lost and not doubled and not bad and not strays and confirmed
    print("RESULT: " + ("no message lost" if ok else "FAILED"))
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=44.0, help="length of the run")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--no-pipelining",
        action="store_true",
        help="the SMTP server does not offer PIPELINING (mm7tx sends one command at a time)",
    )
    args = parser.parse_args()

    async def go(reactor: Any) -> None:
        code = await run(reactor, args)
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))


if __name__ == "__main__":
    main()
