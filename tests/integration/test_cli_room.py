"""`meshrtc room` and `meshrtc participant` against a running `meshrtc dev`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshrtc import cli
from shared.natsserver import free_port
from tests.e2e.conftest import DevServer, start_dev_server, stop_dev_server

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore:.*HMAC key.*")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    tmp = tmp_path_factory.mktemp("cli-dev")
    for attempt in range(3):  # a busy machine may not bring it up within start_dev_server's 60 s
        try:
            dev = start_dev_server(tmp / f"try{attempt}" if attempt else tmp)
            break
        except RuntimeError:
            if attempt == 2:
                raise
            (tmp / f"try{attempt + 1}").mkdir()
    try:
        yield dev
    finally:
        stop_dev_server(dev)


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, server: DevServer) -> None:
    for name in ("MESHRTC_API_KEYS", "MESHRTC_API_KEY", "MESHRTC_API_SECRET", "LIVEKIT_URL", "LIVEKIT_API_KEY",
                 "LIVEKIT_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MESHRTC_URL", server.http_url)  # devkey/secret: the defaults


def meshrtc(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_room_create_list_delete(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = meshrtc(capsys, "room", "create", "cli-room", "--empty-timeout", "600", "--max-participants",
                             "7", "--metadata", "hello")
    assert code == 0, err
    assert out.startswith("room cli-room (RM_")

    code, out, _ = meshrtc(capsys, "room", "create", "cli-room", "--json")  # idempotent: the same room
    assert code == 0
    created = json.loads(out)
    assert created["name"] == "cli-room" and created["maxParticipants"] == 7 and created["metadata"] == "hello"
    assert created["emptyTimeout"] == 600

    code, out, _ = meshrtc(capsys, "room", "list")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "SID", "PARTICIPANTS", "PUBLISHERS", "CREATED"]
    assert any(row.split()[:4] == ["cli-room", created["sid"], "0", "0"] for row in rows), out

    code, out, _ = meshrtc(capsys, "room", "list", "--json", "cli-room")
    assert [r["sid"] for r in json.loads(out)] == [created["sid"]]

    code, out, err = meshrtc(capsys, "participant", "list", "cli-room")
    assert (code, out.strip()) == (0, "nobody in room cli-room"), err

    code, out, err = meshrtc(capsys, "room", "delete", "cli-room")
    assert (code, out.strip()) == (0, "deleted room cli-room"), err
    code, out, _ = meshrtc(capsys, "room", "list", "--json", "cli-room")
    assert json.loads(out) == []

    code, out, err = meshrtc(capsys, "room", "delete", "cli-room")
    assert (code, out, err.strip()) == (1, "", "meshrtc: room cli-room does not exist")


def test_errors_are_one_line(capsys: pytest.CaptureFixture[str], server: DevServer) -> None:
    code, _, err = meshrtc(capsys, "participant", "list", "no-such-room")
    assert (code, err.strip()) == (1, "meshrtc: room no-such-room does not exist")

    code, _, err = meshrtc(capsys, "participant", "remove", "no-such-room", "alice")
    assert (code, err.strip()) == (1, "meshrtc: room no-such-room does not exist")

    code, _, err = meshrtc(capsys, "room", "list", "--api-key", "devkey", "--api-secret", "wrong")
    assert code == 1 and err.count("\n") == 1 and "refused API key 'devkey'" in err, err

    dead = f"http://127.0.0.1:{free_port()}"
    code, _, err = meshrtc(capsys, "room", "list", "--url", dead)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"meshrtc: cannot reach the server at {dead} (connection refused)"), err

    code, _, err = meshrtc(capsys, "room", "list", "--api-secret", "x")
    assert (code, err.strip()) == (2, "meshrtc: --api-secret needs --api-key")


async def test_participant_list_mute_remove(capsys: pytest.CaptureFixture[str], server: DevServer) -> None:
    from livekit import rtc

    from tests.e2e.sdk_helpers import publish_synthetic, wait_for

    async def run(*argv: str) -> tuple[int, str, str]:
        return await asyncio.to_thread(meshrtc, capsys, *argv)

    alice = rtc.Room()
    gone: list[object] = []
    alice.on("disconnected", lambda reason: gone.append(reason))
    publisher = None
    try:
        await alice.connect(server.url, server.token("alice", "cli-people"))
        publisher = await publish_synthetic(alice, video=False)
        [audio] = list(alice.local_participant.track_publications.values())

        async def listed() -> list[dict[str, object]]:
            code, out, err = await run("participant", "list", "cli-people", "--json")
            assert code == 0, err
            return json.loads(out)  # type: ignore[no-any-return]

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not (people := await listed()) or not people[0].get("tracks"):
            assert loop.time() < deadline, people
            await asyncio.sleep(0.3)
        assert [p["identity"] for p in people] == ["alice"]
        assert people[0]["tracks"][0]["sid"] == audio.sid  # type: ignore[index]

        code, out, err = await run("participant", "list", "cli-people")
        assert code == 0, err
        header, row = out.splitlines()
        assert header.split() == ["IDENTITY", "SID", "STATE", "TRACKS", "JOINED"]
        assert row.split()[:4] == ["alice", alice.local_participant.sid, "ACTIVE", f"{audio.sid}(audio)"]

        code, out, err = await run("participant", "mute", "cli-people", "alice", audio.sid)
        assert (code, out.strip()) == (0, f"muted track {audio.sid} of alice in room cli-people"), err
        assert await wait_for(lambda: audio.muted, 10)
        code, out, err = await run("participant", "mute", "cli-people", "alice", audio.sid, "--unmute", "--json")
        assert code == 0 and json.loads(out)["sid"] == audio.sid and not json.loads(out).get("muted"), err

        code, _, err = await run("participant", "mute", "cli-people", "alice", "TR_nope")
        assert (code, err.strip()) == (1, "meshrtc: track TR_nope of alice does not exist in room cli-people")
        code, _, err = await run("participant", "remove", "cli-people", "bob")
        assert (code, err.strip()) == (1, "meshrtc: participant bob is not in room cli-people")

        code, out, err = await run("participant", "remove", "cli-people", "alice")
        assert (code, out.strip()) == (0, "removed alice from room cli-people"), err
        assert await wait_for(lambda: bool(gone), 15)
        deadline = loop.time() + 15
        while await listed():
            assert loop.time() < deadline
            await asyncio.sleep(0.3)
    finally:
        if publisher is not None:
            await publisher.stop()
        await alice.disconnect()


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "room" in out and "participant" in out and "webhooks" in out
