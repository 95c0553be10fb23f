"""What the benches share: free loopback ports and waiting for a listener."""

from __future__ import annotations

import socket
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def mm7tx_config(http_port: int, smtp_port: int, extra: str, accounts: str) -> str:
    """The mm7tx configuration the benches run: a VASP path, an MMSC path,
    plain SMTP to the loopback relay, plus ``extra`` mm7_serv options and
    ``accounts`` (VASP scopes)."""
    return f"""
HTTP_Listener {{ Listen "tcp:{http_port}:interface=127.0.0.1" {{ }} }}
mm7_serv {{
  mm7_server_default_email_from_domain = "from.example"
  mm7_server_default_email_to_domain = "to.example"
  mm7_server_default_email_from_address = "mm7@from.example"
  mm7_server_default_email_to_address = "mm7@to.example"
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_mmsc_uri_paths = ("/mm7/")
  smtp_relay = "tcp:127.0.0.1:{smtp_port}"
  smtp_starttls = off
{extra}
}}
{accounts}
"""
