#!/bin/sh
# Build a Debian bookworm base image without any container registry: debootstrap a root
# filesystem from Debian's package mirror and `docker import` it. Python 3.11 (bookworm's
# python3), venv support, wget and PostgreSQL 15 are included, so the one image serves as
# BASE_IMAGE for the meshrtc Dockerfile and as the base of the local NATS and PostgreSQL test
# images (deploy/images/). Used by tests/docker/test_compose_up.py; handy on any host that
# cannot pull python:3.11-slim.
#
#   deploy/build-base-image.sh [TAG]       (default TAG: meshrtc-base:bookworm)
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), ROOTFS_DIR (where the
# root filesystem is unpacked; default /var/tmp/meshrtc-rootfs-bookworm, reused when complete).
# Needs root, debootstrap and a running Docker engine.
set -eu
TAG=${1:-meshrtc-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOTFS=${ROOTFS_DIR:-/var/tmp/meshrtc-rootfs-bookworm}
PACKAGES=python3,python3-venv,ca-certificates,wget,postgresql-15,tzdata,netbase

if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG already present"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }

if [ ! -f "$ROOTFS/.meshrtc-complete" ]; then
  rm -rf "$ROOTFS"
  mkdir -p "$ROOTFS"
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS" "$MIRROR"
  # trim what an image does not need
  chroot "$ROOTFS" apt-get clean
  rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* \
         "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/log/*.log
  # debootstrap leaves the host's resolv.conf and hostname; Docker provides both at run time
  : > "$ROOTFS/etc/resolv.conf"
  : > "$ROOTFS/etc/hostname"
  touch "$ROOTFS/.meshrtc-complete"
fi

tar --numeric-owner --exclude=./.meshrtc-complete -C "$ROOTFS" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$TAG"
echo "built base image $TAG"
