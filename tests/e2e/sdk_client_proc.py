"""A client process for tests that need clients to die hard (SIGKILL) rather than leave politely.

    python sdk_client_proc.py sdk URL PUBLISHERS TOKEN...   # one rtc.Room per token; the first
                                                            # PUBLISHERS of them publish a tone
    python sdk_client_proc.py raw URL TOKEN                 # raw /rtc WebSocket: reads the join and
                                                            # the subscriber offer, never answers
    python sdk_client_proc.py mesh URL TOKEN...             # one rtc.Room per token, each publishes a
                                                            # tone; reports who hears whom

In mesh mode the process prints a "STATUS {json}" line every half second: for each of its identities,
the remote identities it sees and those whose audio it has subscribed with a track, plus its
connection state and reconnect events.

Prints "READY ..." (flushed) once every room is connected and has tried to publish (how many
publications succeeded is on that line), or once the raw client holds its first subscriber offer,
then idles until it is killed. Anything that goes wrong is printed as "ERROR ..." and
the process exits 1.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from pathlib import Path


async def run_sdk(url: str, publishers: int, tokens: list[str]) -> None:
    from livekit import rtc

    sys.path.insert(0, str(Path(__file__).parent))
    from sdk_helpers import publish_synthetic  # type: ignore[import-not-found]

    rooms: list[rtc.Room] = []
    retries: list[str] = []
    for token in tokens:  # one at a time: a ramp, not a stampede
        for attempt in range(4):
            room = rtc.Room()
            try:
                await room.connect(url, token)
                break
            except rtc.ConnectError as exc:  # e.g. 503 while the room service thinks the node is down
                retries.append(str(exc))
                if attempt == 3:
                    raise
                await asyncio.sleep(2)
        rooms.append(room)
    keep, failed = [], []
    for room in rooms[:publishers]:
        try:
            keep.append(await publish_synthetic(room, video=False))
        except rtc.participant.PublishTrackError as exc:  # reported, not fatal: the room stays joined
            failed.append(str(exc))
    print(f"READY rooms={len(rooms)} published={len(keep)}/{publishers} connect_retries={len(retries)}",
          *failed, *retries[:2], flush=True)
    await asyncio.Event().wait()


async def run_mesh(url: str, tokens: list[str]) -> None:
    import json

    from livekit import rtc

    sys.path.insert(0, str(Path(__file__).parent))
    from sdk_helpers import publish_synthetic  # type: ignore[import-not-found]

    rooms: list[rtc.Room] = []
    events: list[str] = []
    for token in tokens:
        room = rtc.Room()
        for name in ("disconnected", "reconnecting", "reconnected"):
            room.on(name, lambda *args, room=room, name=name: events.append(
                f"{room.local_participant.identity if room.local_participant else '?'} {name}"))
        await room.connect(url, token)
        rooms.append(room)
    publishers = [await publish_synthetic(room, video=False) for room in rooms]  # noqa: F841 (kept alive)
    print("READY", flush=True)

    def heard(participant: rtc.RemoteParticipant) -> bool:
        audio = [p for p in participant.track_publications.values() if p.kind == rtc.TrackKind.KIND_AUDIO]
        return bool(audio) and all(p.subscribed and p.track is not None for p in audio)

    while True:
        status = {room.local_participant.identity: {
            "sees": sorted(p.identity for p in room.remote_participants.values()),
            "hears": sorted(p.identity for p in room.remote_participants.values() if heard(p)),
            "state": rtc.ConnectionState.Name(room.connection_state)} for room in rooms}
        print("STATUS", json.dumps({"rooms": status, "events": events}), flush=True)
        await asyncio.sleep(0.5)


async def run_raw(url: str, token: str) -> None:
    import websockets
    from livekit.protocol import rtc

    async with websockets.connect(f"{url}/rtc?access_token={token}&protocol=15&sdk=python&auto_subscribe=1",
                                  max_size=None) as ws:
        seen: list[str] = []
        while "offer" not in seen:
            response = rtc.SignalResponse.FromString(await asyncio.wait_for(ws.recv(), 20))
            seen.append(response.WhichOneof("message") or "")
        if seen[0] != "join":
            raise RuntimeError(f"first frame was {seen[0]!r}, not join")
        print("READY", ",".join(seen), flush=True)
        await asyncio.Event().wait()


def main() -> None:
    mode, url, *rest = sys.argv[1:]
    try:
        if mode == "sdk":
            asyncio.run(run_sdk(url, int(rest[0]), rest[1:]))
        elif mode == "mesh":
            asyncio.run(run_mesh(url, rest))
        elif mode == "raw":
            asyncio.run(run_raw(url, rest[0]))
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    except Exception:
        print("ERROR", traceback.format_exc().replace("\n", " | "), flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
