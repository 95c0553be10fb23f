"""The options of the running service in ``mm7_serv``: its logs, its
drain, its workers and its metrics listener."""

from __future__ import annotations

from mm7tx.config.model import DEFAULT_METRICS_LISTEN
from mm7tx.config.reader import MM7_SERV, OptionSpec, Reader

SERVICE_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "mm7_access_log",
        MM7_SERV,
        Reader.boolean,
        "config.access_log",
        "also log Twisted's combined access line per request (the transaction "
        "line, always logged, says as much): `true` or `false`",
        default="false",
    ),
    OptionSpec(
        "mm7_log_addresses",
        MM7_SERV,
        Reader.log_addresses,
        "config.log_addresses",
        "the sender and recipients in the transaction log: `masked` (numbers "
        "to their last four digits, `*******4567`; email addresses to the "
        "first character of the local part, `j***@example.com`), `full` or "
        "`none` (see Logs)",
        default="masked",
    ),
    OptionSpec(
        "mm7_drain_timeout",
        MM7_SERV,
        Reader.seconds,
        "config.drain_timeout",
        "on SIGTERM, how long in-flight transactions may take to finish",
        default="30",
        unit=" s",
    ),
    OptionSpec(
        "workers",
        MM7_SERV,
        Reader.workers,
        "config.workers",
        "worker processes serving the listeners (bound once, by the parent), "
        "or `auto`: one per core; `--workers` overrides it (see Workers)",
        default="1",
    ),
    OptionSpec(
        "metrics_listen",
        MM7_SERV,
        Reader.metrics_listen,
        "config.metrics_listen",
        "where `/metrics` (Prometheus), `/healthz` and `/readyz` are served: a "
        "server endpoint, or `none`; one that cannot listen is logged, and MM7 "
        "goes on without it",
        default=f'"{DEFAULT_METRICS_LISTEN}"',
    ),
)
