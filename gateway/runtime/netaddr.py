"""Is an address inside a list of networks? (trusted relays, trusted proxies)."""
from __future__ import annotations

import ipaddress
from typing import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def ip_in_networks(ip: str, networks: Iterable[Network]) -> bool:
    """True when ``ip`` (IPv4-mapped IPv6 counts as IPv4) lies in one of ``networks``; False for junk."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in networks)
