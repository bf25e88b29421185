# Two commands on a fresh machine: `make run` and `make test`. Both set everything up.
#
# The interpreter: PY if given, else the first supported Python (3.11, 3.12, 3.13, 3.10) found on PATH
# or under pyenv. An unsupported `python3` is never used: setup stops and says why.
SUPPORTED := 3.11 3.12 3.13 3.10
PY ?= $(shell .ci/find-python $(SUPPORTED))
VENV := .venv
BIN := $(VENV)/bin
EXAMPLE_TABLE := data/patients.parquet

.PHONY: setup setup-run python run test test-matrix lint check bench clean

python:
	@test -n "$(PY)" || { echo "no supported Python ($(SUPPORTED)) found on PATH or under pyenv; set PY=/path/to/python3.x" >&2; exit 2; }
	@echo "using $(PY) ($$($(PY) -c 'import platform; print("Python", platform.python_version())'))"

# Packages go in with uv (from PyPI, into the venv itself): it resolves and installs the example's
# ~65 packages in seconds where pip takes over a minute. Where uv cannot be installed (no wheel for
# the platform), pip does the same job, only slower. Bytecode is compiled at install, as pip does, so
# that no run pays for it (and a PYTHONDONTWRITEBYTECODE environment would pay on every run).
INSTALL = if [ -x $(BIN)/uv ]; then $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python $(1); \
	else $(BIN)/pip install --quiet $(1); fi

$(VENV)/bin/python: | python
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet uv || $(BIN)/pip install --quiet --upgrade pip

# `make run` installs only what the job and its example need; `make test` adds the test and lint tools.
setup-run: $(VENV)/.installed-run
setup: $(VENV)/.installed-dev

$(VENV)/.installed-run: pyproject.toml | $(VENV)/bin/python
	$(call INSTALL,-e '.[example]')
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(call INSTALL,-e '.[dev]')
	touch $(VENV)/.installed-run $@

run: setup-run
	$(BIN)/python sql/examples/setup_example.py
	$(BIN)/scoring run --dialect tsql \
	  --model bc=models:/bc@champion \
	  --table patients=$(EXAMPLE_TABLE) \
	  --sql sql/examples/breast_cancer.sql \
	  --output out/scored.parquet

test: setup
	$(BIN)/pytest -q

# Both ends of the supported range, each in its own venv (.venv-lower, .venv-latest): see .ci/matrix.
test-matrix:
	.ci/matrix lower latest sqlglot

lint: setup
	$(BIN)/ruff check scoring tests sql
	$(BIN)/ruff format --check scoring tests sql
	$(BIN)/mypy scoring
	$(BIN)/hadolint --failure-threshold warning Dockerfile

check: lint test

# Benchmark (figures and ratios, no pass/fail): data, models and registry cached in .scoring/bench.
# Flags: make bench BENCH_ARGS="--rows 200000 --no-spark"; see tests/bench/bench.py --help.
bench: setup
	$(BIN)/python tests/bench/bench.py $(BENCH_ARGS)

clean:
	rm -rf .scoring out data build dist *.egg-info

# The images built and run for real with Podman (README "Run as a container job"): sets up
# Podman and the stand-in base image first (docker/podman-setup.sh, idempotent), then builds
# both images and runs the example job in them (tests/test_image.py; `make test` skips it).
PODMAN_DIR ?= $(CURDIR)/.scoring/podman
.PHONY: image-test
image-test: setup
	IMAGE_TEST_DIR=$(PODMAN_DIR) docker/podman-setup.sh
	@started=$$(date +%s); . $(PODMAN_DIR)/env; \
	IMAGE_TEST=required $(BIN)/pytest -q --timeout=2400 --durations=0 tests/test_image.py; rc=$$?; \
	cat $(PODMAN_DIR)/image-figures.txt 2>/dev/null; \
	echo "image-test: pytest $$(( $$(date +%s) - started )) s"; exit $$rc
