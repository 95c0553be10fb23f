"""The README's example: a processor subclass that changes the recipient mapping.

It lives in the package (not in tests/) so that an installed mm7tx can load
``etc/mm7tx.conf``, which binds it with
``processor = "mm7tx.examples.shortcode.ShortCodeMailboxes"``.
"""

from mm7tx.gateway.processors import EmailProcessor
from mm7tx.mm7.messages import Address


class ShortCodeMailboxes(EmailProcessor):
    """Mail for short code 7255 goes to the contest team; the rest as usual."""

    def recipient_address(self, address: Address | None) -> str:
        if address is not None and address.digits == "7255":
            return "contest@example.com"
        return super().recipient_address(address)
