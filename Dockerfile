# One image for every Liberator process: the operator, the sidecar, the seed Job and the event store.
# Build: docker build -t ghcr.io/liberator-io/liberator:0.1.0 .
#   The line above is the one source of the image name and tag: the tag is the version in
#   pyproject.toml, and deploy/, the overlays and the operator's DEFAULT_IMAGE use exactly this
#   reference (tests/e2e/test_image.py checks all of them). Bump them together.
#   `make image` builds this same file with buildah and loads it into the local node.
# Base: debian:bookworm-slim with Debian's python3 (3.11), not python:3.11-slim. Anyone can pull
#   it, and with no registry at hand it can be made from Debian's packages alone (debootstrap
#   --variant=minbase bookworm, trimmed as Debian's slim images are: hack/liberator_stack/images.py).
#   Debian also ships the security fixes of that python3. See docs/cluster.md.
# Size target: under 200 MB uncompressed (measured 2026-12 with buildah: see docs/cluster.md).

FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python3 -m venv /opt/liberator
COPY pyproject.toml README.md ./
COPY publisher ./publisher
COPY operator ./operator
# HOST_CA (optional): a CA bundle for pip, for a build behind a TLS-intercepting proxy. `make image`
# mounts the host's read-only at this path for the build only; nothing of it stays in the image.
ARG HOST_CA
# Then drop what no process runs: pip, setuptools, bytecode caches, and the asyncio copy of the
# Kubernetes client (41 MB; Liberator imports only kubernetes.client and kubernetes.config).
RUN if [ -n "$HOST_CA" ]; then export PIP_CERT="$HOST_CA"; fi \
 && /opt/liberator/bin/pip install --no-cache-dir . \
 && /opt/liberator/bin/pip uninstall -y pip setuptools \
 && rm -rf /opt/liberator/lib/python3*/site-packages/kubernetes/aio \
 && find /opt/liberator -name '__pycache__' -prune -exec rm -rf {} +

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="liberator" \
      org.opencontainers.image.source="https://github.com/liberator-io/liberator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
# The same python3 the venv was made with; nothing else (no pip, no recommends).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log
# The user also gets a passwd entry: kopf names its peering identity after getpass.getuser(),
# which fails for a uid that /etc/passwd lacks.
RUN groupadd --gid 65532 liberator \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin liberator
COPY --from=build /opt/liberator /opt/liberator
ENV PATH=/opt/liberator/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed numeric non-root user, so runAsNonRoot can verify it without a passwd lookup.
USER 65532:65532
EXPOSE 8099 9443
ENTRYPOINT ["liberator"]
CMD ["--help"]
