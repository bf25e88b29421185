"""Per-process cache of loaded models.

Building an onnxruntime session costs far more than scoring one batch, and Spark
pickles UDF closures for every task while importing modules once per Python
worker. Keeping sessions in a module-level dict therefore gives exactly one
session per model per process: the DuckDB engine shares it across its threads
(``InferenceSession.run`` is thread-safe) and each Spark worker builds it once.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from scoring.errors import ModelLoadError
from scoring.model import Model, NullPolicy
from scoring.registry import ModelRef

_lock = threading.Lock()
_sessions: dict[tuple[str, int], object] = {}
_models: dict[tuple[ModelRef, int, NullPolicy], Model] = {}
_sessions_created = 0


def sessions_created() -> int:
    """How many onnxruntime sessions this process has built (for tests and logs)."""
    return _sessions_created


def default_threads(engine_threads: int = 1) -> int:
    """Intra-op threads so that ``engine_threads * ort_threads`` roughly equals the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, engine_threads))


def _session(path: Path, threads: int, uri: str) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning threads burn the cores that other engine threads or Spark tasks need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"model '{uri}' is not a loadable ONNX model: {first}") from None


def load_model(ref: ModelRef, threads: int | None = None, null: NullPolicy = "null") -> Model:
    """Return the process's :class:`Model` for ``ref``, building its session on first use."""
    global _sessions_created
    threads = threads or default_threads()
    key = (ref, threads, null)
    with _lock:
        model = _models.get(key)
        if model is None:
            session = _sessions.get((ref.sha256, threads))
            if session is None:
                session = _session(ref.path, threads, ref.uri)
                _sessions[(ref.sha256, threads)] = session
                _sessions_created += 1
            model = Model.from_session(ref, session, null)
            _models[key] = model
        return model


def clear() -> None:
    """Forget every cached model (tests)."""
    with _lock:
        _models.clear()
        _sessions.clear()
