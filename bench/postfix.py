"""A private Postfix instance on loopback, for the proofs with a real MTA
(tests/loopback/test_mail_in_postfix.py, bench/mbuni_live.py).

Run as root (Postfix's own user must reach its queue: make ``root`` a
folder it may enter, not under pytest's ``tmp_path``).  It takes mail on
``port`` and relays each domain of ``routes`` to ``127.0.0.1:<its port>``,
with no DNS and queue runs and backoff of 1-2 s; its log is ``maillog``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

MAIN_CF = """
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.test
mydomain = relay.test
mydestination =
local_transport = error:no local mail here
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
relay_domains = {domains}
# Each domain to its loopback port (mm7tx's ESMTP listener, a sink standing
# for a sender's mailbox), no MX lookups.
transport_maps = inline:{{ {routes} }}
smtp_host_lookup = native
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
biff = no
"""

MASTER_CF = """
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class Postfix:
    """A private Postfix in ``root``, taking mail on ``port`` and relaying
    each domain of ``routes`` to its loopback port."""

    def __init__(self, root: Path, port: int, routes: dict[str, int]) -> None:
        self.root, self.port = root, port
        self.conf = root / "conf"
        self.conf.mkdir(parents=True)
        (root / "queue").mkdir()
        (root / "data").mkdir()
        shutil.chown(root / "data", "postfix")
        self.conf.joinpath("main.cf").write_text(
            MAIN_CF.format(
                root=root,
                domains=", ".join(routes),
                routes=", ".join(
                    f"{domain}=smtp:[127.0.0.1]:{to}" for domain, to in routes.items()
                ),
            )
        )
        self.conf.joinpath("master.cf").write_text(MASTER_CF.format(port=port))
        self.log = root / "maillog"

    def start(self) -> subprocess.CompletedProcess[str]:
        """``postfix start``; what it said (its return code 0 once started)."""
        return subprocess.run(
            ["postfix", "-c", str(self.conf), "start"],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def stop(self) -> None:
        """``postfix stop``, then its master killed if it is still there
        after 5 s."""
        subprocess.run(
            ["postfix", "-c", str(self.conf), "stop"], capture_output=True, timeout=30
        )
        try:
            pid = int(
                (self.root / "queue" / "pid" / "master.pid").read_text().split()[0]
            )
        except (OSError, ValueError, IndexError):
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def flush(self) -> None:
        """Attempt the deferred mail now (``postqueue -f``)."""
        subprocess.run(
            ["postqueue", "-c", str(self.conf), "-f"], capture_output=True, timeout=30
        )

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""
