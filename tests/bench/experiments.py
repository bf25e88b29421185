"""Where a DuckDB job's time goes: the job's scoring path rebuilt in-process, one change at a time.

Not part of ``make bench``; it backs the speed-up suggestions in the benchmark report. Every
variant registers the model exactly as the job does (``scoring.cache.load_model`` +
``DuckDBEngine.register_model``), runs ``SELECT *, m(f0, ..., f19) AS p FROM t`` on the bench
table, and times only the query and the Parquet write (no start-up, no registry), wall and CPU
seconds of this process (all threads), fastest of ``--repeat`` runs:

- ``job``: what ``run_job`` does: ``to_arrow_reader(131072)`` drained by ``write_parquet`` in the
  main thread (pyarrow ParquetWriter, zstd, dictionary encoding on).
- ``drain``: the same query, batches read and dropped (scoring without writing).
- ``drain_plain``: ``SELECT * FROM t`` read and dropped (DuckDB's Parquet scan + Arrow export).
- ``drain_noop``: as ``drain`` with a UDF of the same signature that returns a ready-made result
  (the DuckDB <-> Python boundary without the model).
- ``nodict``: as ``job``, ParquetWriter with ``use_dictionary=False``.
- ``thread``: as ``job``, the ParquetWriter fed from a background thread through a 4-batch queue.
- ``thread_nodict``: both of the above.
- ``copy``: DuckDB writes the file itself: ``COPY (query) TO tmp (FORMAT parquet, COMPRESSION zstd,
  ROW_GROUP_SIZE 131072, KV_METADATA {...})``.
- ``copy_only``: the plain copy, no model (for reference).
- ``batch``: the batch path (``scoring.engines.batch``) as the job runs it: DuckDB's batches of
  the one table, scored by ``--workers`` threads, written by ``write_parquet`` in the main thread.
- ``batch_drain``: the same, scored batches dropped (no Parquet write).
- ``batch_read``: the batch path's DuckDB read alone (its read query drained, no model).
- ``batch_serial``: as ``batch``, but read, scored and written one after the other in one thread
  (what a non-pipelined batch path costs).
- ``batch_wide``: as ``batch``, one scorer thread whose session has one intra-op thread per core.
- ``batch_copy``: as ``batch``, the scored stream written by a second DuckDB connection's ``COPY``
  (DuckDB's Parquet writer, zstd, 131,072-row groups) instead of pyarrow's ``ParquetWriter``.
- ``write_only``: pyarrow's ``ParquetWriter`` (as the job uses it) over the batch path's output
  batches held in memory: the writer's own cost.

    python tests/bench/experiments.py --rows 1000000 --model gb [--threads 2 --ort-threads 1] [--variants job,copy]
"""

from __future__ import annotations

import argparse
import queue
import threading
import time
from pathlib import Path

import prepare
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = (
    "job",
    "drain",
    "drain_plain",
    "drain_noop",
    "nodict",
    "thread",
    "thread_nodict",
    "copy",
    "copy_only",
    "batch",
    "batch_drain",
    "batch_read",
    "batch_serial",
    "batch_wide",
    "batch_copy",
    "write_only",
)


def _engine(work: Path, key: str, threads: int | None, ort_threads: int | None, source: Path):
    from scoring.cache import default_threads, load_model
    from scoring.engines.duckdb import DuckDBEngine
    from scoring.job import registry_for
    from scoring.settings import load_settings

    settings = load_settings(home=work, tracking_uri=prepare.tracking_uri(work))
    engine_threads = threads or default_threads()
    ort = ort_threads or default_threads(engine_threads)
    model = load_model(registry_for(settings).resolve(f"models:/{prepare.MODELS[key][0]}/1"), ort)
    engine = DuckDBEngine(threads=threads, resolve=None)
    engine.register_table("t", str(source))
    engine.register_model("m", model)
    return engine, model, engine_threads, ort


def _write(reader: pa.RecordBatchReader, path: Path, *, dictionary: bool, threaded: bool) -> int:
    writer = pq.ParquetWriter(path, reader.schema, compression="zstd", use_dictionary=dictionary)
    rows = 0
    if not threaded:
        for batch in reader:
            writer.write_batch(batch, row_group_size=batch.num_rows)
            rows += batch.num_rows
        writer.close()
        return rows
    pending: queue.Queue[pa.RecordBatch | None] = queue.Queue(maxsize=4)

    def drain() -> None:
        while (batch := pending.get()) is not None:
            writer.write_batch(batch, row_group_size=batch.num_rows)

    worker = threading.Thread(target=drain)
    worker.start()
    for batch in reader:
        pending.put(batch)
        rows += batch.num_rows
    pending.put(None)
    worker.join()
    writer.close()
    return rows


def _noop(engine, model) -> str:
    """Register ``noop(...)``: the model's SQL signature, a precomputed 2,048-row result sliced per call."""
    import duckdb
    import numpy as np

    from scoring import types
    from scoring.engines.duckdb import _PARAMETER

    ready = model.predict([pa.array(np.zeros(2048)) for _ in model.arguments])
    parameters = [duckdb.sqltype(_PARAMETER[types.onnx_element(a.onnx_type)]) for a in model.arguments]

    def noop(*columns):
        return ready.slice(0, len(columns[0]))

    import inspect

    noop.__signature__ = inspect.Signature(
        [inspect.Parameter(f"a{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(len(parameters))]
    )
    engine.con.create_function(
        "noop",
        noop,
        parameters,
        duckdb.sqltype(types.duckdb_type(model.output_type)),
        type="arrow",
        null_handling="special",
        side_effects=True,
    )
    return f"SELECT *, noop({', '.join(prepare.FEATURES)}) AS p FROM t"


def run(variant: str, args: argparse.Namespace, source: Path, target: Path) -> tuple[float, float, int]:
    work = Path(args.work)
    engine, model, _, _ = _engine(work, args.model, args.threads, args.ort_threads, source)
    sql = f"SELECT *, m({', '.join(prepare.FEATURES)}) AS p FROM t"
    if variant == "drain_noop":
        sql = _noop(engine, model)
    if variant.startswith("batch"):
        return _batch(variant, args, engine, model, sql, target)
    started, cpu = time.perf_counter(), time.process_time()
    if variant in ("drain", "drain_noop"):
        rows = sum(b.num_rows for b in engine.execute(sql, 131_072))
    elif variant == "drain_plain":
        rows = sum(b.num_rows for b in engine.execute("SELECT * FROM t", 131_072))
    elif variant in ("copy", "copy_only"):
        query = "SELECT * FROM t" if variant == "copy_only" else sql
        rows = engine.con.execute(
            f"COPY ({query}) TO '{target}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 131072, "
            "KV_METADATA {scoring: '{}'})"
        ).fetchone()[0]
    else:
        rows = _write(
            engine.execute(sql, 131_072),
            target,
            dictionary=variant not in ("nodict", "thread_nodict"),
            threaded=variant.startswith("thread"),
        )
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    engine.close()
    return seconds, cpu, rows


def _batch(variant: str, args: argparse.Namespace, engine, model, sql: str, target: Path) -> tuple[float, float, int]:
    from scoring.cache import default_threads, load_model
    from scoring.engines import batch
    from scoring.publish import write_parquet

    workers = args.workers or default_threads()
    started, cpu = time.perf_counter(), time.process_time()
    plan = batch.plan(engine.con, sql, engine.models)
    assert plan is not None, "the bench query must take the batch path"
    if variant == "batch_wide":
        wide = load_model(model.ref, default_threads(), model.null)  # counted: the job would build it too
        plan = batch.BatchPlan(plan.read_sql, plan.schema, plan.columns, tuple((f, wide, a) for f, _, a in plan.calls))
        workers = 1
    if variant == "write_only":
        held = list(batch.scored_batches(engine.con, plan, 131_072, workers=workers))
        started, cpu = time.perf_counter(), time.process_time()
        rows = write_parquet(pa.RecordBatchReader.from_batches(plan.schema, iter(held)), target, {}).rows
    elif variant == "batch_copy":
        import duckdb

        scored = batch.scored_batches(engine.con, plan, 131_072, workers=workers)
        writer = duckdb.connect()
        writer.register("scored", scored)
        rows = writer.execute(
            f"COPY scored TO '{target}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 131072)"
        ).fetchone()[0]
        writer.close()
    elif variant == "batch_read":
        rows = sum(b.num_rows for b in engine.execute(plan.read_sql, 131_072))
    elif variant == "batch_serial":
        score = batch._scorer(plan, {})
        reader = engine.execute(plan.read_sql, 131_072)
        scored = pa.RecordBatchReader.from_batches(plan.schema, (score(b) for b in reader))
        rows = write_parquet(scored, target, {}).rows
    else:
        scored = batch.scored_batches(engine.con, plan, 131_072, workers=workers)
        rows = sum(b.num_rows for b in scored) if variant == "batch_drain" else write_parquet(scored, target, {}).rows
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    engine.close()
    return seconds, cpu, rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--model", default="gb", choices=sorted(prepare.MODELS))
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (SCORING_THREADS)")
    parser.add_argument("--ort-threads", type=int, default=None, help="onnxruntime threads (SCORING_ORT_THREADS)")
    parser.add_argument(
        "--workers", type=int, default=None, help="scorer threads of the batch variants (default: cores)"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--work", default=str(ROOT / ".scoring" / "bench"))
    args = parser.parse_args()
    work = Path(args.work)
    prepare.models(work)
    source = prepare.data_table(work, args.rows)
    target = work / "out" / "experiment.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    _, _, threads, ort = _engine(work, args.model, args.threads, args.ort_threads, source)
    print(f"model {args.model}, {args.rows:,} rows, DuckDB threads {threads}, onnxruntime threads {ort}")
    for variant in args.variants.split(","):
        runs = []
        for _ in range(args.repeat):
            seconds, cpu, rows = run(variant, args, source, target)
            assert rows == args.rows, (variant, rows)
            runs.append((seconds, cpu))
        wall, cpu = min(runs)
        print(
            f"  {variant:<14} {wall:7.2f} s wall {cpu:7.2f} s cpu  {args.rows / wall:>12,.0f} rows/s  "
            f"(runs: {', '.join(f'{w:.2f}' for w, _ in runs)})",
            flush=True,
        )
    target.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
