# One image for every Hive Orchestrator role (control, worker, beat, flower, exporter);
# docker-compose.yml picks the role with `command:`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# A fixed, numeric, non-root uid: Celery warns when a worker runs as root, and
# Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 hive \
 && useradd --system --uid 10001 --gid hive --create-home --home-dir /home/hive \
        --shell /usr/sbin/nologin hive

WORKDIR /app

# Only what the wheel is built from (see [tool.setuptools] in pyproject.toml); runtime
# dependencies only, no dev extras.
COPY pyproject.toml README.md beat_schedule.py ./
COPY orchestrator/ orchestrator/
COPY workers/ workers/
COPY examples/ examples/
RUN pip install --no-cache-dir . \
 && rm -rf build ./*.egg-info \
 && install -d -o hive -g hive /data /data/backups

# Backups are written here (ORCH_BACKUP_DIR in docker-compose.yml); /app stays read-only
# for the service user.
ENV ORCH_BACKUP_DIR=/data/backups

USER 10001:10001

CMD ["orchestrator", "--help"]
