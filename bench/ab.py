"""Two mm7tx installations side by side: which change made a difference.

    python -m bench.ab [--rounds 3] [--seconds 5] [--request deliver-30k] [--rate R] BIN_A BIN_B

BIN_A and BIN_B are the ``bin`` folders of two virtual environments with
mm7tx installed (for example the previous commit, installed with
``python -m venv /tmp/a && /tmp/a/bin/pip install .`` from a worktree of it,
and this checkout's ``.venv/bin``).  Round by round, each is started fresh
(its own ``twistd mm7`` and ``smtp-sink``), warmed up for 2 s and driven by
``wrk`` for ``--seconds``; the rounds alternate A, B, A, B... so both see the
same machine.  It prints each round and the medians: requests/s, CPU
seconds per 1000 transactions and p99 latency.  With ``--rate`` the load is
held near R requests/s (wrk's jittered delay, as for the half-rate latency of
bench/throughput.py) rather than as fast as it goes.  Needs ``wrk`` and
``postfix`` like bench/throughput.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throughput import need, requests, start_mm7tx, start_sink, wrk

PATHS = {"deliver-30k": "/vasp/", "submit-3rcpt": "/mm7/", "report": "/vasp/"}


def one_round(
    bin_dir: Path,
    folder: Path,
    ctype: str,
    body: Path,
    path: str,
    seconds: float,
    rate: float | None = None,
) -> tuple[float, float, float]:
    """(requests/s, CPU s per 1000 transactions, p99 ms) of one fresh run."""
    wrk_path, sink_path = need("wrk", "wrk"), need("smtp-sink", "postfix")
    sink, smtp_port = start_sink(sink_path, folder)
    mm7, mm7_port = start_mm7tx(bin_dir, folder, smtp_port)
    url = f"http://127.0.0.1:{mm7_port}{path}"
    try:
        wrk(wrk_path, url, ctype, body, 2, 32)  # warm up
        before = mm7.cpu_seconds()
        delay = 1000.0 * 32 / rate if rate else 0.0
        result = wrk(wrk_path, url, ctype, body, seconds, 32, delay_ms=delay)
        cpu = mm7.cpu_seconds() - before
    finally:
        mm7.stop()
        sink.stop()
    if result["mm7_1000"] != result["requests"]:
        print(
            f"  {bin_dir}: {int(result['requests'] - result['mm7_1000'])} answers were not 1000"
        )
    return result["rate"], 1000 * cpu / max(1.0, result["requests"]), result["p99"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--request", choices=sorted(PATHS), default="deliver-30k")
    parser.add_argument(
        "--rate", type=float, help="hold the load near this many requests/s"
    )
    parser.add_argument("bins", nargs=2, type=Path, metavar="BIN")
    args = parser.parse_args()
    args.bins = [b.absolute() for b in args.bins]  # the processes run elsewhere
    for bin_dir in args.bins:
        if not (bin_dir / "twistd").exists():
            raise SystemExit(f"{bin_dir} has no twistd: give a virtualenv's bin folder")
    folder = Path(tempfile.mkdtemp(prefix="mm7tx-ab-"))
    ctype, body = requests(folder)[args.request]
    # By position, so that a run of one installation against itself works.
    results: list[list[tuple[float, float, float]]] = [[], []]
    for number in range(args.rounds):
        for index, bin_dir in enumerate(args.bins):
            run = folder / f"{number}-{'AB'[index]}"
            run.mkdir()
            rate, cpu, p99 = one_round(
                bin_dir, run, ctype, body, PATHS[args.request], args.seconds, args.rate
            )
            results[index].append((rate, cpu, p99))
            print(
                f"round {number + 1} {'AB'[index]}: {rate:.0f} req/s, "
                f"{cpu:.2f} CPU s/1000, p99 {p99:.1f} ms",
                flush=True,
            )
    medians = [
        tuple(statistics.median(r[i] for r in rows) for i in range(3))
        for rows in results
    ]
    for index, bin_dir in enumerate(args.bins):
        rate, cpu, p99 = medians[index]
        print(
            f"{'AB'[index]} {bin_dir}: median {rate:.0f} req/s, {cpu:.2f} CPU s/1000, p99 {p99:.1f} ms"
        )
    print(f"B/A requests/s: {medians[1][0] / medians[0][0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
