"""mm7tx in the web site of another application (README.md, Co-hosting).

:func:`mounted_service` is :func:`~mm7tx.service.build_service`'s service
without listeners of its own: its ``resource`` goes in your site, the service
in your application, whose stop drains mm7tx's transactions and closes its
sender.  :func:`site_for` is the site to serve it with, mm7tx's limits on;
:func:`resource` the zero-argument factory for
``twistd web --class=mm7tx.cohost.resource``, whose site is Twisted's own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import cast

from twisted.web.resource import Resource

from mm7tx.app.service import IMM7Reactor, MM7Service, build_service
from mm7tx.app.service import site_for as site_for  # the site to serve it with
from mm7tx.config import EMBEDDED, Config, ConfigError, load_file
from mm7tx.smtp.maildir import MaildirError

# The environment variable naming the configuration file.
CONFIG_VARIABLE = "MM7TX_CONFIG"


def load_config(environ: Mapping[str, str] = os.environ) -> Config:
    """The file ``MM7TX_CONFIG`` names, else the embedded defaults; a
    :class:`~mm7tx.config.ConfigError` (file, line, reason) for a mistake."""
    path = environ.get(CONFIG_VARIABLE)
    return load_file(path) if path else EMBEDDED


def mounted_service(config: Config, reactor: IMM7Reactor) -> MM7Service:
    """The service for ``config``, its listeners left out (``Listen``,
    ``workers``): serve its ``resource`` (the MM7 paths, reloads included)
    in your site, and add it to your application.  Stopping it takes no new
    transaction, drains those in flight and closes the sender (its SMTP
    sessions QUIT); ``metrics_listen``, if set, it serves itself."""
    return build_service(replace(config, listeners=()), reactor)


def resource(
    reactor: IMM7Reactor | None = None, environ: Mapping[str, str] = os.environ
) -> Resource:
    """For ``twistd web --class=mm7tx.cohost.resource``: the MM7 paths of
    the configuration ``MM7TX_CONFIG`` names (else the embedded defaults),
    to be the site's root.

    ``twistd web`` has no service of ours to stop, so the service starts
    with the reactor and stops before it shuts down (as ``twistd web
    --wsgi`` does its thread pool): the drain and the sender's close
    delay the shutdown.  Its site is a plain ``Site``: the resources
    refuse a body over ``mm7_max_request_size`` only once received, and
    warn so at the first request.  A mistake in the configuration stops
    ``twistd`` with one line.
    """
    if reactor is None:
        from twisted.internet import reactor as installed

        reactor = cast(IMM7Reactor, installed)
    try:
        service = mounted_service(load_config(environ), reactor)
    except (ConfigError, MaildirError) as e:
        # SystemExit, not UsageError: twistd prints its whole usage text
        # (fifty lines of twistd web's options) before a UsageError's line.
        raise SystemExit(str(e)) from None
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    return service.resource
