"""The container job, checked without a Docker engine.

The Dockerfile is linted (hadolint) and replayed: its build stage's wheel is installed
alone into a fresh virtualenv and run with the image's ENTRYPOINT, CMD, ENV and WORKDIR
(read from the file, so the test follows it) against a real ``mlflow server``. The
compose file is parsed, and its mlflow command is run to prove the job's URI gets in.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from scoring.jobfile import tomllib  # tomllib, or tomli on Python 3.10
from scoring.writer import read_metadata
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


# --- reading the Dockerfile -----------------------------------------------------------------


@dataclass
class Stage:
    """One build stage: its base image and its instructions, in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """ENV as the image sets it (``KEY=VALUE`` pairs; the legacy ``KEY VALUE`` form too)."""
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            words = shlex.split(args)
            if "=" not in words[0]:
                values[words[0]] = " ".join(words[1:])
                continue
            for word in words:
                key, _, value = word.partition("=")
                values[key] = value
        return values

    def exec_form(self, keyword: str) -> list[str]:
        value = json.loads(self.last(keyword))
        assert isinstance(value, list), f"{keyword} must use the exec (JSON) form so signals reach the job"
        return [str(v) for v in value]


def read_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the stages of a Dockerfile."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue  # comments end nothing: Docker drops them inside continuations too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            image = words[0]
            for name, default in args.items():
                image = image.replace("${" + name + "}", default)
            stages.append(Stage(image, words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def dockerfile() -> list[Stage]:
    return read_dockerfile(ROOT / "Dockerfile")[1]


def test_dockerfile_shape(dockerfile: list[Stage]) -> None:
    build, runtime = dockerfile
    assert build.base.startswith("python:3.11-slim") and runtime.base.startswith("python:3.11-slim")
    assert any("pip wheel" in run for run in build.all("RUN"))
    # The runtime stage takes the wheel from stage 1 and installs it last, after its dependencies.
    assert any(copy.startswith("--from=build") and ".whl" in copy for copy in runtime.all("COPY"))
    assert "pip install --no-cache-dir --no-deps" in runtime.all("RUN")[-1]
    # pyspark only where ENGINES asks for Spark (the DuckDB image holds neither it nor Java).
    spark = next(run for run in runtime.all("RUN") if "openjdk-17-jre-headless" in run)
    assert "*,spark,*)" in spark and spark.index("*,spark,*)") < spark.index("spark.txt")
    assert not any("pyspark" in run or "[spark]" in run for run in build.all("RUN"))
    # No BuildKit frontend to fetch (air-gapped builders); no useradd --system above SYS_UID_MAX.
    assert not (ROOT / "Dockerfile").read_text().startswith("# syntax=")
    assert not any("useradd" in run and "--system" in run for run in runtime.all("RUN"))
    # The model cache is a volume: the job runs on a read-only root file system.
    assert json.loads(runtime.last("VOLUME")) == [runtime.env()["SCORING_HOME"]]

    # Java for Spark unless ENGINES leaves it out; tini as PID 1; a non-root user.
    installs = " ".join(runtime.all("RUN"))
    assert "openjdk-17-jre-headless" in installs and "tini" in installs
    assert runtime.exec_form("ENTRYPOINT") == ["tini", "--", "scoring"]
    assert runtime.exec_form("CMD")[:2] == ["run", "--job"]
    assert runtime.last("USER").split(":")[0] not in ("root", "0")

    args = dict(a.partition("=")[::2] for a in runtime.all("ARG"))
    assert args["ENGINES"] == "duckdb,spark"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert args["VERSION"] == version, "ARG VERSION pins the wheel the runtime stage installs"
    # A ${NAME} in a stage must be an ARG of that stage (a global ARG reaches FROM only) or ENV.
    known = set(args) | set(runtime.env())
    used = set(re.findall(r"\$\{(\w+)", " ".join(rest for kw, rest in runtime.instructions)))
    assert used <= known, used - known
    labels = " ".join(runtime.all("LABEL"))
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dockerignore_keeps_what_the_build_copies(dockerfile: list[Stage]) -> None:
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", "an allow-list: nothing reaches the build context by accident"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = {src for copy in dockerfile[0].all("COPY") for src in copy.split()[:-1]}
    assert copied <= allowed, copied - allowed


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(hadolint() is None, reason="hadolint is not installed (pip install -e '.[dev]')")
def test_hadolint_passes() -> None:
    done = subprocess.run(
        [str(hadolint()), "--failure-threshold", "warning", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- the image, replayed --------------------------------------------------------------------


@dataclass
class Image:
    """The runtime stage rebuilt on this machine: a venv holding only the wheel."""

    venv: Path
    root: Path  # stands for the container's file system: /job, /data, ... live under it

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def remap(self, value: str) -> str:
        """An absolute path inside the image, as the same file on this machine."""
        return str(self.path(value)) if value.startswith("/") else value


def build_wheel(stage: Stage, out: Path) -> Path:
    """Stage 1 replayed: copy what it COPYs into a clean context and ``pip wheel`` it."""
    context = out / "context"
    for copy in stage.all("COPY"):
        *sources, _target = copy.split()
        for source in sources:
            src, dst = ROOT / source, context / source
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    wheels = out / "wheels"
    # --no-deps: the dependencies' wheels are the registry's, not this project's.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), str(context)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("scoring-*.whl")
    return wheel


@pytest.fixture(scope="module")
def image(dockerfile: list[Stage], tmp_path_factory: pytest.TempPathFactory) -> Image:
    work = tmp_path_factory.mktemp("image")
    wheel = build_wheel(dockerfile[0], work)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # Third-party dependencies come from this project's venv; a plain path line in a .pth
    # adds that folder without running its own .pth files (so not its editable scoring).
    (site / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    return Image(venv, work / "root")


def test_the_wheel_alone_carries_the_package(image: Image, tmp_path: Path) -> None:
    probe = (
        "import importlib.metadata as m, scoring, scoring.jobfile, scoring.engines.duckdb; "
        "print(scoring.__file__); print(m.distribution('scoring').locate_file('')); print(m.version('scoring'))"
    )
    done = subprocess.run(
        [str(image.venv / "bin" / "python"), "-c", probe],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    module, dist, version = done.stdout.split()
    assert Path(module).is_relative_to(image.venv) and not Path(module).is_relative_to(ROOT), module
    assert Path(dist).is_relative_to(image.venv), dist
    assert version == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert (image.venv / "bin" / "scoring").exists(), "the wheel's console script"
    # Every file of the package travels, not only the modules (setuptools leaves data out
    # unless pyproject.toml lists it as package data).
    installed = Path(module).parent
    missing = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "scoring").rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and not (installed / path.relative_to(ROOT / "scoring")).exists()
    ]
    assert not missing, f"not in the wheel: {missing}"


def test_image_command_scores_against_mlflow_server(
    image: Image, dockerfile: list[Stage], registry, mlflow_server: str
) -> None:
    runtime = dockerfile[-1]
    env = runtime.env()
    # Every path the image's ENV names must live under a folder this replay maps.
    for key, value in env.items():
        assert not value.startswith("/") or value.split("/")[1] in ("var", "job", "data", "opt", "home"), (key, value)

    # What `docker run -v job:/job -v data:/data -e MLFLOW_TRACKING_URI=...` would mount.
    job = image.path("/job/job.toml")
    job.parent.mkdir(parents=True)
    (job.parent / "score.sql").write_text(
        "SELECT d.id, p.label, p.probability FROM PREDICT(MODEL = 'gb', DATA = t AS d)"
        " WITH (label BIGINT, probability SQL_VARIANT) AS p"
    )
    # Relative tables and output: they resolve against the image's WORKDIR.
    job.write_text(
        'dialect = "tsql"\nsql = "score.sql"\n[models]\ngb = "models:/gb@champion"\n'
        '[tables]\nt = "in/gb.parquet"\n[output]\npath = "out/scored.parquet"\n'
    )
    workdir = Path(image.remap(runtime.last("WORKDIR")))
    for folder in ("HOME", "SCORING_HOME"):  # the image creates them (install -d)
        image.path(env[folder]).mkdir(parents=True, exist_ok=True)
    (workdir / "in").mkdir(parents=True)
    shutil.copy(registry.tables["gb"], workdir / "in" / "gb.parquet")

    entrypoint, cmd = runtime.exec_form("ENTRYPOINT"), runtime.exec_form("CMD")
    assert entrypoint[:2] == ["tini", "--"]  # tini only forwards signals: run what it runs
    argv = [image.remap(word) for word in entrypoint[2:] + cmd]
    path = f"{image.venv / 'bin'}:/usr/bin:/bin"
    argv[0] = str(shutil.which(argv[0], path=path))  # as the image's PATH finds `scoring`
    assert Path(argv[0]).is_relative_to(image.venv)
    run_env = {
        "PATH": path,
        "MLFLOW_TRACKING_URI": mlflow_server,
        **{key: image.remap(value) for key, value in env.items()},
    }

    done = subprocess.run(argv, cwd=workdir, env=run_env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]

    output = workdir / "out" / "scored.parquet"
    scored = pq.read_table(output)
    case = registry.cases["gb"]
    assert scored.num_rows == len(case.frame)
    np.testing.assert_array_equal(scored["label"].to_numpy(), case.expected_label())
    np.testing.assert_allclose(
        np.stack(scored["probability"].to_numpy(zero_copy_only=False)), case.expected_proba(), atol=1e-4
    )
    meta = read_metadata(output)
    assert meta["models"]["gb"]["pinned_uri"] == "models:/gb/1"
    assert meta["tables"] == {"t": "in/gb.parquet"} and meta["engine"] == "duckdb" and meta["rows"] == scored.num_rows
    # The image's ENV is in force: JSON logs, and the model cached under SCORING_HOME.
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["rows"] == scored.num_rows
    assert summary["models"]["gb"]["sha256"] == meta["models"]["gb"]["sha256"]
    assert not image.path("/home/scoring/.config/mlflow").exists(), "telemetry stays off"
    home = Path(image.remap(env["SCORING_HOME"]))
    assert list(home.glob(f"models/blobs/{meta['models']['gb']['sha256']}*"))
    logs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert any(log["logger"].startswith("scoring") for log in logs), done.stderr[-2000:]


# --- docker/compose.yaml ----------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> source (a host path relative to docker/, or a named volume)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = source
    return mounts


def test_compose_file(compose: dict) -> None:
    services = compose["services"]
    mlflow, job = services["mlflow"], services["job"]

    command = mlflow["command"]
    assert command[0] == "server" and "mlflow" in mlflow["entrypoint"]
    assert _option(command, "--backend-store-uri") == "sqlite:////data/mlflow.db"
    assert _option(command, "--artifacts-destination") == "/data/artifacts"
    assert _option(command, "--host") == "0.0.0.0"
    volume = _mounts(mlflow)["/data"]
    assert volume in compose["volumes"], "the server's /data is a named volume"
    assert mlflow["healthcheck"]["test"]

    assert job["build"]["context"] == ".." and (DOCKER / ".." / job["build"]["dockerfile"]).exists()
    assert job["depends_on"]["mlflow"]["condition"] == "service_healthy"
    uri = urlsplit(job["environment"]["MLFLOW_TRACKING_URI"])
    assert uri.hostname == "mlflow" and str(uri.port) == _option(command, "--port")
    assert uri.netloc in _option(command, "--allowed-hosts").split(","), "MLflow would answer 403"

    # The job file the command names is mounted from docker/, and what it names is mounted too.
    mounts = _mounts(job)
    job_file = _option(job["command"], "--job")
    assert (DOCKER / mounts[job_file]).resolve() == DOCKER / "job.toml"
    spec = tomllib.loads((DOCKER / "job.toml").read_text())
    sql = str(Path(job_file).parent / spec["sql"])
    folder = next(target for target in mounts if sql.startswith(target + "/"))
    assert (DOCKER / mounts[folder] / sql[len(folder) + 1 :]).is_file(), sql
    for path in [*spec["tables"].values(), spec["output"]["path"]]:
        assert any(path.startswith(target + "/") for target in mounts), f"{path} is not on a mount"


@pytest.mark.slow
def test_compose_mlflow_command_serves_the_job(compose: dict, tmp_path: Path) -> None:
    """The server's command from compose.yaml, run here: healthy, and it answers the job's Host."""
    mlflow, job = compose["services"]["mlflow"], compose["services"]["job"]
    assert mlflow["entrypoint"][:2] == ["tini", "--"]
    port = free_port()
    # The container's /data is tmp_path; bind loopback and a free port instead of 0.0.0.0:5000.
    swap = {"0.0.0.0": "127.0.0.1", _option(mlflow["command"], "--port"): str(port)}
    argv = [sys.executable, "-m", "mlflow"] + [
        swap.get(word, word.replace("/data", str(tmp_path))) for word in mlflow["command"]
    ]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        healthcheck = [
            word.replace("localhost:5000", f"127.0.0.1:{port}") for word in mlflow["healthcheck"]["test"][1:]
        ]
        assert healthcheck[0] == "python"
        healthcheck[0] = sys.executable
        for _ in range(180):
            if subprocess.run(healthcheck, capture_output=True, timeout=10).returncode == 0:
                break
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        else:
            pytest.fail("the compose healthcheck never passed")

        def status(host: str) -> int:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                return int(exc.code)

        assert status(urlsplit(job["environment"]["MLFLOW_TRACKING_URI"]).netloc) == 200
        assert status("elsewhere.example:5000") == 403  # so --allowed-hosts is what lets the job in
        assert (tmp_path / "mlflow.db").exists()
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_compose_job_runs_the_image_default_command() -> None:
    """compose.yaml repeats the image's CMD, whose job file path is absolute (a mount)."""
    _, stages = read_dockerfile(ROOT / "Dockerfile")
    cmd = stages[-1].exec_form("CMD")
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert compose["services"]["job"]["command"] == cmd
    assert os.path.isabs(_option(cmd, "--job"))
