"""The Docker Compose deployment (compose.yaml, compose.multi-dc.yaml, Dockerfile, deploy/) is
well-formed, without a Docker engine:

* the compose CLI (`docker compose` or `docker-compose`), when installed, validates both files;
* structural checks that do not need it: services, depends_on conditions, healthchecks, no
  secret in `environment:`, env files, scalable media, one DC per network in the multi-DC file;
* the NATS configs really form the multi-DC topology: two nats-server processes with the
  deploy/nats hub and spoke configs join by leafnode, and a stream in dc2 sources dc1's;
* the entrypoint, the healthcheck script and `meshrtc cluster` behave without an engine.

The real `docker compose up` is tests/docker/test_compose_up.py (MESHRTC_DOCKER_TESTS=1).
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.natsserver import NatsServer, free_port, nats_server_binary

ROOT = Path(__file__).resolve().parents[2]
SINGLE = ROOT / "compose.yaml"
MULTI = ROOT / "compose.multi-dc.yaml"
SERVE = ["signal", "media", "relay", "room", "billing"]
SECRETS = {"MESHRTC_API_KEYS", "MESHRTC_API_KEY", "MESHRTC_API_SECRET", "MESHRTC_RELAY_KEYS",
           "MESHRTC_DATABASE_URL", "POSTGRES_PASSWORD", "NATS_LEAF_PASSWORD", "NATS_LEAF_URL"}
EXAMPLE_ENV = {
    "MESHRTC_ENV_FILE": "deploy/meshrtc.env.example",
    "POSTGRES_ENV_FILE": "deploy/postgres.env.example",
    "NATS_ENV_FILE": "deploy/nats.env.example",
}


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), path
    return data


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def conditions(service: dict[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on") or {}
    assert isinstance(depends, dict), "depends_on must use the long form with conditions"
    return {name: spec["condition"] for name, spec in depends.items()}


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


# ---------------------------------------------------------------------------------------------
# The compose CLI


@functools.cache
def compose_cli() -> list[str] | None:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        try:
            result = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0:
            return command
    return None


@pytest.mark.parametrize("path", [SINGLE, MULTI], ids=["single-dc", "multi-dc"])
def test_compose_cli_validates(path: Path) -> None:
    command = compose_cli()
    if command is None:
        pytest.skip("no compose CLI (`docker compose` / `docker-compose`): structural checks only")
    env = {**os.environ, **EXAMPLE_ENV}
    resolved = subprocess.run([*command, "-f", str(path), "config"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    assert resolved.returncode == 0, resolved.stderr
    # the resolved file carries the env files' values: the secrets do reach the containers
    services = yaml.safe_load(resolved.stdout)["services"]
    signal = services["signal" if "signal" in services else "signal-dc1"]
    assert "MESHRTC_API_KEYS" in env_of(signal)


# ---------------------------------------------------------------------------------------------
# Structure


def check_meshrtc_service(name: str, service: dict[str, Any], command: list[str]) -> None:
    assert service["command"] == command, name
    assert service.get("env_file"), f"{name}: secrets come from env_file"
    env = env_of(service)
    leaked = SECRETS & set(env)
    assert not leaked, f"{name}: secrets in environment: {leaked}"
    for key, value in env.items():
        assert not re.search(r"://[^/@\s]*:[^/@\s]+@", value), f"{name}: {key} carries a password"
    assert "container_name" not in service, f"{name}: a fixed container_name prevents --scale"
    assert service["image"].startswith("${MESHRTC_IMAGE"), name
    assert service.get("init") is True, f"{name}: runs under an init (cluster kill = a crash, restarted)"
    if command[0] == "serve":
        assert service["restart"] == "unless-stopped", name
        test = service["healthcheck"]["test"]
        assert test == ["CMD", "meshrtc-healthcheck", command[1]], name
        assert service["healthcheck"].get("start_period"), name


def check_datacenter(services: dict[str, Any], suffix: str, dc: str | None) -> None:
    def svc(name: str) -> dict[str, Any]:
        return services[name + suffix]

    nats, postgres, migrate = svc("nats"), svc("postgres"), svc("migrate")
    assert nats["image"].startswith("${NATS_IMAGE"), "the NATS image is overridable"
    assert any(str(v).endswith(":/data") for v in nats["volumes"]), "JetStream on a persistent volume"
    assert "8222/healthz" in " ".join(nats["healthcheck"]["test"])
    assert postgres["image"].startswith("${POSTGRES_IMAGE")
    assert any("/var/lib/postgresql/data" in str(v) for v in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert postgres.get("env_file") and not SECRETS & set(env_of(postgres))
    assert not SECRETS & set(env_of(nats))

    check_meshrtc_service("migrate" + suffix, migrate, ["db", "upgrade"])
    assert migrate["restart"] == "no"
    assert conditions(migrate) == {"postgres" + suffix: "service_healthy"}
    for name in SERVE:
        service = svc(name)
        check_meshrtc_service(name + suffix, service, ["serve", name])
        assert conditions(service).get("nats" + suffix) == "service_healthy", name
        env = env_of(service)
        assert env["MESHRTC_NATS_URL"] == "nats://nats:4222", name
        if dc is not None:
            assert env["MESHRTC_DC"] == dc, name
    for name in ("room", "billing"):
        assert conditions(svc(name))["migrate" + suffix] == "service_completed_successfully"
    assert conditions(svc("signal"))["room" + suffix] == "service_healthy"
    signal_env = env_of(svc("signal"))
    assert signal_env["MESHRTC_HTTP_HOST"] == "0.0.0.0"
    assert [str(p).endswith(":7880") for p in svc("signal")["ports"]] == [True]
    media = svc("media")
    assert "ports" not in media, "media replicas must not claim fixed host ports"
    assert re.fullmatch(r"\d+-\d+", env_of(media)["MESHRTC_RTC_PORT_RANGE"])
    assert "MESHRTC_ADVERTISE_IPS" not in env_of(media), "each replica advertises its own IP (entrypoint)"
    assert "MESHRTC_NODE_ID" not in env_of(media), "each replica has its own node id (entrypoint)"


def test_single_dc_structure() -> None:
    compose = load(SINGLE)
    services = compose["services"]
    assert set(services) == {"nats", "postgres", "migrate", *SERVE}
    check_datacenter(services, "", None)
    assert env_of(services["room"])["MESHRTC_DC"] == "${MESHRTC_DC:-dc1}"
    assert services["nats"]["environment"]["NATS_DOMAIN"] == "${MESHRTC_DC:-dc1}"
    assert any("deploy/nats/datacenter.conf" in str(v) for v in services["nats"]["volumes"])
    assert set(compose["volumes"]) == {"nats-data", "postgres-data"}


def test_multi_dc_structure() -> None:
    compose = load(MULTI)
    services = compose["services"]
    expected = {f"{name}-{dc}" for dc in ("dc1", "dc2") for name in ("nats", "postgres", "migrate", *SERVE)}
    assert set(services) == expected
    for dc in ("dc1", "dc2"):
        check_datacenter(services, f"-{dc}", dc)
        nats = services[f"nats-{dc}"]
        assert nats["environment"]["NATS_DOMAIN"] == dc, "one JetStream domain per DC"
        assert nats["networks"][dc]["aliases"] == ["nats"]
        assert "wan" in nats["networks"], "the NATS servers meet on the wan network"
        assert services[f"postgres-{dc}"]["networks"][dc]["aliases"] == ["postgres"]
        for name in ("migrate", *SERVE):
            assert services[f"{name}-{dc}"]["networks"] == [dc], f"{name}-{dc} lives in its own DC's network"
    assert services["nats-dc1"]["command"] == ["-c", "/etc/nats/hub.conf"]
    assert services["nats-dc2"]["command"] == ["-c", "/etc/nats/spoke.conf"]
    assert services["nats-dc1"]["env_file"] and services["nats-dc2"]["env_file"]
    ports = [str(services[f"signal-{dc}"]["ports"][0]) for dc in ("dc1", "dc2")]
    assert ports[0] != ports[1]


def test_env_examples_hold_the_secrets_and_every_variable_is_documented() -> None:
    meshrtc = read_env_file(ROOT / "deploy/meshrtc.env.example")
    assert {"MESHRTC_API_KEYS", "MESHRTC_RELAY_KEYS", "MESHRTC_DATABASE_URL"} <= set(meshrtc)
    assert all("CHANGE_ME" in value for value in meshrtc.values())
    postgres = read_env_file(ROOT / "deploy/postgres.env.example")
    assert postgres["POSTGRES_PASSWORD"] in meshrtc["MESHRTC_DATABASE_URL"]
    nats = read_env_file(ROOT / "deploy/nats.env.example")
    assert f"leaf:{nats['NATS_LEAF_PASSWORD']}@nats-dc1:7422" in nats["NATS_LEAF_URL"]
    ignored = (ROOT / "deploy/.gitignore").read_text()
    assert "*.env" in ignored and "!*.env.example" in ignored

    used = set(meshrtc)
    for path in (SINGLE, MULTI):
        for service in load(path)["services"].values():
            used |= {key for key in env_of(service) if key.startswith("MESHRTC_")}
    documented = (ROOT / "docs/configuration.md").read_text()
    config_source = (ROOT / "shared/config.py").read_text()
    for variable in sorted(used):
        assert f"`{variable}`" in documented, f"{variable} missing from docs/configuration.md"
        assert f'"{variable}"' in config_source, f"{variable} is not read by shared/config.py"


def test_dockerfile_and_dockerignore() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert text.count("FROM ${BASE_IMAGE}") == 2
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the services run as a non-root user"
    assert re.search(r"^HEALTHCHECK .*meshrtc-healthcheck", text, re.M)
    assert re.search(r'^ENTRYPOINT \["meshrtc-entrypoint"\]', text, re.M)
    for secret in SECRETS:
        assert secret not in text, f"{secret} must not be baked into the image"
    assert "syntax=" not in text, "no frontend image to pull: the classic builder must do"
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[0 if ignore[0] != "" else 1].startswith("#") or "*" in ignore
    assert "*" in ignore and "**/*.env" in ignore
    assert not any(line.startswith("!") and ".env" in line for line in ignore)


# ---------------------------------------------------------------------------------------------
# NATS topology with the real server


def render(conf: Path, tmp: Path, ports: dict[int, int]) -> Path:
    text = conf.read_text()
    for container_port, port in ports.items():
        text = text.replace(f"0.0.0.0:{container_port}", f"127.0.0.1:{port}")
    text = text.replace("store_dir: /data", f'store_dir: "{tmp / conf.stem}"')
    out = tmp / conf.name
    out.write_text(text)
    return out


def start_nats(conf: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    with open(log, "wb") as out:
        return subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=out, stderr=out, env={**base, **env})


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_log(paths: list[Path], text: str, processes: list[subprocess.Popen[bytes]], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        logs = "".join(path.read_text(errors="replace") for path in paths if path.exists())
        if text in logs:
            return logs
        assert all(p.poll() is None for p in processes), logs
        assert time.monotonic() < deadline, f"{text!r} not logged within {timeout} s:\n{logs}"
        time.sleep(0.2)


async def check_two_datacenters(dc1_url: str, dc2_url: str) -> None:
    import nats
    from nats.js.api import ExternalStream, StreamConfig, StreamSource

    dc1 = await nats.connect(dc1_url)
    dc2 = await nats.connect(dc2_url)
    try:
        js1, js2 = dc1.jetstream(), dc2.jetstream()
        await js1.add_stream(StreamConfig(name="EVENTS_DC1", subjects=["events.dc1.>"]))
        for i in range(3):
            await js1.publish("events.dc1.test", str(i).encode())
        # each DC's JetStream is its own domain: dc2 does not see dc1's stream...
        assert "EVENTS_DC1" not in [s.config.name for s in await js2.streams_info()]
        # ...but can source it over the leafnode through $JS.dc1.API (the later replication)
        await js2.add_stream(StreamConfig(name="REPLICA_DC2", sources=[
            StreamSource(name="EVENTS_DC1", external=ExternalStream(api="$JS.dc1.API"))]))
        for _ in range(100):
            if (await js2.stream_info("REPLICA_DC2")).state.messages == 3:
                break
            await asyncio.sleep(0.1)
        assert (await js2.stream_info("REPLICA_DC2")).state.messages == 3
        # core subjects (heartbeats) cross the link too
        got: list[str] = []

        async def on_beat(msg: Any) -> None:
            got.append(msg.subject)

        await dc1.subscribe("heartbeat.dc2.*", cb=on_beat)
        await dc1.flush()
        for _ in range(50):
            await dc2.publish("heartbeat.dc2.media", b"{}")
            await dc2.flush()
            await asyncio.sleep(0.1)
            if got:
                break
        assert got == ["heartbeat.dc2.media"] * len(got) and got
    finally:
        await dc1.close()
        await dc2.close()


@pytest.mark.timeout(90)
def test_nats_configs_join_two_datacenters(tmp_path: Path) -> None:
    hub_ports = {4222: free_port(), 8222: free_port(), 7422: free_port()}
    spoke_ports = {4222: free_port(), 8222: free_port()}
    hub_conf = render(ROOT / "deploy/nats/hub.conf", tmp_path, hub_ports)
    spoke_conf = render(ROOT / "deploy/nats/spoke.conf", tmp_path, spoke_ports)
    single_conf = render(ROOT / "deploy/nats/datacenter.conf", tmp_path, {4222: free_port(), 8222: free_port()})
    password = "leaf-test-password"
    processes = []
    try:
        processes.append(start_nats(hub_conf, tmp_path / "hub.log", NATS_SERVER_NAME="nats-dc1", NATS_DOMAIN="dc1",
                                    NATS_LEAF_PASSWORD=password))
        processes.append(start_nats(spoke_conf, tmp_path / "spoke.log", NATS_SERVER_NAME="nats-dc2",
                                    NATS_DOMAIN="dc2",
                                    NATS_LEAF_URL=f"nats-leaf://leaf:{password}@127.0.0.1:{hub_ports[7422]}"))
        processes.append(start_nats(single_conf, tmp_path / "single.log", NATS_SERVER_NAME="nats-x",
                                    NATS_DOMAIN="dcx"))
        spoke_log = wait_for_log([tmp_path / "spoke.log"], "JetStream using domains", processes)
        assert 'local "dc2", remote "dc1"' in spoke_log
        wait_for_log([tmp_path / "single.log"], "Server is ready", processes)
        assert "Domain:          dcx" in (tmp_path / "single.log").read_text()
        asyncio.run(check_two_datacenters(f"nats://127.0.0.1:{hub_ports[4222]}",
                                          f"nats://127.0.0.1:{spoke_ports[4222]}"))
    finally:
        stop_all(processes)


@pytest.mark.timeout(60)
def test_spoke_with_a_wrong_leaf_password_is_refused(tmp_path: Path) -> None:
    hub_ports = {4222: free_port(), 8222: free_port(), 7422: free_port()}
    hub_conf = render(ROOT / "deploy/nats/hub.conf", tmp_path, hub_ports)
    spoke_conf = render(ROOT / "deploy/nats/spoke.conf", tmp_path, {4222: free_port(), 8222: free_port()})
    processes = []
    try:
        processes.append(start_nats(hub_conf, tmp_path / "hub.log", NATS_SERVER_NAME="nats-dc1", NATS_DOMAIN="dc1",
                                    NATS_LEAF_PASSWORD="right"))
        processes.append(start_nats(spoke_conf, tmp_path / "spoke.log", NATS_SERVER_NAME="nats-dc2",
                                    NATS_DOMAIN="dc2",
                                    NATS_LEAF_URL=f"nats-leaf://leaf:wrong@127.0.0.1:{hub_ports[7422]}"))
        logs = wait_for_log([tmp_path / "hub.log"], 'authentication error - User "leaf"', processes)
        assert "JetStream using domains" not in logs
    finally:
        stop_all(processes)


# ---------------------------------------------------------------------------------------------
# Entrypoint, healthcheck, cluster CLI


def fake_meshrtc(tmp: Path) -> dict[str, str]:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "meshrtc"
    fake.write_text('#!/bin/sh\necho "args=$*"\necho "node=$MESHRTC_NODE_ID"\necho "ips=$MESHRTC_ADVERTISE_IPS"\n')
    fake.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MESHRTC_")}
    return {**clean, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_entrypoint_runs_services_and_defaults_node_id_and_ips(tmp_path: Path) -> None:
    env = fake_meshrtc(tmp_path)
    entrypoint = str(ROOT / "deploy/entrypoint.sh")
    out = subprocess.run(["sh", entrypoint, "media"], env=env, capture_output=True, text=True, check=True).stdout
    values = dict(line.split("=", 1) for line in out.splitlines())
    assert values["args"] == "serve media"
    assert values["node"] == Path("/proc/sys/kernel/hostname").read_text().strip()
    for ip in values["ips"].split(","):
        if ip:
            assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", ip) and not ip.startswith("127.")

    out = subprocess.run(["sh", entrypoint, "db", "upgrade"], env={**env, "MESHRTC_NODE_ID": "n1",
                         "MESHRTC_ADVERTISE_IPS": "192.0.2.7"}, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["args=db upgrade", "node=n1", "ips=192.0.2.7"]


def run_healthcheck(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MESHRTC_")}
    return subprocess.run([sys.executable, str(ROOT / "deploy/healthcheck.py"), *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(120)
def test_healthcheck_sees_the_node_heartbeat(nats_server: NatsServer, tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MESHRTC_")}
    env = {"MESHRTC_NATS_URL": nats_server.url, "MESHRTC_DC": "dc7", "MESHRTC_NODE_ID": "relaynode1"}
    # nothing beats yet: unhealthy, one line naming what is missing
    result = run_healthcheck(["relay"], env)
    assert result.returncode == 1
    assert "no heartbeat from relay node relaynode1 on heartbeat.dc7.relay" in result.stdout
    with open(tmp_path / "relay.log", "wb") as log:
        relay = subprocess.Popen([sys.executable, "-m", "meshrtc", "serve", "relay"], env={**clean, **env},
                                 stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while True:
                result = run_healthcheck(["relay"], env)
                if result.returncode == 0 or time.monotonic() > deadline:
                    break
                assert relay.poll() is None, (tmp_path / "relay.log").read_text()
            assert result.returncode == 0, result.stdout + (tmp_path / "relay.log").read_text()
            assert result.stdout.strip() == "healthy: relay node relaynode1 in dc7"
            # another node's heartbeat does not count
            other = run_healthcheck(["relay"], {**env, "MESHRTC_NODE_ID": "someoneelse"})
            assert other.returncode == 1
        finally:
            relay.terminate()
            relay.wait(timeout=30)


def test_healthcheck_with_unreachable_nats_is_unhealthy() -> None:
    result = run_healthcheck(["media"], {"MESHRTC_NATS_URL": f"nats://127.0.0.1:{free_port()}"})
    assert result.returncode == 1
    assert result.stdout.startswith("unhealthy: NATS nats://127.0.0.1:")


def test_healthcheck_of_signal_needs_healthz() -> None:
    result = run_healthcheck(["signal"], {"MESHRTC_HTTP_PORT": str(free_port())})
    assert result.returncode == 1
    assert "/healthz" in result.stdout


def test_cluster_without_engine_or_sdk_says_so_in_one_line() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MESHRTC_", "DOCKER_"))}
    env = {**clean, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    result = subprocess.run([sys.executable, "-m", "meshrtc", "cluster", "status"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    try:
        import docker  # noqa: F401
    except ImportError:
        assert lines[0] == "meshrtc cluster: the Docker SDK is not installed: pip install 'meshrtc[docker]'"
    else:
        assert lines[0].startswith("meshrtc cluster: cannot reach the Docker engine at unix:///nonexistent")
