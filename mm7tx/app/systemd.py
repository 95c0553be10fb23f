"""Listening sockets passed by systemd, for ``systemd:`` listeners.

Twisted's ``systemd:`` endpoint reads ``LISTEN_PID``, ``LISTEN_FDS`` and
``LISTEN_FDNAMES`` once, when ``twisted.internet.endpoints`` is imported,
and takes the first two out of the environment.  Without ``LISTEN_FDNAMES``
it ignores every passed socket, though sd_listen_fds(3) makes the names
optional: ``systemd-socket-activate`` without ``--fdname`` sets none, and
``systemd:domain=INET:index=0`` then ends in an ``IndexError``.  mm7tx reads
the same variables (names optional) as it is imported, which is before it
imports Twisted's endpoints, and :func:`adopt` gives them to Twisted's
parser when that one found nothing.

Upstream report draft (twisted/twisted): "systemd: endpoints ignore the
passed sockets when LISTEN_FDNAMES is unset".  ``ListenFDs.fromEnvironment``
(twisted/python/systemd.py) returns no descriptor when ``LISTEN_FDNAMES`` is
missing (``len(names) != len(descriptors)``), after deleting ``LISTEN_PID``
and ``LISTEN_FDS``; sd_listen_fds(3) says the names "may" be there and
systemd-socket-activate(1) sets them only with ``--fdname``.  Reproducer:
``systemd-socket-activate -l 127.0.0.1:8080 twistd -n web --listen
systemd:domain=INET:index=0``, then ``curl http://127.0.0.1:8080/``:
``IndexError: list index out of range``.  Fix: names default to
``("unknown",) * len(descriptors)``, as sd_listen_fds_with_names does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from twisted.python.systemd import ListenFDs

# The first passed descriptor (SD_LISTEN_FDS_START).
_START = 3


def passed_sockets(environ: Mapping[str, str], pid: int) -> ListenFDs:
    """The sockets systemd passed to process ``pid``, by ``environ``; their
    names are "unknown" when ``LISTEN_FDNAMES`` does not name them all."""
    if environ.get("LISTEN_PID") != str(pid):
        return ListenFDs([], ())
    try:
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return ListenFDs([], ())
    listed = environ.get("LISTEN_FDNAMES")
    names = tuple(listed.split(":")) if listed else ()
    if len(names) != count:
        names = ("unknown",) * count
    return ListenFDs(list(range(_START, _START + count)), names)


# Read as mm7tx is imported: Twisted's endpoints module, imported later,
# takes LISTEN_PID and LISTEN_FDS out of the environment.
PASSED = passed_sockets(os.environ, os.getpid())


def adopt(passed: ListenFDs = PASSED) -> None:
    """Let ``systemd:`` endpoint strings find the ``passed`` sockets, if
    Twisted's own reading of the environment found none."""
    from twisted.internet.endpoints import _SystemdParser

    if passed.inheritedDescriptors() and not (
        _SystemdParser._sddaemon.inheritedDescriptors()
    ):
        _SystemdParser._sddaemon = passed
