"""The owners record of an instance: which processes of one mm7tx service
(its starts and workers, one host and working folder) own delivery reports
in the state store, so that a start takes over at once the reports of those
whose process is gone, their leases notwithstanding."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from mm7tx.interfaces import IRecordStore

# The record of the owners of an instance's processes, and how many it keeps.
OWNERS_KEY = "mm7tx:report-owners:"
KEPT_OWNERS = 256


async def gone_owners(
    records: IRecordStore, instance: str, owner: str, now: float, ttl: float
) -> list[str]:
    """The owners of ``instance`` whose processes are gone (earlier starts,
    workers that died), read from its record in ``records``, which is
    written back with ``owner`` (this start), those still running and the
    gone ones, for ``ttl`` seconds.  A store fault propagates.

    A gone owner stays in the record, with when it was first found gone,
    for ``ttl`` seconds from then (a report's longest life: its reports
    cannot outlive that): a start that stops before a gone owner's reports
    are due leaves them to the next start, which takes them over at once
    too.  Called on every poll, so that the record lives as long as the
    processes it lists, and an entry lost to two processes writing the
    record at once is back within a poll."""
    key = OWNERS_KEY + instance
    alive: list[str] = []
    gone: dict[str, float] = {}
    for listed, since in _entries(await records.get(key)):
        if listed == owner or listed in alive or listed in gone:
            continue
        # The instance is this host's: an owner whose process is gone was an
        # earlier start; one still running is a sibling (another worker in
        # the same folder), which keeps its reports.  Once found gone, always
        # gone: its pid may be another process's now.
        if since is None and _running(listed):
            alive.append(listed)
        elif since is None or since + ttl > now:
            gone[listed] = now if since is None else since
    written: list[Any] = [owner, *alive]
    written += [[listed, since] for listed, since in gone.items()]
    await records.put(key, json.dumps(written[:KEPT_OWNERS]).encode(), ttl)
    return list(gone)


def _entries(value: bytes | None) -> list[tuple[str, float | None]]:
    """The owners in an owners record: each with when it was found gone,
    ``None`` for one listed as running (as every owner was by earlier
    versions, which listed names only).  Anything unreadable is left out."""
    try:
        listed = json.loads(value) if value is not None else []
    except ValueError:
        listed = []
    entries: list[tuple[str, float | None]] = []
    for item in listed if isinstance(listed, list) else []:
        if isinstance(item, str):
            entries.append((item, None))
        elif (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], (int, float))
        ):
            entries.append((item[0], float(item[1])))
    return entries


def _running(owner: str) -> bool:
    """Whether the process of ``owner`` (``instance#pid.random``, on this
    host) runs; this process's pid in another owner is an earlier start
    (a container restarted with the same pid)."""
    pid_text = owner.rpartition("#")[2].partition(".")[0]
    if not pid_text.isdigit() or int(pid_text) in (0, os.getpid()):
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, as another user's
    return True


def default_instance() -> str:
    """This service's name across its restarts: the host and the working
    folder (one service per folder, as with systemd's ``WorkingDirectory``)."""
    return f"{socket.gethostname()}:{os.getcwd()}"
