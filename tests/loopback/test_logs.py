"""The logs of the real ``twistd``: the transaction as a JSON line in the
``-l`` file (in memory: tests/app/test_logs.py)."""

from __future__ import annotations

import json
import signal
import subprocess

from mm7tx import logs
from tests import samples
from tests.processes import TWISTD, free_port, post_sample, wait_for_port


def test_twistd_writes_the_transaction_as_a_json_line_to_the_l_file(tmp_path):
    port = free_port()
    log_path = tmp_path / "mm7tx.json"
    process = subprocess.Popen(
        [
            TWISTD,
            "--logger=mm7tx.logs.json",
            "-n",
            "--pidfile=",
            f"--logfile={log_path}",
            "mm7",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_for_port(port, process)
        assert b"<StatusCode>1000</StatusCode>" in post_sample(port, "/vasp/")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert output == ""  # all of it went to the -l file
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    [event] = [r for r in records if r.get("mm7tx_event") == "transaction"]
    [stored] = (tmp_path / "Maildir" / "new").iterdir()
    assert event["time"].endswith("Z") and event["level"] == "info"
    assert event["namespace"] == "mm7tx.resource"
    assert event["message"].startswith(
        "DeliverReq vas00324-dlvr from 127.0.0.1 on /vasp/: 1000 Success ("
    )
    assert {k: event[k] for k in logs.TRANSACTION_FIELDS if k != "ms"} == {
        "path": "/vasp/",
        "account": None,
        "operation": "DeliverReq",
        "transaction_id": "vas00324-dlvr",
        "message_id": None,
        "status": 1000,
        "status_text": "Success",
        "request_bytes": len(samples.body_sample("instantcom-mm7/deliver-req2.txt")[1]),
        "peer": "127.0.0.1",
        "relay_reply": f"stored as new/{stored.name}",
        "answered": True,
        "sender": "9***@OMMS.com",
        "recipients": [],
        "recipient_count": 0,
    }
    assert isinstance(event["ms"], float)
    assert any(" on embedded defaults: listening" in r["message"] for r in records)
