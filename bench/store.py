"""What the state store costs: one installation run with ``state_store =
"none"``, ``"sqlite:…"`` and ``"redis://…"`` in alternating rounds.

    python -m bench.store [--rounds 3] [--seconds 5] [--request deliver-30k] [BIN]

BIN is the ``bin`` folder of a virtual environment with mm7tx installed
(default: this interpreter's).  A ``redis-server`` is started on a free
loopback port (no persistence, as a cache of answers needs none).  Each round
runs, each on a fresh ``twistd mm7`` and ``smtp-sink`` warmed up for 2 s,
``wrk`` for ``--seconds``: the three stores with a fresh TransactionID per
request, then SQLite and Redis with one fixed TransactionID (after the first,
every request is a retry answered from the store: a dedup hit).  It prints
each run, then the medians (requests/s, CPU seconds per 1000 transactions),
the CPU ratios to ``none``, what a hit costs against a fresh transaction,
and the store's size per million transactions: the SQLite file (its WAL
checkpointed once mm7tx stopped) and Redis's ``used_memory`` grown over the
fresh run, each divided by the transactions answered 1000 in it (warm-up
included) and multiplied by a million (a record per transaction, the same
size each: linear).  Needs ``wrk``, ``postfix`` (``smtp-sink``) and
``redis-server``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ab import PATHS
from bench.throughput import need, requests, start_mm7tx, start_sink, wrk
from tests.processes import free_port

STORES = ("none", "sqlite", "redis")
HITS = ("sqlite", "redis")


class Redis:
    """A ``redis-server`` of its own on a free loopback port."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                need("redis-server", "redis-server"),
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(folder)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if b"Ready to accept connections" in line:
                break
        else:
            raise SystemExit(f"redis-server exited: {self.process.wait()}")
        self.process.stdout.close()

    def command(self, *words: str) -> str:
        cli = need("redis-cli", "redis-tools")
        return subprocess.run(
            [cli, "-p", str(self.port), *words],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def used_memory(self) -> int:
        for line in self.command("INFO", "memory").splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":")[1])
        raise SystemExit("redis-server gave no used_memory")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def one_run(
    bin_dir: Path,
    folder: Path,
    store: str,
    redis: Redis,
    ctype: str,
    body: Path,
    path: str,
    seconds: float,
    same_transaction: bool,
) -> tuple[float, float, float | None]:
    """(requests/s, CPU s per 1000, store bytes per transaction or None) of
    one fresh run with ``store``."""
    wrk_path, sink_path = need("wrk", "wrk"), need("smtp-sink", "postfix")
    database = folder / "state.sqlite3"
    setting = {
        "none": "none",
        "sqlite": f"sqlite:{database}",
        "redis": f"redis://127.0.0.1:{redis.port}/0",
    }[store]
    if store == "redis":
        redis.command("FLUSHALL")
        memory_before = redis.used_memory()
    sink, smtp_port = start_sink(sink_path, folder)
    mm7, mm7_port = start_mm7tx(
        bin_dir, folder, smtp_port, extra=f'  state_store = "{setting}"'
    )
    url = f"http://127.0.0.1:{mm7_port}{path}"
    try:
        warm = wrk(wrk_path, url, ctype, body, 2, 32, same_transaction=same_transaction)
        before = mm7.cpu_seconds()
        result = wrk(
            wrk_path, url, ctype, body, seconds, 32, same_transaction=same_transaction
        )
        cpu = mm7.cpu_seconds() - before
        if store == "redis":
            grown = redis.used_memory() - memory_before
    finally:
        mm7.stop()
        sink.stop()
    if result["mm7_1000"] != result["requests"]:
        print(f"  {int(result['requests'] - result['mm7_1000'])} answers were not 1000")
    kept = warm["mm7_1000"] + result["mm7_1000"]
    size: float | None = None
    if not same_transaction and store == "sqlite":
        files = [database, *database.parent.glob(database.name + "-*")]
        size = sum(f.stat().st_size for f in files if f.exists()) / max(1.0, kept)
    elif not same_transaction and store == "redis":
        size = grown / max(1.0, kept)
    return result["rate"], 1000 * cpu / max(1.0, result["requests"]), size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--request", choices=sorted(PATHS), default="deliver-30k")
    parser.add_argument(
        "bin", nargs="?", type=Path, default=Path(sys.executable).parent
    )
    args = parser.parse_args()
    bin_dir = args.bin.absolute()
    if not (bin_dir / "twistd").exists():
        raise SystemExit(f"{bin_dir} has no twistd: give a virtualenv's bin folder")
    folder = Path(tempfile.mkdtemp(prefix="mm7tx-store-"))
    ctype, body = requests(folder)[args.request]
    redis = Redis(folder)
    runs = [(store, False) for store in STORES] + [(store, True) for store in HITS]
    results: dict[tuple[str, bool], list[tuple[float, float, float | None]]] = {
        run: [] for run in runs
    }
    try:
        for number in range(args.rounds):
            for store, hits in runs:
                name = f"{store} {'hits' if hits else 'fresh'}"
                run = folder / f"{number}-{name.replace(' ', '-')}"
                run.mkdir()
                rate, cpu, size = one_run(
                    bin_dir,
                    run,
                    store,
                    redis,
                    ctype,
                    body,
                    PATHS[args.request],
                    args.seconds,
                    hits,
                )
                results[store, hits].append((rate, cpu, size))
                sized = f", {size:.0f} B/transaction" if size is not None else ""
                print(
                    f"round {number + 1} {name:12}: {rate:.0f} req/s, "
                    f"{cpu:.2f} CPU s/1000{sized}",
                    flush=True,
                )
    finally:
        redis.stop()
    medians = {
        run: (
            statistics.median(r[0] for r in rows),
            statistics.median(r[1] for r in rows),
        )
        for run, rows in results.items()
    }
    for (store, hits), (rate, cpu) in medians.items():
        name = f"{store} {'hits' if hits else 'fresh'}"
        print(f"median {name:12}: {rate:.0f} req/s, {cpu:.2f} CPU s/1000")
    none_cpu = medians["none", False][1]
    for store in HITS:
        fresh_rate, fresh_cpu = medians[store, False]
        hit_cpu = medians[store, True][1]
        print(
            f"{store}/none: CPU {fresh_cpu / none_cpu:.2f}, "
            f"req/s {fresh_rate / medians['none', False][0]:.2f}; "
            f"a hit costs {hit_cpu / fresh_cpu:.2f} of a fresh transaction "
            f"({hit_cpu:.2f} vs {fresh_cpu:.2f} CPU s/1000)"
        )
        sizes = [r[2] for r in results[store, False] if r[2] is not None]
        per_million = statistics.median(sizes) * 1e6 / 2**20
        print(f"{store} size: {per_million:.0f} MiB per million transactions")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
