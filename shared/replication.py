"""Cross-DC event replication with JetStream sourcing (docs/multi-dc.md).

Each DC writes its own events to `EVENTS_<DC>` (subjects `events.<dc>.>` only) and keeps
`REPLICA_<DC>`, a stream without subjects that *sources* the `EVENTS_*` stream of every DC of the
mesh: the local one directly, remote ones through their JetStream domain's API
(`$JS.<dc>.API`, reachable over the leafnode links). The server tracks each source's position
in the origin stream, so a cut and a heal neither lose nor double events; `Nats-Msg-Id`
dedupe (`duplicate_window`) is a second net.

What the server does not do well is resume quickly: after a long cut it retries a dead source
with a 30 s request timeout and a back-off of up to 2 minutes. `SourceKicker` repairs that: it
polls the replica, and for every source that has been silent for `stale_after` seconds while its
DC answers again on `$JS.<dc>.API`, it removes the source and adds it back (the server resumes
from the source positions stored in the stream, so nothing is copied twice). Every update
uses the desired config from the settings, never the one read back, and is retried until it
succeeds: a failed second update would otherwise leave a source out for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Sequence

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, ExternalStream, RetentionPolicy, StorageType, StreamConfig, StreamSource

from shared.contracts.subjects import check_dc, jetstream_domain_api, stream_name
from shared.tasks import cancel_and_wait

log = logging.getLogger("meshrtc.replication")

DAY = 86_400.0
REPLICA_MAX_AGE = 7 * DAY  # as long as EVENTS_<DC>: an outage shorter than this loses nothing
REPLICA_DUPLICATE_WINDOW = 600.0  # seconds; catches a source that is re-added after a kick
_API_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError, OSError,
)


def replica_stream(dc: str) -> str:
    return stream_name("replica", dc)


def events_stream(dc: str) -> str:
    return stream_name("events", dc)


def replica_sources(dc: str, datacenters: Sequence[str]) -> list[StreamSource]:
    """One source per DC of the mesh: the own EVENTS stream locally, the others via their domain."""
    mesh = list(dict.fromkeys([*datacenters, dc] if dc not in datacenters else datacenters))
    return [
        StreamSource(name=events_stream(other),
                     external=None if other == dc else ExternalStream(api=jetstream_domain_api(other)))
        for other in mesh
    ]


def replica_config(dc: str, datacenters: Sequence[str]) -> StreamConfig:
    return StreamConfig(
        name=replica_stream(dc),
        description=f"every DC's events as seen from {dc} (sources EVENTS_* of the mesh)",
        sources=replica_sources(dc, datacenters),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=REPLICA_MAX_AGE,
        duplicate_window=REPLICA_DUPLICATE_WINDOW,
        discard=DiscardPolicy.OLD,
        num_replicas=1,
    )


def _source_key(source: StreamSource) -> tuple[str, str]:
    return source.name, source.external.api if source.external else ""


def sources_differ(current: StreamConfig, desired: StreamConfig) -> bool:
    have = sorted(_source_key(s) for s in current.sources or [])
    want = sorted(_source_key(s) for s in desired.sources or [])
    return have != want


async def ensure_replica(js: JetStreamContext, dc: str, datacenters: Sequence[str]) -> str:
    """Create `REPLICA_<dc>` or bring its sources in line with `datacenters`: created|updated|unchanged."""
    desired = replica_config(dc, datacenters)
    try:
        info = await js.stream_info(desired.name or "")
    except nats.js.errors.NotFoundError:
        await js.add_stream(desired)
        log.info("created stream %s sourcing %s", desired.name, [s.name for s in desired.sources or []])
        return "created"
    if not sources_differ(info.config, desired) and info.config.max_age == desired.max_age:
        return "unchanged"
    log.info("updating stream %s: sources %s", desired.name, [s.name for s in desired.sources or []])
    await js.update_stream(desired)
    return "updated"


def _active_seconds(active: int | None) -> float | None:
    """The server reports how long ago a source was last active in nanoseconds; -1 or None: never."""
    if active is None or active < 0:
        return None
    return active / 1e9


@dataclasses.dataclass
class KickStats:
    checks: int = 0
    kicks: int = 0  # sources removed and re-added
    repairs: int = 0  # source lists put back to the desired one
    failures: int = 0  # stream updates that failed (retried)
    last_kick: dict[str, float] = dataclasses.field(default_factory=dict)  # source name -> loop time


class SourceKicker:
    """Keeps `REPLICA_<dc>` sourcing every DC and makes a healed DC catch up in seconds.

    Every `interval` seconds: repair the source list if it differs from the desired one; then
    for each remote source silent for more than `stale_after` s, ask its domain's JetStream API
    whether it answers; if it does, the link is back but the server's source consumer is still
    waiting out its back-off, so remove the source and add it again. A source is kicked at most
    once per `min_kick_gap` seconds, so a slow resume is not interrupted by the next kick.
    """

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        dc: str,
        datacenters: Sequence[str],
        *,
        interval: float = 1.0,
        stale_after: float = 3.0,
        min_kick_gap: float = 5.0,
        probe_timeout: float = 1.0,
    ) -> None:
        self._nc = nc
        self._js = js
        self.dc = check_dc(dc)
        self.datacenters = list(datacenters)
        self.desired = replica_config(dc, datacenters)
        self.interval = interval
        self.stale_after = stale_after
        self.min_kick_gap = min_kick_gap
        self.probe_timeout = probe_timeout
        self.stats = KickStats()
        self._unseen_since: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> SourceKicker:
        self._task = asyncio.create_task(self._run(), name=f"replica-kicker-{self.dc}")
        return self

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except _API_ERRORS as exc:
                log.debug("replica check failed (%s: %s); next round", type(exc).__name__, exc)
            await asyncio.sleep(self.interval)

    async def check(self) -> list[str]:
        """One round; returns the names of the sources it kicked."""
        self.stats.checks += 1
        info = await self._js.stream_info(self.desired.name or "")
        if sources_differ(info.config, self.desired):
            log.warning("%s sources %s differ from the desired %s: repairing", self.desired.name,
                        [s.name for s in info.config.sources or []], [s.name for s in self.desired.sources or []])
            await self._update_until_done(self.desired)
            self.stats.repairs += 1
            return []
        now = asyncio.get_running_loop().time()
        stale = []
        for source in info.sources or []:
            origin = self._origin_dc(source.name)
            if origin is None or origin == self.dc:
                continue
            idle = _active_seconds(source.active)
            if idle is not None and idle <= self.stale_after:
                self._unseen_since.pop(source.name, None)
                continue
            if idle is None:  # never active yet: new sources get `stale_after` s to start
                since = self._unseen_since.setdefault(source.name, now)
                if now - since < self.stale_after:
                    continue
            if now - self.stats.last_kick.get(source.name, -1e9) < self.min_kick_gap:
                continue
            if await self._domain_answers(origin):
                stale.append(source.name)
        if stale:
            await self.kick(stale)
        return stale

    async def kick(self, names: Sequence[str]) -> None:
        """Remove the sources `names` and add them back (both updates retried until they succeed)."""
        log.info("%s: re-adding stale source(s) %s so they resume now", self.desired.name, list(names))
        without = dataclasses.replace(self.desired, sources=[s for s in self.desired.sources or []
                                                             if s.name not in names])
        await self._update_until_done(without)
        await self._update_until_done(self.desired)
        now = asyncio.get_running_loop().time()
        for name in names:
            self.stats.last_kick[name] = now
        self.stats.kicks += len(names)

    async def _update_until_done(self, config: StreamConfig) -> None:
        delay = 0.1
        while True:
            try:
                await self._js.update_stream(config)
                return
            except _API_ERRORS as exc:
                self.stats.failures += 1
                log.warning("update of %s failed (%s: %s); retrying", config.name, type(exc).__name__, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _domain_answers(self, dc: str) -> bool:
        try:
            reply = await self._nc.request(f"{jetstream_domain_api(dc)}.INFO", b"", timeout=self.probe_timeout)
        except _API_ERRORS:
            return False
        with contextlib.suppress(ValueError):
            return "error" not in json.loads(reply.data)
        return False

    def _origin_dc(self, source_name: str) -> str | None:
        for dc in self.datacenters:
            if events_stream(dc) == source_name:
                return dc
        return None
