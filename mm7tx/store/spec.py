"""The ``state_store`` option's text, parsed (pure: no I/O).

``none``, ``memory``, ``sqlite:PATH``, ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``
or ``rediss://…`` (TLS).  The password may come from the URL or on its own
(``state_store_password``); it never appears in a repr, a description or an
error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

FORMS = (
    '"none", "memory", "sqlite:PATH", "redis://[:PASSWORD@]HOST[:PORT][/DB]" '
    'or "rediss://…"'
)
REDIS_PORT = 6379


class StoreSpecError(ValueError):
    """A ``state_store`` text that names no store; the message says why
    (without the password)."""


@dataclass(frozen=True)
class StoreSpec:
    """Which store, and where."""

    kind: Literal["none", "memory", "sqlite", "redis"]
    path: str = ""
    host: str = ""
    port: int = REDIS_PORT
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        """The store for the log: no password."""
        if self.kind == "sqlite":
            return f"sqlite:{self.path}"
        if self.kind == "redis":
            scheme = "rediss" if self.tls else "redis"
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"{scheme}://{host}:{self.port}/{self.db}"
        return self.kind


def parse_store(text: str, password: str | None = None) -> StoreSpec:
    """The :class:`StoreSpec` that ``text`` names; ``password`` is used when
    the URL carries none.  :class:`StoreSpecError` if it names none."""
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("none", "memory"):
        return StoreSpec(kind=lowered)  # type: ignore[arg-type]
    if lowered.startswith("sqlite:"):
        path = stripped[len("sqlite:") :]
        if not path.strip():
            raise StoreSpecError('state_store "sqlite:" names no file: sqlite:PATH')
        return StoreSpec(kind="sqlite", path=path)
    if lowered.startswith(("redis://", "rediss://")):
        return _redis(stripped, password)
    shown = stripped if "@" not in stripped else "(a text with a password)"
    raise StoreSpecError(f"state_store {shown!r} is none of {FORMS}")


def _redis(text: str, password: str | None) -> StoreSpec:
    parts = urlsplit(text)
    where = f"state_store {parts.scheme}://{parts.hostname or ''}"
    try:
        port = parts.port or REDIS_PORT
    except ValueError:
        raise StoreSpecError(f"{where}: the port is not a number 1-65535") from None
    if not parts.hostname:
        raise StoreSpecError(f"{where}: no host (redis://HOST[:PORT][/DB])")
    if parts.query or parts.fragment:
        raise StoreSpecError(f"{where}: a URL with ?… or #… is not understood")
    db_text = parts.path.strip("/") or "0"
    if not db_text.isdigit() or not db_text.isascii():
        raise StoreSpecError(f"{where}: the database must be a number (/0, /1, …)")
    return StoreSpec(
        kind="redis",
        host=parts.hostname,
        port=port,
        db=int(db_text),
        tls=parts.scheme.lower() == "rediss",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else password,
    )
