"""How long one hostile request holds the reactor: the worst wait of a probe.

    python -m bench.stall [--seconds 3] [--shapes sniff,nested,...] [--big]

Real processes on loopback: the real ``twistd mm7`` and a real SMTP server
that keeps nothing, a process per session (bench/fork_sink.py).  A probe posts a small DeliverReq every 50 ms on its own
connection and times each answer; meanwhile ``--clients`` hostile clients post
one shape of request over and over for ``--seconds``.  For each shape it prints
the probe's worst and median latency, the hostile request's own median time
and status, and how far the gateway's peak resident memory rose above what it
was before the shape (``VmHWM``, reset between shapes).

The default run uses the default limits (5 MB requests); ``--big`` raises
``mm7_max_request_size`` to 50M (and ``smtp_timeout``) and sends 48 MiB
requests, ``--clients 4`` of them at once.  ``--max-probe MS`` makes the exit
status 1 when any shape's worst probe wait is over MS milliseconds.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, mm7tx_config, wait_for_port
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
MB = 1024 * 1024

Shape = tuple[str, str, bytes]  # path, Content-Type, body


def _soap(tid: str) -> bytes:
    envelope = m.Envelope(
        tid,
        m.DeliverReq(
            sender=m.Address("+15551234567"),
            recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
            subject="probe",
        ),
    )
    return codec.encode(envelope)[1]


def _multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"b0") -> bytes:
    """A multipart body of (headers, content) parts, CRLF line endings."""
    out = []
    for headers, content in parts:
        out.append(b"--" + boundary + b"\r\n" + headers + b"\r\n" + content + b"\r\n")
    return b"".join(out) + b"--" + boundary + b"--\r\n"


def _with_part(content: bytes, headers: bytes) -> tuple[str, bytes]:
    soap = _soap("stall-1")
    body = _multipart(
        [
            (b"Content-Type: text/xml\r\nContent-ID: <soap>\r\n", soap),
            (headers, content),
        ]
    )
    return 'multipart/related; boundary="b0"; type="text/xml"; start="<soap>"', body


def shapes(size: int) -> dict[str, Callable[[], Shape]]:
    """Each hostile shape: a function making (path, Content-Type, body) of
    about ``size`` bytes (so that it stays under the request limit)."""
    room = size - 4096
    octet = b"Content-Type: application/octet-stream\r\n"

    def sniff() -> Shape:
        ctype = "multipart/related; start=" + " " * 16000 + ";"
        return "/mm7/", ctype, b"x"

    def nested() -> Shape:
        inner = b"--n\r\n\r\nxx\r\n" * (room // 11)
        soap = _soap("stall-1")
        body = _multipart(
            [
                (b"Content-Type: text/xml\r\n", soap),
                (b'Content-Type: multipart/mixed; boundary="n"\r\n', inner + b"--n--"),
            ]
        )
        return "/vasp/", 'multipart/related; boundary="b0"', body

    def deep() -> Shape:
        depth = 2000
        opening = b"".join(
            b'--d%d\r\nContent-Type: multipart/mixed; boundary="d%d"\r\n\r\n'
            % (i, i + 1)
            for i in range(depth)
        )
        soap = _soap("stall-1")
        body = b"--d0\r\nContent-Type: text/xml\r\n\r\n" + soap + b"\r\n" + opening
        return "/vasp/", 'multipart/related; boundary="d0"', body

    def carriage_returns() -> Shape:
        return ("/vasp/", *_with_part(b"\r" * room, octet))

    def x_cr() -> Shape:
        return ("/vasp/", *_with_part(b"x\r" * (room // 2), octet))

    def random_bytes() -> Shape:
        return ("/vasp/", *_with_part(os.urandom(room), octet))

    def lines() -> Shape:
        return ("/vasp/", *_with_part(b"\n" * room, octet))

    def headers() -> Shape:
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(room // 16))
        return ("/vasp/", *_with_part(b"x", octet + many))

    def folded() -> Shape:
        long = b"X-Folded: a\r\n" + b" b\r\n" * (room // 4)
        return ("/vasp/", *_with_part(b"x", octet + long))

    def many_headers() -> Shape:
        # Parts each under the bound on one part's headers, folded lines.
        folded = b"X-Folded: a\r\n" + b" b\r\n" * 3900
        soap = _soap("stall-1")
        parts = [(b"Content-Type: text/xml\r\n", soap)]
        parts += [(octet + folded, b"x")] * min(250, room // 16000)
        return "/vasp/", 'multipart/related; boundary="b0"', _multipart(parts)

    return {
        "sniff": sniff,
        "nested": nested,
        "deep": deep,
        "cr": carriage_returns,
        "x-cr": x_cr,
        "random": random_bytes,
        "lf": lines,
        "headers": headers,
        "folded": folded,
        "many-headers": many_headers,
    }


def post(port: int, path: str, ctype: str, body: bytes) -> tuple[float, int]:
    """Seconds and HTTP status of one POST on a new connection."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", path, body, {"Content-Type": ctype})
        response = conn.getresponse()
        response.read()
        return time.perf_counter() - started, response.status
    finally:
        conn.close()


class Gateway:
    def __init__(self, folder: Path, big: bool) -> None:
        self.folder = folder
        smtp_port, self.port = free_port(), free_port()
        extra = "  mm7_max_request_size = 50M\n  smtp_timeout = 600\n" if big else ""
        config = folder / "mm7tx.conf"
        config.write_text(mm7tx_config(self.port, smtp_port, extra, ""))
        # A process per session (bench/fork_sink.py): a session taking a
        # large message never delays the probe's answer at the relay.
        command = [sys.executable, str(HERE / "fork_sink.py"), "--port", str(smtp_port)]
        self.relay = Path(command[1]).name
        self.smtp = subprocess.Popen(command)
        wait_for_port(smtp_port)
        self.log = open(folder / "mm7tx.log", "ab")  # noqa: SIM115
        self.mm7 = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "mm7", "--config", str(config)],
            cwd=folder,
            # The gateway of this checkout, whatever the venv installed.
            env={**os.environ, "PYTHONPATH": str(HERE.parent)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port)

    def status(self, field: str) -> int:
        for line in Path(f"/proc/{self.mm7.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def reset_peak(self) -> None:
        Path(f"/proc/{self.mm7.pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        for process in (self.mm7, self.smtp):
            process.terminate()
            process.wait(10)
        self.log.close()


def run_shape(
    gateway: Gateway, make: Callable[[], Shape], seconds: float, clients: int
) -> dict[str, object]:
    path, ctype, body = make()
    probe_body = _soap("probe-1")
    stop = threading.Event()
    waits: list[float] = []
    hostile: list[tuple[float, int]] = []

    def probe() -> None:
        while not stop.is_set():
            waits.append(post(gateway.port, "/vasp/", "text/xml", probe_body)[0])
            time.sleep(0.05)

    def attack() -> None:
        while not stop.is_set():
            hostile.append(post(gateway.port, path, ctype, body))

    # One untimed request of the shape first: the first large request grows
    # the heap and starts the thread pool once for all (75 MB more peak for
    # whichever shape came first); then settle, and measure from here.
    post(gateway.port, path, ctype, body)
    time.sleep(0.3)
    gateway.reset_peak()
    before = gateway.status("VmRSS")
    threads = [threading.Thread(target=probe)]
    threads += [threading.Thread(target=attack) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return {
        "size": len(body),
        "worst": max(waits),
        "median": statistics.median(waits),
        "p99": sorted(waits)[int(0.99 * (len(waits) - 1))],
        "probes": len(waits),
        "own": statistics.median(t for t, _ in hostile) if hostile else float("nan"),
        "statuses": sorted({s for _, s in hostile}),
        "sent": len(hostile),
        "rise": gateway.status("VmHWM") - before,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--shapes", default="", help="comma-separated; default all")
    parser.add_argument("--big", action="store_true", help="50M limit, 48 MiB bodies")
    parser.add_argument("--max-probe", type=float, default=0.0, help="ms; 0: none")
    args = parser.parse_args()
    size = 48 * MB if args.big else 5 * 1000 * 1000
    made = shapes(size)
    chosen = args.shapes.split(",") if args.shapes else list(made)
    if args.big and not args.shapes:
        chosen = ["random", "cr", "lf"]
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="mm7tx-stall-") as tmp:
        gateway = Gateway(Path(tmp), args.big)
        try:
            print(f"relay: {gateway.relay}")
            print(
                f"{'shape':12} {'bytes':>9} {'probe worst':>12} {'p99':>6} {'median':>8} "
                f"{'own median':>10} {'sent':>5} {'statuses':>10} {'peak rise':>10}"
            )
            for name in chosen:
                r = run_shape(gateway, made[name], args.seconds, args.clients)
                worst = max(worst, float(r["worst"]))  # type: ignore[arg-type]
                print(
                    f"{name:12} {r['size']:>9} {1000 * r['worst']:>10.0f}ms "  # type: ignore[operator]
                    f"{1000 * r['p99']:>4.0f}ms "  # type: ignore[operator]
                    f"{1000 * r['median']:>6.0f}ms {1000 * r['own']:>8.0f}ms "  # type: ignore[operator]
                    f"{r['sent']:>5} {','.join(map(str, r['statuses'])):>10} "  # type: ignore[call-overload]
                    f"{r['rise'] / MB:>8.0f}MB",  # type: ignore[operator]
                    flush=True,
                )
        finally:
            gateway.stop()
    if args.max_probe and 1000 * worst > args.max_probe:
        print(
            f"the worst probe wait, {1000 * worst:.0f} ms, is over {args.max_probe} ms"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
