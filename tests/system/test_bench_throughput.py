"""The parts of bench/throughput.py that decide its verdict: the worker
counts it compares and the 1000 answers it reconciles with the sink."""

from __future__ import annotations

import argparse
from pathlib import Path
from unittest import mock

import pytest

from bench.throughput import Instance, sink_count, worker_counts


def test_worker_counts() -> None:
    assert worker_counts("1,2") == [1, 2]
    assert worker_counts("2") == [2]
    for bad in ("", "0,1", "1,1", "one"):
        with pytest.raises(argparse.ArgumentTypeError):
            worker_counts(bad)


def test_answers_1000_single_process_and_workers(tmp_path: Path) -> None:
    """1000 answers counted by worker and operation, across twistd's rotated
    files; other answers and access lines are not."""
    (tmp_path / "mm7tx.log").write_text(
        "2026-11-30T22:56:55+0000 [mm7tx.resource#info] DeliverReq bench-1 from"
        " 127.0.0.1 on /vasp/: 1000 Success (2.9 ms); relay 250 2.0.0 Ok\n"
        "2026-11-30T22:56:55+0000 [worker 2] SubmitReq bench-1 from 127.0.0.1"
        " on /mm7/: 1000 Success (1.3 ms); relay 250 2.0.0 Ok\n"
        '2026-11-30T22:56:55+0000 [worker 2] "127.0.0.1" - - [30/Nov/2026] "POST'
        ' /vasp/ HTTP/1.1" 200 542 "-" "-"\n'
    )
    (tmp_path / "mm7tx.log.1").write_text(
        "2026-11-30T22:56:54+0000 [worker 1] DeliverReq bench-1 from 127.0.0.1"
        " on /vasp/: 1000 Success (1.2 ms); relay 250 2.0.0 Ok\n"
        "2026-11-30T22:56:54+0000 [worker 1] DeliverReq bench-1 from 127.0.0.1"
        " on /vasp/: fault 4006 the mail relay closed the connection (1.2 ms)\n"
    )
    instance = Instance(2, tmp_path, mock.Mock(), mock.Mock(), "")
    assert instance.answers_1000() == {
        ("-", "DeliverReq"): 1,
        ("2", "SubmitReq"): 1,
        ("1", "DeliverReq"): 1,
    }


def test_sink_count(tmp_path: Path) -> None:
    log = tmp_path / "smtp-sink.log"
    log.write_bytes(b"sess=1 quit=1 mesg=0sess=2 quit=2 mesg=1sess=2 quit=2 mesg=12")
    assert sink_count(log) == 12
