"""Benchmark inputs: synthetic Parquet tables and three registered ONNX models, cached.

Everything lives under the bench work folder (``.scoring/bench`` by default):

- ``data/rows_<N>.parquet``: N rows x 20 float64 columns ``f0 .. f19`` (131,072-row row
  groups, snappy), generated in chunks from a fixed seed, written once per N.
- ``mlflow.db`` + ``artifacts/``: an embedded sqlite MLflow registry holding ``bench_gb``,
  ``bench_mlp`` and ``bench_lr`` version 1, each logged with ``mlflow.onnx`` and an MLflow
  signature naming the 20 columns (as ``sql/examples/setup_example.py`` does).
- ``bench_gb_label`` version 1: the gradient-boosting graph cut down to its ``label`` output,
  for ``mlflow.pyfunc.spark_udf``: MLflow's ONNX pyfunc builds one pandas DataFrame from all
  outputs and fails on ``label [N]`` + ``probability [N, 2]`` ("All arrays must be of the same
  length"), so the udf baseline scores this copy (the same trees, one output fewer).
- ``onnx/<key>.onnx``: the same ONNX files, for the raw onnxruntime measurement.
- ``models.json``: what was built; a different model spec rebuilds the registry from scratch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = [f"f{j}" for j in range(20)]
TRAIN_ROWS = 20_000
ROW_GROUP = 131_072
CHUNK = 1 << 20
OPSET = 17
SEED = 7

# key -> (registered name, estimator description); the description is part of the cache key.
MODELS = {
    "gb": ("bench_gb", "GradientBoostingClassifier(n_estimators=100, max_depth=4, random_state=0)"),
    "mlp": ("bench_mlp", "MLPClassifier(hidden_layer_sizes=(64, 64), max_iter=60, random_state=0)"),
    "lr": ("bench_lr", "LogisticRegression(max_iter=1000)"),
}
PYFUNC_NAME = "bench_gb_label"
PYFUNC_URI = f"models:/{PYFUNC_NAME}/1"


@dataclass(frozen=True)
class BenchModel:
    key: str
    name: str
    uri: str
    onnx_path: Path


def _weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    return rng.normal(size=20), rng.normal(size=(20, 20)) / 4.0


def _features(rng: np.random.Generator, rows: int, mix: np.ndarray) -> np.ndarray:
    # Correlated Gaussian features, a few with shifted scales so that scaling matters.
    x = rng.standard_normal((rows, 20)) @ (np.eye(20) + mix)
    x[:, :5] *= np.array([1.0, 10.0, 0.1, 100.0, 3.0])
    return x


def _labels(x: np.ndarray, w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    z = x / x.std(axis=0)
    score = z @ w + 1.5 * np.sin(z[:, 0] * z[:, 1]) + 0.8 * z[:, 2] ** 2 - 0.8
    return (score + rng.normal(scale=0.5, size=len(z)) > 0).astype(np.int64)


def data_table(work: Path, rows: int, log=print) -> Path:
    """The cached ``rows``-row table (written on first use)."""
    path = work / "data" / f"rows_{rows}.parquet"
    if path.is_file() and pq.ParquetFile(path).metadata.num_rows == rows:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    _, mix = _weights()
    rng = np.random.default_rng(SEED + rows)
    schema = pa.schema([pa.field(f, pa.float64()) for f in FEATURES])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema, compression="snappy") as writer:
        done = 0
        while done < rows:
            n = min(CHUNK, rows - done)
            x = _features(rng, n, mix)
            writer.write_table(
                pa.table([pa.array(x[:, j]) for j in range(20)], schema=schema), row_group_size=ROW_GROUP
            )
            done += n
    tmp.replace(path)
    log(
        f"  data: wrote {path} ({rows:,} rows, {path.stat().st_size / 1e6:,.0f} MB) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return path


def _spec_hash() -> str:
    import skl2onnx
    import sklearn

    spec = {
        "models": MODELS,
        "pyfunc": PYFUNC_NAME,
        "train_rows": TRAIN_ROWS,
        "seed": SEED,
        "opset": OPSET,
        "sklearn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def tracking_uri(work: Path) -> str:
    return f"sqlite:///{(work / 'mlflow.db').resolve()}"


def _estimator(key: str):
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if key == "gb":
        return GradientBoostingClassifier(n_estimators=100, max_depth=4, random_state=0)
    if key == "mlp":
        # A scaler in front, as anyone would fit an MLP; it is a few ONNX ops more.
        return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64, 64), max_iter=60, random_state=0))
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def models(work: Path, log=print) -> dict[str, BenchModel]:
    """The three registered models, built and registered on first use (or when the spec changed)."""
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / "models.json"
    spec = _spec_hash()
    out = {
        key: BenchModel(key, name, f"models:/{name}/1", work / "onnx" / f"{key}.onnx")
        for key, (name, _) in MODELS.items()
    }
    try:
        cached = json.loads(manifest.read_text())
    except (OSError, ValueError):
        cached = {}
    if (
        cached.get("spec") == spec
        and (work / "mlflow.db").is_file()
        and all(m.onnx_path.is_file() for m in out.values())
    ):
        return out

    # A fresh registry: drop whatever an older spec left (registry, artifacts, model cache).
    for stale in ("mlflow.db", "artifacts", "models", "onnx", "models.json"):
        target = work / stale
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()

    import warnings

    import mlflow
    import mlflow.onnx
    import pandas as pd
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType

    w, mix = _weights()
    rng = np.random.default_rng(SEED)
    x = _features(rng, TRAIN_ROWS, mix)
    y = _labels(x, w, rng)
    x32 = x.astype(np.float32)
    signature_input = pd.DataFrame(x32, columns=FEATURES)

    uri = tracking_uri(work)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("scoring-bench", artifact_location=(work / "artifacts").resolve().as_uri())
    mlflow.set_experiment(experiment_id=experiment_id)
    (work / "onnx").mkdir(parents=True, exist_ok=True)
    for key, model in out.items():
        started = time.perf_counter()
        estimator = _estimator(key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLP's ConvergenceWarning at max_iter
            estimator.fit(x32, y)
        onx = convert_sklearn(
            estimator,
            initial_types=[("features", FloatTensorType([None, len(FEATURES)]))],
            final_types=[("label", Int64TensorType([None])), ("probability", FloatTensorType([None, 2]))],
            options={id(estimator): {"zipmap": False}},
            target_opset=OPSET,
        )
        model.onnx_path.write_bytes(onx.SerializeToString())
        signature = infer_signature(signature_input, estimator.predict(x32))
        variants = [(model.name, onx)]
        if key == "gb":
            variants.append((PYFUNC_NAME, _label_only(onx)))
        for name, graph in variants:
            with mlflow.start_run(run_name=f"bench-{name}"):
                info = mlflow.onnx.log_model(
                    graph, **_logged_name("model"), signature=signature, registered_model_name=name
                )
            assert str(info.registered_model_version) == "1", info.registered_model_version
        accuracy = float((estimator.predict(x32) == y).mean())
        log(
            f"  model: registered {model.uri} ({type(estimator).__name__}, train accuracy {accuracy:.3f}) "
            f"in {time.perf_counter() - started:.1f} s"
        )
    manifest.write_text(json.dumps({"spec": spec, "models": {k: m.uri for k, m in out.items()}}, indent=2))
    return out


def _label_only(onx):
    """The same graph with only its ``label`` output (what MLflow's ONNX pyfunc can serve)."""
    from onnx.utils import Extractor

    return Extractor(onx).extract_model([i.name for i in onx.graph.input], ["label"])


def read_matrix(path: Path) -> np.ndarray:
    """The table as one C-contiguous float32 [N, 20] matrix (what the model's input wants)."""
    table = pq.read_table(path, columns=FEATURES)
    matrix = np.empty((table.num_rows, len(FEATURES)), dtype=np.float32)
    for j, name in enumerate(FEATURES):
        matrix[:, j] = table.column(name).to_numpy()
    return matrix


@dataclass
class SparkExperiment:
    """What the Spark experiments share: the bench table, the pinned gb model, a local[2] session."""

    rows: int
    source: Path
    settings: object  # scoring.settings.Settings
    ref: object  # scoring.registry.ModelRef of models:/bench_gb/1
    spark: object  # pyspark.sql.SparkSession


def spark_experiment(app: str, argv: list[str], default_rows: int) -> SparkExperiment:
    """Rows from ``argv[1]`` (or ``default_rows``), their table, gb pinned, a session named ``app``."""
    from scoring.api import pin
    from scoring.engines.spark import start_session
    from scoring.settings import Settings

    rows = int(argv[1]) if len(argv) > 1 else default_rows
    work = Path(".scoring/bench")
    source = data_table(work, rows)
    settings = Settings(tracking_uri=tracking_uri(work), home=work)
    ref = pin({"gb": "models:/bench_gb/1"}, settings)["gb"]
    spark = start_session("local[2]", app, jvm_log=work / "logs" / f"{app}.log")
    return SparkExperiment(rows, source, settings, ref, spark)


def _logged_name(name: str) -> dict[str, str]:
    """Keyword naming a logged model: MLflow 3 calls it ``name``, MLflow 2 ``artifact_path``."""
    import inspect

    import mlflow.onnx

    key = "name" if "name" in inspect.signature(mlflow.onnx.log_model).parameters else "artifact_path"
    return {key: name}
