"""Process-wide ICE settings for aiortc/aioice.

aioice has no configuration hooks for the two things an SFU needs:

* which local addresses become host candidates -- it enumerates every interface and
  deliberately skips 127.0.0.1, so a loopback-only dev setup gets no usable candidate;
* which UDP ports are used -- every ``Connection`` binds an ephemeral port.

:func:`configure_ice` installs two process-wide patches, once, and swaps the settings they read:

* ``aioice.ice.get_host_addresses`` returns the configured address list;
* ``aioice.ice.Connection.get_component_candidates`` binds each host candidate's socket to a
  free port inside ``[port_min, port_max]`` (when a range is configured) and raises
  :class:`PortRangeExhaustedError` when every port of the range is taken.

Server-reflexive and relayed candidates keep working: STUN is queried from the sockets bound
here and TURN allocation is delegated to aioice's own implementation.

:func:`rtc_configuration` returns an ``RTCConfiguration`` with ``iceServers=[]`` (aiortc would
otherwise add ``stun:stun.l.google.com:19302``) and max-bundle, so each PeerConnection owns
exactly one ICE transport and one UDP socket per host address.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import itertools
import logging
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aioice.ice as aioice_ice
from aioice import Connection
from aioice import turn as aioice_turn
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcconfiguration import RTCBundlePolicy

from shared.errors import MediaError

from . import aiortc_compat

logger = logging.getLogger(__name__)

__all__ = [
    "IceConfig",
    "PortRangeExhaustedError",
    "configure",
    "configure_ice",
    "current_ice_config",
    "ice_config_from_settings",
    "reset_ice",
    "rtc_configuration",
]


class PortRangeExhaustedError(MediaError, OSError):
    """No free UDP port is left in the configured RTC port range."""

    def __init__(self, address: str, port_min: int, port_max: int) -> None:
        super().__init__(
            errno.EADDRINUSE,
            f"no free UDP port for {address} in RTC port range {port_min}-{port_max} "
            f"({port_max - port_min + 1} ports, all in use); widen MESHRTC_RTC_PORT_RANGE",
        )
        self.address = address
        self.port_min = port_min
        self.port_max = port_max


@dataclass(frozen=True)
class IceConfig:
    """ICE gathering settings.

    ``host_addresses``: the local IPs that become host candidates, e.g. ``("127.0.0.1",)`` in dev
    or the node's advertised IPs in production. ``None`` keeps aioice's own interface
    enumeration (all non-loopback addresses).

    ``port_min``/``port_max``: inclusive UDP port range for host candidates; ``0``/``0`` means
    ephemeral ports.
    """

    host_addresses: tuple[str, ...] | None = None
    port_min: int = 0
    port_max: int = 0

    def __post_init__(self) -> None:
        if self.host_addresses is not None:
            object.__setattr__(self, "host_addresses", tuple(self.host_addresses))
            for address in self.host_addresses:
                ipaddress.ip_address(address)  # raises ValueError on garbage
        if (self.port_min, self.port_max) != (0, 0):
            if not (1 <= self.port_min <= self.port_max <= 65535):
                raise ValueError(f"invalid RTC port range {self.port_min}-{self.port_max}")

    @property
    def has_port_range(self) -> bool:
        return self.port_max > 0


def ice_config_from_settings(settings: Any) -> IceConfig:
    """Build an :class:`IceConfig` from ``shared.config.Settings``.

    Uses ``advertise_ips`` as host addresses; in dev mode without advertised IPs, 127.0.0.1.
    """
    addresses: tuple[str, ...] | None = tuple(getattr(settings, "advertise_ips", ()) or ()) or None
    if addresses is None and getattr(settings, "dev", False):
        addresses = ("127.0.0.1",)
    return IceConfig(
        host_addresses=addresses,
        port_min=int(getattr(settings, "rtc_port_min", 0) or 0),
        port_max=int(getattr(settings, "rtc_port_max", 0) or 0),
    )


def rtc_configuration(ice_servers: Sequence[RTCIceServer] = ()) -> RTCConfiguration:
    """An ``RTCConfiguration`` that never contacts a public STUN server (``iceServers=[]``
    unless servers are given explicitly) and bundles everything on one transport."""
    return RTCConfiguration(iceServers=list(ice_servers), bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


# --------------------------------------------------------------------------- patch state

_lock = threading.Lock()
_config = IceConfig()
_installed = False
_port_cursor = itertools.count()


def current_ice_config() -> IceConfig:
    return _config


def configure_ice(config: IceConfig) -> None:
    """Apply ``config`` process-wide. Patches are installed on the first call; later calls only
    swap the settings (they affect Connections that gather afterwards)."""
    global _config, _installed
    with _lock:
        _config = config
        if not _installed:
            aiortc_compat.patch_ice_gathering(_patched_get_host_addresses, _patched_get_component_candidates)
            _installed = True


def configure(host_addresses: Sequence[str] | None = None, port_min: int = 0, port_max: int = 0) -> IceConfig:
    """Keyword form of :func:`configure_ice`; returns the applied config."""
    config = IceConfig(
        host_addresses=tuple(host_addresses) if host_addresses else None, port_min=port_min, port_max=port_max
    )
    configure_ice(config)
    return config


def reset_ice() -> None:
    """Restore aioice's original behaviour (tests)."""
    global _config, _installed
    with _lock:
        _config = IceConfig()
        if _installed:
            aiortc_compat.restore_ice_gathering()
            _installed = False


def _patched_get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    config = _config
    if config.host_addresses is None:
        return aiortc_compat.original_get_host_addresses(use_ipv4, use_ipv6)
    result = []
    for address in config.host_addresses:
        version = ipaddress.ip_address(address).version
        if (version == 4 and use_ipv4) or (version == 6 and use_ipv6):
            result.append(address)
    return result


def _candidate_ports(config: IceConfig) -> Iterable[int]:
    """Every port of the range once, starting at a rotating offset so consecutive connections
    do not immediately reuse a port that was just released."""
    size = config.port_max - config.port_min + 1
    start = next(_port_cursor) % size
    for i in range(size):
        yield config.port_min + (start + i) % size


def _bind_in_range(address: str, config: IceConfig) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    last_error: OSError | None = None
    for port in _candidate_ports(config):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # No SO_REUSEADDR: on Linux it would let two UDP sockets share a port.
            sock.bind((address, port))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                last_error = exc
                continue
            raise
        return sock
    raise PortRangeExhaustedError(address, config.port_min, config.port_max) from last_error


async def _patched_get_component_candidates(
    self: Connection,
    component: int,
    addresses: list[str],
    timeout: int = 5,
) -> list[Candidate]:
    config = _config
    if not config.has_port_range:
        return await aiortc_compat.original_get_component_candidates(self, component, addresses, timeout)

    loop = asyncio.get_running_loop()
    host_protocols: list[aioice_ice.StunProtocol] = []
    candidates: list[Candidate] = []
    try:
        for address in addresses:
            sock = _bind_in_range(address, config)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice_turn.UDP_SOCKET_BUFFER_SIZE)
                _, protocol = await loop.create_datagram_endpoint(lambda: aioice_ice.StunProtocol(self), sock=sock)
            except BaseException:
                sock.close()
                raise
            host_protocols.append(protocol)
            host, port = protocol.transport.get_extra_info("sockname")[:2]
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=host,
                port=port,
                type="host",
            )
            candidates.append(protocol.local_candidate)
    except BaseException:
        for protocol in host_protocols:
            protocol.transport.close()
        raise
    aiortc_compat.add_host_protocols(self, host_protocols)

    # Server-reflexive candidates from the sockets bound above (IPv4 only, like aioice).
    srflx_tasks = []
    if self.stun_server:
        for protocol in host_protocols:
            if ipaddress.ip_address(protocol.local_candidate.host).version == 4:
                srflx_tasks.append(
                    asyncio.ensure_future(aioice_ice.server_reflexive_candidate(protocol, self.stun_server))
                )
    # Relayed candidates: aioice's own implementation, which with no addresses does only TURN.
    relay_task = (
        asyncio.ensure_future(aiortc_compat.original_get_component_candidates(self, component, [], timeout))
        if self.turn_server
        else None
    )
    if srflx_tasks:
        done, pending = await asyncio.wait(srflx_tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in done:
            if not task.cancelled() and task.exception() is None:
                candidate, _ = task.result()
                candidates.append(candidate)
    if relay_task is not None:
        candidates += await relay_task
    return candidates
