"""``--workers N``: the option, the pool of worker processes on a fake
process reactor and a Clock (respawn with backoff, signals, the drain), the
parent's metrics.  The real ``twistd mm7 --workers 2`` runs in
tests/loopback/test_workers.py."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from mm7tx.app import tap, workers
from mm7tx.config import Config, ConfigError, Listener, check_shared, load
from mm7tx.metrics import Metrics

BASE = """
mm7_serv {
  mm7_server_default_email_from_domain = "from.example"
  mm7_server_default_email_to_domain = "to.example"
  mm7_vasp_uri_paths = ("/vasp/")
  %s
}
"""


# The option ------------------------------------------------------------------


def test_workers_in_the_file() -> None:
    assert load(BASE % "").workers == 1
    assert load(BASE % "workers = 4").workers == 4
    assert load(BASE % "workers = AUTO").workers == (os.cpu_count() or 1)


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "()"])
def test_a_bad_workers_value_is_one_line_naming_the_line(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(BASE % f"workers = {value}", "f.conf")
    assert str(caught.value).startswith("f.conf, line 6: ")
    assert "workers" in str(caught.value)


def test_the_command_line_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mm7tx.conf"
    path.write_text(BASE % "workers = 4")
    parsed = tap.Options()
    parsed.parseOptions(["--config", str(path), "--workers", "2"])
    assert parsed["mm7_config"].workers == 2
    parsed = tap.Options()
    parsed.parseOptions(["--config", str(path), "--workers", "auto"])
    assert parsed["mm7_config"].workers == (os.cpu_count() or 1)
    with pytest.raises(SystemExit) as caught:
        tap.Options().parseOptions(["--config", str(path), "--workers", "0"])
    assert str(caught.value) == (
        "--workers: workers must be a whole number from 1, or auto, not '0'"
    )


def _worker(text: str | None, *argv: str) -> tap.Options:
    """A worker's options, given ``text`` (None: the embedded defaults) by
    its parent on its standard input."""
    accepted = workers.Accepted("mm7tx.conf", text)
    read, write = os.pipe()
    os.write(write, workers.configuration_frame(accepted, accepted))
    os.close(write)
    parsed = tap.Options()
    parsed.parent_fd = read
    try:
        parsed.parseOptions(list(argv))
    finally:
        os.close(read)
    return parsed


def test_a_worker_runs_as_one_process_whatever_the_file_says() -> None:
    parsed = _worker(BASE % "workers = 4", "--worker", "2")
    assert parsed["mm7_config"].workers == 1


def test_listeners_workers_cannot_share_are_refused() -> None:
    shared = ("tcp:80", "ssl:443:privateKey=k", "unix:/s", "haproxy:tcp:81")
    check_shared(Config(listeners=tuple(map(Listener, shared)), workers=2))
    with pytest.raises(ConfigError) as caught:
        check_shared(
            Config(
                listeners=(
                    Listener("tcp:80", "f, line 2"),
                    Listener("tor:80", "f, line 2"),
                ),
                workers=2,
            )
        )
    assert str(caught.value).startswith(
        "f, line 2: Listen 'tor:80' cannot be shared by workers (workers = 2)"
    )


def test_systemd_listeners_find_the_socket_the_parent_passed() -> None:
    fds, names = workers.systemd_names(
        (
            "tcp:80",
            "systemd:domain=INET:index=1",
            "haproxy:systemd:domain=INET:name=mm7",
        )
    )
    passed = workers.passed_to_worker(
        {workers.FDS_ENV: fds, workers.FDNAMES_ENV: names}
    )
    assert passed.inheritedDescriptors()[1] == 4  # listener 1 at descriptor 4
    assert passed.inheritedNamedDescriptors()["mm7"] == 5
    assert workers.systemd_names(("tcp:80",)) == ("", "")


def test_worker_metrics_go_to_a_socket_of_their_own() -> None:
    config = workers.worker_config(Config(), 2, {workers.FOLDER_ENV: "/run/x"})
    assert config.metrics_listen == "unix:/run/x/2.sock:mode=600"
    assert workers.worker_config(Config(), 2, {}).metrics_listen is None


# The pool --------------------------------------------------------------------


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.stdin = b""

    def signalProcess(self, signame: str) -> None:
        self.signals.append(signame)

    def writeToChild(self, childFD: int, data: bytes) -> None:
        assert childFD == 0
        self.stdin += data


class ProcessReactor(Clock):
    """A Clock whose ``spawnProcess`` records each process."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[int, Any], FakeProcess]] = []

    def spawnProcess(
        self, protocol: Any, executable: str, args: list[str], env: Any, childFDs: Any
    ) -> FakeProcess:
        process = FakeProcess(100 + len(self.spawned))
        self.spawned.append((protocol, args, childFDs, process))
        protocol.makeConnection(process)
        return process

    def end(self, index: int, reason: Exception) -> None:
        self.spawned[index][0].processEnded(Failure(reason))


def pool(reactor: ProcessReactor, count: int = 2) -> workers.WorkerPool:
    made = workers.WorkerPool(
        reactor,
        count,
        lambda slot: ["python", f"--worker={slot}"],
        lambda: {0: "w", 1: "r", 2: "r", 3: 7},
        stop_timeout=40,
        env={},
    )
    made.startService()
    return made


def messages(events: Sequence[dict[str, Any]]) -> list[str]:
    return [formatEvent(event) for event in events]


def test_workers_are_spawned_with_the_listening_sockets() -> None:
    reactor = ProcessReactor()
    with capturedLogs() as events:
        started = pool(reactor, 3)
    assert [args for _, args, _, _ in reactor.spawned] == [
        ["python", "--worker=1"],
        ["python", "--worker=2"],
        ["python", "--worker=3"],
    ]
    assert reactor.spawned[0][2] == {0: "w", 1: "r", 2: "r", 3: 7}
    assert started.running_count == 3
    assert "Started 3 workers: pids 100 101 102" in messages(events)


def test_a_dead_worker_is_logged_and_replaced_at_most_once_a_second() -> None:
    reactor = ProcessReactor()
    started = pool(reactor)
    reactor.advance(0.25)
    with capturedLogs() as events:
        reactor.end(1, ProcessTerminated(signal=9))
    assert messages(events) == [
        "Worker 2 (pid 101) died: signal 9 (SIGKILL); starting another in 0.8 s"
    ]
    assert len(reactor.spawned) == 2 and started.running_count == 1
    reactor.advance(0.74)
    assert len(reactor.spawned) == 2  # not before a second after its start
    reactor.advance(0.01)
    assert len(reactor.spawned) == 3
    assert reactor.spawned[2][1] == ["python", "--worker=2"]
    # A crash loop: each quick death doubles the wait, up to BACKOFF_MAX.
    waits = []
    for _ in range(7):
        with capturedLogs() as events:
            reactor.end(len(reactor.spawned) - 1, ProcessTerminated(exitCode=1))
        waits.append(messages(events)[0].rsplit(" in ", 1)[1])
        reactor.advance(workers.BACKOFF_MAX)
    assert waits == ["2.0 s", "4.0 s", "8.0 s", "16.0 s", "30.0 s", "30.0 s", "30.0 s"]
    assert "exit status 1" in messages(events)[0]
    # One that ran a while is replaced at once, and its backoff starts over.
    reactor.advance(workers.STEADY)
    reactor.end(len(reactor.spawned) - 1, ProcessDone(0))
    reactor.advance(0)
    assert started.running_count == 2
    assert started.slots[1].backoff == workers.BACKOFF
    assert started.restarts == 9


def test_a_worker_that_cannot_be_spawned_is_tried_again_with_the_backoff() -> None:
    reactor = ProcessReactor()
    started = pool(reactor)
    spawn = reactor.spawnProcess
    failures = [OSError(24, "Too many open files"), OSError(11, "Try again")]

    def failing(*args: Any, **kw: Any) -> FakeProcess:
        if failures:
            raise failures.pop(0)
        return spawn(*args, **kw)

    reactor.spawnProcess = failing  # type: ignore[method-assign]
    reactor.advance(workers.STEADY)
    with capturedLogs() as events:
        reactor.end(0, ProcessTerminated(signal=9))
        reactor.advance(0)
        reactor.advance(1)
    assert messages(events) == [
        "Worker 1 (pid 100) died: signal 9 (SIGKILL); starting another in 0.0 s",
        "Cannot start worker 1: [Errno 24] Too many open files; trying again in 1.0 s",
        "Cannot start worker 1: [Errno 11] Try again; trying again in 2.0 s",
    ]
    assert started.running_count == 1
    reactor.advance(2)
    assert started.running_count == 2
    assert reactor.spawned[-1][1] == ["python", "--worker=1"]
    # Stopping cancels a retry that is due.
    failures.append(OSError(24, "Too many open files"))
    reactor.end(len(reactor.spawned) - 1, ProcessTerminated(signal=9))
    reactor.advance(30)
    assert not failures and started.slots[0].restart is not None
    started.stopService()
    assert [c.func for c in reactor.getDelayedCalls()] == [started._kill]  # type: ignore[attr-defined]


def test_signals_reach_every_worker_and_stop_drains_them_all() -> None:
    reactor = ProcessReactor()
    started = pool(reactor)
    started.signal_all("HUP")
    assert [p.signals for *_, p in reactor.spawned] == [["HUP"], ["HUP"]]
    # One dies, then the stop comes before its replacement is due.
    reactor.end(0, ProcessTerminated(signal=9))
    stopping = started.stopService()
    reactor.advance(5)
    assert len(reactor.spawned) == 2  # not replaced while stopping
    assert reactor.spawned[1][3].signals == ["HUP", "TERM"]
    assert not stopping.called  # worker 2 drains
    with capturedLogs() as events:
        reactor.end(1, ProcessTerminated(signal=15))
    assert stopping.called
    assert messages(events) == ["Worker 2 (pid 101) exited: signal 15 (SIGTERM)"]
    assert not reactor.getDelayedCalls()


def test_a_worker_that_does_not_stop_is_killed_after_the_stop_timeout() -> None:
    reactor = ProcessReactor()
    started = pool(reactor, 1)
    stopping = started.stopService()
    reactor.advance(39)
    assert reactor.spawned[0][3].signals == ["TERM"]
    reactor.advance(1)
    assert reactor.spawned[0][3].signals == ["TERM", "KILL"]
    reactor.end(0, ProcessTerminated(signal=9))
    assert stopping.called


def test_a_worker_s_log_events_are_logged_in_the_parent() -> None:
    reactor = ProcessReactor()
    pool(reactor, 1)
    protocol = reactor.spawned[0][0]
    line = (
        '{"log_format": "Drained {count} transactions", "count": 3, '
        '"log_namespace": "mm7tx.service", "log_system": "-"}\n'
    )
    with capturedLogs() as events:
        protocol.childDataReceived(1, line[:20].encode())
        protocol.childDataReceived(1, line[20:].encode() + b"not json\n")
        protocol.childDataReceived(2, b"Traceback (most recent call last):\n")
    assert messages(events) == [
        "Drained 3 transactions",
        "not json",
        "Traceback (most recent call last):",
    ]
    assert [event["log_system"] for event in events] == ["worker 1"] * 3


def test_a_worker_s_overlong_line_is_dropped_with_its_size() -> None:
    reactor = ProcessReactor()
    pool(reactor, 1)
    protocol = reactor.spawned[0][0]
    event = '{"log_format": "{n} long", "n": "%s"}'
    fits = (event % ("x" * (workers.MAX_LINE - len(event) + 2))).encode()
    over = (event % ("y" * (16 * 1024 * 1024))).encode() + b"\n"
    assert len(fits) == workers.MAX_LINE
    with capturedLogs() as events:
        # As a pipe gives them: 8 KiB at a time, the newline anywhere.
        for at in range(0, len(over), 8192):
            protocol.childDataReceived(1, over[at : at + 8192])
        protocol.childDataReceived(1, fits + b"\n" + b'{"log_format": "after"}\n')
        protocol.childDataReceived(2, b"z" * (workers.MAX_LINE + 1))
        reactor.end(0, ProcessDone(0))
    said = messages(events)
    assert said[0] == (
        f"Worker 1 wrote a line of {len(over) - 1} bytes, over 65536: dropped; "
        f"it began {over[:200].decode()!r}"
    )
    assert said[1] == "x" * (workers.MAX_LINE - len(event) + 2) + " long"
    assert said[2] == "after"
    assert said[3].startswith(f"Worker 1 wrote a line of {workers.MAX_LINE + 1} ")
    assert len(said) == 5  # and the worker's end
    assert not any(protocol._pieces.values())


# The parent's metrics --------------------------------------------------------


def test_the_parent_s_metrics_are_every_worker_s_with_a_worker_label() -> None:
    reactor = ProcessReactor()
    started = pool(reactor)
    counted = {1: Metrics(), 2: Metrics()}
    counted[1].transaction("/vasp/", "DeliverReq", 1000, 0.01, 100)
    counted[2].transaction("/vasp/", "DeliverReq", 1000, 0.01, 100)
    counted[2].transaction("/vasp/", "DeliverReq", 4006, 0.01, 100)
    monitor = workers.WorkersMonitor(reactor, started, lambda slot: "/nowhere")

    async def ask(slot: int, path: str) -> tuple[int, bytes]:
        return 200, counted[slot].exposition()

    monitor._ask = ask  # type: ignore[method-assign]
    text = defer.ensureDeferred(monitor.metrics()).result.decode()  # type: ignore[attr-defined]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    found = {
        (s.labels["worker"], s.labels["status"]): s.value
        for s in families["mm7tx_transactions"].samples
        if s.name.endswith("_total")
    }
    assert found == {("1", "1000"): 1, ("2", "1000"): 1, ("2", "4006"): 1}
    assert {s.labels["worker"] for s in families["process_cpu_seconds"].samples} == {
        "1",
        "2",
    }
    assert families["mm7tx_workers"].samples[0].value == 2
    assert text.count("# TYPE mm7tx_transactions_total counter") == 1


def test_the_parent_s_metrics_show_each_worker_s_dedup_and_store() -> None:
    reactor = ProcessReactor()
    started = pool(reactor)
    counted = {1: Metrics(), 2: Metrics()}
    counted[1].dedup_hit("DeliverReq")
    counted[1].store_call("claim", 0.002)
    counted[2].dedup_hit("SubmitReq")
    counted[2].dedup_hit("SubmitReq")
    counted[2].in_flight_wait()
    counted[2].store_error("claim")
    counted[2].store_call("claim", 2.0)
    monitor = workers.WorkersMonitor(reactor, started, lambda slot: "/nowhere")

    async def ask(slot: int, path: str) -> tuple[int, bytes]:
        return 200, counted[slot].exposition()

    monitor._ask = ask  # type: ignore[method-assign]
    text = defer.ensureDeferred(monitor.metrics()).result.decode()  # type: ignore[attr-defined]
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def totals(name: str, *labels: str) -> dict[tuple[str, ...], float]:
        return {
            (s.labels["worker"], *(s.labels[k] for k in labels)): s.value
            for s in families[name].samples
            if s.name.endswith(("_total", "_count"))
        }

    assert totals("mm7tx_dedup_hits", "operation") == {
        ("1", "DeliverReq"): 1,
        ("2", "SubmitReq"): 2,
    }
    assert totals("mm7tx_dedup_waits") == {("1",): 0, ("2",): 1}
    assert totals("mm7tx_store_errors", "operation") == {("2", "claim"): 1}
    assert totals("mm7tx_store_seconds", "operation") == {
        ("1", "claim"): 1,
        ("2", "claim"): 1,
    }
    slow = {
        s.labels["worker"]: s.value
        for s in families["mm7tx_store_seconds"].samples
        if s.name.endswith("_sum")
    }
    assert slow == {"1": 0.002, "2": 2.0}


def test_the_parent_is_ready_when_every_worker_is() -> None:
    reactor = ProcessReactor()
    started = pool(reactor)
    answers = {1: (200, b"ready\n"), 2: (503, b"the mail relay has not answered yet\n")}
    monitor = workers.WorkersMonitor(reactor, started, lambda slot: "/nowhere")

    async def ask(slot: int, path: str) -> tuple[int, bytes]:
        return answers[slot]

    monitor._ask = ask  # type: ignore[method-assign]

    def problem() -> Any:
        return defer.ensureDeferred(monitor.problem()).result  # type: ignore[attr-defined]

    assert problem() == "worker 2: the mail relay has not answered yet"
    answers[2] = (200, b"ready\n")
    assert problem() is None
    reactor.end(0, ProcessTerminated(signal=9))
    assert problem() == "worker 1 is not running (being restarted)"
    monitor.draining = True
    assert problem() == "draining: the service is stopping"


class _Connection:
    """The connection under a response: what aborting it reaches."""

    def __init__(self) -> None:
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class _Body:
    """A worker's response that gives ``body`` (all of it, or never), as an
    Agent's does: to a protocol whose transport is a proxy of the
    connection (``TransportProxyProducer``), which has no
    ``abortConnection`` of its own."""

    def __init__(self, code: int, body: bytes | None) -> None:
        self.code, self.phrase, self.body = code, b"", body
        self.connection = _Connection()

    @property
    def aborted(self) -> bool:
        return self.connection.aborted

    def deliverBody(self, protocol: Any) -> None:
        from twisted.web._newclient import TransportProxyProducer
        from twisted.web.client import ResponseDone

        protocol.makeConnection(TransportProxyProducer(self.connection))
        if self.body is not None:
            protocol.dataReceived(self.body)
            protocol.connectionLost(Failure(ResponseDone()))


class _Workers:
    """An agent for the monitor: ``answers[slot]`` a response, or None for
    a worker that never answers."""

    def __init__(self, answers: dict[int, _Body | None]) -> None:
        self.answers = answers
        self.asked: list[bytes] = []

    def request(self, method: bytes, uri: bytes) -> defer.Deferred[_Body]:
        self.asked.append(uri)
        answer = self.answers[int(uri.split(b"/")[2].rsplit(b"-", 1)[1])]
        return defer.Deferred() if answer is None else defer.succeed(answer)


def test_workers_that_stall_or_answer_nonsense_are_skipped_at_once() -> None:
    reactor = ProcessReactor()
    started = pool(reactor, 4)
    fine = Metrics()
    fine.transaction("/vasp/", "DeliverReq", 1000, 0.01, 100)
    stalled = _Body(200, None)
    answers = {1: stalled, 2: _Body(500, b"oops"), 3: None}
    answers[4] = _Body(200, fine.exposition())
    monitor = workers.WorkersMonitor(reactor, started, lambda slot: "/nowhere")
    monitor.agent = _Workers(answers)  # type: ignore[assignment]
    with capturedLogs() as events:
        asking = defer.ensureDeferred(monitor.metrics())
        assert len(monitor.agent.asked) == 4  # type: ignore[attr-defined]
        reactor.advance(workers.ASK_TIMEOUT - 0.1)
        assert not asking.called
        reactor.advance(0.1)
    text = asking.result.decode()  # type: ignore[attr-defined]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {
        s.labels["worker"]: s.value for s in families["mm7tx_worker_up"].samples
    } == {
        "1": 0,
        "2": 0,
        "3": 0,
        "4": 1,
    }
    assert {s.labels["worker"] for s in families["mm7tx_transactions"].samples} == {"4"}
    assert stalled.aborted
    assert sorted(messages(events)) == [
        "No metrics from worker 1: timed out after 5 s",
        "No metrics from worker 2: HTTP status 500",
        "No metrics from worker 3: timed out after 5 s",
    ]

    # Readiness: every worker asked at once, each that does not answer named.
    answers.update({1: _Body(200, None), 2: _Body(200, b"ready\n"), 4: None})
    monitor.agent = _Workers(answers)  # type: ignore[assignment]
    ready = defer.ensureDeferred(monitor.problem())
    reactor.advance(workers.ASK_TIMEOUT)
    assert ready.result == (  # type: ignore[attr-defined]
        "worker 1 does not answer: timed out after 5 s; "
        "worker 3 does not answer: timed out after 5 s; "
        "worker 4 does not answer: timed out after 5 s"
    )


def test_one_worker_is_today_s_single_process() -> None:
    made = tap.makeService(_options("--listen", "tcp:0:interface=127.0.0.1"))
    assert not any(isinstance(s, workers.Supervisor) for s in made)  # type: ignore[attr-defined]


def _options(*argv: str) -> tap.Options:
    parsed = tap.Options()
    parsed.parseOptions(list(argv))
    return parsed


def test_more_workers_make_a_supervisor() -> None:
    made = tap.makeService(
        _options("--listen", "tcp:0:interface=127.0.0.1", "--workers", "3")
    )
    (supervisor,) = list(made)  # type: ignore[call-overload]
    assert isinstance(supervisor, workers.Supervisor)
    assert supervisor.pool.count == 3
    command = _options("--listen", "tcp:0", "--smtp-relay", "maildir:M").worker_command(
        2
    )
    assert command[-4:] == [
        "mm7",
        "--worker=2",
        "--listen=tcp:0",
        "--smtp-relay=maildir:M",
    ]


def test_the_internal_worker_option_is_parsed_but_not_shown() -> None:
    usage = str(tap.Options())
    assert "--workers=" in usage
    assert "--worker=" not in usage and "Internal" not in usage
    assert "worker=" in tap.Options().longOpt


# The configuration the parent accepted ----------------------------------------

ACCOUNTS = 'VASP "vasp1" { password = "secret1" }\n'
VASP2 = 'VASP "vasp2" { password = "secret2" }\n'


def _accounts(process: FakeProcess) -> list[list[str]]:
    """The VASP accounts of each configuration the parent wrote on a
    worker's standard input, as the worker reads them."""
    frames = workers.Frames().feed(process.stdin)
    return [
        sorted(v.name for v in workers.configuration(frame, [], None).vasps)
        for frame in frames
    ]


def _parent(tmp_path: Path, reactor: ProcessReactor, text: str) -> Any:
    path = tmp_path / "mm7tx.conf"
    path.write_text(text)
    options = _options(
        "--config", str(path), "--smtp-relay", f"maildir:{tmp_path / 'M'}"
    )
    supervisor = tap.supervisor(options, reactor)
    supervisor.pool.startService()
    return supervisor, path


def test_every_worker_runs_the_configuration_the_parent_accepted(
    tmp_path: Path,
) -> None:
    reactor = ProcessReactor()
    accepted = BASE % "workers = 2" + ACCOUNTS
    supervisor, path = _parent(tmp_path, reactor, accepted)
    command = supervisor.pool.command(1)
    assert not any(arg.startswith("--config") for arg in command)  # no file
    assert [_accounts(p) for *_, p in reactor.spawned] == [[["vasp1"]], [["vasp1"]]]

    # A VASP appended without SIGHUP, then a worker killed: its replacement
    # runs what the parent accepted, as the other worker does.
    path.write_text(accepted + VASP2)
    reactor.advance(workers.STEADY)
    reactor.end(0, ProcessTerminated(signal=9))
    reactor.advance(0)
    assert _accounts(reactor.spawned[2][3]) == [["vasp1"]]

    # A typo, then a worker killed, then SIGHUP: the replacement starts (no
    # crash loop), the reload says why and passes nothing on.
    path.write_text(accepted + "nonsense { }\n")
    reactor.end(1, ProcessTerminated(signal=9))
    reactor.advance(0)
    assert _accounts(reactor.spawned[3][3]) == [["vasp1"]]
    with capturedLogs() as events:
        assert not supervisor.reload()
    assert messages(events) == [
        f"Not reloading, the running configuration is kept: {path}, line 9: "
        "unknown scope 'nonsense'"
    ]
    assert _accounts(reactor.spawned[2][3]) == [["vasp1"]]

    # A good SIGHUP: every running worker is given the new file, and so is
    # a later replacement, the new file alone.
    path.write_text(accepted + VASP2)
    with capturedLogs() as events:
        assert supervisor.reload()
    assert messages(events) == [f"SIGHUP: passing {path} on to 2 workers"]
    for index in (2, 3):
        assert _accounts(reactor.spawned[index][3]) == [
            ["vasp1"],
            ["vasp1", "vasp2"],
        ]
    path.unlink()  # nothing reads the file but the parent, at SIGHUP
    reactor.advance(workers.STEADY)
    reactor.end(2, ProcessTerminated(signal=9))
    reactor.advance(0)
    assert _accounts(reactor.spawned[4][3]) == [["vasp1", "vasp2"]]


def test_a_worker_keeps_the_listeners_its_parent_bound(tmp_path: Path) -> None:
    reactor = ProcessReactor()
    listening = 'HTTP_Listener { Listen "tcp:1111" { always_allow = ("10.0.0.1") } }'
    supervisor, path = _parent(
        tmp_path, reactor, listening + BASE % "workers = 2" + ACCOUNTS
    )
    moved = listening.replace("1111", "2222").replace("10.0.0.1", "10.0.0.2")
    path.write_text(moved + BASE % "workers = 3" + ACCOUNTS + VASP2)
    with capturedLogs() as events:
        assert supervisor.reload()
    assert messages(events)[0] == (
        f"Reloading {path}: Listen (tcp:1111 -> tcp:2222) and "
        "always_allow/always_deny and workers (2 -> 3) changed, which takes a "
        "restart; the running listeners are kept"
    )
    reactor.advance(workers.STEADY)
    reactor.end(0, ProcessTerminated(signal=9))
    reactor.advance(0)
    (frame,) = workers.Frames().feed(reactor.spawned[2][3].stdin)
    config = workers.configuration(frame, [], None)
    assert config.listen == ("tcp:1111",)
    assert [str(n) for n in config.listen_access[0].allow] == ["10.0.0.1/32"]
    assert [v.name for v in config.vasps] == ["vasp1", "vasp2"]
    # The command line's overrides apply over it, as over the file.
    config = workers.configuration(frame, ["tcp:0"], "maildir:elsewhere")
    assert config.listen == ("tcp:0",) and config.smtp.endpoint == "maildir:elsewhere"
    assert config.workers == 1


def test_a_maildir_that_cannot_be_written_is_not_passed_on(tmp_path: Path) -> None:
    reactor = ProcessReactor()
    (tmp_path / "file").write_text("")
    accepted = BASE % f'smtp_relay = "maildir:{tmp_path / "M"}"\n workers = 2'
    path = tmp_path / "mm7tx.conf"
    path.write_text(accepted)
    supervisor = tap.supervisor(_options("--config", str(path)), reactor)
    supervisor.pool.startService()
    path.write_text(accepted.replace(str(tmp_path / "M"), str(tmp_path / "file")))
    with capturedLogs() as events:
        assert not supervisor.reload()
    assert messages(events) == [
        f"Not reloading, the running configuration is kept: {path}: cannot "
        f"deliver into the Maildir {tmp_path / 'file'}: Not a directory"
    ]
    assert all(len(workers.Frames().feed(p.stdin)) == 1 for *_, p in reactor.spawned)


def test_frames_are_read_whole_one_at_a_time(tmp_path: Path) -> None:
    first, second = workers.frame(b"one"), workers.frame(b"x" * 100_000)
    reader = workers.Frames()
    whole = first + second
    found = [
        f for at in range(0, len(whole), 7) for f in reader.feed(whole[at : at + 7])
    ]
    assert found == [b"one", b"x" * 100_000]
    # At a worker's start, from its standard input: no byte past the first.
    read, write = os.pipe()
    try:
        os.write(write, first + second[:10])
        assert workers.read_frame(read) == b"one"
        os.write(write, second[10:60000])
        waited: list[bytes | None] = []
        reading = threading.Thread(
            target=lambda: waited.append(workers.read_frame(read))
        )
        reading.start()
        os.write(write, second[60000:])
        reading.join(5)
        assert waited == [b"x" * 100_000]
        os.close(write)
        assert workers.read_frame(read) is None  # the parent is gone
    finally:
        os.close(read)
        with contextlib.suppress(OSError):
            os.close(write)


def test_a_worker_reads_its_configuration_from_its_parent(tmp_path: Path) -> None:
    path = tmp_path / "mm7tx.conf"
    path.write_text(BASE % "workers = 4" + ACCOUNTS)
    options = _options("--config", str(path))
    read, write = os.pipe()
    os.write(write, tap.supervisor(options, ProcessReactor()).frame())
    os.close(write)
    path.unlink()  # a worker reads no file
    worker = tap.Options()
    worker.parent_fd = read
    try:
        worker.parseOptions(["--worker=2", "--listen=tcp:0"])
    finally:
        os.close(read)
    config = worker["mm7_config"]
    assert config.workers == 1 and config.listen == ("tcp:0",)
    assert config.source == str(path) and [v.name for v in config.vasps] == ["vasp1"]
    # No frame (the parent is gone, or the worker was started by hand).
    read, write = os.pipe()
    os.close(write)
    worker = tap.Options()
    worker.parent_fd = read
    try:
        with pytest.raises(SystemExit) as caught:
            worker.parseOptions(["--worker=1"])
    finally:
        os.close(read)
    assert str(caught.value) == (
        "--worker: no configuration from the parent on standard input "
        "(--worker is for the parent of --workers N only)"
    )


def test_a_running_worker_reloads_what_its_parent_passes_on() -> None:
    reactor = Clock()
    received: list[bytes] = []
    watch = workers.ParentWatch(reactor, received=received.append)
    watch.running = True
    data = workers.frame(b"first") + workers.frame(b"second")
    watch.childDataReceived("parent", data[:5])
    watch.childDataReceived("parent", data[5:])
    assert received == [b"first", b"second"]

    # One that cannot be reloaded is logged; the link to the parent stays.
    def reload(payload: bytes) -> None:
        received.append(payload)
        workers.configuration(payload, [], None)

    watch.received = reload
    with capturedLogs() as events:
        watch.childDataReceived("parent", workers.frame(b"{") + workers.frame(b"3"))
    assert received[2:] == [b"{", b"3"]
    assert messages(events) == ["Reloading what the parent passed on"] * 2


def test_readyz_says_a_worker_is_being_replaced_while_it_starts(
    tmp_path: Path,
) -> None:
    from twisted.internet.error import ConnectError

    reactor = ProcessReactor()
    started = pool(reactor)
    sockets = {n: tmp_path / f"{n}.sock" for n in (1, 2)}
    sockets[2].write_text("")  # worker 2 serves; worker 1 is not there yet
    monitor = workers.WorkersMonitor(reactor, started, lambda n: str(sockets[n]))

    class Agent:
        def request(self, method: bytes, uri: bytes) -> Any:
            if b"worker-1" in uri:
                return defer.fail(ConnectError(string="2: No such file or directory"))
            return defer.succeed(_Body(200, b"ready\n"))

    monitor.agent = Agent()  # type: ignore[assignment]

    def problem() -> Any:
        return defer.ensureDeferred(monitor.problem()).result  # type: ignore[attr-defined]

    assert problem() == "worker 1 is starting"  # its first start
    reactor.advance(workers.STEADY)
    reactor.end(0, ProcessTerminated(signal=9))
    assert problem() == "worker 1 is not running (being restarted)"
    reactor.advance(0)  # its replacement is there, its socket not yet
    assert started.running_count == 2
    assert problem() == "worker 1 is not running (being restarted)"
    # A worker that is there and does not answer is still said to.
    sockets[1].write_text("")
    assert problem().startswith("worker 1 does not answer: ")

    # The socket appeared between the connect (no such file) and the look
    # at the folder: still the replacement starting, not a worker gone deaf.
    class Missing:
        def request(self, method: bytes, uri: bytes) -> Any:
            if b"worker-1" in uri:
                return defer.fail(
                    ConnectError(errno.ENOENT, "No such file or directory")
                )
            return defer.succeed(_Body(200, b"ready\n"))

    monitor.agent = Missing()  # type: ignore[assignment]
    assert problem() == "worker 1 is not running (being restarted)"


# The real twistd -------------------------------------------------------------


@pytest.fixture(autouse=True)
def sighup() -> Any:
    """SIGHUP's default, and the handler before put back after the test
    (options with ``--worker`` ignore it)."""
    previous = signal.getsignal(signal.SIGHUP)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGHUP, previous)


def test_a_worker_ignores_sighup_which_is_its_parent_s() -> None:
    _options("--listen", "tcp:0")
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    _worker(None, "--listen", "tcp:0", "--worker=1")
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN


# ESMTP listeners with workers -------------------------------------------------

MAIL_IN = """
HTTP_Listener { Listen "tcp:8080:interface=127.0.0.1" { } }
ESMTP_Listener { Listen "tcp:2525:interface=127.0.0.1" { } }
mm7_serv {
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_server_default_email_from_domain = "mms.example"
  mm7_server_default_email_to_domain = "mms.example"
  mms_domains = ("mms.example")
  workers = 2
}
VASP "mailin" { password = "pw" }
MMSC "self" {
  submit_url = "http://mailin:pw@127.0.0.1:8080/mm7/"
  vasp_id = "mailin"
  sender_address = "12345"
}
"""


class _BoundPort:
    """A port the parent bound: its socket at ``fd``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.reading = True

    def fileno(self) -> int:
        return self.fd

    def stopReading(self) -> None:
        self.reading = False

    def stopListening(self) -> None:
        pass


class BindingReactor(ProcessReactor):
    """A :class:`ProcessReactor` whose ``listenTCP`` records each port bound."""

    def __init__(self) -> None:
        super().__init__()
        self.bound: list[tuple[int, str, _BoundPort]] = []

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> _BoundPort:
        made = _BoundPort(20 + len(self.bound))
        self.bound.append((port, interface, made))
        return made


def test_the_parent_binds_the_esmtp_listeners_after_the_http_ones() -> None:
    reactor = BindingReactor()
    config = load(MAIL_IN, "mail.conf")
    supervisor = workers.Supervisor(
        config, reactor, lambda slot: ["python", f"--worker={slot}"]
    )
    supervisor.privilegedStartService()
    supervisor.pool.startService()
    assert [(port, at) for port, at, _ in reactor.bound] == [
        (8080, "127.0.0.1"),
        (2525, "127.0.0.1"),
    ]
    assert not any(port.reading for *_, port in reactor.bound)  # never accepts
    # Each worker is given both sockets: HTTP at 3, ESMTP at 4.
    for _, _, fds, _ in reactor.spawned:
        assert fds == {0: "w", 1: "r", 2: "r", 3: 20, 4: 21}
    assert workers.passed_endpoints(config) == (
        "tcp:8080:interface=127.0.0.1",
        "tcp:2525:interface=127.0.0.1",
    )


def test_a_worker_keeps_the_esmtp_listeners_its_parent_bound() -> None:
    bound = workers.Accepted("mail.conf", MAIL_IN)
    moved = workers.Accepted("mail.conf", MAIL_IN.replace("tcp:2525", "tcp:2526"))
    (frame,) = workers.Frames().feed(workers.configuration_frame(bound, moved))
    config = workers.configuration(frame, [], None)
    assert [e.endpoint for e in config.esmtp_listeners] == [
        "tcp:2525:interface=127.0.0.1"
    ]


def test_systemd_esmtp_listeners_find_the_socket_the_parent_passed() -> None:
    config = Config(
        listeners=(Listener("tcp:8080"),),
        esmtp_listeners=(Listener("systemd:domain=INET:name=smtp"),),
    )
    fds, names = workers.systemd_names(workers.passed_endpoints(config))
    passed = workers.passed_to_worker(
        {workers.FDS_ENV: fds, workers.FDNAMES_ENV: names}
    )
    assert passed.inheritedNamedDescriptors() == {"smtp": 4}  # after HTTP's 3


def test_a_worker_s_esmtp_listener_serves_on_the_socket_it_adopts() -> None:
    import socket
    from typing import cast

    from twisted.internet.protocol import ClientFactory
    from twisted.protocols.basic import LineReceiver

    from mm7tx.app.service import IMM7Reactor, build_service
    from mm7tx.testing.reactor import MemoryReactor
    from mm7tx.testing.relay import MemorySMTPRelay

    class Passed(MemoryReactor):
        """A worker's reactor, in memory: the socket at descriptor ``fd``
        is the port its parent bound, ``passed[fd]``."""

        def __init__(self, passed: dict[int, int]) -> None:
            super().__init__()
            self.passed = passed

        def adoptStreamPort(self, fd: int, family: Any, factory: Any) -> Any:
            return self.listenTCP(self.passed[fd], factory, interface="127.0.0.1")

    class Client(LineReceiver):
        def connectionMade(self) -> None:
            self.factory.client = self  # type: ignore[attr-defined]
            self.lines: list[str] = []

        def lineReceived(self, line: bytes) -> None:
            self.lines.append(line.decode())

    # The descriptors stand for the parent's sockets (Adopting asks each
    # its family); the ports are where the parent bound them.
    http, smtp = socket.socket(), socket.socket()
    try:
        reactor = Passed({http.fileno(): 18080, smtp.fileno(): 12525})
        relay = MemorySMTPRelay(reactor)
        config = load(MAIL_IN.replace(":8080/mm7/", ":18080/mm7/"), "mail.conf")
        config = workers.worker_config(
            with_relay(config, relay.endpoint), 1, environ={}
        )
        fds = [http.fileno(), smtp.fileno()]
        service = build_service(
            config,
            cast(IMM7Reactor, reactor),
            lambda index: workers.Adopting(reactor, fds[index]),
            store=None,
        )
        service.startService()
        factory = ClientFactory.forProtocol(Client)
        reactor.connectTCP("127.0.0.1", 2525, factory)  # not the worker's
        reactor.flush()
        assert not hasattr(factory, "client")
        reactor.connectTCP("127.0.0.1", 12525, factory)
        reactor.flush()
        client: Client = factory.client  # type: ignore[attr-defined]
        client.transport.write(  # type: ignore[union-attr]
            b"EHLO client.example\r\n"
            b"MAIL FROM:<ann@example.org>\r\n"
            b"RCPT TO:<15551234567@mms.example>\r\n"
            b"DATA\r\n"
            b"From: ann@example.org\r\nSubject: hi\r\n\r\nHello, phone.\r\n.\r\n"
        )
        reactor.flush()
        assert client.lines[0].startswith("220 ")
        assert client.lines[-1].startswith("250 2.0.0 Ok: queued as "), client.lines
        # Submitted over the worker's adopted HTTP socket to its MMSC path.
        [mail] = relay.accepted
        assert "15551234567@mms.example" in mail.recipients
        service.stopService()
        reactor.advance(60)
        reactor.flush()
    finally:
        http.close()
        smtp.close()


def with_relay(config: Config, endpoint: str) -> Config:
    from dataclasses import replace

    return replace(config, smtp=replace(config.smtp, endpoint=endpoint))
