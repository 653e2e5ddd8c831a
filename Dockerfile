# Tollhouse: a two-stage image (docs/deployment.md).
# Build stage: a compiler and Cython compile the core into /opt/tollhouse (deploy/install.sh,
# which tests/deploy/test_image.py runs in a fresh venv). Runtime: the venv alone, non-root.
ARG PYTHON=python:3.11-slim-bookworm

FROM ${PYTHON} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
COPY deploy/install.sh /usr/local/bin/tollhouse-install
RUN tollhouse-install /src /opt/tollhouse

FROM ${PYTHON}
LABEL org.opencontainers.image.title="tollhouse" \
      org.opencontainers.image.description="An API gateway in Python" \
      org.opencontainers.image.source="https://example.invalid/tollhouse"
# A fixed non-root user; nothing in the image is writable by it, so the root filesystem can be
# mounted read-only (the config comes from a mounted file, logs go to stdout).
RUN groupadd --system --gid 10001 tollhouse \
 && useradd --system --uid 10001 --gid tollhouse --no-create-home --shell /usr/sbin/nologin tollhouse
COPY --from=build /opt/tollhouse /opt/tollhouse
COPY deploy/gateway.yaml /etc/tollhouse/gateway.yaml
ENV PATH=/opt/tollhouse/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080 9901
# The admin listener's liveness endpoint (bound to 0.0.0.0 in the shipped configs).
HEALTHCHECK --interval=10s --timeout=2s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2).status == 200 else 1)"]
# SIGTERM drains: /readyz fails first, in-flight requests finish within shutdown_grace.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tollhouse"]
CMD ["run", "-c", "/etc/tollhouse/gateway.yaml"]
