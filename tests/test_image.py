"""The images built and run for real, with Podman (``make image-test``).

Builds the DuckDB image and the full image from the project's Dockerfile on the stand-in
base that ``docker/podman-setup.sh`` makes, then runs the example job in them: against the
sqlite registry and against a real ``mlflow server`` on 127.0.0.1, as the image's user and as
an arbitrary uid with group 0, stopped mid-run, on a read-only root file system, and with the
Spark engine. Without Podman set up this way the module is skipped with the reason (``make
test``); ``make image-test`` sets ``IMAGE_TEST=required``, which turns that skip into a
failure. Figures (sizes, build times) go to ``$IMAGE_TEST_DIR/image-figures.txt``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoring.errors import ExitCode

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DUCKDB, FULL = "localhost/scoring-test:duckdb", "localhost/scoring-test:full"
MAX_DUCKDB_BYTES = 850_000_000
# What the spark extra brings: pyspark, its py4j, pandas and pandas' own dependencies.
SPARK_PACKAGES = {"pyspark", "py4j", "pandas", "python-dateutil", "pytz", "tzdata", "six"}

pytestmark = [pytest.mark.image, pytest.mark.slow]


def _unavailable() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (make image-test runs docker/podman-setup.sh, which installs it)"
    for name in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "IMAGE_TEST_DIR", "IMAGE_TEST_BASE"):
        if not os.environ.get(name):
            return f"podman is not configured for this project ({name} unset): run make image-test"
    exists = subprocess.run(["podman", "image", "exists", os.environ["IMAGE_TEST_BASE"]], timeout=60)
    if exists.returncode != 0:
        return f"no base image {os.environ['IMAGE_TEST_BASE']}: run docker/podman-setup.sh"
    return None


_WHY = _unavailable()
if _WHY is not None:
    if os.environ.get("IMAGE_TEST") == "required":
        pytest.fail(f"make image-test cannot run: {_WHY}", pytrace=False)
    pytest.skip(_WHY, allow_module_level=True)

SCRATCH = Path(os.environ.get("IMAGE_TEST_DIR", "/nonexistent"))
FIGURES: dict[str, str] = {}


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"podman {' '.join(args[:3])} ... exited {done.returncode}: {done.stderr[-3000:]}")
    return done


def figure(name: str, value: str) -> None:
    """Keep a measured figure for the report file (pytest captures prints)."""
    FIGURES[name] = value
    lines = [f"{key}: {text}" for key, text in FIGURES.items()]
    (SCRATCH / "image-figures.txt").write_text("\n".join(lines) + "\n")


def size(image: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


def build(tag: str, engines: str) -> None:
    started = time.monotonic()
    podman(
        "build",
        "--pull=never",
        "--network",
        "host",
        # The machine's CA bundle (and a wheelhouse) for pip, in the RUN steps only.
        "-v",
        f"{os.environ.get('IMAGE_TEST_PIP', SCRATCH / 'pip')}:/root/.config/pip:ro",
        "--build-arg",
        f"PYTHON_IMAGE={os.environ['IMAGE_TEST_BASE']}",
        "--build-arg",
        f"ENGINES={engines}",
        "-t",
        tag,
        str(ROOT),
        timeout=1500,
    )
    figure(f"build {tag}", f"{time.monotonic() - started:.0f} s")
    figure(f"size {tag}", f"{size(tag) / 1e6:.0f} MB")


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """Both images, the DuckDB one first (the full one reuses its shared layers)."""
    build(DUCKDB, "duckdb")
    build(FULL, "duckdb,spark")
    return {"duckdb": DUCKDB, "full": FULL}


@dataclass
class Example:
    """The README's example (model bc in a sqlite registry, data/patients.parquet), in a folder of its own."""

    root: Path
    home: Path  # SCORING_HOME of the registry: mounted at the same path (artifact URIs are absolute)
    data: Path
    big: Path  # the same rows many times over: a job that runs long enough to be stopped
    expected: pa.Table  # the same job's result on this machine, outside any container

    def out(self, name: str) -> Path:
        """An empty output folder that the image's user and any uid of group 0 can write."""
        folder = self.root / "out" / name
        folder.mkdir(parents=True)
        os.chmod(folder, 0o2770)
        return folder


def _group_writable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o070)


@pytest.fixture(scope="module")
def example() -> Iterator[Example]:
    root = SCRATCH / "work" / "example"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    os.chmod(root, 0o755)
    # The job's own settings only (the CLI refuses SCORING_* variables it does not know).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCORING_", "MLFLOW_"))}
    env["SCORING_HOME"] = str(root / ".scoring")
    subprocess.run(
        [sys.executable, str(ROOT / "sql/examples/setup_example.py")], cwd=root, env=env, check=True, timeout=600
    )
    reference = root / "reference.parquet"
    argv = [
        str(BIN / "scoring"), "run", "--dialect", "tsql", "--model", "bc=models:/bc@champion",
        "--table", f"patients={root / 'data/patients.parquet'}",
        "--sql", str(ROOT / "sql/examples/breast_cancer.sql"), "--output", str(reference),
    ]  # fmt: skip
    subprocess.run(
        argv,
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    patients = pq.read_table(root / "data/patients.parquet")
    big = root / "big"
    big.mkdir()
    # ~2.3 M rows: several seconds of scoring on two cores, while the file stays small.
    pq.write_table(pa.concat_tables([patients] * 4000), big / "patients.parquet", row_group_size=50_000)
    _group_writable(root / ".scoring")
    yield Example(root, root / ".scoring", root / "data", big, pq.read_table(reference))


def job(
    example: Example,
    image: str,
    out: Path,
    *options: str,
    data: Path | None = None,
    detach: bool = False,
    tracking_uri: str | None = None,
    network: str = "none",
) -> subprocess.CompletedProcess[str]:
    """``podman run`` of the image's default command: docker/job.toml mounted as compose mounts it."""
    return podman(
        "run",
        *(["-d"] if detach else ["--rm"]),
        "--network",
        network,
        "-e",
        f"MLFLOW_TRACKING_URI={tracking_uri or 'sqlite:///' + str(example.home / 'mlflow.db')}",
        "-v",
        f"{example.home}:{example.home}",
        "-v",
        f"{ROOT / 'docker/job.toml'}:/job/job.toml:ro",
        "-v",
        f"{ROOT / 'sql/examples'}:/job/sql:ro",
        "-v",
        f"{data or example.data}:/data/in:ro",
        "-v",
        f"{out}:/data/out",
        *options,
        image,
        timeout=600,
        check=False,
    )


def check_scored(out: Path, example: Example, done: subprocess.CompletedProcess[str], engine: str = "duckdb") -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    scored = pq.read_table(out / "scored.parquet")
    # The same rows and predictions as the job run outside the container.
    key = "patient_id"
    got, want = scored.sort_by(key), example.expected.sort_by(key)
    assert got.num_rows == want.num_rows == 569
    assert got[key].to_pylist() == want[key].to_pylist()
    assert got["predicted_diagnosis"].to_pylist() == want["predicted_diagnosis"].to_pylist()
    for mine, theirs in zip(got["probabilities"].to_pylist(), want["probabilities"].to_pylist(), strict=True):
        assert mine == pytest.approx(theirs, abs=1e-6)
    # The image's ENV is in force: JSON log lines, the run summary last on stdout.
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 569, summary
    manifest = json.loads((out / "scored.parquet.run.json").read_text())
    assert manifest["engine"] == engine and manifest["status"] == "succeeded", manifest
    assert all(line.startswith("{") for line in done.stderr.splitlines() if line.strip()), done.stderr[-2000:]


# --- the images themselves ------------------------------------------------------------------


def _packages(image: str) -> dict[str, str]:
    listed = podman("run", "--rm", "--network", "none", "--entrypoint", "pip", image, "list", "--format", "json")
    return {p["name"].lower(): p["version"] for p in json.loads(listed.stdout)}


def test_duckdb_image_is_small_and_holds_no_spark(images: dict[str, str]) -> None:
    assert size(images["duckdb"]) <= MAX_DUCKDB_BYTES, f"{size(images['duckdb']) / 1e6:.0f} MB"
    packages = _packages(images["duckdb"])
    assert "scoring" in packages and "duckdb" in packages and "mlflow-skinny" in packages
    assert not {"pyspark", "pandas", "mlflow", "scikit-learn", "scipy"} & set(packages), sorted(packages)
    probe = podman(
        "run", "--rm", "--network", "none", "--entrypoint", "sh", images["duckdb"], "-c",
        "command -v java || echo no-java; ls -A /root/.config/pip 2>/dev/null | wc -l",
        check=False,
    )  # fmt: skip
    assert probe.stdout.split() == ["no-java", "0"], probe.stdout + probe.stderr


def test_full_image_adds_only_spark(images: dict[str, str]) -> None:
    lean, full = _packages(images["duckdb"]), _packages(images["full"])
    added = set(full) - set(lean)
    assert "pyspark" in added and added <= SPARK_PACKAGES, sorted(added)
    assert {name: full[name] for name in lean} == lean, "the full image shares the DuckDB image's packages"
    java = podman("run", "--rm", "--network", "none", "--entrypoint", "java", images["full"], "-version")
    assert "17." in java.stderr
    figure("full image adds", f"{(size(images['full']) - size(images['duckdb'])) / 1e6:.0f} MB")


def test_unknown_engine_fails_the_build() -> None:
    done = podman(
        "build", "--pull=never", "--network", "none", "--build-arg",
        f"PYTHON_IMAGE={os.environ['IMAGE_TEST_BASE']}", "--build-arg", "ENGINES=duckdb,sprak",
        "--target", "runtime", "-t", "localhost/scoring-test:refused", str(ROOT),
        check=False, timeout=900,
    )  # fmt: skip
    assert done.returncode != 0
    assert "ENGINES: unknown engine 'sprak' (duckdb, spark)" in done.stderr + done.stdout


# --- the example job --------------------------------------------------------------------------


def test_example_job_sqlite_registry(images: dict[str, str], example: Example) -> None:
    out = example.out("default-user")
    started = time.monotonic()
    done = job(example, images["duckdb"], out)
    figure("example job (duckdb image, sqlite)", f"{time.monotonic() - started:.1f} s")
    check_scored(out, example, done)
    assert (out / "scored.parquet").stat().st_uid == 10001


def test_example_job_as_arbitrary_uid_with_group_0(images: dict[str, str], example: Example) -> None:
    out = example.out("uid-12345")
    done = job(example, images["duckdb"], out, "--user", "12345:0")
    check_scored(out, example, done)
    assert (out / "scored.parquet").stat().st_uid == 12345


def test_example_job_on_read_only_root(images: dict[str, str], example: Example) -> None:
    """--read-only as Kubernetes does it: no tmpfs unless asked; the cache VOLUME and /tmp writable."""
    out = example.out("read-only")
    done = job(example, images["duckdb"], out, "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp")
    check_scored(out, example, done)


def test_read_only_cache_is_a_documented_error(images: dict[str, str], example: Example) -> None:
    """A cache folder that cannot be written: one line naming it, a documented exit code (not 1).

    The error itself is issue 11 item 16 (scoring/registry.py): this checks it in the image.
    """
    out = example.out("read-only-cache")
    done = job(example, images["duckdb"], out, "--read-only", "-e", "SCORING_CACHE_DIR=/opt/cache")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode not in (ExitCode.OK, ExitCode.INTERNAL), done.stderr[-2000:]
    assert lines and ("/opt/cache" in lines[-1] or "SCORING_CACHE_DIR" in lines[-1]), done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == ExitCode.CONFIG, done.stderr[-2000:]  # README "Exit codes": 3, with the fix
    assert sorted(path.name for path in out.iterdir()) == ["scored.parquet.failed.run.json"]


def test_example_job_against_mlflow_server(images: dict[str, str], example: Example, registry, mlflow_server) -> None:
    """A real ``mlflow server`` on 127.0.0.1 (--network host); the job given by SCORING_* variables alone."""
    out = example.out("server")
    table = example.root / "gb"
    table.mkdir(exist_ok=True)
    shutil.copy(registry.tables["gb"], table / "gb.parquet")
    done = podman(
        "run", "--rm", "--network", "host",
        "-e", f"MLFLOW_TRACKING_URI={mlflow_server}",
        "-e", "SCORING_MODELS=gb=models:/gb@champion",
        "-e", "SCORING_TABLES=t=/data/in/gb.parquet",
        "-e", "SCORING_QUERY=SELECT d.id, p.label FROM PREDICT(MODEL = 'gb', DATA = t AS d) WITH (label BIGINT) AS p",
        "-e", "SCORING_DIALECT=tsql",
        "-e", "SCORING_OUTPUT=/data/out/scored.parquet",
        "-v", f"{table}:/data/in:ro", "-v", f"{out}:/data/out",
        images["duckdb"], "run",
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    scored = pq.read_table(out / "scored.parquet").sort_by("id")
    case = registry.cases["gb"]
    assert scored["label"].to_pylist() == list(case.expected_label())
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["models"]["gb"]["pinned_uri"].startswith("models:/gb/"), summary


def test_stop_mid_run_exits_143_and_publishes_nothing(images: dict[str, str], example: Example) -> None:
    out = example.out("stopped")
    started = job(example, images["duckdb"], out, data=example.big, detach=True)
    assert started.returncode == 0, started.stderr
    name = started.stdout.strip()
    try:
        deadline = time.monotonic() + 120
        while not any(out.iterdir()):  # the hidden temporary file: the job is writing
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            assert state == "running", podman("logs", name, check=False).stderr[-2000:]
            assert time.monotonic() < deadline, "the job never started writing"
            time.sleep(0.1)
        podman("stop", "--time", "30", name)
        code = int(podman("wait", name).stdout.strip())
        logs = podman("logs", name, check=False).stderr
    finally:
        podman("rm", "--force", name, check=False)
    assert code == ExitCode.TERMINATED, logs[-2000:]
    # Nothing published, no temporary file left: only the failed run's own record.
    assert sorted(path.name for path in out.iterdir()) == ["scored.parquet.failed.run.json"], logs[-2000:]
    record = json.loads((out / "scored.parquet.failed.run.json").read_text())
    assert record["exit_code"] == ExitCode.TERMINATED, record


# --- Spark ----------------------------------------------------------------------------------


def test_example_job_spark_engine_in_full_image(images: dict[str, str], example: Example) -> None:
    out = example.out("spark")
    started = time.monotonic()
    done = job(example, images["full"], out, "-e", "SCORING_ENGINE=spark")
    figure("example job (full image, spark)", f"{time.monotonic() - started:.1f} s")
    check_scored(out, example, done, engine="spark")


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group this test started, SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def test_job_waits_for_a_registry_that_is_still_starting(images: dict[str, str], example: Example) -> None:
    """No healthcheck wait under Podman: the job's registry retries carry it over a server's start.

    The server and the job start together, as compose starts them; the job's first requests are
    refused (checked), and 8 retries wait up to about four minutes (docker/compose.yaml).
    """
    from tests.conftest import free_port

    out = example.out("late-server")
    port = free_port()
    argv = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{example.home / 'mlflow.db'}",
    ]  # fmt: skip
    log = (example.root / f"server-{port}.log").open("w")
    # Its workers are stopped with it, as one process group.
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=example.root, start_new_session=True)
    name = None
    try:
        started = job(
            example, images["duckdb"], out, "-e", "SCORING_REGISTRY_RETRIES=8",
            detach=True, tracking_uri=f"http://127.0.0.1:{port}", network="host",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        name = started.stdout.strip()
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the server is not listening yet: the job's first requests are refused
        code = int(podman("wait", name, timeout=400).stdout.strip())
        done = podman("logs", name, check=False)
    finally:
        if name:
            podman("rm", "--force", name, check=False)
        _stop_group(server)
        log.close()
    assert code == 0, done.stderr[-3000:]
    check_scored(out, example, subprocess.CompletedProcess([], 0, done.stdout, done.stderr))
