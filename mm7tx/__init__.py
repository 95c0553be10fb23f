"""mm7tx: an MM7 (3GPP TS 23.140) gateway on Twisted."""

__version__ = "0.1.0"
