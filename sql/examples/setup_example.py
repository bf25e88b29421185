"""Build the example: a breast-cancer classifier registered in the embedded MLflow registry.

Trains two scikit-learn models on the Wisconsin breast cancer data that ships with
scikit-learn, converts them to ONNX with skl2onnx and registers them as versions of
the model ``bc``: version 1 (gradient boosting, alias ``champion``) and version 2
(logistic regression, alias ``challenger``). Writes the rows to ``data/patients.parquet``.
Idempotent: an existing registry with both versions is left as it is.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scoring.settings import load_settings

DATA = Path("data/patients.parquet")


def snake(name: str) -> str:
    return re.sub(r"\W+", "_", name.strip()).lower()


def main() -> int:
    import mlflow
    import mlflow.onnx
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    settings = load_settings()
    dataset = load_breast_cancer()
    features = [snake(n) for n in dataset.feature_names]
    x = dataset.data.astype(np.float32)
    y = dataset.target.astype(np.int64)

    DATA.parent.mkdir(parents=True, exist_ok=True)
    columns = {"patient_id": pa.array(np.arange(1, len(y) + 1, dtype=np.int64))}
    columns.update({f: pa.array(x[:, j].astype(np.float64)) for j, f in enumerate(features)})
    columns["diagnosis"] = pa.array(y)
    pq.write_table(pa.table(columns), DATA)

    settings.home.mkdir(parents=True, exist_ok=True)
    tracking = settings.resolved_tracking_uri()
    mlflow.set_tracking_uri(tracking)
    client = MlflowClient(tracking)
    existing = {str(v.version) for v in client.search_model_versions("name = 'bc'")}  # ints in MLflow 3
    if {"1", "2"} <= existing:
        print(f"example registry ready: bc versions {sorted(existing)} in {tracking}")
        return 0

    experiment = client.get_experiment_by_name("scoring-example")
    if experiment is None:
        artifacts = (settings.home / "artifacts").resolve().as_uri()
        experiment_id = client.create_experiment("scoring-example", artifact_location=artifacts)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)

    frame = dict(zip(features, x.T, strict=True))
    signature_input = __import__("pandas").DataFrame(frame)
    candidates = [
        ("champion", GradientBoostingClassifier(n_estimators=60, max_depth=3, random_state=0)),
        ("challenger", make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))),
    ]
    for alias, estimator in candidates:
        estimator.fit(x, y)
        onx = convert_sklearn(
            estimator,
            initial_types=[("features", FloatTensorType([None, len(features)]))],
            final_types=[("label", Int64TensorType([None])), ("probability", FloatTensorType([None, 2]))],
            options={id(estimator): {"zipmap": False}},
            target_opset=17,
        )
        signature = infer_signature(signature_input, estimator.predict(x))
        with mlflow.start_run(run_name=f"bc-{alias}"):
            # MLflow 3 names a logged model `name`, MLflow 2 `artifact_path`.
            key = "name" if "name" in inspect.signature(mlflow.onnx.log_model).parameters else "artifact_path"
            info = mlflow.onnx.log_model(onx, signature=signature, registered_model_name="bc", **{key: "model"})
        version = info.registered_model_version
        client.set_registered_model_alias("bc", alias, str(version))
        print(f"registered bc version {version} ({type(estimator).__name__}) as @{alias}")
    print(f"example data: {DATA} ({len(y)} rows); registry: {tracking}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
