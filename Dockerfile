# syntax=docker/dockerfile:1
# The scoring job as a container:
#   docker build -t scoring .                          # DuckDB and Spark (Java 17)
#   docker build -t scoring:duckdb --build-arg ENGINES=duckdb .   # no Java: smaller
#   docker run --rm -v "$PWD/job:/job:ro" -v "$PWD/data:/data" scoring
# tests/test_container.py replays this file (wheel, ENV, ENTRYPOINT, CMD) and lints it.

# Bookworm, not the bare 3.11-slim tag: Debian 13 (trixie) no longer ships openjdk-17.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- stage 1: the wheel of this project and wheels of all its dependencies ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Only what the wheel is made of (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md ./
COPY scoring ./scoring
# Every dependency becomes a wheel here (pyspark ships as an sdist), so the runtime stage
# installs offline and carries no build tools.
RUN pip wheel --wheel-dir /wheels .

# --- stage 2: the runtime ------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# A global ARG reaches FROM lines only: declared again for the label below.
ARG PYTHON_IMAGE
# duckdb,spark (default) or duckdb: without spark the image has no Java runtime.
ARG ENGINES=duckdb,spark
ARG VERSION=0.1.0

LABEL org.opencontainers.image.title="scoring" \
      org.opencontainers.image.description="Registered ONNX models as SQL functions in DuckDB and Spark: PREDICT-style batch scoring to Parquet." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}" \
      scoring.engines="${ENGINES}"

# Versions are not pinned: the base image's Debian release fixes them, and exact
# pins break as soon as a security update replaces the package in the archive.
# The JRE's postinst links man pages into /usr/share/man/man1, which slim images lack.
# hadolint ignore=DL3008
RUN set -eu; \
    set -- tini; \
    case ",${ENGINES}," in \
      *,spark,*) set -- "$@" openjdk-17-jre-headless; mkdir -p /usr/share/man/man1 ;; \
    esac; \
    apt-get update; \
    apt-get install -y --no-install-recommends "$@"; \
    rm -rf /var/lib/apt/lists/*

# A fixed numeric uid (Kubernetes runAsNonRoot can verify it); group 0 and g+w on the
# writable folders, HOME included, so the image also runs under an arbitrary uid with
# group 0 (OpenShift, `docker run --user "$(id -u):0"` to write into a bind mount).
RUN useradd --no-log-init --system --uid 10001 --gid 0 --no-create-home --home-dir /home/scoring scoring \
    && install -d -o 10001 -g 0 -m 2775 /home/scoring /var/lib/scoring /job /data

# The wheels come in through a bind mount of stage 1, so they add no layer of their own.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --root-user-action=ignore --no-index --find-links=/wheels "scoring==${VERSION}" \
    && pip check

# Settings are SCORING_* variables (README "Settings"); override them with -e.
# HOME is set rather than looked up: an arbitrary uid has no passwd entry.
# A batch job in a cluster does not phone home: MLflow's telemetry is off.
ENV HOME=/home/scoring \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    SCORING_HOME=/var/lib/scoring \
    SCORING_LOG_FORMAT=json

USER 10001
WORKDIR /data

# tini is PID 1: it forwards SIGTERM/SIGINT to the job (exit 143/130, nothing published)
# and reaps the JVM's children under Spark.
ENTRYPOINT ["tini", "--", "scoring"]
CMD ["run", "--job", "/job/job.toml"]
