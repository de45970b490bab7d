# phi-relay as a container (sidecar or standalone). Configuration by PHI_RELAY_* variables.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PHI_RELAY_STATE_DIR=/var/lib/phi-relay \
    PHI_RELAY_AUDIT_FILE=/var/lib/phi-relay/audit.log \
    PHI_RELAY_POLICY_FILE=/app/policies/default.toml \
    PHI_RELAY_SERVER_LISTEN=0.0.0.0:2525 \
    PHI_RELAY_SERVER_TLS_CERT=/var/lib/phi-relay/certs/server.crt \
    PHI_RELAY_SERVER_TLS_KEY=/var/lib/phi-relay/certs/server.key \
    PHI_RELAY_HTTP_LISTEN=0.0.0.0:8025

WORKDIR /app
COPY pyproject.toml README.md ./
COPY relay ./relay
COPY policies ./policies
RUN pip install . && useradd --system --uid 10001 --home /var/lib/phi-relay relay \
    && mkdir -p /var/lib/phi-relay && chown relay /var/lib/phi-relay

USER relay
VOLUME ["/var/lib/phi-relay"]
EXPOSE 2525 4650 8025
# The HTTP listener is TLS (unsubscribe links must be https); a loopback liveness probe
# does not verify the certificate, which may be one the image has never seen.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
    CMD python -c "import ssl,sys,urllib.request; sys.exit(urllib.request.urlopen('https://127.0.0.1:8025/healthz', timeout=4, context=ssl._create_unverified_context()).status != 200)"
# Development certificates are made in the state volume on first start when none are mounted.
ENTRYPOINT ["sh", "-c", "[ -f \"$PHI_RELAY_SERVER_TLS_CERT\" ] || phi-relay certs init --dir \"$(dirname \"$PHI_RELAY_SERVER_TLS_CERT\")\"; exec phi-relay serve --log-json \"$@\"", "phi-relay"]
