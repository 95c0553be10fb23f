"""mm7tx: an MM7 (3GPP TS 23.140) gateway on Twisted."""

# First, before anything imports Twisted's endpoints (which take them out of
# the environment): the sockets systemd passed, for systemd: listeners.
from mm7tx import systemd as _systemd  # noqa: F401

__version__ = "0.1.0"
