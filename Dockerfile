# syntax=docker/dockerfile:1
# exchange-firewall-exporter: a slim, non-root image (docs/deploying.md#container-image).
#
#   docker build -t exchange-firewall-exporter .
#   docker run --rm -p 10135:10135 exchange-firewall-exporter demo            # the demo organisation
#   docker run -d -p 10135:10135 \
#     -v "$PWD/org.yaml:/etc/exchange-firewall-exporter/inventory.yaml:ro" \
#     -v exfw-state:/var/lib/exchange-firewall-exporter exchange-firewall-exporter   # your organisation
#
# The default command serves the inventory at /etc/exchange-firewall-exporter/inventory.yaml and keeps the
# baseline in /var/lib/exchange-firewall-exporter; any other subcommand or flags replace it.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: the package as a wheel, and its runtime dependencies from the lock, hash-checked ----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src

# Dependencies first, so that a code change does not reinstall them. requirements.lock pins the dev
# extra too: only its runtime part goes into the image, and `--require-hashes` without `--no-deps`
# makes pip refuse anything that part would be missing.
COPY pyproject.toml requirements.lock deploy/docker/runtime_requirements.py ./
RUN python runtime_requirements.py --pyproject pyproject.toml --lock requirements.lock > runtime.lock \
 && python -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install --require-hashes --only-binary=:all: -r runtime.lock

COPY README.md ./
COPY exporter ./exporter
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip --python /opt/venv/bin/python install --no-deps --no-index /wheels/*.whl \
 && pip --python /opt/venv/bin/python check \
 && /opt/venv/bin/exchange-firewall-exporter --version

# ---- runtime ----
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="exchange-firewall-exporter" \
      org.opencontainers.image.description="Prometheus exporter that proves every network path an Exchange organisation needs is open" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

# A fixed, numeric, unprivileged identity (Kubernetes' runAsNonRoot can check a number, not a name).
RUN groupadd --system --gid 10135 exfw \
 && useradd --system --uid 10135 --gid exfw --no-create-home \
      --home-dir /var/lib/exchange-firewall-exporter --shell /usr/sbin/nologin exfw \
 && install -d -o exfw -g exfw -m 0750 /var/lib/exchange-firewall-exporter \
 && install -d -m 0755 /etc/exchange-firewall-exporter

COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EXFW_HEALTHCHECK_URL=http://127.0.0.1:10135/-/healthy

USER 10135:10135
WORKDIR /var/lib/exchange-firewall-exporter
EXPOSE 10135

# No curl in the slim image: Python's urllib. /-/healthy needs no basic auth; with TLS on, set
# EXFW_HEALTHCHECK_URL=https://127.0.0.1:10135/-/healthy (the certificate is not verified for this check).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, ssl, urllib.request; urllib.request.urlopen(os.environ['EXFW_HEALTHCHECK_URL'], timeout=4, context=ssl._create_unverified_context())"]

ENTRYPOINT ["exchange-firewall-exporter"]
CMD ["serve", "--inventory", "/etc/exchange-firewall-exporter/inventory.yaml", \
     "--state.file", "/var/lib/exchange-firewall-exporter/state.sqlite"]
