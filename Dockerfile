# phi-relay as a container (sidecar or standalone). Configuration by PHI_RELAY_* variables
# or a mounted file named by PHI_RELAY_CONFIG; deploy/ has Kubernetes and Compose files.
# tests/integration/test_entrypoint.py runs this file's ENTRYPOINT as the image would
# (this USER, this ENV, these paths) and deploy tests check the manifests against it.
#
# Base image pinned by digest (python:3.11-slim-bookworm, multi-arch index). To refresh:
#   docker buildx imagetools inspect python:3.11-slim-bookworm
FROM python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PHI_RELAY_STATE_DIR=/var/lib/phi-relay \
    PHI_RELAY_AUDIT_FILE=/var/lib/phi-relay/audit.log \
    PHI_RELAY_SERVER_LISTEN=0.0.0.0:2525 \
    PHI_RELAY_SERVER_TLS_CERT=/var/lib/phi-relay/certs/server.crt \
    PHI_RELAY_SERVER_TLS_KEY=/var/lib/phi-relay/certs/server.key \
    PHI_RELAY_HTTP_LISTEN=0.0.0.0:8025

WORKDIR /app
# Dependencies exactly as locked, every file checked against its hash (requirements.lock
# comes from pip-compile --generate-hashes; it also pins setuptools and wheel for the build).
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY relay ./relay
COPY policies ./policies
RUN pip install --no-deps --no-build-isolation . \
    && groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/phi-relay \
       --no-create-home --shell /usr/sbin/nologin relay \
    && mkdir -p /var/lib/phi-relay \
    && chown 10001:10001 /var/lib/phi-relay && chmod 0700 /var/lib/phi-relay

# Numeric, so Kubernetes runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
VOLUME ["/var/lib/phi-relay"]
EXPOSE 2525 4650 8025
# Reads http.listen and http.tls from the same configuration as serve (file and
# PHI_RELAY_* variables); over TLS the loopback probe does not verify the certificate.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s CMD ["phi-relay", "healthcheck"]
# Development certificates are made in the state volume on first start when none are mounted.
ENTRYPOINT ["sh", "-c", "[ -f \"$PHI_RELAY_SERVER_TLS_CERT\" ] || phi-relay certs init --dir \"$(dirname \"$PHI_RELAY_SERVER_TLS_CERT\")\"; exec phi-relay serve --log-json \"$@\"", "phi-relay"]
CMD []
