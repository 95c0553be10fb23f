"""An SMTP sink with a process per session, for bench/stall.py.

    python bench/fork_sink.py --port 2525

Takes every message (250) and keeps nothing.  Each session runs in a
process of its own, so that a session receiving a message of tens of
megabytes never delays the answer to another (Postfix's ``smtp-sink``, one
process for all, answered a small message up to 160 ms late while another
session sent it 65 MB messages): what bench/stall.py measures is then the
gateway's wait, not the relay's.
"""

from __future__ import annotations

import argparse
import socketserver

REPLIES = {
    b"HELO": b"250 sink\r\n",
    b"EHLO": b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
    b"MAIL": b"250 2.1.0 Ok\r\n",
    b"RCPT": b"250 2.1.5 Ok\r\n",
    b"RSET": b"250 2.0.0 Ok\r\n",
    b"NOOP": b"250 2.0.0 Ok\r\n",
    b"DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    b"QUIT": b"221 2.0.0 Bye\r\n",
}


class Session(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        sock.sendall(b"220 sink ESMTP\r\n")
        buffer = b""
        in_data = False
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return
            buffer += chunk
            out = []
            while True:
                if in_data:
                    # The end of the data (a CRLF was put before its start,
                    # so that an empty message ends the same way); what
                    # could begin an end is kept for the next chunk.
                    end = buffer.find(b"\r\n.\r\n")
                    if end < 0:
                        buffer = buffer[-4:]
                        break
                    buffer = buffer[end + 5 :]
                    in_data = False
                    out.append(b"250 2.0.0 Ok: queued\r\n")
                    continue
                line_end = buffer.find(b"\r\n")
                if line_end < 0:
                    break
                line, buffer = buffer[:line_end], buffer[line_end + 2 :]
                verb = line[:4].upper()
                out.append(REPLIES.get(verb, b"502 5.5.2 Not implemented\r\n"))
                if verb == b"DATA":
                    in_data = True
                    buffer = b"\r\n" + buffer
                if verb == b"QUIT":
                    sock.sendall(b"".join(out))
                    return
            if out:
                sock.sendall(b"".join(out))


class Server(socketserver.ForkingTCPServer):
    allow_reuse_address = True
    request_queue_size = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with Server(("127.0.0.1", args.port), Session) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
