"""Model UDFs for Spark: an Arrow UDF where pyspark has one (4.1+), an iterator pandas UDF elsewhere.

Both kinds keep one contract: the same results, types (scalar, ARRAY, MAP, STRUCT), NULL
handling and one model call per row, because both hand Arrow columns to the same
:meth:`scoring.model.Model.predict`. The pandas kind converts each batch Series -> Arrow on the
way in and Arrow -> pandas on the way out, which is the only way a pandas UDF can take part.

Two things pandas cannot carry, and so differ on the pandas kind (documented in the README):

- a float input's NaN arrives as NULL (Spark hands a float column's NULLs to pandas as NaN),
  so a NaN input row is treated by the null policy like a NULL one;
- a STRUCT result row cannot be NULL itself (Spark builds it from a pandas DataFrame), so the
  row of a NULL input is a struct whose fields are all NULL.

The kind is chosen by feature detection (:func:`choose_kind`), never by version strings.
The callables are module-level classes so that Spark pickles them by reference; the model
itself is loaded on the executor, once per Python worker, by :mod:`scoring.cache`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from scoring import types
from scoring.errors import ConfigError, EngineUnavailableError
from scoring.model import Model
from scoring.registry import ModelRef

UdfKind = Literal["arrow", "pandas"]
KINDS: tuple[str, ...] = ("auto", "arrow", "pandas")
PYSPARK_MISSING = 'the Spark engine needs pyspark: pip install "scoring[spark]"'


def require_pyspark() -> None:
    """Fail with the install command when pyspark cannot be imported."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise EngineUnavailableError(PYSPARK_MISSING) from None


def has_arrow_udf() -> bool:
    """Whether this pyspark has ``pyspark.sql.functions.arrow_udf`` (Spark 4.1 and later)."""
    import pyspark.sql.functions as functions

    return hasattr(functions, "arrow_udf") and hasattr(functions, "ArrowUDFType")


def choose_kind(requested: str = "auto") -> UdfKind:
    """The UDF kind to register models as: ``requested``, or the best one this pyspark has.

    Raises:
        ConfigError: ``requested`` is unknown, or ``arrow`` where pyspark has no Arrow UDF.
        EngineUnavailableError: the pandas kind is needed and pandas is not installed.
    """
    if requested not in KINDS:
        raise ConfigError(f"setting 'spark_udf': expected one of {', '.join(KINDS)}, got '{requested}'")
    arrow = has_arrow_udf()
    if requested == "arrow" and not arrow:
        import pyspark

        raise ConfigError(
            f"setting 'spark_udf' is 'arrow', but pyspark {pyspark.__version__} has no arrow_udf "
            "(Spark 4.1+): use 'auto' or 'pandas'"
        )
    kind: UdfKind = "arrow" if requested == "auto" and arrow else "pandas" if requested == "auto" else requested  # type: ignore[assignment]
    if kind == "pandas":
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise EngineUnavailableError(
                'the Spark engine needs pandas for its pandas UDFs: pip install "scoring[spark]"'
            ) from None
    return kind


class ShippedModel:
    """The picklable part of a model UDF: which file to fetch on the executor and how to load it.

    Args:
        ref: The pinned model (its driver-side path is dropped: executors never see it).
        threads: onnxruntime intra-op threads on the executor (``spark.task.cpus``).
        null: Null policy applied on the executor.
        file_name: Name the model was shipped under (``SparkFiles.get`` finds it).
        rows: An accumulator counting scored rows, or None where the session has none (Connect).
        member: For a model with external data, shipped as an archive that Spark unpacks into a
            folder: the ONNX file's name in that folder.
    """

    def __init__(
        self, ref: ModelRef, threads: int, null: str, file_name: str, rows: Any = None, member: str | None = None
    ) -> None:
        self.ref = replace(ref, path=Path(file_name))
        self.threads = threads
        self.null = null
        self.file_name = file_name
        self.rows = rows
        self.member = member

    def model(self) -> Model:
        """The executor's model, loaded on first use in this Python worker."""
        from pyspark import SparkFiles

        from scoring.cache import load_model

        shipped = Path(SparkFiles.get(self.file_name))
        local = replace(self.ref, path=shipped / self.member if self.member else shipped)
        return load_model(local, self.threads, self.null)  # type: ignore[arg-type]

    def counter(self) -> Callable[[int], None] | None:
        """What to tell how many rows went through the model."""
        return self.rows.add if self.rows is not None else None


class ArrowCall:
    """Scalar Arrow UDF: Arrow columns in, one Arrow array out."""

    def __init__(self, shipped: ShippedModel) -> None:
        self.shipped = shipped

    def __call__(self, *columns: pa.Array) -> pa.Array:
        return self.shipped.model().predict(columns, self.shipped.counter())


class PandasCall:
    """Iterator pandas UDF: batches of Series in, a Series (or DataFrame for STRUCT) per batch out.

    The model is fetched once, before the first batch, and reused for the whole partition.
    """

    def __init__(self, shipped: ShippedModel, output_type: pa.DataType) -> None:
        self.shipped = shipped
        self.output_type = output_type

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        model = self.shipped.model()
        count = self.shipped.counter()
        targets = [types.row_for_onnx(a.onnx_type, model=model.name, tensor=a.name).arrow for a in model.arguments]
        for batch in batches:
            series = batch if isinstance(batch, tuple) else (batch,)
            columns = [from_pandas(s, targets[i] if i < len(targets) else None) for i, s in enumerate(series)]
            yield to_pandas(model.predict(columns, count), self.output_type)


def from_pandas(series: Any, target: pa.DataType | None) -> pa.Array:
    """An input Series as the Arrow column that Spark would have handed an Arrow UDF.

    Spark gives pandas an integer column with NULLs as float64 with NaN; such a column is
    turned back into integers when the model input is an integer (a fractional value stays
    float and is refused by the model, as on the Arrow kind). An all-NULL object column
    takes the model input's type.
    """
    array = pa.Array.from_pandas(series)  # NaN and None -> NULL
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if target is None:
        return array
    if pa.types.is_null(array.type):
        return pa.nulls(len(array), target)
    if pa.types.is_integer(target) and pa.types.is_floating(array.type) and array.null_count:
        try:
            return array.cast(pa.int64())  # safe: fails on a fractional value
        except pa.ArrowInvalid:
            return array
    return array


def to_pandas(result: pa.Array, output_type: pa.DataType) -> Any:
    """A model result as the pandas value Spark's pandas UDF protocol expects for ``output_type``."""
    import pandas as pd

    if pa.types.is_struct(output_type):
        if isinstance(result, pa.ChunkedArray):
            result = result.combine_chunks()
        fields = result.flatten()  # type: ignore[union-attr]
        # A NULL struct row has no pandas form: its fields carry the NULLs (see the module doc).
        if result.null_count:
            fields = [pc.if_else(result.is_valid(), f, pa.nulls(len(f), f.type)) for f in fields]
        return pd.DataFrame({f.name: _series(a, f.type) for f, a in zip(output_type, fields, strict=True)})
    return _series(result, output_type)


def _series(array: pa.Array, arrow_type: pa.DataType) -> Any:
    import pandas as pd

    if pa.types.is_map(arrow_type):
        # A MAP reaches pandas as dicts. (to_pylist(maps_as_pydicts=...) needs pyarrow 18+.)
        return pd.Series([None if v is None else dict(v) for v in array.to_pylist()], dtype=object)
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return pd.Series(array.to_pylist(), dtype=object)
    # Arrow-backed: Spark hands the Arrow data on as it is (NULLs stay NULL, NaN stays NaN).
    return pd.Series(pd.arrays.ArrowExtensionArray(array))


def model_udf(shipped: ShippedModel, output_type: pa.DataType, kind: UdfKind) -> Any:
    """The UDF of one model, of ``kind``, marked nondeterministic.

    Nondeterministic keeps Spark from duplicating the call per struct field or into a
    pushed-down filter: each row reaches the model once.
    """
    ddl = types.spark_type(output_type)
    # The callables carry no type hints for pyspark to infer the UDF kind from; it is given
    # explicitly, and pyspark's advice to prefer type hints is not for the job's output.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
        if kind == "arrow":
            from pyspark.sql.functions import ArrowUDFType, arrow_udf

            udf = arrow_udf(ArrowCall(shipped), ddl, ArrowUDFType.SCALAR)
        else:
            from pyspark.sql.functions import PandasUDFType, pandas_udf

            udf = pandas_udf(PandasCall(shipped, output_type), ddl, PandasUDFType.SCALAR_ITER)
    return udf.asNondeterministic()
