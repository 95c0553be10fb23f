"""Exactly once with real processes: two ``twistd mm7`` instances on one
real ``redis-server``, a real SMTP server (bench/smtp_sink.py), and
``kill -9`` (issue 22, item 6; in memory: tests/http/test_once.py and
tests/gateway/test_reports.py).

- A DeliverReq whose answer is dropped (the client closes as soon as it
  has sent it), retried to the other instance: one mail, and the retry gets
  the first's 1000.
- A SubmitReq answered, its instance killed, retried to the other: the same
  MessageID.
- A delivery report pending when its instance is killed: the other posts it.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from tests.app.test_workers import BASE
from tests.loopback.test_drain import SINK, deliver, mail_by_transaction
from tests.loopback.test_store import redis_server  # noqa: F401 (a fixture)
from tests.loopback.test_workers import _get
from tests.processes import TWISTD, free_port, wait_for_port, wait_until

AUTH = {"Authorization": "Basic " + base64.b64encode(b"vasp1:secret1").decode()}


def config(http_port: int, smtp_port: int, redis_port: int, vasp_port: int) -> str:
    return f"""
HTTP_Listener {{ Listen "tcp:{http_port}:interface=127.0.0.1" {{ }} }}
mm7_serv {{
  mm7_server_default_email_from_domain = "from.example"
  mm7_server_default_email_to_domain = "to.example"
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_mmsc_uri_paths = ("/mm7/")
  smtp_relay = "tcp:127.0.0.1:{smtp_port}"
  smtp_starttls = off
  state_store = "redis://127.0.0.1:{redis_port}/0"
  mm7_delivery_report_timeout = 1
}}
VASP "vasp1" {{
  password = "secret1"
  delivery_report_url = "http://127.0.0.1:{vasp_port}/dr/"
}}
"""


class Fleet:
    """Instances of ``twistd mm7``, each in a folder of its own (so each is
    an instance of its own to the delivery reports), on one Redis and one
    SMTP server; the VASP's ``delivery_report_url`` at ``vasp_port``."""

    def __init__(self, folder: Path, smtp_port: int, redis_port: int) -> None:
        self.folder = folder
        self.smtp_port = smtp_port
        self.redis_port = redis_port
        self.vasp_port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, name: str) -> int:
        """A new instance; its HTTP port once it listens."""
        port = free_port()
        home = self.folder / name
        home.mkdir()
        (home / "mm7tx.conf").write_text(
            config(port, self.smtp_port, self.redis_port, self.vasp_port)
        )
        with open(home / "log", "wb") as log:
            process = subprocess.Popen(
                [TWISTD, "-n", "--pidfile=", "mm7", "--config", "mm7tx.conf"],
                cwd=home,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        assert wait_for_port(port, process), (home / "log").read_text()
        return port

    def log(self, name: str) -> str:
        return (self.folder / name / "log").read_text()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)


@pytest.fixture
def mail(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The SMTP server (its port, its folder of mail): it answers each
    message's final dot 1 s after it came, so that a transaction is in
    flight long enough for its retry to find it so."""
    port, folder = free_port(), tmp_path / "mail"
    control = tmp_path / "mode"
    control.write_text("ok")
    sink = subprocess.Popen(
        [
            sys.executable,
            str(SINK),
            "--port",
            str(port),
            "--dir",
            str(folder),
            "--control",
            str(control),
            "--delay",
            "1",
        ]
    )
    try:
        assert wait_for_port(port, sink)
        yield port, folder
    finally:
        sink.kill()
        sink.wait(10)


@pytest.fixture
def fleet(
    tmp_path: Path,
    mail: tuple[int, Path],
    redis_server: int,  # noqa: F811 (the fixture imported above)
) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path, mail[0], redis_server)
    yield fleet
    fleet.stop()


def post(
    port: int, path: str, content_type: str, body: bytes, headers: dict[str, str]
) -> m.Envelope:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request(
            "POST", path, body, {"Content-Type": content_type, **headers}
        )
        reply = connection.getresponse()
        return codec.decode(reply.getheader("content-type"), reply.read())
    finally:
        connection.close()


def status(envelope: m.Envelope) -> int:
    return envelope.message.status.code  # type: ignore[union-attr]


def test_a_retry_whose_first_answer_was_dropped_is_mailed_once(
    fleet: Fleet, mail: tuple[int, Path]
) -> None:
    first, second = fleet.start("first"), fleet.start("second")
    tid = uuid.uuid4().hex
    content_type, body = deliver(tid)
    # The peer sends the whole request and closes before reading the answer.
    head = (
        f"POST /vasp/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", first)) as dropped:
        dropped.sendall(head + body)
    # The first has claimed the transaction (its mail is at the relay, which
    # answers 1 s later) when the retry reaches the second: the second waits
    # for the first's answer.
    assert wait_until(lambda: _keys(fleet.redis_port, "mm7tx:once:*") == 1)
    answer = post(second, "/vasp/", content_type, body, {})
    assert status(answer) == 1000 and answer.transaction_id == tid
    assert wait_until(lambda: sum(mail_by_transaction(mail[1]).values()) >= 1)
    assert "deduplicated" in fleet.log("second"), fleet.log("second")
    # Nothing more is coming: the first's mail was the one.
    assert post(first, "/vasp/", content_type, body, {}).transaction_id == tid
    assert mail_by_transaction(mail[1]) == {tid: 1}


def test_a_submit_retried_after_kill_9_gets_the_same_message_id(
    fleet: Fleet, mail: tuple[int, Path]
) -> None:
    first, second = fleet.start("first"), fleet.start("second")
    request = m.SubmitReq(
        sender_address=m.Address("12345", "ShortCode"),
        recipients=m.Recipients(to=(m.Address("+15551234567"),)),
        subject="once",
        content=(m.ContentPart("text/plain", b"hi", (("charset", "utf-8"),)),),
    )
    tid = uuid.uuid4().hex
    content_type, body = codec.encode(m.Envelope(tid, request))
    answered = post(first, "/mm7/", content_type, body, AUTH)
    assert status(answered) == 1000
    fleet.processes[0].kill()  # kill -9
    fleet.processes[0].wait(10)
    again = post(second, "/mm7/", content_type, body, AUTH)
    assert status(again) == 1000
    assert again.message.message_id == answered.message.message_id  # type: ignore[union-attr]
    assert mail_by_transaction(mail[1]) == {tid: 1}
    assert "deduplicated" in fleet.log("second")


class VASP(http.server.BaseHTTPRequestHandler):
    """The VASP at ``delivery_report_url``: answers each DeliveryReportReq
    1000 and keeps it."""

    reports: list[m.DeliveryReportReq] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        envelope = codec.decode(self.headers["Content-Type"], self.rfile.read(length))
        assert isinstance(envelope.message, m.DeliveryReportReq)
        self.reports.append(envelope.message)
        answer = m.DeliveryReportRsp(m.Status(1000, "Success"))
        content_type, body = codec.encode(
            m.Envelope(envelope.transaction_id, answer, envelope.namespace)
        )
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_report_pending_at_kill_9_is_posted_by_the_other_instance(
    fleet: Fleet,
) -> None:
    """Slow by design (about 20 s): the other instance takes a dead owner's
    report over once its lease has passed, 16 s (the attempt timeout, 1 s
    here, and 15 s) after its next attempt was due, and looks every 5 s
    (README, "Durable delivery reports")."""
    first, _ = fleet.start("first"), fleet.start("second")
    request = m.SubmitReq(
        sender_address=m.Address("12345", "ShortCode"),
        recipients=m.Recipients(to=(m.Address("+15551234567"),)),
        delivery_report=True,
        subject="report",
        content=(m.ContentPart("text/plain", b"hi", (("charset", "utf-8"),)),),
    )
    content_type, body = codec.encode(m.Envelope(uuid.uuid4().hex, request))
    answered = post(first, "/mm7/", content_type, body, AUTH)
    assert status(answered) == 1000
    message_id = answered.message.message_id  # type: ignore[union-attr]
    # Nothing listens at the VASP's URL yet: the first keeps retrying the
    # report it wrote to the store.
    assert wait_until(lambda: "delivery report" in fleet.log("first").lower())
    assert wait_until(lambda: _keys(fleet.redis_port, "mm7tx:report:*") == 1)
    fleet.processes[0].kill()  # kill -9
    fleet.processes[0].wait(10)
    VASP.reports = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", fleet.vasp_port), VASP)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert wait_until(lambda: VASP.reports, timeout=40, interval=0.2), fleet.log(
            "second"
        )
        assert [r.message_id for r in VASP.reports] == [message_id]
        assert wait_until(lambda: _keys(fleet.redis_port, "mm7tx:report:*") == 0)
    finally:
        server.shutdown()
        server.server_close()


def _keys(port: int, pattern: str) -> int:
    """How many keys matching ``pattern`` the Redis at ``port`` holds."""
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "KEYS", pattern],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len(out.split())


def test_workers_share_the_sqlite_file_and_the_parent_shows_their_dedup(
    tmp_path: Path,
) -> None:
    """``--workers 2`` on the default SQLite store: retries on connections
    of their own (either worker may take each) mail once, and the parent's
    ``/metrics`` shows the hits and store calls by worker."""
    http_port, metrics_port = free_port(), free_port()
    (tmp_path / "mm7tx.conf").write_text(
        BASE.replace("%s", "workers = 2\n  %s")
        % f'smtp_relay = "maildir:{tmp_path / "Maildir"}"\n'
        f'  metrics_listen = "tcp:{metrics_port}:interface=127.0.0.1"'
    )
    with open(tmp_path / "log", "wb") as log:
        process = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "mm7",
                "--config",
                "mm7tx.conf",
                f"--listen=tcp:{http_port}:interface=127.0.0.1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        assert wait_for_port(metrics_port, process)
        assert wait_until(lambda: _get(metrics_port, "/readyz") == (200, "ready\n"))
        tid = uuid.uuid4().hex
        content_type, body = deliver(tid)
        for _ in range(6):
            assert status(post(http_port, "/vasp/", content_type, body, {})) == 1000
        _, text = _get(metrics_port, "/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        hits = {
            s.labels["worker"]: s.value
            for s in families["mm7tx_dedup_hits"].samples
            if s.name.endswith("_total")
        }
        assert set(hits) <= {"1", "2"} and sum(hits.values()) == 5, hits
        calls = {
            (s.labels["worker"], s.labels["operation"])
            for s in families["mm7tx_store_seconds"].samples
            if s.name.endswith("_count")
        }
        assert {operation for _, operation in calls} >= {"claim", "complete"}
        assert {worker for worker, _ in calls} <= {"1", "2"}
        waits = families["mm7tx_dedup_waits"].samples
        assert {s.labels["worker"] for s in waits if s.name.endswith("_total")} == {
            "1",
            "2",
        }
        assert "mm7tx_store_errors" in families
        mails = list((tmp_path / "Maildir" / "new").iterdir())
        assert len(mails) == 1
    finally:
        process.terminate()
        process.wait(30)
