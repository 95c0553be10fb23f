"""The logs: one event per transaction with its fields, JSON lines for log
pipelines, and no password in either."""

from __future__ import annotations

import base64
import json
import re
import signal
import sys
from io import StringIO
from typing import Any

import pytest
from twisted.logger import (
    Logger,
    capturedLogs,
    eventAsJSON,
    eventFromJSON,
    formatEvent,
)
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile

from mm7tx import logs
from mm7tx.gateway.processors import AddressRules, EmailProcessor
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.mm7.status import StatusCode
from mm7tx.smtp.maildir import MaildirSender
from mm7tx.testing import FakeMailSender, MemoryGateway, result_of
from mm7tx.transaction import Transaction

CONFIG = """
HTTP_Listener { Listen "tcp:8080:interface=127.0.0.1" { } }
mm7_serv {
  mm7_server_default_email_from_domain = "from.example"
  mm7_server_default_email_to_domain = "to.example"
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_mmsc_uri_paths = ("/mm7/")
  smtp_starttls = off
  mm7_delivery_report_attempts = 2
  mm7_access_log = true
}
MMSC "mmsc1" { password = "secretpw" }
VASP "acct" {
  password = "secretpw"
  delivery_report_url = "http://vasp.test:9000/dr/"
  delivery_report_user = "dr"
  delivery_report_password = "secretpw"
}
VASP "acct2" {
  password = "secretpw"
  delivery_report_url = "http://dr:secretpw@vasp.test:9000/dr/"
}
"""
DELIVER = m.DeliverReq(
    sender=m.Address("+447700900123"),
    recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
    content=(m.ContentPart("text/plain", b"hi", (("charset", "utf-8"),)),),
)
SUBMIT = m.SubmitReq(
    sender_address=m.Address("12345", "ShortCode"),
    recipients=m.Recipients(to=(m.Address("+15551234567"),)),
    delivery_report=True,
    content=(m.ContentPart("text/plain", b"hi", (("charset", "utf-8"),)),),
)
REPORT = m.DeliveryReportReq(
    message_id="mmsc-42",
    recipient=m.Address("+15551234567"),
    sender=m.Address("7255", "ShortCode"),
    mm_status="Retrieved",
)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def post(
    gateway: MemoryGateway,
    path: str,
    message: m.Request,
    headers: dict[str, str] | None = None,
) -> tuple[int, m.Response, int]:
    """POST ``message``; the HTTP status, the answer and the request's size."""
    ctype, body = codec.encode(m.Envelope("tx-1", message))
    answer = gateway.post(path, body, {"Content-Type": ctype, **(headers or {})})
    envelope = codec.decode(answer.headers.get("content-type"), answer.body)
    return answer.code, envelope.message, len(body)  # type: ignore[return-value]


def transactions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if logs.is_transaction(e)]


def fields(event: dict[str, Any]) -> dict[str, Any]:
    return {key: event[key] for key in logs.TRANSACTION_FIELDS}


# The transaction event -------------------------------------------------------


def test_one_line_per_transaction_unless_the_access_log_is_asked_for():
    """By default the transaction event is the only line a request logs;
    ``mm7_access_log = true`` adds Twisted's access line (redacted), and a
    reload turns it on and off."""
    quiet = CONFIG.replace("  mm7_access_log = true\n", "")
    assert quiet != CONFIG
    gateway = MemoryGateway(quiet)

    def lines(path: str) -> list[str]:
        with capturedLogs() as events:
            post(gateway, path, SUBMIT)
        assert len(transactions(list(events))) == 1
        return [formatEvent(e) for e in events]

    logged = lines("/mm7/acct=secretpw")
    assert any(line.startswith("SubmitReq tx-1 from ") for line in logged)
    assert not any("HTTP/1.1" in line for line in logged)
    assert gateway.reload(CONFIG)
    [access] = [line for line in lines("/mm7/acct=secretpw") if "HTTP/1.1" in line]
    assert '"POST /mm7/acct=*** HTTP/1.1" 200' in access
    assert gateway.reload(quiet)
    assert not any("HTTP/1.1" in line for line in lines("/mm7/acct=secretpw"))
    gateway.stop()


def test_a_deliver_req_is_one_event_with_every_field_and_the_relays_queue_id():
    gateway = MemoryGateway(CONFIG)
    with capturedLogs() as events:
        code, answer, size = post(
            gateway, "/vasp/", DELIVER, basic("mmsc1", "secretpw")
        )
    assert code == 200 and answer.status.code == 1000
    [mail] = gateway.relay.accepted
    [event] = transactions(events)
    assert event["log_namespace"] == "mm7tx.resource"
    assert 0 <= event.pop("ms") < 60_000
    assert fields(event | {"ms": 0}) == {
        "path": "/vasp/",
        "account": "mmsc1",
        "operation": "DeliverReq",
        "transaction_id": "tx-1",
        "message_id": None,
        "status": 1000,
        "status_text": "Success",
        "request_bytes": size,
        "ms": 0,
        "peer": "127.0.0.1",
        "relay_reply": f"250 2.0.0 Ok: queued as {mail.queue_id}",
        "answered": True,
        "sender": "********0123",
        "recipients": ["7255"],
        "recipient_count": 1,
    }
    line = formatEvent(event)
    assert re.sub(r"\(\d+\.\d ms\)", "(1.2 ms)", line) == (
        "DeliverReq tx-1 from 127.0.0.1 on /vasp/: 1000 Success (1.2 ms); "
        "account mmsc1; sender ********0123; to 7255; "
        f"relay 250 2.0.0 Ok: queued as {mail.queue_id}"
    )
    # The same line from the event relayed as JSON (as a worker's are).
    assert formatEvent(eventFromJSON(eventAsJSON(event))) == line
    gateway.stop()


def test_the_message_id_is_the_submit_rsps_or_the_one_a_report_names():
    gateway = MemoryGateway(CONFIG)
    with capturedLogs() as events:
        _, submitted, _ = post(gateway, "/mm7/acct=secretpw", SUBMIT)
        _, reported, _ = post(gateway, "/vasp/", REPORT, basic("mmsc1", "secretpw"))
    assert isinstance(submitted, m.SubmitRsp) and submitted.message_id
    assert reported.status.code == 1000
    submit, report = transactions(events)
    assert (submit["operation"], submit["account"]) == ("SubmitReq", "acct")
    assert submit["path"] == "/mm7/"  # the configured path, not the request's
    assert submit["message_id"] == submitted.message_id
    assert (report["operation"], report["message_id"]) == (
        "DeliveryReportReq",
        "mmsc-42",
    )
    gateway.stop()


@pytest.mark.parametrize(
    ("path", "message", "headers", "operation", "status", "text"),
    [
        (
            "/vasp/",
            DELIVER,
            basic("mmsc1", "wrong"),
            None,
            4001,
            "no valid MMSC credentials",
        ),
        (
            "/vasp/",
            SUBMIT,
            basic("mmsc1", "secretpw"),
            "SubmitReq",
            4003,
            "SubmitReq is not accepted on /vasp/",
        ),
        ("/vasp/", None, basic("mmsc1", "secretpw"), None, 4004, None),
    ],
    ids=["credentials", "operation", "not-mm7"],
)
def test_a_refusal_is_one_transaction_event_too(
    path, message, headers, operation, status, text
):
    gateway = MemoryGateway(CONFIG)
    with capturedLogs() as events:
        if message is None:
            body = b"<not-soap/>"
            gateway.post(path, body, {"Content-Type": "text/xml", **headers})
        else:
            post(gateway, path, message, headers)
    [event] = transactions(events)
    assert (event["operation"], event["status"]) == (operation, status)
    assert text is None or event["status_text"] == text
    assert event["relay_reply"] is None and event["request_bytes"] > 0
    assert f": fault {status} " in formatEvent(event)
    # No other line says it again (a lockout warning would be news).
    assert [e for e in events if "Refused" in e.get("log_format", "")] == []
    gateway.stop()


def test_the_processor_notes_the_relays_reply_on_the_transaction(tmp_path):
    """EmailProcessor notes the reply of whatever sender it has (a Maildir
    names the file); a sender that gives none leaves it None."""
    maildir = MaildirSender(str(tmp_path / "Maildir"))
    rules = AddressRules(from_address="f@example.com", to_address="t@example.com")
    transaction = Transaction("tx-1", "/vasp/")
    result_of(EmailProcessor(maildir, rules).deliver(DELIVER, transaction))
    [stored] = (tmp_path / "Maildir" / "new").iterdir()
    assert transaction.outcome.relay_reply == f"stored as new/{stored.name}"
    transaction = Transaction("tx-2", "/vasp/")
    result_of(EmailProcessor(FakeMailSender(), rules).deliver(DELIVER, transaction))
    assert transaction.outcome.relay_reply is None
    assert transaction == Transaction("tx-2", "/vasp/")  # not part of equality


def test_the_relays_reply_is_one_line_cut_to_size():
    from mm7tx.smtp.session import MAX_REPLY, reply

    assert (
        reply(250, b"2.0.0 Ok\r\n250 queued as X\x00") == "250 2.0.0 Ok 250 queued as X"
    )
    assert len(reply(250, b"x" * 1000)) == MAX_REPLY


# JSON lines ------------------------------------------------------------------


def json_lines(emit: Any) -> list[dict[str, Any]]:
    """What the JSON observer wrote for the events ``emit(log)`` logs."""
    out = StringIO()
    emit(Logger(namespace="test.ns", observer=logs.json_lines_observer(out)))
    text = out.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_a_transaction_event_is_one_json_object_with_its_fields():
    [record] = json_lines(
        lambda log: logs.log_transaction(
            log,
            path="/vasp/",
            peer="192.0.2.1",
            status=StatusCode.SUCCESS,
            status_text="Success",
            ms=2.5,
            request_bytes=1234,
            operation="DeliverReq",
            transaction_id="tx-1",
            account="mmsc1",
            relay_reply="250 2.0.0 Ok: queued as 4F3A2B",
        )
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record.pop("time"))
    assert record == {
        "level": "info",
        "namespace": "test.ns",
        "message": "DeliverReq tx-1 from 192.0.2.1 on /vasp/: 1000 Success "
        "(2.5 ms); account mmsc1; relay 250 2.0.0 Ok: queued as 4F3A2B",
        "mm7tx_event": "transaction",
        "path": "/vasp/",
        "account": "mmsc1",
        "operation": "DeliverReq",
        "transaction_id": "tx-1",
        "message_id": None,
        "status": 1000,
        "status_text": "Success",
        "request_bytes": 1234,
        "ms": 2.5,
        "peer": "192.0.2.1",
        "relay_reply": "250 2.0.0 Ok: queued as 4F3A2B",
        "answered": True,
        "sender": None,
        "recipients": None,
        "recipient_count": None,
    }


def test_any_event_becomes_json_safe_fields_and_a_failure_its_traceback():
    def emit(log: Logger) -> None:
        log.warn(
            "odd {data}",
            data=b"\xff bytes",
            nan=float("nan"),
            code=StatusCode.SERVICE_UNAVAILABLE,
            nested={"a": (1, "two", object)},
            surrogate="bad \udcff byte",
        )
        try:
            raise ValueError("it broke")
        except ValueError:
            log.failure("Processor failed on {kind}", Failure(), kind="DeliverReq")

    odd, failed = json_lines(emit)
    assert odd["level"] == "warn"
    assert odd["data"] == "\ufffd bytes" and odd["nan"] == "nan"
    assert odd["code"] == 4006
    assert odd["nested"] == {"a": [1, "two", "<class 'object'>"]}
    assert odd["surrogate"] == "bad \udcff byte"
    assert failed["level"] == "critical"
    assert failed["message"] == "Processor failed on DeliverReq"
    assert failed["kind"] == "DeliverReq"
    assert "ValueError: it broke" in failed["failure"]
    assert "Traceback" in failed["failure"]


def test_a_password_in_a_url_is_masked_in_json():
    [record] = json_lines(
        lambda log: log.info(
            "Posting to {url}", url="https://vasp:hunter2@dr.example/x?a=b"
        )
    )
    assert record["url"] == "https://vasp:***@dr.example/x?a=b"
    assert record["message"] == "Posting to https://vasp:***@dr.example/x?a=b"


def test_no_password_reaches_the_json_log():
    """URI credentials, Basic credentials (right and wrong), delivery
    reports posted with a password, set apart or in the URL (and retried,
    then given up): the
    password is nowhere in what the JSON observer writes, the access log
    included."""
    gateway = MemoryGateway(CONFIG)
    out = StringIO()
    with capturedLogs() as events:
        post(gateway, "/mm7/acct=secretpw", SUBMIT)  # reports to a dead URL
        post(gateway, "/mm7/acct=secretpwX", SUBMIT)
        post(gateway, "/mm7/acct2=secretpw", SUBMIT)  # its URL has the password
        post(gateway, "/vasp/", DELIVER, basic("mmsc1", "secretpw"))
        post(gateway, "/vasp/", DELIVER, basic("mmsc1", "secretpw-not"))
        gateway.advance(120)
        gateway.stop()
    observer = logs.json_lines_observer(out)
    for event in events:
        observer(event)
    written = out.getvalue()
    assert "secretpw" not in written
    assert base64.b64encode(b"mmsc1:secretpw").decode()[:-4] not in written
    # What the test looked at: every transaction and the access log lines.
    records = [json.loads(line) for line in written.splitlines()]
    assert len([r for r in records if r.get("mm7tx_event") == "transaction"]) == 5
    assert sum("POST /mm7/acct=*** HTTP/1.1" in r["message"] for r in records) == 2
    assert sum("POST /mm7/acct2=*** HTTP/1.1" in r["message"] for r in records) == 1
    assert any("delivery report" in r["message"].lower() for r in records)
    assert any("for acct2 after 2 attempts" in r["message"] for r in records)


# twistd --logger=mm7tx.logs.json ---------------------------------------------


@pytest.fixture
def sigusr1():
    """Restores SIGUSR1's handler, which a log file to rotate installs."""
    before = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, before)


def test_the_json_logger_writes_where_twistds_text_log_would(tmp_path, sigusr1):
    """stdout with -n and no -l (or ``-l -``); the -l file otherwise;
    ``twistd.log`` for a daemon without -l; a daemon cannot use stdout."""
    where = logs._twistd_log_file
    assert where(["-n", "mm7", "-l", "x"]) is sys.stdout  # mm7's -l, not twistd's
    assert where(["--nodaemon", "--logfile=-", "mm7"]) is sys.stdout
    log_file = where(["-n", f"--logfile={tmp_path / 'a.log'}", "mm7"])
    assert isinstance(log_file, LogFile) and log_file.path == str(tmp_path / "a.log")
    assert signal.getsignal(signal.SIGUSR1) not in (None, signal.SIG_DFL)
    log_file.close()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        daemon = where(["--pidfile=", "mm7"])
        assert isinstance(daemon, LogFile) and daemon.name == "twistd.log"
        daemon.close()
    with pytest.raises(SystemExit, match="Daemons cannot log to stdout"):
        where(["-l", "-", "mm7"])


def test_a_request_refused_undecoded_logs_the_transaction_id_it_echoes():
    gateway = MemoryGateway(CONFIG)
    ctype, body = codec.encode(m.Envelope("tx-9", m.DeliveryReportReq()))
    with capturedLogs() as events:
        answer = gateway.post(
            "/vasp/", body, {"Content-Type": ctype, **basic("mmsc1", "secretpw")}
        )
    assert b"tx-9" in answer.body  # the fault echoes it
    [event] = transactions(events)
    assert (event["operation"], event["status"]) == (None, 4004)
    assert event["transaction_id"] == "tx-9"
    assert formatEvent(event).startswith("Request tx-9 from 127.0.0.1 on /vasp/: ")
    gateway.stop()


@pytest.mark.parametrize("credentials", [None, ("mmsc1", "wrong")])
def test_a_request_refused_for_its_credentials_logs_the_transaction_id_it_echoes(
    credentials,
):
    gateway = MemoryGateway(CONFIG)
    ctype, body = codec.encode(m.Envelope("tx-401", DELIVER))
    headers = {"Content-Type": ctype}
    if credentials is not None:
        headers.update(basic(*credentials))
    with capturedLogs() as events:
        answer = gateway.post("/vasp/", body, headers)
    assert answer.code == 401 and b"tx-401" in answer.body
    [event] = transactions(events)
    assert (event["status"], event["transaction_id"]) == (4001, "tx-401")
    gateway.stop()


def test_a_huge_transaction_id_is_cut_in_the_log_not_repeated():
    gateway = MemoryGateway(CONFIG)
    tid = "t" * 100_000
    ctype, body = codec.encode(m.Envelope(tid, DELIVER))
    with capturedLogs() as events:
        answer = gateway.post(
            "/vasp/", body, {"Content-Type": ctype, **basic("mmsc1", "secretpw")}
        )
    assert answer.code == 200
    [event] = transactions(events)
    assert event["transaction_id"] == "t" * 256 + "… (100000 characters)"
    assert len(formatEvent(event)) < 1000
    out = StringIO()
    logs.json_lines_observer(out)(event)
    assert len(out.getvalue()) < 2000
    gateway.stop()
