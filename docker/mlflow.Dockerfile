# The MLflow server of docker/compose.yaml: the full mlflow (tracking server, UI, artifact
# proxy), which the scoring image leaves out (it carries the lean client, mlflow-skinny).
#   docker build -f docker/mlflow.Dockerfile -t scoring-mlflow docker
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
# The same major line as the client's mlflow-skinny (pyproject.toml, extra `server`).
ARG MLFLOW_SPEC="mlflow>=2.16,<4"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
# hadolint ignore=DL3013
RUN pip install --no-cache-dir "${MLFLOW_SPEC}" \
    && useradd --no-log-init --uid 10001 --gid 0 --no-create-home --home-dir /data --shell /usr/sbin/nologin mlflow \
    && install -d -o 10001 -g 0 -m 2775 /data
ENV HOME=/data PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
VOLUME ["/data"]
USER 10001
WORKDIR /data
ENTRYPOINT ["tini", "--", "mlflow"]
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]
