"""Time the CPU of one DeliverReq through the codec and the email processor,
in process, without network: decode, build the email, generate its bytes.

    python -m bench.hotpath [--count 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mm7tx.gateway.processors import AddressRules, EmailProcessor
from mm7tx.mail.wire import wire_bytes
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.testing import FakeMailSender
from mm7tx.transaction import Transaction


def per_call_ms(function: Callable[[], object], count: int) -> float:
    """The median of five batches, in milliseconds per call."""
    batches = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(count // 5):
            function()
        batches.append((time.perf_counter() - started) / (count // 5) * 1000)
    return sorted(batches)[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    image = m.ContentPart("image/jpeg", b"\xff\xd8" + os.urandom(30 * 1024), (), "p")
    request = m.DeliverReq(
        sender=m.Address("+15551234567"),
        recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
        subject="Photo",
        content=(image,),
    )
    ctype, body = codec.encode(m.Envelope("t", request))
    processor = EmailProcessor(
        FakeMailSender(),
        AddressRules("a@from.example", "from.example", "b@to.example", "to.example"),
    )
    transaction = Transaction("t", "/vasp/")
    decoded = codec.decode(ctype, body).message
    assert isinstance(decoded, m.DeliverReq)
    mail = processor.deliver_message(decoded, transaction).message
    answer = m.Envelope("t", m.DeliverRsp(m.Status(1000, "Success")))
    steps = {
        "decode the request": lambda: codec.decode(ctype, body),
        "build the email": lambda: processor.deliver_message(decoded, transaction),
        "generate its bytes": lambda: wire_bytes(mail),
        "encode the answer": lambda: codec.encode(answer),
    }
    total = 0.0
    print(f"DeliverReq with a 30 KB JPEG ({len(body)} bytes), ms per call:")
    for name, step in steps.items():
        ms = per_call_ms(step, args.count)
        total += ms
        print(f"  {name:<20} {ms:6.2f}")
    print(f"  {'total':<20} {total:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
