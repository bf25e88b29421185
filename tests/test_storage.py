# ruff: noqa: F811  (fixtures imported from tests.object_store are parameters here)
"""Tables and outputs on a real S3-compatible server (moto, server mode, on 127.0.0.1).

The endpoint reaches the job only through ``AWS_ENDPOINT_URL``, as a scheduler sets it; the
secret key has a real key's shape and is searched for in everything the job writes.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoring.cli import main
from scoring.errors import ExitCode
from tests.object_store import SECRET, S3Server, azurite, s3, s3_env, start_moto, stop  # noqa: F401

GB_QUERY = "SELECT d.id, p.label FROM PREDICT(MODEL = 'gb', DATA = t AS d) WITH (label BIGINT) AS p"


def put_parquet(server: S3Server, key: str, table: pa.Table) -> None:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    server.client().put_object(Bucket="lake", Key=key, Body=sink.getvalue())


def get_object(server: S3Server, key: str) -> bytes:
    return server.client().get_object(Bucket="lake", Key=key)["Body"].read()


def keys(server: S3Server, prefix: str) -> list[str]:
    found = server.client().list_objects_v2(Bucket="lake", Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in found)


@pytest.fixture()
def run_cli(registry, tmp_path, capsys, monkeypatch):
    """``scoring run`` in-process from an empty working folder; returns (exit code, stderr)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    monkeypatch.setenv("SCORING_HOME", str(registry.home))
    monkeypatch.setenv("SCORING_CACHE_DIR", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def run(*argv: str) -> tuple[int, str]:
        code = main(["run", "--dialect", "tsql", *argv])
        return code, capsys.readouterr().err

    return run


def test_s3_table_to_s3_output_equals_scikit_learn(registry, s3_env, run_cli, tmp_path):
    case = registry.cases["gb"]
    put_parquet(s3_env, "in/gb/data.parquet", pq.read_table(registry.tables["gb"]))
    code, err = run_cli(
        "--model", "gb=models:/gb/1", "--table", "t=s3://lake/in/gb/data.parquet",
        "--query", GB_QUERY, "--output", "s3://lake/out/scored.parquet",
    )  # fmt: skip
    assert code == ExitCode.OK, err
    result = pq.read_table(io.BytesIO(get_object(s3_env, "out/scored.parquet"))).sort_by("id")
    np.testing.assert_array_equal(result["label"].to_numpy(), case.expected_label())
    manifest = json.loads(get_object(s3_env, "out/scored.parquet.run.json"))
    assert manifest["status"] == "succeeded" and manifest["rows"] == len(case.frame)
    assert manifest["output"] == "s3://lake/out/scored.parquet"
    assert keys(s3_env, "out/") == ["out/", "out/scored.parquet", "out/scored.parquet.run.json"]
    assert list((tmp_path / "work").iterdir()) == []  # no junk local folder such as ./s3:/lake/out/
    everything = (
        err
        + json.dumps(manifest)
        + str(pq.read_metadata(io.BytesIO(get_object(s3_env, "out/scored.parquet"))).metadata)
    )
    assert SECRET not in everything


def test_hive_folder_and_glob_on_s3_with_partition_columns(registry, s3_env):
    from scoring.engines.duckdb import DuckDBEngine

    frame = pq.read_table(registry.tables["gb"])
    for part in (0, 1):
        chunk = frame.filter(pa.compute.equal(pa.compute.bit_wise_and(frame["id"], 1), part))
        put_parquet(s3_env, f"hive/part={part}/data.parquet", chunk)
    s3_env.client().put_object(Bucket="lake", Key="hive/_SUCCESS", Body=b"")
    engine = DuckDBEngine()
    try:
        engine.register_table("folder", "s3://lake/hive/")
        engine.register_table("globbed", "s3://lake/hive/part=1/*.parquet")
        engine.register_table("deep", "s3://lake/hive/**/*.parquet")
        rows = engine.con.sql("SELECT part, count(*) FROM folder GROUP BY part ORDER BY part").fetchall()
        assert [r[1] for r in rows] == [200, 200] and [int(r[0]) for r in rows] == [0, 1]
        assert engine.con.sql("SELECT count(*) FROM globbed").fetchall() == [(200,)]
        assert engine.con.sql("SELECT count(*) FROM deep WHERE part = 0").fetchall() == [(200,)]
    finally:
        engine.close()


def test_missing_table_and_mode_error_are_checked_on_the_store(registry, s3_env, run_cli):
    code, err = run_cli(
        "--model", "gb=models:/gb/1", "--table", "t=s3://lake/nothing/here.parquet",
        "--query", GB_QUERY, "--output", "s3://lake/out/missing.parquet",
    )  # fmt: skip
    assert code == ExitCode.INPUT_DATA, err
    assert "table 't': no Parquet file or folder at 's3://lake/nothing/here.parquet'" in err
    s3_env.client().put_object(Bucket="lake", Key="out/exists.parquet", Body=b"previous")
    put_parquet(s3_env, "in/gb2.parquet", pq.read_table(registry.tables["gb"]))
    code, err = run_cli(
        "--model", "gb=models:/gb/1", "--table", "t=s3://lake/in/gb2.parquet", "--mode", "error",
        "--query", GB_QUERY, "--output", "s3://lake/out/exists.parquet",
    )  # fmt: skip
    assert code == ExitCode.OUTPUT, err
    assert "output 's3://lake/out/exists.parquet' already exists and the write mode is 'error'" in err
    assert get_object(s3_env, "out/exists.parquet") == b"previous"


def test_refused_credentials_are_one_line_with_the_authentication_code(registry, tmp_path, run_cli, monkeypatch):
    """moto enforcing IAM: a real user's key id with a wrong secret, and an unknown key id."""
    server = start_moto(tmp_path / "moto-auth.log", INITIAL_NO_AUTH_ACTION_COUNT="3")
    try:
        iam = server.client("iam")
        iam.create_user(UserName="scorer")
        key = iam.create_access_key(UserName="scorer")["AccessKey"]
        import boto3  # the third call, the last one moto lets through unauthenticated, is signed anyway

        boto3.client(
            "s3", endpoint_url=server.endpoint, region_name="us-east-1",
            aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"],
        ).create_bucket(Bucket="lake")  # fmt: skip
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for key_id, secret in ((key["AccessKeyId"], SECRET), ("AKIAUNKNOWNUNKNOWN00", SECRET)):
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
            code, err = run_cli(
                "--model", "gb=models:/gb/1", "--table", "t=s3://lake/in/t.parquet",
                "--query", GB_QUERY, "--output", str(tmp_path / "out.parquet"),
            )  # fmt: skip
            lines = [line for line in err.splitlines() if line.strip()]
            assert code == ExitCode.AUTHENTICATION, err
            assert len(lines) == 1 and lines[0].startswith("scoring: error: table 't': 's3://lake/in/t.parquet'"), err
            assert "refused the credentials" in lines[0] and SECRET not in err, err
    finally:
        stop(server.proc)


KILL_JOB = """
import sys
from scoring.cli import entry
sys.argv = ["scoring", *sys.argv[1:]]
entry()
"""


@pytest.fixture(scope="module")
def big_s3_table(s3):
    """About 40 MB of incompressible doubles: the upload takes several 10 MB parts."""
    rng = np.random.default_rng(0)
    table = pa.table({f"c{i}": rng.random(500_000) for i in range(10)})
    put_parquet(s3, "in/big.parquet", table)
    return "s3://lake/in/big.parquet"


@pytest.mark.slow
def test_kill_mid_upload_keeps_the_previous_object(s3, big_s3_table, registry, tmp_path):
    """SIGKILL after the first part reached S3: the previous object stays (same ETag), nothing
    partial is visible, and the next run aborts the unfinished upload under its prefix."""
    client = s3.client()
    client.put_object(Bucket="lake", Key="kill/scored.parquet", Body=b"previous result")
    etag = client.head_object(Bucket="lake", Key="kill/scored.parquet")["ETag"]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        **s3.env(),
        "MLFLOW_TRACKING_URI": registry.tracking_uri,
        "SCORING_HOME": str(registry.home),
        "SCORING_CACHE_DIR": str(tmp_path / "cache"),
        "SCORING_ROW_GROUP_ROWS": "8192",  # many small writes: the upload goes part by part
        "SCORING_COMPRESSION": "none",
    }
    argv = [
        "run",
        "--table",
        f"t={big_s3_table}",
        "--query",
        "SELECT * FROM t",
        "--output",
        "s3://lake/kill/scored.parquet",
    ]
    proc = subprocess.Popen([sys.executable, "-c", KILL_JOB, *argv], env=env, cwd=tmp_path, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    parts = 0
    while parts == 0:
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "no part was uploaded in 120 s"
        for upload in client.list_multipart_uploads(Bucket="lake", Prefix="kill/").get("Uploads", []):
            parts += len(
                client.list_parts(Bucket="lake", Key=upload["Key"], UploadId=upload["UploadId"]).get("Parts", [])
            )
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    assert client.head_object(Bucket="lake", Key="kill/scored.parquet")["ETag"] == etag
    assert keys(s3, "kill/") == ["kill/scored.parquet"]  # no partial object, visible or hidden
    assert client.list_multipart_uploads(Bucket="lake", Prefix="kill/").get("Uploads")  # the killed one's

    small = subprocess.run(
        [sys.executable, "-c", KILL_JOB, "run", "--table", f"t={big_s3_table}", "--query", "SELECT c0 FROM t LIMIT 10",
         "--output", "s3://lake/kill/scored.parquet"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert small.returncode == 0, small.stderr
    assert client.list_multipart_uploads(Bucket="lake", Prefix="kill/").get("Uploads", []) == []
    assert pq.read_table(io.BytesIO(get_object(s3, "kill/scored.parquet"))).num_rows == 10
    assert keys(s3, "kill/") == ["kill/", "kill/scored.parquet", "kill/scored.parquet.run.json"]


def test_stale_temporaries_of_dead_processes_are_removed_and_others_kept(tmp_path):
    """Issue 11 item 14: a later run removes its own pattern's leftovers whose owner is gone."""
    import socket

    from scoring.publish import check_target

    out = tmp_path / "x.parquet"
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftovers = {
        f".x.parquet.tmp-0123456789ab-{dead.pid}@{host}": "dead",  # removed
        f".x.parquet.tmp-0123456789ab-{os.getpid()}@{host}": "live",  # kept: its process runs
        f".x.parquet.tmp-0123456789ab-{dead.pid}@elsewhere": "other host",  # kept: cannot tell
        ".x.parquet.tmp-0123456789ab": "old pattern",  # kept: not ours to judge
        f".y.parquet.tmp-0123456789ab-{dead.pid}@{host}": "other output",  # kept
    }
    for name, text in leftovers.items():
        (tmp_path / name).write_text(text)
    (tmp_path / f".x.parquet.tmp-fedcba987654-{dead.pid}@{host}").mkdir()  # a Spark folder: removed
    check_target(str(out), "overwrite")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(leftovers) - {next(iter(leftovers))})


def test_secrets_are_redacted():
    from scoring import storage

    assert storage.redact("s3://AKIA:" + SECRET + "@lake/x") == "s3://***@lake/x"
    assert storage.redact("abfs://c/x?sig=abc&sv=1") == "abfs://c/x?sig=***&sv=1"
    assert (
        storage.redact("at 'http://user:pw@127.0.0.1:5000' and https://tok@h/x")
        == "at 'http://***@127.0.0.1:5000' and https://***@h/x"
    )
    os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET
    try:
        assert storage.scrub(f"request signed with {SECRET}") == "request signed with ***"
    finally:
        del os.environ["AWS_SECRET_ACCESS_KEY"]


def test_azure_blob_on_azurite_table_to_output_and_a_refused_key(registry, azurite, run_cli, monkeypatch):
    """pyarrow's AzureFileSystem against Microsoft's emulator, configured by a connection string."""
    from scoring import storage

    for name in [n for n in os.environ if n.startswith("AZURE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    source = storage.locate("az://lake/in/gb.parquet")
    source.fs.create_dir("lake")
    pq.write_table(pq.read_table(registry.tables["gb"]), source.path, filesystem=source.fs)
    argv = ("--model", "gb=models:/gb/1", "--query", GB_QUERY, "--output", "az://lake/out/scored.parquet")
    code, err = run_cli("--table", "t=abfs://lake/in/gb.parquet", *argv)
    assert code == ExitCode.OK, err
    out = storage.locate("az://lake/out/scored.parquet")
    result = pq.read_table(out.path, filesystem=out.fs).sort_by("id")
    np.testing.assert_array_equal(result["label"].to_numpy(), registry.cases["gb"].expected_label())
    assert out.sibling("scored.parquet.run.json").exists()

    wrong = "A" * 86 + "=="  # a well-formed key the account does not have
    real_key = azurite.connection_string.split("AccountKey=")[1].split(";")[0]
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string.replace(real_key, wrong))
    code, err = run_cli("--table", "t=az://lake/in/gb.parquet", *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == ExitCode.AUTHENTICATION and len(lines) == 1, err
    assert "refused the credentials (AuthorizationFailure)" in lines[0] and wrong not in err and real_key not in err


def test_folder_commit_protocol_on_s3(s3_env):
    """No rename on S3: the manifest object is the commit; readers that check it see the whole
    result or are told to retry, never a mix of two runs."""
    from scoring import storage
    from scoring.errors import InputDataError
    from scoring.publish import publish_folder

    def writer(parts: int):
        def write(tmp: str) -> int:
            location = storage.locate(tmp)
            for n in range(parts):
                pq.write_table(
                    pa.table({"run": [parts] * 5}), f"{location.path}/part-{n}.parquet", filesystem=location.fs
                )
            return 5 * parts

        return write

    assert publish_folder("s3://lake/fold/out", writer(3), {"engine": "test"}, "overwrite") == 15
    assert publish_folder("s3://lake/fold/out", writer(2), {"engine": "test"}, "overwrite") == 10
    objects = [k for k in keys(s3_env, "fold/out/") if not k.endswith("/")]  # pyarrow's folder markers aside
    assert objects == ["fold/out/_scoring.json", "fold/out/part-0.parquet", "fold/out/part-1.parquet"]
    manifest = json.loads(get_object(s3_env, "fold/out/_scoring.json"))
    assert manifest["status"] == "committed" and manifest["files"] == ["part-0.parquet", "part-1.parquet"]
    assert [k for k in keys(s3_env, "fold/") if ".tmp-" in k] == []  # the temporary folder is gone
    put_parquet(s3_env, "fold/out/stray.parquet", pa.table({"run": [99]}))  # not listed: not read
    assert storage.open_dataset("s3://lake/fold/out").to_table()["run"].to_pylist() == [2] * 10
    s3_env.client().put_object(Bucket="lake", Key="fold/out/_scoring.json", Body=b'{"status": "publishing"}')
    with pytest.raises(InputDataError, match=r"'s3://lake/fold/out' is being replaced by another run"):
        storage.open_dataset("s3://lake/fold/out")
