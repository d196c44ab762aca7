#!/bin/sh
# Container entrypoint of the meshrtc image.
#
#   <image> signal|media|relay|room|billing [flags]   ->  meshrtc serve <service> [flags]
#   <image> serve <service> | db upgrade | token ...  ->  meshrtc <args>
#
# Defaults that only make sense inside a container, each kept when the variable is already set:
#   MESHRTC_NODE_ID        the container's hostname (unique per replica with --scale, stable
#                          across restarts of the same container; deploy/healthcheck.py looks
#                          for this node's heartbeat)
#   MESHRTC_ADVERTISE_IPS  the container's own IPv4 addresses (media: the ICE host candidates;
#                          reachable from wherever the container network is routed)
set -eu

if [ -z "${MESHRTC_NODE_ID:-}" ]; then
  MESHRTC_NODE_ID=$(cat /proc/sys/kernel/hostname)
  export MESHRTC_NODE_ID
fi

if [ -z "${MESHRTC_ADVERTISE_IPS:-}" ]; then
  ips=$(hostname -i 2>/dev/null || true)
  if [ -z "$ips" ]; then
    ips=$(python3 -c 'import socket; print(socket.gethostbyname(socket.gethostname()))' 2>/dev/null || true)
  fi
  # IPv4 only, comma-separated, no loopback
  MESHRTC_ADVERTISE_IPS=$(printf '%s\n' $ips | grep -E '^[0-9]+(\.[0-9]+){3}$' | grep -v '^127\.' | paste -sd, - || true)
  export MESHRTC_ADVERTISE_IPS
fi

case "${1:-}" in
  signal|media|relay|room|billing) exec meshrtc serve "$@" ;;
  "") exec meshrtc --help ;;
  *) exec meshrtc "$@" ;;
esac
