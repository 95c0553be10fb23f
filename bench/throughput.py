"""Throughput of mm7tx against the twisted.web ceiling, end to end.

    python -m bench.throughput [--rounds 3] [--seconds 8] [--connections 32] [--profile]

Needs Debian's ``wrk`` and ``postfix`` (for ``smtp-sink``); it says so and stops
if they are missing, and installs nothing.  Everything runs on loopback:
``smtp-sink`` as the relay, the real ``twistd mm7`` pointed at it, and the
ceiling (bench/ceiling.py: a bare twisted.web resource reading the same body),
each driven by ``wrk`` replaying real MM7 requests.  See bench/README.md.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, mm7tx_config, wait_for_port
from mm7tx import codec
from mm7tx import messages as m

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


class Process:
    def __init__(self, args: list[str], cwd: Path, log: Path, port: int) -> None:
        self.log = open(log, "ab")  # noqa: SIM115
        self.popen = subprocess.Popen(
            args, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_for_port(port)

    def cpu_seconds(self) -> float:
        fields = (
            Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        )
        return (int(fields[11]) + int(fields[12])) / TICKS

    def peak_rss_mib(self) -> float:
        status = Path(f"/proc/{self.popen.pid}/status").read_text()
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        return int(match.group(1)) / 1024 if match else 0.0

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


def start_mm7tx(bin_dir: Path, folder: Path, smtp_port: int) -> tuple[Process, int]:
    """``twistd mm7`` from ``bin_dir`` on a free port, relaying to
    ``smtp_port``, logging to ``folder/mm7tx.log``: VASP path ``/vasp/``, MMSC
    path ``/mm7/`` with an IP account for 127.0.0.1."""
    port = free_port()
    config = folder / "mm7tx.conf"
    config.write_text(
        mm7tx_config(
            port, smtp_port, "  mm7_max_transactions = 1000", 'VASP "127.0.0.1" { }'
        )
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
    return mm7, port


def wrk(
    wrk_path: str,
    url: str,
    ctype: str,
    body: Path,
    seconds: float,
    connections: int,
    delay_ms: float = 0.0,
) -> dict[str, float]:
    env = dict(
        os.environ, BENCH_BODY=str(body), BENCH_TYPE=ctype, BENCH_DELAY_MS=str(delay_ms)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--profile", action="store_true", help="py-spy flame graph of mm7tx"
    )
    args = parser.parse_args()
    wrk_path = need("wrk", "wrk")
    sink_path = need("smtp-sink", "postfix")
    pyspy = shutil.which("py-spy") or str(BIN / "py-spy")
    if args.profile and not os.path.exists(pyspy):
        raise SystemExit("--profile needs py-spy: pip install py-spy")

    folder = Path(tempfile.mkdtemp(prefix="mm7tx-bench-"))
    bodies = requests(folder)
    ceiling_port, bare_port = free_port(), free_port()
    sink, smtp_port = start_sink(sink_path, folder)
    sink_log = folder / "smtp-sink.log"
    mm7, mm7_port = start_mm7tx(BIN, folder, smtp_port)
    ceiling = Process(
        [sys.executable, str(HERE / "ceiling.py"), str(ceiling_port)],
        folder,
        folder / "ceiling.log",
        ceiling_port,
    )
    bare = Process(
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
    base = f"http://127.0.0.1:{mm7_port}"
    paths = {"deliver-30k": "/vasp/", "submit-3rcpt": "/mm7/", "report": "/vasp/"}
    rows: list[tuple[str, ...]] = []
    summary: list[tuple[str, ...]] = [SUMMARY_HEADER]
    answered_1000 = 0
    mm7_transactions = 0
    cpu_before = mm7.cpu_seconds()
    try:
        for name, path in paths.items():
            ctype, body = bodies[name]
            ours, ceil, bares = [], [], []
            kind_cpu = 0.0  # mm7tx's CPU over this kind's own runs only
            for _ in range(args.rounds):  # side by side, round by round
                started = mm7.cpu_seconds()
                ours.append(
                    wrk(
                        wrk_path,
                        base + path,
                        ctype,
                        body,
                        args.seconds,
                        args.connections,
                    )
                )
                kind_cpu += mm7.cpu_seconds() - started
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
            for result in ours:
                answered_1000 += int(result["mm7_1000"])
                mm7_transactions += int(result["requests"])
                if result["errors"] or result["other"]:
                    print(
                        f"  {name}: {int(result['errors'])} errors, {int(result['other'])} non-200 answers"
                    )
            best = statistics.median(r["rate"] for r in ours)
            top = statistics.median(r["rate"] for r in ceil)
            bare_top = statistics.median(r["rate"] for r in bares)
            full = min(ours, key=lambda r: abs(r["rate"] - best))
            half_rate = best / 2
            started = mm7.cpu_seconds()
            half = wrk(
                wrk_path,
                base + path,
                ctype,
                body,
                args.seconds,
                args.connections,
                delay_ms=1000.0 * args.connections / half_rate,
            )
            kind_cpu += mm7.cpu_seconds() - started
            answered_1000 += int(half["mm7_1000"])
            mm7_transactions += int(half["requests"])
            kind_requests = sum(r["requests"] for r in ours) + half["requests"]
            summary.append(
                summary_row(
                    1,
                    name,
                    {
                        "rate": best,
                        "cpu_per_1000": 1000 * kind_cpu / max(1.0, kind_requests),
                        "p99_full": full["p99"],
                        "half_rate": half["rate"],
                        "p99_half": half["p99"],
                    },
                )
            )
            rows.append(
                (
                    name,
                    f"{best:.0f}",
                    f"{top:.0f}",
                    f"{100 * best / top:.0f}%",
                    f"{bare_top:.0f}",
                    f"{100 * best / bare_top:.0f}%",
                    f"{full['p50']:.1f}/{full['p99']:.1f}",
                    f"{half['rate']:.0f}",
                    f"{half['p50']:.1f}/{half['p99']:.1f}",
                )
            )
        cpu = mm7.cpu_seconds() - cpu_before
        time.sleep(1.0)
        steady_rss = mm7.peak_rss_mib()
        profile_lines: list[str] = []
        if args.profile:
            ctype, body = bodies["deliver-30k"]
            svg, raw = folder / "mm7tx-profile.svg", folder / "mm7tx-profile.txt"
            spies = [
                subprocess.Popen(
                    [
                        pyspy,
                        "record",
                        "-p",
                        str(mm7.popen.pid),
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
            extra = wrk(
                wrk_path, base + "/vasp/", ctype, body, args.seconds, args.connections
            )
            answered_1000 += int(extra["mm7_1000"])
            for spy in spies:
                spy.wait(60)
            selfs: Counter[str] = Counter()
            for line in raw.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                selfs[stack.split(";")[-1]] += int(count)
            total = sum(selfs.values()) or 1
            profile_lines = [
                f"  {100 * n / total:5.1f}%  {frame}"
                for frame, n in selfs.most_common(5)
            ]
            profile_lines.insert(0, f"flame graph: {svg}")
            time.sleep(1.0)
        # The memory run: 100 concurrent 1 MiB DeliverReq.
        ctype, body = bodies["deliver-1m"]
        big = wrk(wrk_path, base + "/vasp/", ctype, body, max(args.seconds, 20), 100)
        answered_1000 += int(big["mm7_1000"])
        time.sleep(1.0)
        big_rss = mm7.peak_rss_mib()
    finally:
        # mm7tx first: it drains what is in flight into the sink.
        for process in (ceiling, bare, mm7, sink):
            process.stop()
    sink_messages = sink_count(sink_log)

    logged = sum(  # twistd rotates its log file at 1 MB
        1
        for log in folder.glob("mm7tx.log*")
        for line in log.read_text().splitlines()
        if ": 1000 Success" in line
    )
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
        f"median of {args.rounds} rounds of {args.seconds:g} s, {args.connections} connections, wrk -t2"
    )
    print_table([header, *rows])
    print("per request kind (mm7tx's CPU seconds over that kind's runs only):")
    print_table(summary)
    print(
        f"MM7 1000 answers sent by mm7tx: {logged}, messages at smtp-sink: "
        f"{sink_messages} ({'equal' if logged == sink_messages else 'NOT EQUAL'}); "
        f"1000 answers wrk read before it stopped: {answered_1000}"
    )
    print(f"mm7tx peak RSS under the runs above: {steady_rss:.0f} MiB")
    print(
        f"mm7tx CPU seconds per 1000 transactions, all kinds: {1000 * cpu / max(1, mm7_transactions):.2f}"
    )
    print(
        f"100 concurrent 1 MiB DeliverReq: {big['rate']:.0f} req/s, peak RSS {big_rss:.0f} MiB"
    )
    for line in profile_lines:
        print(line)
    print(f"files in {folder}")
    return 0 if logged == sink_messages else 1


if __name__ == "__main__":
    raise SystemExit(main())
