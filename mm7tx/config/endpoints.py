"""Endpoint strings, checked without listening or connecting: the
listeners (Twisted server endpoints, Momentum's ``:8080`` forms) and the
SMTP relay (a client endpoint or ``maildir:PATH``)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from mm7tx.mm7.peers import network


def normalise_endpoint(text: str) -> str:
    """Momentum's ``:8080`` / ``*:8080`` / ``1.2.3.4:8080`` as a Twisted endpoint."""
    match = re.fullmatch(r"(\*|[\d.]+|\[[0-9a-fA-F:]+\])?:(\d+)", text.strip())
    if match is None:
        return text
    host, port = match.groups()
    if host in (None, "*"):
        return f"tcp:{port}"
    return f"tcp:{port}:interface={host.strip('[]').replace(':', chr(92) + ':')}"


# Endpoint types whose port we check ourselves: Twisted takes tcp:99999.
_SERVER_PORT_KINDS = ("tcp", "tcp6", "ssl")
_CLIENT_PORT_KINDS = ("tcp", "tls", "ssl")
# ssl: server arguments naming files that must exist and be readable.
_SERVER_FILES = ("privateKey", "certKey", "extraCertChain", "dhParameters")


def listens_beyond_loopback(endpoint: str) -> bool:
    """Whether a listener may take connections from other hosts: anything but
    a UNIX socket or a TCP listener on a loopback interface."""
    kind, _, keywords = inner_endpoint(endpoint)
    if kind == "unix":
        return False
    if kind in _SERVER_PORT_KINDS:
        net = network(keywords.get("interface", ""))
        return net is None or not net.is_loopback
    return True


def inner_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """The type, positional and keyword arguments of the endpoint a listener
    string names under any ``haproxy:`` (PROXY protocol over another
    endpoint), as :func:`endpoint_fields` splits them."""
    kind, positional, keywords = endpoint_fields(description)
    inner = description
    while kind == "haproxy" and ":" in inner:
        inner = inner.split(":", 1)[1]
        kind, positional, keywords = endpoint_fields(inner)
    return kind, positional, keywords


def endpoint_fields(description: str) -> tuple[str, list[str], dict[str, str]]:
    """An endpoint string's type, positional and keyword arguments, split as
    Twisted's endpoint parser does (``\\:`` is an escaped colon)."""
    kind, *rest = re.split(r"(?<!\\):", description)
    positional: list[str] = []
    keywords: dict[str, str] = {}
    for part in rest:
        part = part.replace("\\:", ":")
        name, equals, value = part.partition("=")
        if equals:
            keywords[name] = value
        else:
            positional.append(part)
    return kind.lower(), positional, keywords


def _check_port(text: str | None) -> None:
    if text is None:
        return
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} is not a number from 0 to 65535")


def check_listen(description: str) -> str:
    """A listener, as Twisted's server endpoint string (Momentum's ``:8080``
    forms translated), checked without listening; ``ValueError`` says why not."""
    from twisted.internet.endpoints import serverFromString

    endpoint = normalise_endpoint(description)
    kind, positional, keywords = inner_endpoint(endpoint)
    if kind in _SERVER_PORT_KINDS:
        _check_port(keywords.get("port", positional[0] if positional else None))
    for name in _SERVER_FILES:
        path = keywords.get(name)
        if path is not None and not os.access(path, os.R_OK):
            problem = "it does not exist" if not os.path.exists(path) else "no access"
            raise ValueError(f"cannot read the {name} file {path!r}: {problem}")
    try:
        _parse(serverFromString, endpoint)
    except ValueError as e:
        if str(e).startswith("Unknown endpoint type"):
            raise ValueError(
                f"{description!r} is not a server endpoint (unknown type "
                f"{kind!r}); write tcp:8080, tcp:8080:interface=127.0.0.1, "
                "ssl:8443:privateKey=key.pem:certKey=cert.pem or :8080"
            ) from None
        raise ValueError(f"{description!r} is not a usable endpoint: {e}") from None
    except (IndexError, KeyError) as e:
        if kind != "systemd":
            raise
        which = "index (LISTEN_FDS)" if isinstance(e, IndexError) else "name"
        raise ValueError(
            f"{description!r}: systemd passed no socket with that {which}; "
            "start mm7tx from a .socket unit or with systemd-socket-activate"
        ) from None
    except Exception as e:
        raise ValueError(
            f"{description!r} is not a usable endpoint: {type(e).__name__}: {e}"
        ) from None
    return endpoint


def check_relay(description: str) -> str:
    """``smtp_relay``: ``maildir:PATH`` or a Twisted client endpoint string,
    checked without connecting; ``ValueError`` says why not."""
    from twisted.internet.endpoints import clientFromString

    if description.startswith("maildir:"):
        if not description[len("maildir:") :]:
            raise ValueError("maildir: needs a folder, as in maildir:/var/spool/mm7")
        return description
    if "://" in description:
        raise ValueError(
            f"{description!r} is a URL, not an endpoint; write tcp:HOST:PORT, "
            "tls:HOST:PORT (implicit TLS) or maildir:PATH"
        )
    kind, positional, keywords = endpoint_fields(description)
    if kind in _CLIENT_PORT_KINDS:
        _check_port(keywords.get("port", positional[1] if positional[1:] else None))
    try:
        _parse(clientFromString, description)
    except Exception as e:
        reason = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        raise ValueError(
            f"{description!r} is not a client endpoint ({reason}); write "
            "tcp:HOST:PORT, tls:HOST:PORT (implicit TLS) or maildir:PATH"
        ) from None
    return description


def _parse(parser: Callable[[Any, str], object], description: str) -> None:
    """Run Twisted's endpoint ``parser`` (``serverFromString`` or
    ``clientFromString``) over ``description``, for its errors: an unknown
    type, a bad argument, an ssl: key that does not load, a systemd: socket
    that was not passed.

    Twisted parses an endpoint string only while it builds the endpoint,
    which takes a reactor, and offers no public parser alone; a
    ``MemoryReactor`` is one that never listens or connects, and building an
    endpoint does neither, so the check stays free of the global reactor.
    """
    from twisted.internet.testing import MemoryReactor

    parser(MemoryReactor(), description)
