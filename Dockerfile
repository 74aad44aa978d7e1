# One image for every Liberator process: the operator, the sidecar, the seed Job and the event store.
# Build: docker build -t ghcr.io/liberator-io/liberator:0.1.0 .
# Size target: under 200 MB (python:3.11-slim is ~130 MB; our wheels add ~60 MB, mostly grpc).

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
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/liberator /opt/liberator
ENV PATH=/opt/liberator/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed numeric non-root user, so runAsNonRoot can verify it without a passwd lookup.
USER 65532:65532
EXPOSE 8099 9443
ENTRYPOINT ["liberator"]
CMD ["--help"]
