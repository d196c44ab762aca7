"""Several datacenters on loopback for integration tests: one nats-server per DC, each its own
JetStream domain (`shared.natsconfig`), spokes joined to the hub (the first DC) through a
`LinkProxy` each, so a test can cut and heal one spoke's link."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from shared.natsconfig import dc_nats_config
from shared.natsserver import NatsServer, free_port
from tests.support.linkproxy import LinkProxy


@dataclass
class Datacenter:
    name: str
    server: NatsServer
    proxy: LinkProxy | None = None  # in front of the hub, for this spoke's leafnode link

    @property
    def url(self) -> str:
        return self.server.url


@dataclass
class Mesh:
    dcs: dict[str, Datacenter] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.dcs)

    def __getitem__(self, name: str) -> Datacenter:
        return self.dcs[name]

    def cut(self, name: str) -> None:
        proxy = self.dcs[name].proxy
        assert proxy is not None, f"{name} is the hub: cut a spoke"
        proxy.blackhole()

    def heal(self, name: str) -> None:
        proxy = self.dcs[name].proxy
        assert proxy is not None
        proxy.heal()


@contextlib.asynccontextmanager
async def run_mesh(root: Path, names: list[str], *, ping_interval: str = "1s", ping_max: int = 2,
                   log_dir: Path | None = None) -> AsyncIterator[Mesh]:
    """Start len(names) DCs (the first is the hub); stop them all (by process) on exit."""
    mesh = Mesh()
    hub_leaf = free_port()
    try:
        for index, name in enumerate(names):
            store = root / name
            store.mkdir(parents=True, exist_ok=True)
            port = free_port()
            proxy = None
            if index > 0:
                proxy = await LinkProxy("127.0.0.1", hub_leaf).start()
            text = dc_nats_config(
                name, host="127.0.0.1", port=port, store_dir=str(store / "jetstream"),
                leaf_port=hub_leaf if index == 0 else None, leaf_no_advertise=True,
                hub_leaf_url=f"nats-leaf://{proxy.address}" if proxy else None,
                ping_interval=ping_interval, ping_max=ping_max)
            server = NatsServer(host="127.0.0.1", port=port, store_dir=str(store), config_text=text,
                                log_file=str(log_dir / f"{name}.log") if log_dir else None)
            mesh.dcs[name] = Datacenter(name, server.start(), proxy)
        yield mesh
    finally:
        for dc in mesh.dcs.values():
            if dc.proxy is not None:
                await dc.proxy.stop()
            dc.server.stop()
