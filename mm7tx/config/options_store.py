"""The options of the state store in ``mm7_serv``: which store, its
password, and how long an answer is kept for a peer's retries."""

from __future__ import annotations

from mm7tx.config.reader import MM7_SERV, OptionSpec, Reader

STORE_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "state_store",
        MM7_SERV,
        Reader.state_store,
        "config.state_store",
        "where the answers given are kept, for exactly once across a peer's "
        "retries (see Exactly once): `sqlite:PATH` (a file, relative to the "
        "working folder, in a folder that exists and is writable; WAL, shared by "
        "`--workers`), `redis://[:PASSWORD@]"
        "HOST[:PORT][/DB]` or `rediss://…` (TLS; a fleet shares one), "
        "`memory` (this process only) or `none` (stateless: no dedup)",
        default='"sqlite:mm7tx.sqlite3"',
    ),
    OptionSpec(
        "state_store_password",
        MM7_SERV,
        Reader.text,
        "config.state_store_password",
        "the Redis password, when `state_store`'s URL carries none (not both; "
        "never logged)",
    ),
    OptionSpec(
        "mm7_dedup_window",
        MM7_SERV,
        Reader.seconds,
        "config.dedup_window",
        "how long the answer to a transaction is kept: a retry within it "
        "(same peer, TransactionID and content) gets that answer and mails "
        "nothing",
        default="86400",
        unit=" s",
    ),
)
