"""Real scikit-learn estimators converted with skl2onnx, and their data, for the tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_iris, make_classification, make_regression
from sklearn.ensemble import GradientBoostingClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier

OPSET = 17


@dataclass
class Case:
    """A fitted estimator, its ONNX model, a scoring frame and the expected outputs."""

    name: str
    estimator: Any
    onnx: Any
    frame: pd.DataFrame
    features: list[str]
    signature_frame: pd.DataFrame | None = None

    def expected_label(self) -> np.ndarray:
        return self.estimator.predict(
            self.frame[self.features]
            if self.signature_frame is None
            else self.frame[self.features].to_numpy(np.float32)
        )

    def expected_proba(self) -> np.ndarray:
        data = self.frame[self.features]
        return self.estimator.predict_proba(data if self.signature_frame is None else data.to_numpy(np.float32))


def gradient_boosting(rows: int = 400, seed: int = 0) -> Case:
    """Gradient-boosting classifier with one [N, 6] float input and outputs label + probability."""
    x, y = make_classification(n_samples=rows, n_features=6, n_informative=4, random_state=seed)
    x = x.astype(np.float32)
    features = [f"f{j}" for j in range(6)]
    est = GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=seed).fit(x, y)
    onx = convert_sklearn(
        est,
        initial_types=[("features", FloatTensorType([None, 6]))],
        final_types=[("label", Int64TensorType([None])), ("probability", FloatTensorType([None, 2]))],
        options={id(est): {"zipmap": False}},
        target_opset=OPSET,
    )
    frame = pd.DataFrame(x.astype(np.float64), columns=features)
    frame.insert(0, "id", np.arange(rows, dtype=np.int64))
    frame["label"] = y  # ground truth shares the output's name on purpose
    return Case("gb", est, onx, frame, features, signature_frame=frame[features])


def churn_pipeline(rows: int = 300, seed: int = 1) -> Case:
    """Pipeline over string categoricals and numbers: one ONNX input per column."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "customer_id": np.arange(rows, dtype=np.int64),
            "plan": rng.choice(["basic", "plus", "pro"], rows),
            "region": rng.choice(["north", "south", "east", "west"], rows),
            "tenure": rng.integers(1, 72, rows).astype(np.float32),
            "monthly_spend": rng.uniform(10, 120, rows).astype(np.float32),
        }
    )
    churned = ((frame.plan == "basic") & (frame.tenure < 24)) | (rng.uniform(size=rows) < 0.1)
    features = ["plan", "region", "tenure", "monthly_spend"]
    est = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan", "region"]),
                        ("num", StandardScaler(), ["tenure", "monthly_spend"]),
                    ]
                ),
            ),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    ).fit(frame[features], churned.astype(np.int64))
    onx = convert_sklearn(
        est,
        initial_types=[
            ("plan", StringTensorType([None, 1])),
            ("region", StringTensorType([None, 1])),
            ("tenure", FloatTensorType([None, 1])),
            ("monthly_spend", FloatTensorType([None, 1])),
        ],
        options={id(est): {"zipmap": False}},
        target_opset=OPSET,
    )
    frame["tenure"] = frame["tenure"].astype(np.int64)  # an int column feeding a float input
    frame["monthly_spend"] = frame["monthly_spend"].astype(np.float64)
    return Case("churn", est, onx, frame, features)


def zipmap_tree(seed: int = 2) -> Case:
    """Decision tree on iris with skl2onnx's default ZipMap probability output."""
    data = load_iris()
    features = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    x = data.data.astype(np.float32)
    est = DecisionTreeClassifier(max_depth=3, random_state=seed).fit(x, data.target)
    onx = convert_sklearn(est, initial_types=[("input", FloatTensorType([None, 4]))], target_opset=OPSET)
    frame = pd.DataFrame(x.astype(np.float64), columns=features)
    return Case("iris", est, onx, frame, features, signature_frame=frame[features])


def regressor(rows: int = 300, seed: int = 3) -> Case:
    """Random-forest regressor with one output of shape [N, 1]."""
    x, y = make_regression(n_samples=rows, n_features=5, noise=0.1, random_state=seed)
    x = x.astype(np.float32)
    features = [f"x{j}" for j in range(5)]
    est = RandomForestRegressor(n_estimators=10, max_depth=5, random_state=seed).fit(x, y)
    onx = convert_sklearn(est, initial_types=[("input", FloatTensorType([None, 5]))], target_opset=OPSET)
    frame = pd.DataFrame(x.astype(np.float64), columns=features)
    return Case("reg", est, onx, frame, features, signature_frame=frame[features])


def logistic(rows: int = 400) -> Case:
    """A second version of the gradient-boosting model's task: logistic regression."""
    case = gradient_boosting(rows, seed=0)
    est = LogisticRegression(max_iter=500).fit(case.frame[case.features].to_numpy(np.float32), case.frame["label"])
    onx = convert_sklearn(
        est,
        initial_types=[("features", FloatTensorType([None, 6]))],
        final_types=[("label", Int64TensorType([None])), ("probability", FloatTensorType([None, 2]))],
        options={id(est): {"zipmap": False}},
        target_opset=OPSET,
    )
    return Case("gb", est, onx, case.frame, case.features, signature_frame=case.signature_frame)


def logged_name(name: str) -> dict[str, str]:
    """Keyword naming a logged model: MLflow 3 calls it ``name``, MLflow 2 ``artifact_path``."""
    import inspect

    import mlflow.onnx

    key = "name" if "name" in inspect.signature(mlflow.onnx.log_model).parameters else "artifact_path"
    return {key: name}


def register(case: Case, registered_name: str, aliases: tuple[str, ...] = ()) -> str:
    """Log ``case`` with mlflow.onnx into the active tracking URI and register it; return the version."""
    import mlflow
    import mlflow.onnx
    from mlflow.models import infer_signature

    signature = None
    if case.signature_frame is not None:
        signature = infer_signature(case.signature_frame.astype(np.float32))
    with mlflow.start_run():
        info = mlflow.onnx.log_model(
            case.onnx, **logged_name("model"), signature=signature, registered_model_name=registered_name
        )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    for alias in aliases:
        client.set_registered_model_alias(registered_name, alias, version)
    return version


def log_external_mlp(case: Case, tracking_uri: str, dst: str) -> tuple[str, Any, np.ndarray, set[str]]:
    """Log an MLP for ``case`` with mlflow.onnx.log_model's defaults, so its weights go to a file of
    their own beside model.onnx. Returns its run URI, the estimator, the inputs and the names of
    the external data files (as downloaded into ``dst``)."""
    from pathlib import Path

    import mlflow
    import mlflow.onnx
    from onnx import numpy_helper
    from sklearn.neural_network import MLPRegressor

    x = case.frame[case.features].to_numpy(np.float32)
    est = MLPRegressor(hidden_layer_sizes=(64,), max_iter=50, random_state=1).fit(x, case.estimator.predict(x))
    onx = convert_sklearn(
        est, initial_types=[("input", FloatTensorType([None, len(case.features)]))], target_opset=OPSET
    )
    # Weights as raw bytes, as torch exports write them: skl2onnx's float lists never go external.
    for i, tensor in enumerate(list(onx.graph.initializer)):
        onx.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run():
        info = mlflow.onnx.log_model(onx, **logged_name("model"))  # save_as_external_data=True by default
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=dst))
    external = {p.name for p in local.iterdir() if p.is_file() and p.name not in ("MLmodel", "model.onnx")}
    external = {n for n in external if not n.endswith((".yaml", ".txt", ".json")) and "meta" not in n}
    assert external, f"MLflow stored no external data: {sorted(p.name for p in local.iterdir())}"
    return f"runs:/{info.run_id}/model", est, x, external
