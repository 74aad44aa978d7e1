# One image for every Liberator process: the operator, the sidecar, the seed Job and the event store.
# Build: docker build -t ghcr.io/liberator-io/liberator:0.1.0 .
#   The line above is the one source of the image name and tag: the tag is the version in
#   pyproject.toml, and deploy/, the overlays and the operator's DEFAULT_IMAGE use exactly this
#   reference (tests/e2e/test_image.py checks all of them). Bump them together.
# Size target: under 200 MB uncompressed (python:3.11-slim is ~130 MB; our wheels add ~60 MB,
#   mostly grpc). Not measured here: this machine has no Docker engine.

FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/liberator
COPY pyproject.toml README.md ./
COPY publisher ./publisher
COPY operator ./operator
RUN /opt/liberator/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/liberator/bin/pip install --no-cache-dir . \
 && find /opt/liberator -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11-slim
LABEL org.opencontainers.image.title="liberator" \
      org.opencontainers.image.source="https://github.com/liberator-io/liberator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build /opt/liberator /opt/liberator
ENV PATH=/opt/liberator/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed numeric non-root user, so runAsNonRoot can verify it without a passwd lookup.
USER 65532:65532
EXPOSE 8099 9443
ENTRYPOINT ["liberator"]
CMD ["--help"]
