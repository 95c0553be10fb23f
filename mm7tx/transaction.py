"""What a processor knows about the HTTP exchange a request arrived in."""

from __future__ import annotations

from dataclasses import dataclass

from mm7tx.auth import Account
from mm7tx.messages import DEFAULT_MM7_VERSION, DEFAULT_NAMESPACE


@dataclass(frozen=True, slots=True)
class Transaction:
    """One MM7 transaction as the resource saw it.

    ``path`` is the configured URI path it was posted to (``/photo_contest/``),
    ``peer`` the client's address, ``account`` the authenticated VASP
    account on MMSC paths, ``mm7_version`` the version we answer with: the
    request's own MM7Version, else ``mm7_server_version``.
    """

    transaction_id: str
    path: str
    namespace: str = DEFAULT_NAMESPACE
    peer: str | None = None
    account: Account | None = None
    mm7_version: str = DEFAULT_MM7_VERSION
