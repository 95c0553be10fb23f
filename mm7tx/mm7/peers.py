"""The MM7 peers we know: accounts (``VASP "name" { … }``) and the networks
they may post from.  Pure records: checking them is :mod:`mm7tx.http.auth`'s."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def network(text: str) -> Network | None:
    """An IP address or CIDR range, or None if ``text`` is neither."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def address_in(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


@dataclass(frozen=True, slots=True)
class Account:
    """A VASP account (``VASP "name" { … }``) and its limits."""

    name: str
    password: str | None = field(default=None, repr=False)
    networks: tuple[Network, ...] = ()
    max_message_size: int | None = None
    max_recipients: int | None = None
    rate: float | None = None
    delivery_report_url: str | None = None
    delivery_report_user: str | None = None
    delivery_report_password: str | None = field(default=None, repr=False)
    # The HTTP status of our faults to this peer once it is authenticated
    # (200 for peers that read a fault only there, such as Mbuni's mmsbox).
    fault_http_status: int = 500

    @property
    def ip_network(self) -> Network | None:
        """The network an IP-named account stands for."""
        return network(self.name)

    def allows(self, address: str) -> bool:
        """Whether a request from ``address`` may use this account."""
        allowed = self.networks
        if self.ip_network is not None:
            allowed = (*allowed, self.ip_network)
        return not allowed or address_in(address, allowed)
