"""Fuzz mm7tx with a large budget: mutated reference samples, in memory.

    python -m bench.fuzz [--budget 20000] [--seed 1]

Every case must get a well-formed MM7 answer or SOAP fault (never a
traceback, never an HTTP 500 without a SOAP body).  Prints the number of
cases tried, the answers by status code and the peak traced memory of one case.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from mm7tx import codec
from tests.fuzzing import check, mutated, target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=20000, help="cases to try")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    root, _ = target()
    statuses: Counter[int] = Counter()
    peaks: list[int] = []
    tried = 0

    @seed(args.seed)
    @settings(
        max_examples=args.budget,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=mutated(), path=st.sampled_from(["/vasp/", "/mm7/v=p"]))
    def run(case: tuple[str, bytes], path: str) -> None:
        nonlocal tried
        ctype, body = case
        tracemalloc.start()
        try:
            response = check(root, path, ctype, body)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
