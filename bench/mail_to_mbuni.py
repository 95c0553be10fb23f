"""Mail to MMS against Mbuni's ``mmsc``, an independent MM7 server: starts
``twistd -n mm7`` with an ESMTP listener whose upstream MMSC is Mbuni's
mmsc (through the stack's tap, so its bytes are kept), sends one mail
with ``smtplib`` and prints the replies, the mail's 250 with the MessageID
mmsc gave.  Exits non-zero if the mail was not taken.

Start Mbuni first (building it takes minutes; ../shared/peers/mbuni/):

    bash ../shared/peers/mbuni/build.sh /path/to/mbuni
    bash ../shared/peers/mbuni/stack.sh start
    python -m bench.mail_to_mbuni            # --mmsc http://127.0.0.1:23093/mm7
    bash ../shared/peers/mbuni/stack.sh stop

mmsc takes SubmitReq from the VASP ``mm7tx`` / ``vasppw`` (the stack's
conf/); its capture is in /tmp/peer-mbuni/run/tap-*/.
"""

from __future__ import annotations

import argparse
import signal
import smtplib
import subprocess
import sys
import tempfile
from email.message import EmailMessage
from pathlib import Path

from bench.common import free_port, wait_for_port

CONFIG = """
HTTP_Listener {{ Listen "tcp:{http}:interface=127.0.0.1" {{ }} }}
ESMTP_Listener {{ Listen "tcp:{smtp}:interface=127.0.0.1" {{ }} }}
mm7_serv {{
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_server_default_email_from_domain = "mms.example"
  mm7_server_default_email_to_domain = "mms.example"
  metrics_listen = "none"
  mms_domains = ("mms.example")
}}
MMSC "mbuni" {{
  submit_url = "{mmsc}"
  submit_user = "{user}"
  submit_password = "{password}"
  vasp_id = "{user}"
  sender_address = "7255"
}}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mmsc", default="http://127.0.0.1:23093/mm7")
    parser.add_argument("--user", default="mm7tx")
    parser.add_argument("--password", default="vasppw")
    parser.add_argument("--to", default="15551234567@mms.example")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mm7tx-mbuni-"))
    smtp, http = free_port(), free_port()
    conf = folder / "mm7tx.conf"
    conf.write_text(
        CONFIG.format(
            http=http,
            smtp=smtp,
            mmsc=args.mmsc,
            user=args.user,
            password=args.password,
        )
    )
    twistd = str(Path(sys.executable).parent / "twistd")
    with open(folder / "mm7tx.log", "wb") as log:
        mm7tx = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "mm7", "--config", str(conf)],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(smtp)
        mail = EmailMessage()
        mail["From"] = "ann@example.org"
        mail["To"] = args.to
        mail["Subject"] = "Mail to MMS through Mbuni"
        mail.set_content("Hello, phone: a mail that became an MMS at Mbuni's mmsc.")
        with smtplib.SMTP("127.0.0.1", smtp, timeout=90) as client:
            client.set_debuglevel(1)
            try:
                client.send_message(mail)
            except smtplib.SMTPException as e:
                print(f"not taken: {e}", file=sys.stderr)
                return 1
        return 0
    finally:
        mm7tx.send_signal(signal.SIGTERM)
        mm7tx.wait(30)
        print(f"mm7tx's log: {folder / 'mm7tx.log'}")


if __name__ == "__main__":
    sys.exit(main())
