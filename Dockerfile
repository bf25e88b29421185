# The scoring job as a container:
#   docker build -t scoring .                                     # DuckDB and Spark (pyspark, Java 17)
#   docker build -t scoring:duckdb --build-arg ENGINES=duckdb .   # DuckDB only: no pyspark, no Java
#   docker run --rm -v "$PWD/job:/job:ro" -v "$PWD/data:/data" scoring
# Podman builds and runs it as well (docker/podman-setup.sh, `make image-test`).
# tests/test_container.py replays this file (wheel, ENV, ENTRYPOINT, CMD) and lints it;
# tests/test_image.py builds both images and runs them.

# Bookworm, not the bare 3.11-slim tag: Debian 13 (trixie) no longer ships openjdk-17.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- stage 1: the wheel of this project, and its dependency lists --------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Only what the wheel is made of (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md ./
COPY scoring ./scoring
# The dependencies are listed apart from the wheel so that the runtime stage installs them
# in layers of their own: a change to the code alone then rebuilds one small layer.
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
open('/wheels/core.txt', 'w').write('\n'.join(p['dependencies']) + '\n'); \
open('/wheels/spark.txt', 'w').write('\n'.join(p['optional-dependencies']['spark']) + '\n')"

# --- stage 2: the runtime ------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# A global ARG reaches FROM lines only: declared again for the label below.
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore

# Versions are not pinned: the base image's Debian release fixes them, and exact
# pins break as soon as a security update replaces the package in the archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid (Kubernetes runAsNonRoot can verify it), as an ordinary user rather
# than a system one (system uids end at 999: useradd would warn). Group 0 and g+w on the
# writable folders, HOME included, so the image also runs under an arbitrary uid with
# group 0 (OpenShift, `docker run --user "$(id -u):0"` to write into a bind mount).
RUN useradd --no-log-init --uid 10001 --gid 0 --no-create-home --home-dir /home/scoring \
      --shell /usr/sbin/nologin scoring \
    && install -d -o 10001 -g 0 -m 2775 /home/scoring /var/lib/scoring /job /data

# Every engine's dependencies (DuckDB, onnxruntime, pyarrow, the MLflow client): wheels
# from the index, nothing built from source.
COPY --from=build /wheels/core.txt /wheels/spark.txt /tmp/requirements/
RUN pip install --no-cache-dir -r /tmp/requirements/core.txt

# duckdb,spark (default) or duckdb. Declared here, after the shared layers above, so that
# both images reuse them. Spark adds pyspark, pandas (its pandas UDFs) and a Java runtime;
# the JRE's postinst links man pages into /usr/share/man/man1, which slim images lack.
ARG ENGINES=duckdb,spark
# hadolint ignore=DL3008
RUN set -eu; \
    IFS=','; \
    for engine in ${ENGINES}; do \
      case "$engine" in duckdb|spark) ;; *) echo "ENGINES: unknown engine '$engine' (duckdb, spark)" >&2; exit 2 ;; esac; \
    done; \
    unset IFS; \
    case ",${ENGINES}," in \
      *,spark,*) \
        mkdir -p /usr/share/man/man1; \
        apt-get update; \
        apt-get install -y --no-install-recommends openjdk-17-jre-headless; \
        rm -rf /var/lib/apt/lists/*; \
        pip install --no-cache-dir -r /tmp/requirements/spark.txt ;; \
    esac

# The project itself, last: its dependencies are all in place (pip check proves it).
COPY --from=build /wheels/scoring-${VERSION}-py3-none-any.whl /tmp/requirements/
RUN pip install --no-cache-dir --no-deps "/tmp/requirements/scoring-${VERSION}-py3-none-any.whl" \
    && rm -rf /tmp/requirements \
    && pip check

LABEL org.opencontainers.image.title="scoring" \
      org.opencontainers.image.description="Registered ONNX models as SQL functions in DuckDB and Spark: PREDICT-style batch scoring to Parquet." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}" \
      scoring.engines="${ENGINES}"

# Settings are SCORING_* variables (README "Settings"); override them with -e.
# HOME is set rather than looked up: an arbitrary uid has no passwd entry.
# A batch job in a cluster does not phone home: MLflow's and onnxruntime's telemetry are off.
# onnxruntime (1.32) still keeps a device id in XDG_CACHE_HOME, and says so in a plain-text
# line when it cannot: library caches go to the cache volume, writable on a read-only root.
# No .pyc is written at run time (the root file system may be read-only); the installed
# packages carry theirs, compiled at install.
ENV HOME=/home/scoring \
    XDG_CACHE_HOME=/var/lib/scoring/.cache \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    ORT_TELEMETRY_DISABLED=1 \
    SCORING_HOME=/var/lib/scoring \
    SCORING_LOG_FORMAT=json

# The model cache is the one thing the job writes outside its output: a volume, so the job
# runs on a read-only root file system (`--read-only`, Kubernetes readOnlyRootFilesystem)
# with /tmp on a tmpfs. Mount a named volume (an emptyDir) here to keep the cache between runs.
VOLUME ["/var/lib/scoring"]

USER 10001
WORKDIR /data

# tini is PID 1: it forwards SIGTERM/SIGINT to the job (exit 143/130, nothing published)
# and reaps the JVM's children under Spark.
ENTRYPOINT ["tini", "--", "scoring"]
CMD ["run", "--job", "/job/job.toml"]
