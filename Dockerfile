# mailroom: the watcher (default) or a worker (`worker`) from one image.
#   docker build -t mailroom .
#   docker run --rm -v $PWD/config/mailroom.compose.yml:/etc/mailroom/mailroom.yml:ro mailroom check-config
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MAILROOM_CONFIG=/etc/mailroom/mailroom.yml

WORKDIR /app
# Only what the package needs, so edits elsewhere in the repository do not invalidate this layer.
COPY pyproject.toml README.md ./
COPY mailroom ./mailroom
COPY workers ./workers
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin mailroom

# Never root: the service needs no privileges, and mounted secrets only need to be readable by uid 10001.
USER mailroom
# Docker and Compose: /healthz on the config's http_port (Kubernetes uses the manifests' probes instead).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "mailroom.healthcheck"]
ENTRYPOINT ["mailroom"]
CMD ["watch"]
