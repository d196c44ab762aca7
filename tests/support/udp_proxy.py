"""A UDP forwarding proxy for one WAN link between two relays, able to blackhole it.

Two sockets: relay A is told its peer B is at `side_a`, relay B that A is at `side_b`. What
arrives on `side_a` leaves from `side_b` to B's real address and vice versa, so each relay sees
the other behind the proxy. `blackhole()` drops everything in both directions (a cut link: no
error, just silence); `heal()` forwards again. Runs in its own thread with real sockets.
"""

from __future__ import annotations

import select
import socket
import threading


class UdpLinkProxy:
    def __init__(self, a_real: tuple[str, int], b_real: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.a_real, self.b_real = a_real, b_real
        self._a = self._bind(host)  # A sends here, it reaches B
        self._b = self._bind(host)  # B sends here, it reaches A
        self.cut = False
        self.forwarded = 0
        self.dropped = 0
        self.last_to_b: bytes = b""  # the last datagram A sent towards B (tests replay it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="udp-link-proxy", daemon=True)

    @staticmethod
    def _bind(host: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind((host, 0))
        sock.setblocking(False)
        return sock

    @property
    def side_a(self) -> str:
        """The address relay A uses for B."""
        host, port = self._a.getsockname()
        return f"{host}:{port}"

    @property
    def side_b(self) -> str:
        host, port = self._b.getsockname()
        return f"{host}:{port}"

    def start(self) -> UdpLinkProxy:
        self._thread.start()
        return self

    def blackhole(self) -> None:
        self.cut = True

    def heal(self) -> None:
        self.cut = False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._a.close()
        self._b.close()

    def _run(self) -> None:
        routes = {self._a: (self._b, self.b_real), self._b: (self._a, self.a_real)}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(routes), [], [], 0.05)
            for sock in ready:
                out, target = routes[sock]
                while True:
                    try:
                        data = sock.recv(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    if self.cut:
                        self.dropped += 1
                        continue
                    if sock is self._a:
                        self.last_to_b = data
                    try:
                        out.sendto(data, target)
                        self.forwarded += 1
                    except OSError:
                        self.dropped += 1
