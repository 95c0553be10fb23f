"""Throughput of mm7tx against the twisted.web ceiling, end to end.

    python -m bench.throughput [--rounds 3] [--seconds 8] [--connections 32]
                               [--workers 1,2] [--profile]

Needs Debian's ``wrk`` and ``postfix`` (for ``smtp-sink``); it says so and stops
if they are missing, and installs nothing.  Everything runs on loopback:
``smtp-sink`` as the relay, the real ``twistd mm7`` pointed at it, and the
ceiling (bench/ceiling.py: a bare twisted.web resource reading the same body),
each driven by ``wrk`` replaying real MM7 requests; one ``twistd mm7`` (and
one ``smtp-sink``) per worker count, in alternating rounds.  See
bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, mm7tx_config, wait_for_port
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")


def need(tool: str, package: str) -> str:
    path = shutil.which(tool) or (
        f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None
    )
    if path is None:
        raise SystemExit(
            f"bench/throughput.py needs {tool}: apt-get install {package} "
            "(Debian packages wrk and postfix); it installs nothing itself"
        )
    return path


def jpeg(size: int) -> bytes:
    return b"\xff\xd8\xff\xe0" + os.urandom(size - 4)


def requests(folder: Path) -> dict[str, tuple[str, Path]]:
    """The MM7 requests wrk replays: name -> (Content-Type, body file)."""
    image = m.ContentPart(
        "image/jpeg", jpeg(30 * 1024), (("name", "photo.jpg"),), "photo"
    )
    text = m.ContentPart(
        "text/plain", b"Your weekly photo", (("charset", "utf-8"),), "text"
    )
    made: dict[str, m.Request] = {
        "deliver-30k": m.DeliverReq(
            sender=m.Address("+15551234567"),
            recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
            subject="Photo",
            content=(image,),
        ),
        "submit-3rcpt": m.SubmitReq(
            sender_address=m.Address("7255", "ShortCode"),
            recipients=m.Recipients(
                to=tuple(m.Address(f"+1555000000{i}") for i in range(3))
            ),
            subject="Photo",
            content=(text, image),
        ),
        "report": m.DeliveryReportReq(
            message_id="369500617770864640",
            recipient=m.Address("+15551234567"),
            sender=m.Address("7255", "ShortCode"),
            date="2026-11-22T10:00:00Z",
            mm_status="Retrieved",
            status_text="ok",
        ),
        "deliver-1m": m.DeliverReq(
            sender=m.Address("+15551234567"),
            subject="Big",
            content=(m.ContentPart("image/jpeg", jpeg(1024 * 1024), (), "big"),),
        ),
    }
    out = {}
    for name, request in made.items():
        ctype, body = codec.encode(m.Envelope("bench-1", request))
        path = folder / f"{name}.bin"
        path.write_bytes(body)
        out[name] = (ctype, path)
    return out


def stat_fields(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` after the command name (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (mm7tx's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(stat_fields(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass  # gone meanwhile
    return found


def peak_rss_mib(pid: int) -> float:
    """``VmHWM`` of ``pid``: its peak resident set, in MiB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else 0.0


class Process:
    def __init__(self, args: list[str], cwd: Path, log: Path, port: int) -> None:
        self.log = open(log, "ab")  # noqa: SIM115
        self.popen = subprocess.Popen(
            args, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_for_port(port)

    def cpu_seconds(self) -> float:
        """CPU of the process (all its threads), of its live children (the
        workers) and of the children it has reaped (a worker that died)."""
        fields = stat_fields(self.popen.pid)
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
        for child in children(self.popen.pid):
            try:
                child_fields = stat_fields(child)
            except OSError:
                continue  # exited meanwhile: its CPU is in cutime by now or soon
            ticks += int(child_fields[11]) + int(child_fields[12])
        return ticks / TICKS

    def children_cpu_seconds(self) -> dict[int, float]:
        """CPU of each live child (worker), by pid."""
        found = {}
        for child in children(self.popen.pid):
            try:
                fields = stat_fields(child)
            except OSError:
                continue
            found[child] = (int(fields[11]) + int(fields[12])) / TICKS
        return found

    def own_cpu_seconds(self) -> float:
        """CPU of the process alone (for workers, the parent's)."""
        fields = stat_fields(self.popen.pid)
        return (int(fields[11]) + int(fields[12])) / TICKS

    def peak_rss_mib(self) -> float:
        return peak_rss_mib(self.popen.pid)

    def worker_peak_rss_mib(self) -> float:
        """The largest peak RSS of one worker: of the process itself if it
        has no children (``workers = 1``)."""
        pids = children(self.popen.pid) or [self.popen.pid]
        return max(peak_rss_mib(pid) for pid in pids)

    def stop(self) -> None:
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
        self.log.close()


def start_sink(sink_path: str, folder: Path) -> tuple[Process, int]:
    """Postfix's smtp-sink on a free loopback port, counting what it takes
    (in ``folder/smtp-sink.log``)."""
    port = free_port()
    sink = Process(
        [sink_path, "-c", "-u", "nobody", f"127.0.0.1:{port}", "1024"],
        folder,
        folder / "smtp-sink.log",
        port,
    )
    return sink, port


def wait_for_workers(log: Path, workers: int, seconds: float = 30.0) -> None:
    """Wait until each of ``workers`` workers has logged its start line (the
    parent listens before they do; connections would wait in its backlog)."""
    deadline = time.monotonic() + seconds
    started: set[str] = set()
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        started = set(re.findall(r"\[worker (\d+)\] mm7tx .* listening on", text))
        if len(started) >= workers:
            return
        time.sleep(0.1)
    raise SystemExit(f"only {len(started)} of {workers} mm7tx workers started: {log}")


def start_mm7tx(
    bin_dir: Path, folder: Path, smtp_port: int, workers: int = 1, extra: str = ""
) -> tuple[Process, int]:
    """``twistd mm7`` from ``bin_dir`` on a free port, relaying to
    ``smtp_port``, logging to ``folder/mm7tx.log``: VASP path ``/vasp/``, MMSC
    path ``/mm7/`` with an IP account for 127.0.0.1, ``workers`` workers
    (the option is written only if not 1, so that older builds run) and
    ``extra`` lines of ``mm7_serv``."""
    port = free_port()
    config = folder / "mm7tx.conf"
    lines = ["  mm7_max_transactions = 1000", extra]
    if workers != 1:
        lines.append(f"  workers = {workers}")
    config.write_text(
        mm7tx_config(port, smtp_port, "\n".join(lines), 'VASP "127.0.0.1" { }')
    )
    mm7 = Process(
        [
            str(bin_dir / "twistd"),
            "-n",
            "--pidfile=",
            "-l",
            str(folder / "mm7tx.log"),
            "mm7",
            "--config",
            str(config),
        ],
        folder,
        folder / "twistd.out",
        port,
    )
    if workers > 1:
        wait_for_workers(folder / "mm7tx.log", workers)
    return mm7, port


def wrk(
    wrk_path: str,
    url: str,
    ctype: str,
    body: Path,
    seconds: float,
    connections: int,
    delay_ms: float = 0.0,
    same_transaction: bool = False,
) -> dict[str, float]:
    """wrk's counts posting ``body``; each request with a TransactionID of
    its own unless ``same_transaction`` (then every one is a retry)."""
    env = dict(
        os.environ,
        BENCH_BODY=str(body),
        BENCH_TYPE=ctype,
        BENCH_DELAY_MS=str(delay_ms),
        BENCH_SAME_TRANSACTION="1" if same_transaction else "0",
    )
    out = subprocess.run(
        [
            wrk_path,
            "-t2",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "-s",
            str(HERE / "post.lua"),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {out.stdout}{out.stderr}")
    values = dict(item.split("=") for item in line.split()[1:])
    result = {k: float(v) for k, v in values.items()}
    result["rate"] = result["requests"] / result["seconds"]
    return result


def sink_count(log: Path) -> int:
    """Messages smtp-sink counted (its -c counter, the last number it wrote)."""
    numbers = re.findall(rb"mesg=(\d+)", log.read_bytes())
    return int(numbers[-1]) if numbers else 0


SUMMARY_HEADER = (
    "workers",
    "request",
    "req/s",
    "CPU s/1000",
    "p99 ms full",
    "half rate req/s",
    "p99 ms half",
)


def summary_row(workers: int, name: str, kind: dict[str, float]) -> tuple[str, ...]:
    """One row of the per-kind summary: a run of ``workers`` mm7tx workers
    on one request kind (``kind`` as :func:`main` collects it)."""
    return (
        str(workers),
        name,
        f"{kind['rate']:.0f}",
        f"{kind['cpu_per_1000']:.2f}",
        f"{kind['p99_full']:.1f}",
        f"{kind['half_rate']:.0f}",
        f"{kind['p99_half']:.1f}",
    )


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def worker_counts(text: str) -> list[int]:
    """``--workers 1,2`` as ``[1, 2]``."""
    try:
        counts = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text}") from None
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"distinct worker counts of 1 or more: {text}")
    return counts


def spread(values: list[float], form: str = ".0f") -> str:
    return f"{min(values):{form}}-{max(values):{form}}"


@dataclass
class Instance:
    """One ``twistd mm7`` with ``workers`` workers, with its own
    ``smtp-sink`` and files in ``folder``, so that each reconciles alone."""

    workers: int
    folder: Path
    sink: Process
    mm7: Process
    base: str

    @classmethod
    def start(cls, sink_path: str, folder: Path, workers: int) -> Instance:
        folder.mkdir()
        sink, smtp_port = start_sink(sink_path, folder)
        mm7, port = start_mm7tx(
            BIN,
            folder,
            smtp_port,
            workers,
            f'  metrics_listen = "tcp:{free_port()}:interface=127.0.0.1"',
        )
        return cls(workers, folder, sink, mm7, f"http://127.0.0.1:{port}")

    def answers_1000(self) -> Counter[tuple[str, str]]:
        """mm7tx's logged 1000 answers by (worker, operation); the worker is
        ``-`` for a single process.  twistd rotates its log at 1 MB."""
        found: Counter[tuple[str, str]] = Counter()
        for log in self.folder.glob("mm7tx.log*"):
            for line in log.read_text().splitlines():
                if ": 1000 Success" in line:
                    worker = re.search(r"\[worker (\d+)\] (\w+)", line)
                    if worker:
                        found[worker.group(1), worker.group(2)] += 1
                    else:
                        operation = re.search(r"\] (\w+)", line)
                        found["-", operation.group(1) if operation else "?"] += 1
        return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--workers",
        type=worker_counts,
        default=[1, 2] if len(os.sched_getaffinity(0)) >= 2 else [1],
        help="worker counts to compare, in alternating rounds (default 1,2 "
        "with two cores or more, else 1)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy flame graph of mm7tx"
    )
    args = parser.parse_args()
    counts: list[int] = args.workers
    first = counts[0]
    wrk_path = need("wrk", "wrk")
    sink_path = need("smtp-sink", "postfix")
    pyspy = shutil.which("py-spy") or str(BIN / "py-spy")
    if args.profile and not os.path.exists(pyspy):
        raise SystemExit("--profile needs py-spy: pip install py-spy")

    folder = Path(tempfile.mkdtemp(prefix="mm7tx-bench-"))
    bodies = requests(folder)
    ceiling_port, bare_port = free_port(), free_port()
    # Stopped in this order: every mm7tx first (it drains what is in flight
    # into its sink), then the ceilings and the sinks.
    mm7s: list[Process] = []
    others: list[Process] = []
    instances: dict[int, Instance] = {}

    def load(
        n: int, name: str, delay_ms: float = 0.0, seconds: float = args.seconds
    ) -> dict[str, float]:
        """One wrk run against the mm7tx with ``n`` workers, with the CPU
        it took (``cpu``) and the 1000 answers wrk read counted."""
        instance = instances[n]
        ctype, body = bodies[name]
        before = instance.mm7.cpu_seconds()
        parent_before = instance.mm7.own_cpu_seconds()
        workers_before = instance.mm7.children_cpu_seconds()
        result = wrk(
            wrk_path,
            instance.base + paths.get(name, "/vasp/"),
            ctype,
            body,
            seconds,
            args.connections,
            delay_ms=delay_ms,
        )
        result["cpu"] = instance.mm7.cpu_seconds() - before
        parent_cpu[n] += instance.mm7.own_cpu_seconds() - parent_before
        used = [
            cpu - workers_before.get(pid, 0.0)
            for pid, cpu in instance.mm7.children_cpu_seconds().items()
        ]
        # How evenly the kernel spread the (persistent) connections.
        result["busiest"] = max(used, default=0.0) / max(1e-9, sum(used))
        answered_1000[n] += int(result["mm7_1000"])
        transactions[n] += int(result["requests"])
        cpu_all[n] += result["cpu"]
        if result["errors"] or result["other"]:
            print(
                f"  workers {n}, {name}: {int(result['errors'])} errors, "
                f"{int(result['other'])} non-200 answers"
            )
        return result

    paths = {"deliver-30k": "/vasp/", "submit-3rcpt": "/mm7/", "report": "/vasp/"}
    rows: list[tuple[str, ...]] = []
    summary: list[tuple[str, ...]] = [SUMMARY_HEADER]
    spreads: list[tuple[str, ...]] = [
        (
            "workers",
            "request",
            "req/s",
            "CPU s/1000 full",
            "p99 ms full",
            "half rate req/s",
            "p99 ms half",
            "busiest worker's CPU share",
        )
    ]
    scaling: dict[int, list[str]] = {n: [] for n in counts[1:]}
    answered_1000 = dict.fromkeys(counts, 0)
    transactions = dict.fromkeys(counts, 0)
    cpu_all = dict.fromkeys(counts, 0.0)
    parent_cpu = dict.fromkeys(counts, 0.0)
    steady_rss: dict[int, float] = {}
    big: dict[int, dict[str, float]] = {}
    big_rss: dict[int, float] = {}
    profile_lines: list[str] = []
    try:
        for n in counts:
            instance = Instance.start(sink_path, folder / f"workers-{n}", n)
            instances[n] = instance
            mm7s.append(instance.mm7)
            others.append(instance.sink)
        others.append(
            Process(
                [sys.executable, str(HERE / "ceiling.py"), str(ceiling_port)],
                folder,
                folder / "ceiling.log",
                ceiling_port,
            )
        )
        others.append(
            Process(
                [
                    sys.executable,
                    str(HERE / "ceiling.py"),
                    str(bare_port),
                    "--no-form-parsing",
                ],
                folder,
                folder / "bare-ceiling.log",
                bare_port,
            )
        )
        for n in counts:  # warm-up: imports done, SMTP sessions open
            load(n, "report", seconds=1.0)
        for name in paths:
            ctype, body = bodies[name]
            full: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
            half: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
            ceil, bares = [], []
            for _ in range(args.rounds):  # side by side, round by round
                for n in counts:
                    full[n].append(load(n, name))
                ceil.append(
                    wrk(
                        wrk_path,
                        f"http://127.0.0.1:{ceiling_port}/",
                        ctype,
                        body,
                        args.seconds,
                        args.connections,
                    )
                )
                bares.append(
                    wrk(
                        wrk_path,
                        f"http://127.0.0.1:{bare_port}/",
                        ctype,
                        body,
                        args.seconds,
                        args.connections,
                    )
                )
            best = {n: statistics.median(r["rate"] for r in full[n]) for n in counts}
            for _ in range(args.rounds):  # half each one's own median rate
                for n in counts:
                    delay = 1000.0 * args.connections / (best[n] / 2)
                    half[n].append(load(n, name, delay_ms=delay))
            for n in counts:
                runs = full[n] + half[n]
                summary.append(
                    summary_row(
                        n,
                        name,
                        {
                            "rate": best[n],
                            "cpu_per_1000": 1000
                            * sum(r["cpu"] for r in runs)
                            / max(1.0, sum(r["requests"] for r in runs)),
                            "p99_full": statistics.median(r["p99"] for r in full[n]),
                            "half_rate": statistics.median(r["rate"] for r in half[n]),
                            "p99_half": statistics.median(r["p99"] for r in half[n]),
                        },
                    )
                )
                spreads.append(
                    (
                        str(n),
                        name,
                        spread([r["rate"] for r in full[n]]),
                        spread(
                            [
                                1000 * r["cpu"] / max(1.0, r["requests"])
                                for r in full[n]
                            ],
                            ".2f",
                        ),
                        spread([r["p99"] for r in full[n]], ".1f"),
                        spread([r["rate"] for r in half[n]]),
                        spread([r["p99"] for r in half[n]], ".1f"),
                        spread([100 * r["busiest"] for r in full[n] + half[n]]) + "%"
                        if n > 1
                        else "",
                    )
                )
            for n in counts[1:]:
                pairs = [
                    b["rate"] / a["rate"]
                    for a, b in zip(full[first], full[n], strict=True)
                ]
                scaling[n].append(
                    f"{name}: {best[n] / best[first]:.2f} "
                    f"(round by round {spread(pairs, '.2f')})"
                )
            ours = full[first]
            top = statistics.median(r["rate"] for r in ceil)
            bare_top = statistics.median(r["rate"] for r in bares)

            def p50_p99(runs: list[dict[str, float]]) -> str:
                return (
                    f"{statistics.median(r['p50'] for r in runs):.1f}/"
                    f"{statistics.median(r['p99'] for r in runs):.1f}"
                )

            rows.append(
                (
                    name,
                    f"{best[first]:.0f}",
                    f"{top:.0f}",
                    f"{100 * best[first] / top:.0f}%",
                    f"{bare_top:.0f}",
                    f"{100 * best[first] / bare_top:.0f}%",
                    p50_p99(ours),
                    f"{statistics.median(r['rate'] for r in half[first]):.0f}",
                    p50_p99(half[first]),
                )
            )
        time.sleep(1.0)
        for n in counts:
            steady_rss[n] = instances[n].mm7.worker_peak_rss_mib()
        if args.profile:
            profile_lines = profile(args, pyspy, instances[first], folder, load)
            time.sleep(1.0)
        # The memory run: 100 concurrent 1 MiB DeliverReq, per worker count.
        for n in counts:
            ctype, body = bodies["deliver-1m"]
            big[n] = wrk(
                wrk_path,
                instances[n].base + "/vasp/",
                ctype,
                body,
                max(args.seconds, 20),
                100,
            )
            answered_1000[n] += int(big[n]["mm7_1000"])
            time.sleep(1.0)
            big_rss[n] = instances[n].mm7.worker_peak_rss_mib()
    finally:
        for process in mm7s + others:
            process.stop()

    header = (
        "request",
        "mm7tx req/s",
        "ceiling req/s",
        "ratio",
        "no-form ceiling",
        "ratio",
        "p50/p99 ms full",
        "half rate req/s",
        "p50/p99 ms half",
    )
    print(
        f"median of {args.rounds} rounds of {args.seconds:g} s, {args.connections} "
        f"connections, wrk -t2; worker counts {','.join(map(str, counts))} in "
        f"alternating rounds; {os.cpu_count()} cores shared by wrk, smtp-sink "
        "and mm7tx"
    )
    print(f"mm7tx with {first} worker(s) against the ceilings (one process each):")
    print_table([header, *rows])
    print(
        "per worker count and request kind (medians; CPU s/1000: parent and "
        "workers over that kind's runs, full load and half rate):"
    )
    print_table(summary)
    print("spread of the rounds (min-max):")
    print_table(spreads)
    for n in counts[1:]:
        print(f"scaling, workers {n} / workers {first} req/s (medians):")
        for line in scaling[n]:
            print(f"  {line}")
    matched = True
    for n in counts:
        instance = instances[n]
        by_worker = instance.answers_1000()
        logged = sum(by_worker.values())
        sink_messages = sink_count(instance.folder / "smtp-sink.log")
        matched = matched and logged == sink_messages
        print(
            f"workers {n}: MM7 1000 answers sent by mm7tx: {logged}, messages at "
            f"smtp-sink: {sink_messages} "
            f"({'equal' if logged == sink_messages else 'NOT EQUAL'}); "
            f"1000 answers wrk read before it stopped: {answered_1000[n]}"
        )
        if n > 1:
            shares = Counter[str]()
            for (worker, _), count in by_worker.items():
                shares[worker] += count
            print(
                "  1000 answers by worker: "
                + ", ".join(f"{w}: {shares[w]}" for w in sorted(shares))
                + f"; the parent's share of the CPU: "
                f"{100 * parent_cpu[n] / max(1e-9, cpu_all[n]):.0f}%"
            )
        print(
            f"  CPU seconds per 1000 transactions, all kinds: "
            f"{1000 * cpu_all[n] / max(1, transactions[n]):.2f}; peak RSS of a "
            f"worker under those runs: {steady_rss[n]:.0f} MiB"
        )
        print(
            f"  100 concurrent 1 MiB DeliverReq: {big[n]['rate']:.0f} req/s, peak "
            f"RSS of a worker {big_rss[n]:.0f} MiB"
        )
    for line in profile_lines:
        print(line)
    print(f"files in {folder}")
    return 0 if matched else 1


def profile(
    args: argparse.Namespace,
    pyspy: str,
    instance: Instance,
    folder: Path,
    load: Callable[..., dict[str, float]],
) -> list[str]:
    """A py-spy flame graph of ``instance`` (its workers too) under the
    DeliverReq load, and the top five functions by own time."""
    svg, raw = folder / "mm7tx-profile.svg", folder / "mm7tx-profile.txt"
    spies = [
        subprocess.Popen(
            [
                pyspy,
                "record",
                "-p",
                str(instance.mm7.popen.pid),
                *(["--subprocesses"] if instance.workers > 1 else []),
                "-d",
                f"{args.seconds:g}",
                "-o",
                str(out),
                "-f",
                form,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for out, form in ((svg, "flamegraph"), (raw, "raw"))
    ]
    load(instance.workers, "deliver-30k")
    for spy in spies:
        spy.wait(60)
    selfs: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        selfs[stack.split(";")[-1]] += int(count)
    total = sum(selfs.values()) or 1
    lines = [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in selfs.most_common(5)]
    lines.insert(0, f"flame graph: {svg}")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
