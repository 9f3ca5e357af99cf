# reconciler: the GitOps reconciliation daemon as a container image.
#
#   docker build -t reconciler .
#   sudo install -d -o 10001 -g 10001 /srv/managed
#   docker run -d --name reconciler --init --stop-timeout 40 -p 9108:9108 \
#     -e RECONCILER_REPO=https://git.example.com/ops/config.git \
#     -e RECONCILER_TOKEN_FILE=/run/secrets/git-token \
#     -e RECONCILER_ROOT=/srv/managed -v /srv/managed:/srv/managed \
#     -v /etc/reconciler/git-token:/run/secrets/git-token:ro \
#     -v reconciler-state:/var/lib/reconciler reconciler
#
# Two stages: `build` makes a virtual environment with the package and its
# dependencies (pip, from this source tree); the runtime stage is Debian's Python
# with git and ssh, that environment, and nothing used only to build. Settings
# come from RECONCILER_* variables (docs/daemon.md#settings). The daemon runs as
# uid/gid 10001, keeps its state in the volume /var/lib/reconciler and listens on
# 0.0.0.0:9108 (API, webhooks, /metrics, /healthz, /readyz).

# Bump with reconciler/__init__.py:__version__ (tests/container checks they agree).
# SOURCE_URL and REVISION describe where the image came from, for its labels:
#   --build-arg SOURCE_URL=https://... --build-arg REVISION=$(git rev-parse HEAD)
ARG VERSION=0.1.0
ARG SOURCE_URL=""
ARG REVISION=""

FROM debian:bookworm-slim AS build

# Debian's packages are not pinned to exact revisions: bookworm only takes fixes,
# and an exact pin breaks the build as soon as the archive replaces that revision.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# pip reads its settings from PIP_* variables: pass `--build-arg
# PIP_INDEX_URL=...` to build from a mirror of PyPI.
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY pyproject.toml README.md /src/
COPY reconciler /src/reconciler
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /src \
    && /opt/venv/bin/reconciler --version


FROM debian:bookworm-slim

ARG VERSION
ARG SOURCE_URL
ARG REVISION
LABEL org.opencontainers.image.title="reconciler" \
      org.opencontainers.image.description="GitOps reconciliation daemon for everything that is not Kubernetes: files, directories, commands, databases, HTTP objects" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

# git and ssh for the git source; procps because GitPython finds the children
# of a git command it kills at its timeout (ssh, git-remote-https) with pgrep.
# Unpinned for the reason given in the build stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       python3 git openssh-client ca-certificates procps \
    && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid, so files the daemon writes into mounted directories have a
# known owner (chown the host directory to 10001:10001 before mounting it).
RUN groupadd --system --gid 10001 reconciler \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/reconciler \
       --shell /usr/sbin/nologin reconciler \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/reconciler

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RECONCILER_STATE_DIR=/var/lib/reconciler \
    RECONCILER_LISTEN=0.0.0.0:9108

USER 10001:10001
WORKDIR /home/reconciler
VOLUME ["/var/lib/reconciler"]
EXPOSE 9108

# Liveness on the port RECONCILER_LISTEN names (a wildcard address is probed on
# loopback); no curl in the image, Python's urllib does it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; h, _, p = os.environ.get('RECONCILER_LISTEN', '0.0.0.0:9108').rpartition(':'); h = h.strip('[]'); h = {'': '127.0.0.1', '0.0.0.0': '127.0.0.1', '::': '::1'}.get(h, h); h = f'[{h}]' if ':' in h else h; urllib.request.urlopen(f'http://{h}:{p}/healthz', timeout=4)"]

ENTRYPOINT ["reconciler", "run"]
CMD []
