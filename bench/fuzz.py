"""Fuzz mm7tx with a large budget: mutated reference samples and hostile
header values, in memory.

    python -m bench.fuzz [--budget 20000] [--seed 1]

Every case must get a well-formed MM7 answer or SOAP fault (never a
traceback, never an HTTP 500 without a SOAP body).  One case in three is a
request valid but for one field (``tests.fuzzing.hostile``): a value of up
to 512 KB of short words, non-ASCII, CJK, line separators, encoded-word
lookalikes or quotes in a field that becomes a mail header, thousands of
recipients, a text part in an odd charset, a multipart or message leaf.
Prints the number of cases tried, the answers by status code, the peak
traced memory of one case, and the worst time one request took on the
reactor (the whole synchronous path: parse, build the mail, write its
bytes) with its case.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from mm7tx.mm7 import codec
from tests.fuzzing import check, hostile, mutated, target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=20000, help="cases to try")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    root, sender = target()
    statuses: Counter[int] = Counter()
    peaks: list[int] = []
    times: list[tuple[float, str]] = []
    tried = 0
    paths = st.sampled_from(["/vasp/", "/mm7/v=p"])
    # Hostile requests are VASP-path transactions (DeliverReq and reports).
    samples = st.tuples(st.just("mutated sample"), mutated(), paths)
    hostiles = hostile().map(lambda case: (case[0], case[1], "/vasp/"))

    @seed(args.seed)
    @settings(
        max_examples=args.budget,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(samples, samples, hostiles))
    def run(case: tuple[str, tuple[str, bytes], str]) -> None:
        nonlocal tried
        name, (ctype, body), path = case
        if tried % 2:  # memory tracing slows the code it traces: time the others
            # The collector's young generations emptied first (untimed): the
            # request pays for the collections its own garbage brings, not
            # for this process's (hypothesis keeps far more objects alive
            # than a server does, and a full collection walks them all).
            gc.collect()
            started = time.perf_counter()
            response = check(root, path, ctype, body)
            times.append((time.perf_counter() - started, f"{name} on {path}"))
        else:
            tracemalloc.start()
            try:
                response = check(root, path, ctype, body)
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
        # The fake sender keeps every mail: dropped, so that the cyclic GC's
        # pauses measure mm7tx rather than the pile of past cases.
        sender.sent.clear()
        envelope = codec.decode("text/xml", response.body)
        statuses[envelope.message.status.code] += 1  # type: ignore[union-attr]
        tried += 1

    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    print(
        f"cases tried: {tried} in {seconds:.1f} s, all answered with MM7 answers or faults"
    )
    print(
        "answers by status: "
        + ", ".join(f"{c}: {n}" for c, n in sorted(statuses.items()))
    )
    peaks.sort()
    print(
        f"peak traced memory per case: median {peaks[len(peaks) // 2] / 1e6:.2f} MB, "
        f"max {peaks[-1] / 1e6:.2f} MB"
    )
    times.sort()
    worst, case = times[-1]
    print(
        f"time per request: median {times[len(times) // 2][0] * 1000:.1f} ms, "
        f"p99 {times[int(len(times) * 0.99)][0] * 1000:.1f} ms, "
        f"worst {worst * 1000:.1f} ms ({case})"
    )
    print(
        "next worst: "
        + ", ".join(f"{t * 1000:.1f} ms ({c})" for t, c in reversed(times[-4:-1]))
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
