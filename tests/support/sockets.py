"""Small socket helpers shared by relay tests and bench/relay.py."""

from __future__ import annotations

import socket


def loopback_udp() -> socket.socket:
    """A non-blocking UDP socket bound to an ephemeral loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock
