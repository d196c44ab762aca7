#!/usr/bin/env bash
# Prepare this host for tests/docker (run by .ci/run unless MESHRTC_DOCKER_TESTS=0):
#  * Debian packages: docker.io (engine), docker-compose, debootstrap, iptables;
#  * a Docker engine, started in the background unless one already answers, whose networks
#    come from 198.19.128.0/17 (benchmark range, clear of the failover lab's 198.18.x and low
#    198.19.x slots; never a private 10/8, 172.16/12, 192.168/16);
#  * the Docker SDK in the project venv (`meshrtc cluster`), i.e. `pip install '.[docker]'`.
# Needs root. Leaves the engine running for later runs; its log is /var/log/meshrtc-dockerd.log.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  setsid nohup dockerd --default-address-pool base=198.19.128.0/17,size=24 --bip 198.19.255.1/24 \
    >/var/log/meshrtc-dockerd.log 2>&1 </dev/null &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start:"; tail -20 /var/log/meshrtc-dockerd.log; exit 1; }
fi

make .venv/.installed >/dev/null
.venv/bin/pip install --quiet -e ".[test,docker]"
echo "docker test host ready: $(docker version --format 'engine {{.Server.Version}}')"
