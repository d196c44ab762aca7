# One image for every meshrtc service: `docker run <image> signal|media|relay|room|billing`
# runs `meshrtc serve <service>`; any other arguments go to `meshrtc` (`db upgrade`, `token`, ...).
# Configuration comes only from MESHRTC_* environment variables (docs/configuration.md);
# secrets are never baked in: pass them at run time (compose: env_file, deploy/meshrtc.env).
#
# BASE_IMAGE: any Debian-like image with Python 3.11 as `python3` and the venv module:
# python:3.11-slim (default), or the registry-free base from deploy/build-base-image.sh.
# pip honours PIP_* variables set in the base image (e.g. PIP_NO_INDEX + PIP_FIND_LINKS for an
# offline wheelhouse).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# dependencies first: this layer is rebuilt only when pyproject.toml changes
COPY pyproject.toml ./
RUN python3 -m venv /opt/meshrtc \
 && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt \
 && /opt/meshrtc/bin/pip install -r /tmp/requirements.txt
COPY README.md alembic.ini ./
COPY meshrtc ./meshrtc
COPY shared ./shared
COPY services ./services
COPY migrations ./migrations
RUN /opt/meshrtc/bin/pip install --no-deps . \
 && /opt/meshrtc/bin/meshrtc --help >/dev/null

FROM ${BASE_IMAGE}
ENV PATH=/opt/meshrtc/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    MESHRTC_HTTP_HOST=0.0.0.0
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/meshrtc --create-home --shell /usr/sbin/nologin meshrtc
COPY --from=build /opt/meshrtc /opt/meshrtc
COPY deploy/entrypoint.sh /usr/local/bin/meshrtc-entrypoint
COPY deploy/healthcheck.py /usr/local/bin/meshrtc-healthcheck
RUN chmod 0755 /usr/local/bin/meshrtc-entrypoint /usr/local/bin/meshrtc-healthcheck
USER meshrtc
WORKDIR /var/lib/meshrtc
# signal: HTTP/WebSocket. media: UDP, MESHRTC_RTC_PORT_RANGE (compose.yaml uses 50000-50199)
EXPOSE 7880
HEALTHCHECK --interval=10s --timeout=8s --start-period=60s --retries=3 CMD ["meshrtc-healthcheck"]
ENTRYPOINT ["meshrtc-entrypoint"]
CMD ["--help"]
