"""What the ``mm7tx`` command prints of its answers: one request's answer, or
the summary of many sent in parallel (``--count``, ``--concurrency``)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet import defer

from mm7tx.http.client import MM7Client, MM7ClientError, MM7Fault
from mm7tx.mm7 import messages as m

# The answers that count as success (exit status 0).
SUCCESS_CODES = (1000, 1100)


@dataclass
class Summary:
    """What a run of many requests did."""

    sent: int = 0
    codes: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def succeeded(self) -> int:
        return sum(n for code, n in self.codes.items() if code in SUCCESS_CODES)

    @property
    def failed(self) -> int:
        return self.sent - self.succeeded

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def lines(self) -> list[str]:
        codes = ", ".join(f"{c}: {n}" for c, n in sorted(self.codes.items())) or "-"
        failures = (
            ", ".join(f"{k}: {n}" for k, n in sorted(self.failures.items())) or "-"
        )
        rate = self.sent / self.seconds if self.seconds else 0.0
        return [
            f"sent {self.sent}, succeeded {self.succeeded}, failed {self.failed}",
            f"answers by status: {codes}",
            f"failures: {failures}",
            f"requests/s {rate:.1f} over {self.seconds:.2f} s",
            "latency ms p50 {:.1f} p95 {:.1f} p99 {:.1f}".format(
                *(1000 * self.percentile(f) for f in (0.50, 0.95, 0.99))
            ),
        ]


async def send_many(
    client: MM7Client,
    make: Callable[[int], m.Request],
    count: int,
    concurrency: int,
    progress: Callable[[Summary], None] | None = None,
) -> Summary:
    """Send ``count`` requests over ``concurrency`` parallel workers."""
    summary = Summary()
    numbers = iter(range(count))
    started = time.perf_counter()

    async def worker() -> None:
        for number in numbers:
            begin = time.perf_counter()
            try:
                response = await client.send(make(number))
                summary.codes[response.status.code] += 1
            except MM7Fault as fault:
                summary.codes[fault.status.code] += 1
            except MM7ClientError as e:
                summary.failures[type(e).__name__] += 1
            summary.latencies.append(time.perf_counter() - begin)
            summary.sent += 1
            if progress is not None:
                progress(summary)

    await defer.gatherResults(
        [defer.ensureDeferred(worker()) for _ in range(max(1, concurrency))]
    )
    summary.seconds = time.perf_counter() - started
    return summary


def describe(response: m.Response) -> list[str]:
    """A single answer as the command prints it: status, details, MessageID."""
    status = response.status
    lines = [f"{status.code} {status.text}"]
    if status.details:
        lines.append(f"Details: {status.details}")
    message_id = getattr(response, "message_id", None)
    if message_id:
        lines.append(f"MessageID: {message_id}")
    return lines
