"""``make bench``: how close a ``scoring run`` job comes to the limit any job must pay (issue 12).

Measured side by side on the same rows, for each model (gradient boosting, MLP, logistic
regression, all skl2onnx with one [N, 20] float input and outputs ``label``, ``probability``):

(a) raw onnxruntime on the in-memory matrix: the table read to a float32 numpy matrix once,
    outside the timing, then ``session.run`` over it in 65,536-row batches, default session;
(b) a DuckDB ``COPY`` of the same table plus one computed column (``f0 + f1``), in its own process;
(c) bare process start-up importing what no job can avoid (duckdb, onnxruntime, pyarrow.parquet,
    numpy, sqlglot, pydantic_settings), and the same plus the job's own modules;
(d) the whole ``scoring run --engine duckdb`` process, function form and T-SQL ``PREDICT`` form,
    each on the batch path (the default, ``SCORING_BATCH_SCORING=auto``) and on the UDF path
    (``off``: the "before" figures); the path that ran is read from the run manifest;
(e) the whole ``scoring run --engine spark`` process (local[2]), gradient boosting only, once per UDF
    kind (``SCORING_SPARK_UDF=arrow``: pyspark >= 4.1, and ``pandas``);
(f) ``mlflow.pyfunc.spark_udf`` in its own process with its own local[2] SparkSession, and the
    same process with no model, reading and writing the same columns plus one computed column;
and the peak memory of the cheapest model's DuckDB job, batch and UDF path, over a quarter of
``--memory-rows`` rows and over all of them: flat in N when the second is at most 1.25x the first.

The limit of a DuckDB job is (c, bare) + (a) + (b, the COPY statement); the limit of the Spark
job is (f, no model: JVM start included) + (a) on the Spark rows. ``make bench`` prints each
job / limit ratio with its target (<= 1.10) met or not.

Wall time is the whole process (start-up, JVM start, model loading included). Peak memory is
the RSS of the process tree summed and sampled every 50 ms with psutil ("tree RSS"); the kernel's
exact high-water mark of the largest single process, ``ru_maxrss`` from ``os.wait4`` on the child,
is reported beside it ("maxrss"). Both are taken by measure_child.py, a small parent process, so
that the bench process's own memory is not inherited into the children's ``ru_maxrss``. CPU
seconds (user + system of the child and what it waited for; this process's own for the
in-process figures) are printed too: on a busy machine they move less than wall time.

Prints a table, writes ``<work>/results.json`` and ``<work>/rows_per_s.png``. Data, models and the
registry are cached under ``<work>`` (default ``.scoring/bench``) between runs.

    python tests/bench/bench.py [--rows 2000000] [--spark-rows 4000000] [--memory-rows 10000000]
                                [--no-spark] [--no-udf] [--models gb,mlp,lr] [--repeat 3]
                                [--spark-repeat 1] [--sweep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import prepare

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BIN = Path(sys.executable).parent
FEATURE_LIST = ", ".join(prepare.FEATURES)
FN_QUERY = f"SELECT *, m({FEATURE_LIST}) AS p FROM t"
TSQL_QUERY = (
    "SELECT d.*, p.label, p.probability FROM PREDICT(MODEL = 'm', DATA = t AS d, RUNTIME = ONNX) "
    "WITH (label BIGINT, probability SQL_VARIANT) AS p"
)
# The limit's start-up term (issue 12): the imports no job can avoid.
STARTUP_IMPORTS = "import duckdb, onnxruntime, pyarrow.parquet, numpy, sqlglot, pydantic_settings"
# What a DuckDB job imports on top, once its pinned model is in the cache (mlflow is imported only
# to reach the registry: aliases, `latest`, or a version not cached yet). The bench pins every model first.
JOB_IMPORTS = "import scoring.cli, scoring.job, scoring.engines.duckdb"
# The job writes zstd, one row group per 131,072-row batch: the copy in the limit does the same,
# and adds one computed column, as the job adds its score.
COPY_AS_JOB = "FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 131072"
COPY_PLAIN = "FORMAT parquet"
COMPUTED = "f0 + f1 AS score"
ORT_CHUNK = 65_536
DUCKDB_BATCH = 2_048  # rows per call DuckDB hands a vectorized Python UDF (one vector)
TARGET_RATIO = 1.10  # DuckDB job / limit, every model, both forms, at 2M rows
SPARK_TARGET_RATIO = 1.10  # Spark job / Spark limit, gb, at 4M rows
# The DuckDB paths: (row label, query, dialect, SCORING_BATCH_SCORING); "off" is the UDF path (before).
DUCKDB_PATHS = (
    ("DuckDB job", "FN", None, "auto"),
    ("DuckDB job (T-SQL PREDICT)", "TSQL", "tsql", "auto"),
    ("DuckDB job, UDF path", "FN", None, "off"),
    ("DuckDB job (T-SQL), UDF path", "TSQL", "tsql", "off"),
)
# Peak memory is flat in N when the job over --memory-rows rows peaks at most this much above
# the same job over --rows rows (the RSS of a process is never exactly equal run to run).
MEMORY_FLAT = 1.25
# The Spark job on each UDF kind (scoring/engines/spark_udfs.py): Arrow UDF (pyspark >= 4.1), pandas UDF.
SPARK_PATHS = (("Spark job (Arrow UDF)", "arrow"), ("Spark job (pandas UDF)", "pandas"))
MEMORY_PATHS = (("DuckDB memory, batch path", "auto"), ("DuckDB memory, UDF path", "off"))
POLL_S = 0.05  # as in measure_child.py
MB = 1e6


# -- processes ----------------------------------------------------------------------------------


@dataclass
class Proc:
    """One child process: wall time, peak memory, exit status and output."""

    wall_s: float
    cpu_s: float  # user + system seconds of the child and the descendants it waited for
    rc: int
    tree_rss: int  # bytes: peak of the summed RSS of the process tree, sampled every POLL_S
    maxrss: int  # bytes: ru_maxrss from wait4 (largest single process of the tree)
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)

    def error_line(self) -> str:
        """The line that says what went wrong: ``scoring: ...`` if any, else the last line."""
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        for line in lines:
            if line.startswith("scoring:"):
                return line
        return lines[-1] if lines else f"exit code {self.rc}"

    def json_line(self) -> dict[str, Any]:
        """The last stdout line that parses as a JSON object (what the scripts print)."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith("{"):
                try:
                    return dict(json.loads(line))
                except ValueError:
                    continue
        return {}


def run_process(cmd: list[str], env: dict[str, str] | None = None) -> Proc:
    """Run ``cmd`` to completion under measure_child.py (which see for what is measured)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with out.open("wb") as fo, err.open("wb") as fe:
            wrapper = subprocess.run(
                [sys.executable, str(HERE / "measure_child.py"), str(result), "--", *cmd],
                cwd=ROOT,
                env=env,
                stdout=fo,
                stderr=fe,
                check=False,
            )
        stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
        if wrapper.returncode != 0 or not result.is_file():
            return Proc(0.0, 0.0, wrapper.returncode or 1, 0, 0, stdout, stderr)
        m = json.loads(result.read_text())
        return Proc(m["wall_s"], m["cpu_s"], m["rc"], m["tree_rss"], m["maxrss"], stdout, stderr)


def best(runs: list[Proc]) -> Proc:
    """The fastest of repeated runs, with the highest peak memory seen in any of them."""
    fastest = min(runs, key=lambda r: r.wall_s)
    return Proc(
        fastest.wall_s,
        fastest.cpu_s,
        fastest.rc,
        max(r.tree_rss for r in runs),
        max(r.maxrss for r in runs),
        fastest.stdout,
        fastest.stderr,
    )


def repeat(times: int, cmd: list[str], env: dict[str, str] | None = None) -> Proc:
    runs = []
    for _ in range(times):
        runs.append(run_process(cmd, env))
        if runs[-1].rc != 0:
            return runs[-1]
    return best(runs)


def warm_file(path: Path) -> None:
    """Read a file (or folder) once so that every measurement starts from the page cache."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        with f.open("rb") as fh:
            while fh.read(1 << 24):
                pass


def parquet_rows(path: Path) -> int:
    import pyarrow.dataset as ds

    return int(ds.dataset(path, format="parquet").count_rows())


def remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


# -- results ----------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table."""

    path: str
    model: str
    rows: int
    seconds: float | None
    cpu_s: float | None = None
    tree_rss: int | None = None
    maxrss: int | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float | None:
        return self.rows / self.seconds if self.seconds and self.rows else None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.work).resolve()
        self.out = self.work / "out"
        self.rows: list[Row] = []
        self.unavailable: dict[str, str] = {}
        self.env = dict(os.environ)
        for key in (
            "MLFLOW_REGISTRY_URI",
            "SCORING_TRACKING_URI",
            "SCORING_REGISTRY_URI",
            "SCORING_CACHE_DIR",
            "SCORING_HOME",
            "SCORING_ENGINE",
            "SCORING_DIALECT",
            "SCORING_LOG_FORMAT",
        ):
            self.env.pop(key, None)
        self.env.update(
            {
                "MLFLOW_TRACKING_URI": prepare.tracking_uri(self.work),
                "SCORING_HOME": str(self.work),
                "SCORING_SPARK_MASTER": args.spark_master,
                "PYSPARK_PYTHON": sys.executable,
                "PYSPARK_DRIVER_PYTHON": sys.executable,
            }
        )

    def log(self, message: str) -> None:
        print(message, flush=True)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        rate = f"{row.rows_per_s:>12,.0f} rows/s" if row.rows_per_s else ""
        mem = f"  tree RSS {row.tree_rss / MB:,.0f} MB" if row.tree_rss else ""
        secs = f"{row.seconds:8.2f} s" if row.seconds is not None else "       -  "
        if row.cpu_s is not None:
            secs += f" ({row.cpu_s:6.2f} cpu)"
        self.log(f"  {row.path:<34} {row.model:<4} {secs} {rate}{mem}  {row.note}")
        return row

    def find(self, path: str, model: str) -> Row | None:
        return next((r for r in self.rows if r.path == path and r.model == model), None)

    # -- (a) raw onnxruntime, and the in-process breakdown ------------------------------------

    def raw_ort(self, key: str, model: prepare.BenchModel, matrix: Any, path: str = "onnxruntime (ceiling)") -> None:
        import onnxruntime as ort

        session = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        chunk = self.args.ort_chunk
        wall, cpu = self._timed(
            lambda: [session.run(None, {name: matrix[i : i + chunk]}) for i in range(0, len(matrix), chunk)]
        )
        note = f"default session, {chunk:,}-row chunks, float32 in memory"
        self.add(Row(path, key, len(matrix), wall, cpu_s=cpu, note=note))

    def _timed(self, work: Any) -> tuple[float, float]:
        """Wall and CPU seconds (this process, all threads) of the fastest of max(3, --repeat) runs."""
        work()  # warm-up: allocations, kernels, caches
        runs = []
        for _ in range(max(3, self.args.repeat)):
            wall, cpu = time.perf_counter(), time.process_time()
            work()
            runs.append((time.perf_counter() - wall, time.process_time() - cpu))
        return min(runs)

    def breakdown(self, key: str, model: prepare.BenchModel, matrix: Any, table: Any) -> None:
        """Where the UDF's time goes, in this process, on one thread, with the job's own session.

        The job runs DuckDB with one thread per core and gives each onnxruntime session
        cores // threads intra-op threads (1 here on 2 cores), with spinning off. These three
        figures use exactly that session (scoring.cache.load_model), on one calling thread:
        onnxruntime over 131,072-row and over 2,048-row float32 chunks, then Model.predict (the
        UDF body: Arrow float64 columns -> float32 matrix -> session -> STRUCT<label, LIST>)
        over 2,048-row Arrow batches, the size DuckDB hands a vectorized UDF.
        """
        from scoring.cache import default_threads, load_model
        from scoring.job import registry_for
        from scoring.settings import load_settings

        settings = load_settings(home=self.work, tracking_uri=prepare.tracking_uri(self.work))
        threads = settings.ort_threads or default_threads(settings.threads or default_threads())
        loaded = load_model(registry_for(settings).resolve(model.uri), threads)
        session, name = loaded.session, loaded.inputs[0].name
        n = min(len(matrix), self.args.breakdown_rows)
        sub = matrix[:n]
        batches = [list(b.columns) for b in table.slice(0, n).to_batches(max_chunksize=DUCKDB_BATCH)]
        label = f"{threads} intra-op thread{'s' if threads > 1 else ''}, 1 caller"
        for path, work, note in (
            (f"job session {ORT_CHUNK:,}-row chunks", self._chunks(session, name, sub, ORT_CHUNK), label),
            (f"job session {DUCKDB_BATCH:,}-row chunks", self._chunks(session, name, sub, DUCKDB_BATCH), label),
            (
                f"Model.predict {DUCKDB_BATCH:,}-row batches",
                lambda: [loaded.predict(columns) for columns in batches],
                f"{label}; Arrow float64 in, STRUCT out",
            ),
        ):
            wall, cpu = self._timed(work)
            self.add(Row(path, key, n, wall, cpu_s=cpu, note=note))

    @staticmethod
    def _chunks(session: Any, name: str, matrix: Any, chunk: int) -> Any:
        return lambda: [session.run(None, {name: matrix[i : i + chunk]}) for i in range(0, len(matrix), chunk)]

    # -- (b) copy, (c) start-up -----------------------------------------------------------------

    def copy(self, source: Path, rows: int) -> None:
        for label, options in (
            ("DuckDB copy (as the job writes)", COPY_AS_JOB),
            ("DuckDB copy (FORMAT parquet)", COPY_PLAIN),
        ):
            target = self.out / "copy.parquet"
            proc = repeat(
                self.args.repeat,
                [sys.executable, str(HERE / "copy_job.py"), str(source), str(target), options, COMPUTED],
            )
            if proc.rc != 0:
                self.unavailable[label] = proc.error_line()
                self.log(f"  {label}: failed: {proc.error_line()}")
                continue
            phases = proc.json_line()
            self.add(
                Row(
                    label,
                    "-",
                    rows,
                    proc.wall_s,
                    cpu_s=proc.cpu_s,
                    tree_rss=proc.tree_rss,
                    maxrss=proc.maxrss,
                    note=f"COPY statement {phases['copy_s']:.2f} s (SELECT *, {COMPUTED}; {options})",
                    extra={"copy_s": phases["copy_s"], "import_s": phases["import_s"], "options": options},
                )
            )
            remove(target)

    def startup(self) -> None:
        for path, imports in (
            ("bare start-up (imports)", STARTUP_IMPORTS),
            ("start-up + the job's imports", f"{STARTUP_IMPORTS}; {JOB_IMPORTS}"),
        ):
            runs = [run_process([sys.executable, "-c", imports], self.env) for _ in range(max(5, self.args.repeat))]
            failed = [r for r in runs if r.rc != 0]
            if failed:
                raise SystemExit(f"bench: start-up imports failed: {failed[0].error_line()}")
            median = statistics.median(r.wall_s for r in runs)
            self.add(
                Row(
                    path,
                    "-",
                    0,
                    median,
                    cpu_s=statistics.median(r.cpu_s for r in runs),
                    tree_rss=max(r.tree_rss for r in runs),
                    maxrss=max(r.maxrss for r in runs),
                    note=f"median of {len(runs)}: python -c '{imports}'",
                )
            )

    # -- (d) DuckDB jobs --------------------------------------------------------------------------

    def job(
        self,
        path: str,
        key: str,
        model: prepare.BenchModel,
        source: Path,
        rows: int,
        *,
        engine: str = "duckdb",
        query: str = FN_QUERY,
        dialect: str | None = None,
        env: dict[str, str] | None = None,
        note: str = "",
        times: int | None = None,
    ) -> Row | None:
        output = self.out / f"{engine}_{key}" if engine == "spark" else self.out / f"{engine}_{key}.parquet"
        remove(output)
        cmd = [
            str(BIN / "scoring"),
            "run",
            "--engine",
            engine,
            "--model",
            f"m={model.uri}",
            "--table",
            f"t={source}",
            "--query",
            query,
            "--output",
            str(output),
            "--log-format",
            "json",
        ]
        if dialect:
            cmd += ["--dialect", dialect]
        proc = repeat(times or self.args.repeat, cmd, env or self.env)
        if proc.rc != 0:
            self.unavailable[f"{path} {key}"] = proc.error_line()
            label = "spark" if engine == "spark" else path
            self.log(f"{label}: unavailable: {proc.error_line()}")
            remove(output)
            return None
        summary = proc.json_line()
        written = parquet_rows(output)
        manifest = output.parent / f"{output.name}.run.json"
        try:
            scoring_path = json.loads(manifest.read_text()).get("scoring_path")
        except (OSError, ValueError):
            scoring_path = None
        remove(output)
        check = "" if written == rows else f"WRONG ROW COUNT {written:,} != {rows:,}; "
        return self.add(
            Row(
                path,
                key,
                rows,
                proc.wall_s,
                # The JVM (and Spark's Python workers) are never waited for by the driver, so
                # wait4 misses their CPU: a Spark row's CPU would be the driver's alone.
                cpu_s=None if engine == "spark" else proc.cpu_s,
                tree_rss=proc.tree_rss,
                maxrss=proc.maxrss,
                note=f"{check}in-job {summary.get('seconds', float('nan')):.2f} s"
                + (f", {scoring_path} path" if scoring_path else "")
                + note,
                extra={
                    "job_seconds": summary.get("seconds"),
                    "rows_written": written,
                    "driver_cpu_s": proc.cpu_s,
                    "scoring_path": scoring_path,
                },
            )
        )

    # -- (f) spark_udf --------------------------------------------------------------------------------

    def spark_udf(self, source: Path, rows: int, *, model: bool = True) -> None:
        path = "mlflow spark_udf" if model else "Spark copy (no model)"
        output = self.out / ("spark_udf_gb" if model else "spark_copy")
        remove(output)
        cmd = [
            sys.executable,
            str(HERE / "spark_udf_job.py"),
            prepare.PYFUNC_URI if model else "-",
            str(source),
            str(output),
            "--master",
            self.args.spark_master,
        ]
        proc = repeat(self.args.spark_repeat, cmd, self.env)
        if proc.rc != 0:
            self.unavailable[f"{path} gb"] = proc.error_line()
            self.log(f"{'spark_udf' if model else 'spark copy'}: unavailable: {proc.error_line()}")
            remove(output)
            return
        phases = proc.json_line()
        written = parquet_rows(output)
        remove(output)
        check = "" if written == rows else f"WRONG ROW COUNT {written:,} != {rows:,}; "
        what = "score+write" if model else "read+write"
        self.add(
            Row(
                path,
                "gb" if model else "-",
                rows,
                proc.wall_s,
                cpu_s=None,  # as for the Spark job: the JVM's CPU is not visible to wait4
                tree_rss=proc.tree_rss,
                maxrss=proc.maxrss,
                note=f"{check}JVM start {phases.get('session_s', 0):.1f} s, {what} "
                f"{phases.get('score_write_s', 0):.1f} s" + ("; label-only copy of the graph" if model else ""),
                extra=dict(phases, driver_cpu_s=proc.cpu_s),
            )
        )

    # -- the run ----------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        args = self.args
        keys = [k.strip() for k in args.models.split(",") if k.strip()]
        unknown = set(keys) - set(prepare.MODELS)
        if unknown:
            raise SystemExit(f"bench: unknown model(s) {sorted(unknown)}; choose from {sorted(prepare.MODELS)}")
        self.out.mkdir(parents=True, exist_ok=True)
        meta = environment()
        self.log(f"bench: {meta['cpus']} CPUs, load average {meta['load_before']}, work folder {self.work}")
        if meta["load_before"][0] > 0.5 * meta["cpus"]:
            self.log("bench: warning: the machine is busy; timings and ratios will be noisy")

        self.log("preparing data and models (cached under the work folder)")
        models = prepare.models(self.work, self.log)
        source = prepare.data_table(self.work, args.rows, self.log)
        spark_source = prepare.data_table(self.work, args.spark_rows, self.log) if args.spark else None
        memory_sources = (
            [(n, prepare.data_table(self.work, n, self.log)) for n in (args.memory_rows // 4, args.memory_rows)]
            if args.memory_rows
            else []
        )
        for key in keys:  # pin each model into the job's cache once, outside every timing
            proc = run_process([str(BIN / "scoring"), "models", "inspect", models[key].uri], self.env)
            if proc.rc != 0:
                raise SystemExit(f"bench: model {models[key].uri} cannot be inspected: {proc.error_line()}")

        import pyarrow.parquet as pq

        warm_file(source)
        table = pq.read_table(source)
        matrix = prepare.read_matrix(source)
        self.log(f"\n(c) start-up, (b) copy: {args.rows:,} rows")
        self.startup()
        self.copy(source, args.rows)
        for key in keys:
            self.log(f"\nmodel {key} ({models[key].uri}), {args.rows:,} rows")
            self.raw_ort(key, models[key], matrix)
            if args.breakdown_rows:
                self.breakdown(key, models[key], matrix, table)
            for path, form, dialect, batch in DUCKDB_PATHS:
                if batch == "off" and not args.udf:
                    continue
                env = dict(self.env, SCORING_BATCH_SCORING=batch)
                query = TSQL_QUERY if form == "TSQL" else FN_QUERY
                self.job(path, key, models[key], source, args.rows, query=query, dialect=dialect, env=env)
            if args.sweep:
                for threads, ort_threads in ((1, 1), (1, 2), (2, 1), (2, 2)):
                    env = dict(self.env, SCORING_THREADS=str(threads), SCORING_ORT_THREADS=str(ort_threads))
                    self.job(
                        f"DuckDB job threads={threads} ort={ort_threads}", key, models[key], source, args.rows, env=env
                    )
        del table, matrix

        if spark_source is not None and "gb" in models:
            self.log(f"\n(e) Spark job, (f) spark_udf: gb, {args.spark_rows:,} rows, {args.spark_master}")
            warm_file(spark_source)
            spark_matrix = prepare.read_matrix(spark_source)
            self.raw_ort("gb", models["gb"], spark_matrix, path="onnxruntime (ceiling, Spark rows)")
            del spark_matrix
            for label, kind in SPARK_PATHS:  # a kind this pyspark lacks is reported unavailable (exit 2)
                env = dict(self.env, SCORING_SPARK_UDF=kind)
                self.job(
                    label,
                    "gb",
                    models["gb"],
                    spark_source,
                    args.spark_rows,
                    engine="spark",
                    env=env,
                    times=args.spark_repeat,
                    note=f", SCORING_SPARK_UDF={kind}",
                )
            self.spark_udf(spark_source, args.spark_rows)
            self.spark_udf(spark_source, args.spark_rows, model=False)

        if memory_sources:
            # The cheapest model: the check is about the read -> score -> write path holding
            # a bounded number of batches, and a slow model would only make the run longer.
            # A quarter of --memory-rows as the smaller size: from about 1M rows on, the
            # pipeline's buffers are full, so below that the peak still grows with N.
            key = "lr" if "lr" in keys else keys[0]
            sizes = " and ".join(f"{n:,}" for n, _ in memory_sources)
            self.log(f"\nmemory: DuckDB job, {key}, {sizes} rows, both paths")
            for label, batch in MEMORY_PATHS:
                env = dict(self.env, SCORING_BATCH_SCORING=batch)
                for rows, table_path in memory_sources:
                    warm_file(table_path)
                    self.job(f"{label} at {rows:,}", key, models[key], table_path, rows, env=env, times=1)

        meta["load_after"] = list(os.getloadavg())
        return {
            "meta": meta,
            "args": vars(args),
            "rows": [dict(asdict(r), rows_per_s=r.rows_per_s) for r in self.rows],
            "ratios": self.ratios(keys),
            "unavailable": self.unavailable,
        }

    def ratios(self, keys: list[str]) -> dict[str, Any]:
        args = self.args
        out: dict[str, Any] = {"job_vs_limit": {}}
        startup = self.find("bare start-up (imports)", "-")
        copy = self.find("DuckDB copy (as the job writes)", "-")
        for key in keys:
            ort_row = self.find("onnxruntime (ceiling)", key)
            for path, _, _, batch in DUCKDB_PATHS:
                job = self.find(path, key)
                if not (job and ort_row and copy and startup and job.seconds and ort_row.seconds and startup.seconds):
                    continue
                limit = ort_row.seconds + copy.extra["copy_s"] + startup.seconds
                ratio = job.seconds / limit
                # The same ratio in CPU seconds (copy: its whole process), steadier on a busy machine.
                cpu_limit = (ort_row.cpu_s or 0) + (copy.cpu_s or 0) + (startup.cpu_s or 0)
                cpu_ratio = job.cpu_s / cpu_limit if job.cpu_s and cpu_limit else None
                target = TARGET_RATIO if batch == "auto" else None  # the UDF path is the "before"
                out["job_vs_limit"][f"{path} {key}"] = {
                    "job_s": job.seconds,
                    "ort_s": ort_row.seconds,
                    "copy_s": copy.extra["copy_s"],
                    "startup_s": startup.seconds,
                    "limit_s": limit,
                    "ratio": ratio,
                    "cpu_ratio": cpu_ratio,
                    "scoring_path": job.extra.get("scoring_path"),
                    "target": target,
                    "met": None if target is None else ratio <= target,
                    "rows": args.rows,
                    "target_rows": 2_000_000,
                }
        udf = self.find("mlflow spark_udf", "gb")
        floor = self.find("Spark copy (no model)", "-")
        spark_ort = self.find("onnxruntime (ceiling, Spark rows)", "gb")
        out["spark"] = {}
        for label, kind in SPARK_PATHS:
            spark = self.find(label, "gb")
            if not (spark and spark.seconds and floor and floor.seconds and spark_ort and spark_ort.seconds):
                continue
            limit = floor.seconds + spark_ort.seconds
            out["spark"][label] = {
                "udf_kind": kind,
                "spark_job_s": spark.seconds,
                "spark_copy_s": floor.seconds,
                "ort_s": spark_ort.seconds,
                "limit_s": limit,
                "ratio": spark.seconds / limit,
                "target": SPARK_TARGET_RATIO,
                "met": spark.seconds / limit <= SPARK_TARGET_RATIO,
                "spark_udf_s": udf.seconds if udf else None,
                "speedup": udf.seconds / spark.seconds if udf and udf.seconds else None,
                "rows": args.spark_rows,
                "target_rows": 4_000_000,
            }
        out["memory"] = {}
        for label, _ in MEMORY_PATHS:
            sizes = (f"{label} at {args.memory_rows // 4:,}", f"{label} at {args.memory_rows:,}")
            found = [r for r in self.rows if r.path in sizes]
            if len(found) != 2 or not all(r.tree_rss for r in found):
                continue
            small, large = sorted(found, key=lambda r: r.rows)
            growth = large.tree_rss / small.tree_rss  # type: ignore[operator]
            out["memory"][label] = {
                "model": small.model,
                "rows": [small.rows, large.rows],
                "tree_rss_bytes": [small.tree_rss, large.tree_rss],
                "maxrss_bytes": [small.maxrss, large.maxrss],
                "growth": growth,
                "target": MEMORY_FLAT,
                "met": growth <= MEMORY_FLAT,
                "scoring_path": large.extra.get("scoring_path"),
            }
        return out


def environment() -> dict[str, Any]:
    import duckdb
    import onnxruntime
    import pyarrow

    versions = {
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "onnxruntime": onnxruntime.__version__,
        "pyarrow": pyarrow.__version__,
    }
    for name in ("mlflow", "pyspark", "sklearn", "skl2onnx"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # a missing optional library is only a blank in the report
            versions[name] = None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "machine": platform.machine(),
        "cpus": cpus,
        "load_before": list(os.getloadavg()),
        "versions": versions,
        "scoring_env": {k: v for k, v in os.environ.items() if k.startswith("SCORING_")},
        "memory_measure": f"tree RSS: psutil, RSS of the process and all descendants summed, sampled every "
        f"{POLL_S * 1000:.0f} ms, peak; maxrss: ru_maxrss of os.wait4 on the child "
        "(largest single process)",
    }


# -- report ------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: dict[str, Any]) -> str:
    lines = [
        f"| {'path':<34} | {'model':<5} | {'rows':>10} | {'wall s':>8} | {'cpu s':>7} | {'rows/s':>12} | "
        f"{'tree RSS MB':>11} | {'maxrss MB':>9} |",
        f"|{'-' * 36}|{'-' * 7}|{'-' * 12}|{'-' * 10}|{'-' * 9}|{'-' * 14}|{'-' * 13}|{'-' * 11}|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['path']:<34} | {r['model']:<5} | {r['rows']:>10,} | {_fmt(r['seconds'], '8.2f')} | "
            f"{_fmt(r['cpu_s'], '7.2f'):>7} | {_fmt(r['rows_per_s'], '12,.0f'):>12} | "
            f"{_fmt(r['tree_rss'] and r['tree_rss'] / MB, '11,.0f'):>11} | "
            f"{_fmt(r['maxrss'] and r['maxrss'] / MB, '9,.0f'):>9} |"
        )
    return "\n".join(lines)


def ratio_lines(results: dict[str, Any]) -> list[str]:
    ratios = results["ratios"]
    lines = []
    for name, r in ratios["job_vs_limit"].items():
        at = "" if r["rows"] == r["target_rows"] else " (at 2M rows)"
        verdict = (
            "  (before: the UDF path)"
            if r["target"] is None
            else f"  target <= {r['target']:.2f}{at}: {'met' if r['met'] else 'NOT MET'}"
        )
        lines.append(
            f"{name:<36} {r['job_s']:6.2f} s / ({r['ort_s']:.2f} ort + {r['copy_s']:.2f} copy + "
            f"{r['startup_s']:.2f} start-up = {r['limit_s']:.2f} s) = {r['ratio']:.2f}{verdict}"
            + ("" if r["cpu_ratio"] is None else f"  [cpu-seconds ratio {r['cpu_ratio']:.2f}]")
        )
    for label, s in ratios["spark"].items():
        at = "" if s["rows"] == s["target_rows"] else " (at 4M rows)"
        lines.append(
            f"{label + ' gb':<36} {s['spark_job_s']:6.2f} s / ({s['ort_s']:.2f} ort + {s['spark_copy_s']:.2f} "
            f"Spark read+write = {s['limit_s']:.2f} s) = {s['ratio']:.2f}  target <= {s['target']:.2f}{at}: "
            f"{'met' if s['met'] else 'NOT MET'}"
            + (
                ""
                if s["speedup"] is None
                else f"; {s['speedup']:.2f}x faster than spark_udf ({s['spark_udf_s']:.2f} s)"
            )
        )
    if results["args"]["spark"] and len(ratios["spark"]) < len(SPARK_PATHS):
        why = "; ".join(f"{k}: {v}" for k, v in results["unavailable"].items() if "park" in k) or "not measured"
        lines.append(f"{'Spark job gb':<36} some paths n/a ({why})")
    for label, m in (ratios.get("memory") or {}).items():
        small, large = (b / 1e9 for b in m["tree_rss_bytes"])
        lines.append(
            f"{label + ' peak memory':<36} {small:.2f} GB at {m['rows'][0]:,} rows, {large:.2f} GB at "
            f"{m['rows'][1]:,} ({m['model']}, tree RSS) = {m['growth']:.2f}x  flat (<= {m['target']:.2f}x): "
            f"{'met' if m['met'] else 'NOT MET'}"
        )
    return lines


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [
        "onnxruntime (ceiling)",
        "DuckDB job",
        "DuckDB job (T-SQL PREDICT)",
        "DuckDB copy (as the job writes)",
        *(label for label, _ in SPARK_PATHS),
        "mlflow spark_udf",
    ]
    rows = results["rows"]
    models = [k for k in prepare.MODELS if any(r["model"] == k for r in rows)]
    fig, ax = plt.subplots(figsize=(11, 5.5))
    width = 0.8 / len(series)
    for i, name in enumerate(series):
        values = []
        for key in models:
            match = [r for r in rows if r["path"] == name and r["model"] in (key, "-") and r["rows_per_s"]]
            values.append(match[0]["rows_per_s"] if match else 0)
        if not any(values):
            continue
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(models))]
        bars = ax.bar(xs, values, width, label=name)
        for bar, value in zip(bars, values, strict=True):
            if value:
                ax.annotate(
                    f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.0f}k",
                    (bar.get_x() + bar.get_width() / 2, value),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    args = results["args"]
    ax.set_yscale("log")
    ax.set_xticks(range(len(models)), [f"{k} ({prepare.MODELS[k][0]})" for k in models])
    ax.set_ylabel("rows / s (log scale)")
    ax.set_title(
        f"Rows per second per path: {args['rows']:,} rows (Spark paths: {args['spark_rows']:,}), "
        f"{results['meta']['cpus']} CPUs"
    )
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows scored by every path but Spark (default 2M)")
    parser.add_argument("--spark-rows", type=int, default=4_000_000, help="rows for the Spark paths (default 4M)")
    parser.add_argument(
        "--memory-rows",
        type=int,
        default=10_000_000,
        help="rows of the DuckDB job whose peak memory is checked against a quarter of them (default 10M; 0 skips)",
    )
    parser.add_argument("--no-spark", dest="spark", action="store_false", help="skip the Spark job and spark_udf")
    parser.add_argument(
        "--no-udf", dest="udf", action="store_false", help="skip the DuckDB UDF-path runs (the 'before' figures)"
    )
    parser.add_argument("--models", default="gb,mlp,lr", help="models to measure (default gb,mlp,lr)")
    # A single run of a 1-2 s process on a shared 2-core machine can be off by 2x: keep the
    # fastest of three for the DuckDB paths; the Spark paths take a minute each.
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per DuckDB measurement, the fastest kept (default 3)"
    )
    parser.add_argument("--spark-repeat", type=int, default=1, help="runs per Spark measurement (default 1)")
    parser.add_argument("--ort-chunk", type=int, default=ORT_CHUNK, help="rows per session.run for the ceiling")
    parser.add_argument(
        "--breakdown-rows",
        type=int,
        default=300_000,
        help="rows for the in-process UDF breakdown (default 300k; 0 skips)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also run the DuckDB job under other SCORING_THREADS / SCORING_ORT_THREADS settings",
    )
    parser.add_argument("--spark-master", default="local[2]", help="Spark master for both Spark paths")
    parser.add_argument("--work", default=str(ROOT / ".scoring" / "bench"), help="work folder (default .scoring/bench)")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.spark_rows < 1 or args.memory_rows < 0 or min(args.repeat, args.spark_repeat) < 1:
        parser.error("--rows, --spark-rows and --repeat must be positive, --memory-rows >= 0")
    if 0 < args.memory_rows < 4:
        parser.error("--memory-rows: at least 4 (memory is compared between a quarter of it and all of it), or 0")

    bench = Bench(args)
    results = bench.run()
    work = bench.work
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))
    try:
        chart(results, work / "rows_per_s.png")
    except ImportError as exc:  # matplotlib is in the dev extra; a bare environment still gets the figures
        print(f"chart: unavailable: {exc}")
    print()
    print(table(results))
    print()
    for line in ratio_lines(results):
        print(line)
    for name, reason in results["unavailable"].items():
        print(f"unavailable: {name}: {reason}")
    print(f"\nresults: {work / 'results.json'}\nchart:   {work / 'rows_per_s.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
