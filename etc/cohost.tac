# mm7tx co-hosted in an application of your own: MM7 and a page of yours in
# one twisted.web site, with mm7tx's limits; stopping the application drains
# mm7tx's transactions and closes its mail sender.  README.md, "Co-hosting".
#
#   MM7TX_CONFIG=/etc/mm7tx/mm7tx.conf COHOST_LISTEN=tcp:8080 twistd -ny etc/cohost.tac
#
# MM7TX_CONFIG names the configuration (the embedded defaults without); its
# Listen and workers are left out: the site below listens on COHOST_LISTEN.
import os
from typing import cast

from twisted.application import service, strports
from twisted.internet import reactor
from twisted.web.resource import Resource

from mm7tx.app.cohost import load_config, mounted_service, site_for
from mm7tx.app.service import IMM7Reactor
from mm7tx.config import ConfigError


class Hello(Resource):
    """The application's own page, beside MM7."""

    isLeaf = True

    def render_GET(self, request):
        return b"hello\n"


try:
    config = load_config(os.environ)
    mm7 = mounted_service(config, cast(IMM7Reactor, reactor))
except ConfigError as e:
    raise SystemExit(f"cohost.tac: {e}") from None

root = mm7.resource  # the MM7 paths of the configuration (/vasp/, ...)
root.putChild(b"hello", Hello())  # yours beside them

application = service.Application("cohost")
mm7.setServiceParent(application)  # its stop drains and closes the sender
site = site_for(root, config, reactor)  # an MM7Site: the size and time limits
listen = os.environ.get("COHOST_LISTEN", "tcp:8080")
strports.service(listen, site).setServiceParent(application)
