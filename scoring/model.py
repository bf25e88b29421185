"""Model layer: an ONNX session, its signature, column binding and output shaping.

A :class:`Model` is an immutable value: the pinned registry reference, the
onnxruntime session and the arguments and output type derived from them.
:meth:`Model.predict` takes Arrow columns in argument order and always returns
one Arrow array, row ``i`` of which belongs to input row ``i``:

- outputs of shape ``[N]`` or ``[N, 1]`` become scalars,
- ``[N, k]`` becomes a LIST per row (never flattened into ``N * k`` rows),
- a ZipMap output (sequence of maps) becomes a MAP,
- several outputs become a STRUCT with one field per output.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from scoring import types
from scoring.errors import InputDataError, ModelLoadError, NullInputError, SchemaMismatchError, did_you_mean
from scoring.registry import ModelRef

NullPolicy = Literal["null", "nan", "error"]
_MAP_TYPE = re.compile(r"^seq\(map\((?P<key>\w+),\s*tensor\((?P<value>\w+)\)\)\)$")


@dataclass(frozen=True)
class Tensor:
    """One ONNX input or output as onnxruntime reports it."""

    name: str
    onnx_type: str
    shape: tuple[int | str | None, ...]


@dataclass(frozen=True)
class Argument:
    """One argument of the model's SQL function: the column it binds and its ONNX type."""

    name: str
    onnx_type: str


@dataclass(frozen=True)
class Output:
    """One model output and how it is shaped into Arrow."""

    name: str
    kind: Literal["scalar", "list", "map"]
    arrow_type: pa.DataType


@dataclass
class ScoringStats:
    """Counters of one loaded model (rows and batches scored), safe across threads."""

    rows: int = 0
    batches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, rows: int) -> None:
        with self._lock:
            self.rows += rows
            self.batches += 1


def _element_arrow(onnx_type: str, *, model: str, tensor: str) -> pa.DataType:
    return types.row_for_onnx(onnx_type, model=model, tensor=tensor).arrow


def _describe_output(t: Tensor, model: str) -> Output:
    if t.onnx_type.startswith("seq(map("):
        match = _MAP_TYPE.match(t.onnx_type.replace(" ", ""))
        if not match:
            raise ModelLoadError(f"model '{model}': output '{t.name}' has unsupported type {t.onnx_type}")
        key = _element_arrow(match["key"], model=model, tensor=t.name)
        value = _element_arrow(match["value"], model=model, tensor=t.name)
        return Output(t.name, "map", pa.map_(key, value))
    leaf = _element_arrow(t.onnx_type, model=model, tensor=t.name)
    dims = list(t.shape)
    if len(dims) <= 1 or (len(dims) == 2 and dims[1] == 1):
        return Output(t.name, "scalar", leaf)
    if len(dims) == 2:
        return Output(t.name, "list", pa.list_(leaf))
    raise ModelLoadError(
        f"model '{model}': output '{t.name}' has rank {len(dims)} (shape {dims}); expected [N], [N, 1] or [N, k]"
    )


@dataclass(frozen=True)
class Model:
    """A loaded ONNX model, ready to score Arrow columns.

    Build one with :func:`scoring.cache.load_model`, which caches it per process.
    """

    ref: ModelRef
    session: Any = field(compare=False, repr=False)
    inputs: tuple[Tensor, ...]
    outputs: tuple[Output, ...]
    arguments: tuple[Argument, ...]
    matrix: bool
    null: NullPolicy = "null"
    stats: ScoringStats = field(default_factory=ScoringStats, compare=False, repr=False)
    # Argument types already checked: an engine sends the same types batch after batch.
    _fits: set[tuple[pa.DataType, ...]] = field(default_factory=set, compare=False, repr=False)

    @classmethod
    def from_session(cls, ref: ModelRef, session: Any, null: NullPolicy = "null") -> Model:
        """Describe a session: arguments from inputs (and the MLflow signature), output type."""
        label = ref.uri
        inputs = tuple(Tensor(i.name, i.type, tuple(i.shape)) for i in session.get_inputs())
        raw_outputs = tuple(Tensor(o.name, o.type, tuple(o.shape)) for o in session.get_outputs())
        outputs = tuple(_describe_output(o, label) for o in raw_outputs)
        for tensor in inputs:
            types.row_for_onnx(tensor.onnx_type, model=label, tensor=tensor.name)
        matrix = False
        if len(inputs) == 1 and len(inputs[0].shape) == 2 and inputs[0].shape[1] != 1:
            matrix = True
            width = inputs[0].shape[1]
            names = ref.signature_columns()
            if names is None or (isinstance(width, int) and len(names) != width):
                if not isinstance(width, int):
                    raise ModelLoadError(
                        f"model '{label}': input '{inputs[0].name}' has shape [N, {width}] and no "
                        "MLflow signature naming its columns; log the model with a signature"
                    )
                names = [f"{inputs[0].name}_{j}" for j in range(width)]
            arguments = tuple(Argument(n, inputs[0].onnx_type) for n in names)
        else:
            for tensor in inputs:
                if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
                    raise ModelLoadError(
                        f"model '{label}': input '{tensor.name}' has shape {list(tensor.shape)}; "
                        "a model with several inputs needs one [N, 1] input per column"
                    )
            arguments = tuple(Argument(t.name, t.onnx_type) for t in inputs)
        return cls(ref, session, inputs, outputs, arguments, matrix, null)

    # -- description ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """Registered name of the model."""
        return self.ref.name

    @property
    def output_type(self) -> pa.DataType:
        """Arrow type returned by :meth:`predict`: the single output's, or a STRUCT of all."""
        if len(self.outputs) == 1:
            return self.outputs[0].arrow_type
        return pa.struct([pa.field(o.name, o.arrow_type) for o in self.outputs])

    def argument_types(self) -> list[pa.DataType]:
        """Arrow type of each argument, in order."""
        return [_element_arrow(a.onnx_type, model=self.ref.uri, tensor=a.name) for a in self.arguments]

    def find_output(self, name: str) -> Output:
        """The output called ``name`` (case-insensitive; ``label`` also finds ``output_label``)."""
        by_name = {o.name.lower(): o for o in self.outputs}
        found = by_name.get(name.lower()) or by_name.get(f"output_{name.lower()}")
        if found is None:
            raise SchemaMismatchError(
                f"model '{self.name}' has no output '{name}' (outputs: "
                f"{', '.join(o.name for o in self.outputs)})" + did_you_mean(name, [o.name for o in self.outputs])
            )
        return found

    def bind(self, schema: pa.Schema, table: str, name: str | None = None) -> list[str]:
        """Pick the table columns that feed the model's arguments, by name.

        Args:
            schema: The table's columns.
            table: The table's name, for messages.
            name: What the query calls the model (its bound name), for messages; default: the
                registered name (a local file's stem).

        Returns:
            The column names in argument order (as spelled in the table).

        Raises:
            SchemaMismatchError: a column is missing or has a type that cannot feed its input.
        """
        label = name or self.name
        by_lower = {f.name.lower(): f for f in schema}
        bound = []
        for arg in self.arguments:
            col = by_lower.get(arg.name.lower())
            if col is None:
                raise SchemaMismatchError(
                    f"model '{label}' needs column '{arg.name}' "
                    f"({types.onnx_element(arg.onnx_type)}) but table '{table}' has no such column"
                    + did_you_mean(arg.name, schema.names)
                    + self._unnamed_columns(label)
                )
            self.check_argument(arg, col.type, f"column '{col.name}' of table '{table}'")
            bound.append(col.name)
        return bound

    def _unnamed_columns(self, label: str) -> str:
        """For one [N, F] input whose columns no signature names: why the names look generated,
        and the two ways out."""
        if not self.matrix:
            return ""
        tensor = self.inputs[0]
        generated = [f"{tensor.name}_{j}" for j in range(len(self.arguments))]
        if [a.name for a in self.arguments] != generated:
            return ""
        return (
            f". Its one input '{tensor.name}' is [N, {len(generated)}] and no MLflow signature names its columns, "
            f"so PREDICT and ML.PREDICT look for {generated[0]} ... {generated[-1]}: log the model with a signature "
            f"that names them, or call {label}(col, ...) in a plain query, which binds columns by position"
        )

    def check_argument(self, arg: Argument, found: pa.DataType, what: str) -> None:
        """Raise if a value of Arrow type ``found`` cannot feed ``arg``."""
        if not types.can_feed(found, arg.onnx_type):
            raise SchemaMismatchError(
                f"model '{self.name}' input '{arg.name}' expects "
                f"{types.onnx_element(arg.onnx_type)}, but {what} is {found}"
            )

    # -- scoring --------------------------------------------------------------------------------

    def predict(
        self, columns: Sequence[pa.Array | pa.ChunkedArray], on_scored: Callable[[int], None] | None = None
    ) -> pa.Array:
        """Score Arrow columns given in argument order; return one Arrow array of ``output_type``.

        Rows with a NULL in any argument get NULL outputs (policy ``null``); with ``nan``
        NULL floats become NaN; with ``error`` a NULL raises :class:`NullInputError`.
        ``on_scored`` is told how many rows went through the model (a caller's own counter;
        ``stats`` counts for the whole process).
        """
        if len(columns) != len(self.arguments):
            raise SchemaMismatchError(
                f"model '{self.name}' takes {len(self.arguments)} arguments "
                f"({', '.join(a.name for a in self.arguments)}), got {len(columns)}"
            )
        cols = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns]
        signature = tuple(c.type for c in cols)
        if signature not in self._fits:
            for position, (arg, col) in enumerate(zip(self.arguments, cols, strict=True), start=1):
                self.check_argument(arg, col.type, f"argument {position} ({arg.name})")
            self._fits.add(signature)
        cols, valid = self._apply_null_policy(cols)
        if valid is not None:
            cols = [c.filter(valid) for c in cols]
        n = len(cols[0]) if cols else 0
        scored = self._run(cols, n)
        self.stats.add(n)
        if on_scored is not None:
            on_scored(n)
        if valid is None:
            return scored
        positions = np.cumsum(np.asarray(valid), dtype=np.int64) - 1
        indices = pa.array(positions, mask=~np.asarray(valid))
        return scored.take(indices)  # NULL index -> NULL row: row i stays row i

    def _apply_null_policy(self, cols: list[pa.Array]) -> tuple[list[pa.Array], pa.Array | None]:
        valid: pa.Array | None = None
        out = []
        for arg, col in zip(self.arguments, cols, strict=True):
            if col.null_count:
                import pyarrow.compute as pc  # here, for NULLs only: the import costs ~60 ms of start-up

                if self.null == "error":
                    raise NullInputError(
                        f"model '{self.name}' input '{arg.name}' received {col.null_count} NULL "
                        "value(s) while the null policy is 'error'"
                    )
                if self.null == "nan" and types.onnx_element(arg.onnx_type) in ("float", "double"):
                    col = pc.fill_null(pc.cast(col, pa.float64()), float("nan"))
                else:
                    is_valid = col.is_valid()
                    valid = is_valid if valid is None else pc.and_(valid, is_valid)
            out.append(col)
        return out, valid

    def _feeds(self, cols: list[pa.Array], n: int) -> dict[str, np.ndarray]:
        if self.matrix:
            tensor = self.inputs[0]
            dtype = types.row_for_onnx(tensor.onnx_type, model=self.name, tensor=tensor.name).numpy
            matrix = np.empty((n, len(cols)), dtype=dtype)
            for j, col in enumerate(cols):
                matrix[:, j] = self._checked(_to_numpy(col), dtype, self.arguments[j].name)
            return {tensor.name: matrix}
        feeds = {}
        for tensor, col in zip(self.inputs, cols, strict=True):
            row = types.row_for_onnx(tensor.onnx_type, model=self.name, tensor=tensor.name)
            values = _to_numpy(col)
            if row.onnx == "string":
                values = values.astype(object)
            else:
                values = self._checked(values, np.dtype(row.numpy), tensor.name).astype(row.numpy, copy=False)
            feeds[tensor.name] = values.reshape(n, 1) if len(tensor.shape) == 2 else values
        return feeds

    def _checked(self, values: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
        """``values`` unchanged, after checking that integers fit a narrower integer ``dtype``.

        numpy would wrap them silently (3,000,000,000 -> -1,294,967,296 in int32): a wrong score.
        """
        if values.dtype.kind == "f" and dtype.kind == "f" and values.dtype.itemsize > dtype.itemsize and len(values):
            self._check_float_range(values, dtype, name)
        if values.dtype.kind in "iu" and dtype.kind in "iu" and not np.can_cast(values.dtype, dtype) and len(values):
            bounds = np.iinfo(dtype)
            low, high = values.min(), values.max()
            if low < bounds.min or high > bounds.max:
                bad = low if low < bounds.min else high
                raise InputDataError(
                    f"model '{self.name}' input '{name}' is {dtype.name}, but received {bad}, outside its range"
                )
        return values

    def _check_float_range(self, values: np.ndarray, dtype: np.dtype, name: str) -> None:
        """A finite float64 beyond float32's range would be scored as inf (and numpy would print
        its own overflow warning): refuse it, naming the input and the value. inf and NaN pass."""
        limit = np.finfo(dtype).max
        magnitudes = np.abs(values)
        if magnitudes.max() <= limit:  # the usual case, one pass (NaN compares False: checked below)
            return
        over = (magnitudes > limit) & np.isfinite(magnitudes)
        if over.any():
            bad = values[over][0]
            raise InputDataError(
                f"model '{self.name}' input '{name}' is {dtype.name}, but received {float(bad)!r}, outside its range "
                f"(largest {dtype.name}: {limit:.6g})"
            )

    def _run(self, cols: list[pa.Array], n: int) -> pa.Array:
        if n == 0:
            return pa.array([], type=self.output_type)
        results = self.session.run([o.name for o in self.outputs], self._feeds(cols, n))
        arrays = [self._shape(o, value, n) for o, value in zip(self.outputs, results, strict=True)]
        if len(arrays) == 1:
            return arrays[0]
        return pa.StructArray.from_arrays(arrays, fields=list(self.output_type))

    def _shape(self, output: Output, value: Any, n: int) -> pa.Array:
        if output.kind == "map":
            return _zipmap_to_arrow(value, output.arrow_type, n, self.name, output.name)
        arr = np.asarray(value)
        if arr.shape[0] != n:
            raise ModelLoadError(
                f"model '{self.name}': output '{output.name}' returned {arr.shape[0]} rows "
                f"for {n} input rows (shape {list(arr.shape)})"
            )
        if output.kind == "scalar":
            if arr.ndim == 2 and arr.shape[1] != 1:
                raise ModelLoadError(
                    f"model '{self.name}': output '{output.name}' returned shape "
                    f"{list(arr.shape)}; its declared shape promised one value per row"
                )
            return _to_arrow(arr.reshape(n), output.arrow_type)
        width = arr.shape[1] if arr.ndim == 2 else 1
        offsets = _to_arrow(np.arange(0, n * width + 1, width, dtype=np.int32), pa.int32())
        return pa.ListArray.from_arrays(offsets, _to_arrow(arr.reshape(-1), output.arrow_type.value_type))


# pyarrow moves data to and from numpy through its pandas layer, which costs a pandas import
# (~0.2 s) on a job's first batch. Fixed-width numbers without NULLs are read from and wrapped
# in their buffers directly instead: no copy, no pandas.


@functools.lru_cache(maxsize=64)
def _numpy_dtype(arrow_type: pa.DataType) -> np.dtype | None:
    """The numpy dtype with the same memory layout as ``arrow_type``, for fixed-width numbers."""
    if pa.types.is_signed_integer(arrow_type):
        kind = "i"
    elif pa.types.is_unsigned_integer(arrow_type):
        kind = "u"
    elif pa.types.is_floating(arrow_type):
        kind = "f"
    else:
        return None
    return np.dtype(f"{kind}{arrow_type.bit_width // 8}")


def _to_numpy(col: pa.Array) -> np.ndarray:
    """A numpy view of a column's values (a copy for booleans, text and columns with NULLs)."""
    if col.null_count == 0:
        dtype = _numpy_dtype(col.type)
        if dtype is not None:
            return np.frombuffer(col.buffers()[1], dtype=dtype, count=len(col), offset=col.offset * dtype.itemsize)
        if pa.types.is_boolean(col.type):
            return _to_numpy(col.cast(pa.uint8())).astype(bool)
    return col.to_numpy(zero_copy_only=False)


def _to_arrow(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """An Arrow array of ``arrow_type`` over a 1-D numpy array (no copy when layouts match)."""
    dtype = _numpy_dtype(arrow_type)
    if dtype is not None and values.ndim == 1 and values.dtype == dtype:
        values = np.ascontiguousarray(values)
        return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])
    return pa.array(values, type=arrow_type)  # a checked conversion


def _zipmap_to_arrow(
    rows: Sequence[Mapping[Any, float]], map_type: pa.MapType, n: int, model: str, output: str
) -> pa.Array:
    if len(rows) != n:
        raise ModelLoadError(f"model '{model}': output '{output}' returned {len(rows)} maps for {n} rows")
    if n == 0:
        return pa.array([], type=map_type)
    keys = list(rows[0].keys())
    width = len(keys)
    values = np.fromiter((row[k] for row in rows for k in keys), dtype=np.float64, count=n * width)
    offsets = _to_arrow(np.arange(0, n * width + 1, width, dtype=np.int32), pa.int32())
    key_array = pa.array(keys * n, type=map_type.key_type)
    return pa.MapArray.from_arrays(offsets, key_array, _to_arrow(values, map_type.item_type))
