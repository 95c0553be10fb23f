"""``--workers N`` with the real ``twistd``: two workers, a SIGHUP while one
starts, a replacement worker, a typo on disk, and mail to MMS through the
workers' shared ESMTP listener (in memory: tests/app/test_workers.py)."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from email import message_from_bytes
from pathlib import Path

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from mm7tx.app import workers
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from tests.app.test_reload import SUBMIT
from tests.app.test_workers import ACCOUNTS, BASE, VASP2, _options
from tests.fake_mmsc import listen_fake_mmsc
from tests.loopback.test_drain import deliver
from tests.processes import TWISTD, free_port, wait_for_port, wait_until


def _ignored(pid: int, signum: int) -> bool:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux /proc")
def test_a_sighup_while_a_worker_starts_does_not_kill_it(tmp_path: Path) -> None:
    """As its parent's could: a real worker, its listener at fd 3, signalled
    before it has its configuration (its parent's, on standard input)."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)  # as the parent's (Twisted's) are
    port = listener.getsockname()[1]
    argv = _options(
        "--listen", f"tcp:{port}", "--smtp-relay", f"maildir:{tmp_path / 'M'}"
    ).worker_command(1)
    with open(tmp_path / "log", "wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import os, sys; os.dup2(int(sys.argv[1]), 3); "
                "os.execv(sys.argv[2], sys.argv[2:])",
                str(listener.fileno()),
                *argv,
            ],
            stdin=subprocess.PIPE,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            pass_fds=(listener.fileno(),),
        )
    try:
        # Python has started the worker's program, which is still starting.
        # (Asked every millisecond, to catch it before its service starts.)
        assert wait_until(
            lambda: process.poll() is None and _ignored(process.pid, signal.SIGHUP),
            interval=0.001,
        )
        process.send_signal(signal.SIGHUP)
        assert process.stdin is not None
        embedded = workers.Accepted("embedded defaults", None)
        process.stdin.write(workers.configuration_frame(embedded, embedded))
        process.stdin.flush()
        assert wait_for_port(port, process)
        assert _post(port, uuid.uuid4().hex) == "1000"
        assert process.poll() is None
    finally:
        listener.close()
        assert process.stdin is not None
        process.stdin.close()  # as when the parent is gone
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _post(port: int, tid: str) -> str:
    """One DeliverReq on a connection of its own: its MM7 status, or the error."""
    content_type, body = deliver(tid)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", "/vasp/", body, {"Content-Type": content_type})
        reply = connection.getresponse()
        envelope = codec.decode(reply.getheader("content-type"), reply.read())
        return str(envelope.message.status.code)  # type: ignore[union-attr]
    except (OSError, http.client.HTTPException) as e:
        return f"error {type(e).__name__}"
    finally:
        connection.close()


def _burst(port: int, count: int) -> dict[str, str]:
    tids = [uuid.uuid4().hex for _ in range(count)]
    with ThreadPoolExecutor(8) as pool:
        return dict(
            zip(tids, pool.map(lambda tid: _post(port, tid), tids), strict=True)
        )


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_twistd_with_two_workers(tmp_path: Path) -> None:
    http_port, metrics_port = free_port(), free_port()
    mail = tmp_path / "Maildir"
    config = tmp_path / "mm7tx.conf"
    config.write_text(
        BASE.replace("%s", "workers = 2\n  %s") % f'smtp_relay = "maildir:{mail}"\n'
        f'  metrics_listen = "tcp:{metrics_port}:interface=127.0.0.1"'
    )
    log_path = tmp_path / "log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [
                TWISTD,
                *("-n", "--pidfile=", "mm7", "--config", str(config)),
                f"--listen=tcp:{http_port}:interface=127.0.0.1",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        assert wait_for_port(metrics_port, process)
        assert wait_until(lambda: _get(metrics_port, "/readyz") == (200, "ready\n"))
        text = log_path.read_text()
        assert "2 workers listening on tcp:" in text
        pids = [
            int(p) for p in re.findall(r"Started 2 workers: pids (\d+) (\d+)", text)[0]
        ]

        answers = _burst(http_port, 24)
        assert set(answers.values()) == {"1000"}
        _, metrics = _get(metrics_port, "/metrics")
        served = {
            s.labels["worker"]
            for f in text_string_to_metric_families(metrics)
            if f.name == "mm7tx_transactions"
            for s in f.samples
            if s.name.endswith("_total") and s.value
        }
        assert served == {"1", "2"}  # both workers took requests

        os.kill(pids[0], signal.SIGKILL)
        more = _burst(http_port, 8)  # the other worker answers meanwhile
        assert set(more.values()) == {"1000"}
        assert wait_until(
            lambda: f"Worker 1 (pid {pids[0]}) died: signal 9" in log_path.read_text()
        )
        assert wait_until(lambda: _get(metrics_port, "/readyz") == (200, "ready\n"))
        assert "mm7tx_workers 2.0" in _get(metrics_port, "/metrics")[1]

        # SIGHUP reaches every worker, each reloads the file (not the parent).
        config.write_text(config.read_text().replace("from.example", "new.example"))
        process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: log_path.read_text().count("Reloaded ") == 2)
        reloaded = _burst(http_port, 8)
        assert set(reloaded.values()) == {"1000"}
        froms = {
            str(message_from_bytes(p.read_bytes())["From"])
            for p in (mail / "new").iterdir()
            if str(message_from_bytes(p.read_bytes())["X-MM7-TransactionID"])
            in reloaded
        }
        assert froms and all(
            f.endswith("@new.example>") or f.endswith("@new.example") for f in froms
        )
        more.update(reloaded)

        # SIGTERM under load: every 1000 has its mail, nothing else has.
        results: dict[str, str] = {}
        in_before = len(list((mail / "new").iterdir()))
        loader = threading.Thread(target=lambda: results.update(_burst(http_port, 40)))
        loader.start()
        # Under way: the burst's first mail is in, the rest still coming.
        assert wait_until(
            lambda: len(list((mail / "new").iterdir())) > in_before, interval=0.005
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) in (0, -signal.SIGTERM)
        loader.join(15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    answers.update(more)
    answers.update(results)
    delivered = Counter(
        str(message_from_bytes(p.read_bytes())["X-MM7-TransactionID"])
        for p in (mail / "new").iterdir()
    )
    accepted = {tid for tid, outcome in answers.items() if outcome == "1000"}
    assert set(delivered) == accepted and set(delivered.values()) == {1}
    assert "All workers stopped" in log_path.read_text()
    for pid in pids[1:]:  # the workers are gone with their parent
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _submit(port: int, account: str, password: str) -> str:
    """One SubmitReq from ``account`` on a connection of its own: its MM7
    status, ``401`` for refused credentials, or the error."""
    import base64

    content_type, body = codec.encode(m.Envelope(uuid.uuid4().hex, SUBMIT))
    credentials = base64.b64encode(f"{account}:{password}".encode()).decode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            "POST",
            "/mm7/",
            body,
            {"Content-Type": content_type, "Authorization": f"Basic {credentials}"},
        )
        reply = connection.getresponse()
        data = reply.read()
        if reply.status == 401:
            return "401"
        envelope = codec.decode(reply.getheader("content-type"), data)
        return str(envelope.message.status.code)  # type: ignore[union-attr]
    except (OSError, http.client.HTTPException) as e:
        return f"error {type(e).__name__}"
    finally:
        connection.close()


def _submits(port: int, account: str, password: str, count: int = 12) -> Counter[str]:
    with ThreadPoolExecutor(6) as pool:
        return Counter(
            pool.map(lambda _: _submit(port, account, password), range(count))
        )


class _Running:
    """``twistd mm7`` with two workers on ``config``, its log in ``log``."""

    def __init__(self, tmp_path: Path, accounts: str) -> None:
        self.port, self.metrics = free_port(), free_port()
        self.config = tmp_path / "mm7tx.conf"
        self.text = (
            BASE
            % (
                'mm7_mmsc_uri_paths = ("/mm7/")\n  workers = 2\n'
                # the tests send refused logins on purpose: the lockout
                # (10 a worker, by default) is not what they are about
                "  mm7_max_failed_logins = 1000\n"
                f'  smtp_relay = "maildir:{tmp_path / "Maildir"}"\n'
                f'  metrics_listen = "tcp:{self.metrics}:interface=127.0.0.1"'
            )
            + accounts
        )
        self.config.write_text(self.text)
        self.log = tmp_path / "log"
        with open(self.log, "wb") as log_file:
            self.process = subprocess.Popen(
                [
                    TWISTD,
                    *("-n", "--pidfile=", "mm7", "--config", str(self.config)),
                    f"--listen=tcp:{self.port}:interface=127.0.0.1",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )

    def ready(self) -> bool:
        return wait_until(lambda: self._ready() == (200, "ready\n"))

    def _ready(self) -> tuple[int, str]:
        try:
            return _get(self.metrics, "/readyz")
        except OSError as e:
            return 0, str(e)

    def pids(self) -> list[int]:
        found = re.findall(r"Started 2 workers: pids (\d+) (\d+)", self.log.read_text())
        return [int(pid) for pid in found[0]]

    def replace(self, slot: int) -> set[tuple[int, str]]:
        """Kill worker ``slot``; what ``/readyz`` said until it is ready again."""
        pid = self.pids()[slot - 1]
        os.kill(pid, signal.SIGKILL)
        assert wait_until(
            lambda: f"Worker {slot} (pid {pid}) died" in self.log.read_text()
        )
        said: set[tuple[int, str]] = set()

        def ready() -> bool:
            said.add(self._ready())
            return (200, "ready\n") in said

        assert wait_until(ready, interval=0.01)
        return said - {(200, "ready\n")}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def test_twistd_a_replacement_worker_runs_the_accepted_configuration(
    tmp_path: Path,
) -> None:
    """A VASP appended to the file without SIGHUP, a worker killed: its
    replacement refuses that VASP as the other worker does, until SIGHUP."""
    running = _Running(tmp_path, ACCOUNTS)
    try:
        assert running.ready()
        running.config.write_text(running.text + VASP2)
        being_replaced = (503, "worker 1 is not running (being restarted)\n")
        assert running.replace(1) <= {being_replaced}
        assert _submits(running.port, "vasp2", "secret2") == {"401": 12}
        assert _submits(running.port, "vasp1", "secret1") == {"1000": 12}
        running.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: running.log.read_text().count("Reloaded ") == 2)
        assert _submits(running.port, "vasp2", "secret2") == {"1000": 12}
    finally:
        running.stop()
    log = running.log.read_text()
    assert f"SIGHUP: passing {running.config} on to 2 workers" in log
    assert "does not answer" not in log


def test_twistd_a_typo_on_disk_reaches_no_worker(tmp_path: Path) -> None:
    """A typo left in the file, a worker killed: its replacement starts on
    the accepted configuration (no crash loop); SIGHUP says why once."""
    running = _Running(tmp_path, ACCOUNTS)
    try:
        assert running.ready()
        running.config.write_text(running.text + "nonsense = 1\n")
        assert running.replace(2) <= {
            (503, "worker 2 is not running (being restarted)\n")
        }
        assert _submits(running.port, "vasp1", "secret1") == {"1000": 12}
        running.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "Not reloading" in running.log.read_text())
        assert _submits(running.port, "vasp1", "secret1") == {"1000": 12}
        assert running.process.poll() is None
    finally:
        running.stop()
    log = running.log.read_text()
    assert log.count(" died: ") == 1
    assert log.count("Not reloading, the running configuration is kept: ") == 1
    assert f"{running.config}, line 13: unknown top-level option 'nonsense'" in log


MAIL_IN = """
HTTP_Listener {{ Listen "tcp:{http}:interface=127.0.0.1" {{ }} }}
ESMTP_Listener {{ Listen "tcp:{smtp}:interface=127.0.0.1" {{ }} }}
mm7_serv {{
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_server_default_email_from_domain = "mms.example"
  mm7_server_default_email_to_domain = "mms.example"
  metrics_listen = "none"
  mms_domains = ("mms.example")
  workers = 2
}}
MMSC "up" {{
  submit_url = "http://127.0.0.1:{mmsc}/mm7"
  vasp_id = "vasp1"
  sender_address = "12345"
}}
"""


def _mail(port: int, number: int) -> tuple[int, str]:
    """One mail to 1555000000<number>@mms.example on a connection of its
    own: the reply to its DATA."""
    import smtplib
    from email.message import EmailMessage

    mail = EmailMessage()
    mail["From"] = "ann@example.org"
    mail["To"] = f"1555000000{number}@mms.example"
    mail["Subject"] = f"Mail {number}"
    mail["Message-ID"] = f"<workers-{number}@example.org>"
    mail.set_content(f"Hello, phone {number}.")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.example")
        assert client.mail("ann@example.org")[0] == 250
        assert client.rcpt(mail["To"])[0] == 250
        code, text = client.data(mail.as_bytes())
        return code, text.decode()


@pytest_twisted.ensureDeferred
async def test_twistd_with_two_workers_takes_mail_to_mms(tmp_path):
    """``ESMTP_Listener`` with ``workers = 2``: the parent binds the SMTP
    port, the workers adopt it; each mail is a 250 once the (fake) MMSC,
    served by this test's reactor, took its SubmitReq."""
    from twisted.internet import reactor, threads
    from twisted.internet.defer import gatherResults

    mmsc, mmsc_port = await listen_fake_mmsc(reactor, [1000])
    http_port, smtp_port = free_port(), free_port()
    config = tmp_path / "mm7tx.conf"
    config.write_text(
        MAIL_IN.format(http=http_port, smtp=smtp_port, mmsc=mmsc_port.getHost().port)
    )
    log_path = tmp_path / "log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [TWISTD, *("-n", "--pidfile=", "mm7", "--config", str(config))],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        assert wait_for_port(smtp_port, process), log_path.read_text()
        # The parent listens before its workers do: until both run, a
        # connection waits in the backlog for one to accept it.
        assert wait_until(lambda: "Started 2 workers" in log_path.read_text())
        replies = await gatherResults(
            [threads.deferToThread(_mail, smtp_port, n) for n in range(6)]
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        await mmsc_port.stopListening()
    log = log_path.read_text()
    assert f"2 workers listening on tcp:{http_port}:interface=127.0.0.1, " in log
    assert f"tcp:{smtp_port}:interface=127.0.0.1" in log
    for code, text in replies:
        assert code == 250, replies
        assert text.startswith("2.0.0 Ok: queued as ") and "MessageID fake-" in text
    # Exactly one SubmitReq a mail, whichever worker took it.
    assert sorted(s.recipients.to[0].value for s, _ in mmsc.received) == [
        f"1555000000{n}" for n in range(6)
    ]
    assert "All workers stopped" in log
