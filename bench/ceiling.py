"""The ceiling: a bare twisted.web resource that reads the body and answers a
fixed 200.  What Twisted itself can do on this machine and Python.

    python bench/ceiling.py PORT [--no-form-parsing]

The ceiling is a bare resource on a default ``Site``;
``--no-form-parsing`` also turns off Twisted's search of every POST for an
HTML form (``parsePOSTFormSubmission=False``, as mm7tx does), which it does
by parsing Content-Type with the email package: the most Twisted can do.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import endpoints, reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

ANSWER = b"<ok/>"


class Ceiling(Resource):
    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        request.content.read()
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        return ANSWER


if __name__ == "__main__":
    port = int(sys.argv[1])
    site = Site(Ceiling(), parsePOSTFormSubmission="--no-form-parsing" not in sys.argv)
    site.log = lambda request: None  # type: ignore[method-assign]
    endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(site)
    reactor.run()  # type: ignore[attr-defined]
