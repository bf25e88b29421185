"""Real S3-compatible and Azure Blob servers on 127.0.0.1 for the storage tests.

moto's server mode (``moto[server]``) answers the S3 and IAM APIs; azurite is Microsoft's own
Azure Storage emulator (installed from npm into ``.scoring/azurite``; the tests that need it are
skipped, with the reason, where it is not installed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

# A value shaped like a real AWS secret, so a leak would be found by searching for it.
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY9"
ACCESS_KEY = "AKIASTORAGETEST00001"
AZURITE = Path(__file__).parent.parent / ".scoring" / "azurite" / "node_modules" / ".bin" / "azurite-blob"


@dataclass
class S3Server:
    """A moto server: its endpoint and the environment a job needs to reach it."""

    endpoint: str
    proc: subprocess.Popen

    def env(self, **extra: str) -> dict[str, str]:
        """Credentials and the endpoint, as a scheduler would set them (nothing else)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            **extra,
        }

    def client(self, service: str = "s3"):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )


def start_moto(log: Path, **env: str) -> S3Server:
    """Start ``moto_server`` on a free loopback port and wait until it answers."""
    port = free_port()
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
            return S3Server(endpoint, proc)
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited: {log.read_text()[-2000:]}") from None
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto_server did not answer in 60 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto S3 server for the whole session (accepts any key), with the bucket ``lake``."""
    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    server.client().create_bucket(Bucket="lake")
    yield server
    stop(server.proc)


@pytest.fixture()
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server's variables set in this process (as the scheduler would), and nothing else."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3


@dataclass
class Azurite:
    """An azurite blob server: its connection string."""

    connection_string: str
    proc: subprocess.Popen


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """azurite's blob service on a free loopback port (skipped where azurite is not installed)."""
    if not AZURITE.exists():
        pytest.skip(f"azurite is not installed ({AZURITE}): npm install --prefix .scoring/azurite azurite@3.35.0")
    root = tmp_path_factory.mktemp("azurite")
    port = free_port()
    proc = subprocess.Popen(
        [
            str(AZURITE),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--location",
            str(root),
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
        ],
        stdout=(root / "azurite.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/devstoreaccount1?comp=list", timeout=2).close()
            break
        except urllib.error.HTTPError:  # answering (403 without a signature) is enough
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"azurite exited: {(root / 'azurite.log').read_text()[-2000:]}") from None
            time.sleep(0.3)
    account_key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={account_key};"
        f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )
    yield Azurite(connection, proc)
    stop(proc)


def start_mlflow(root: Path, artifacts: list[str], env: dict[str, str]) -> tuple[str, subprocess.Popen]:
    """A real ``mlflow server`` on a free loopback port with the given artifact options."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--workers", "1", *artifacts]  # fmt: skip
    log = root / "server.log"
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=root, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240  # a loaded 2-core machine
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            return url, proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {log.read_text()[-2000:]}") from None
            time.sleep(0.5)
    stop(proc)
    raise RuntimeError("mlflow server did not become healthy in 240 s")
