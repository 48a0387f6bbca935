"""Arrow schemas of the store's two Lance tables, and conversions between numpy arrays and
Arrow columns (fixed-size lists of float16/float32). See ``docs/store-format.md``."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

METADATA_KEY = b"mess"


def layer_column(layer: int) -> str:
    """``layer_00`` …: the column of one layer's vectors."""
    return f"layer_{layer:02d}"


def target_column(target: str) -> str:
    """``target_<name>``: the column of one proxy target."""
    return f"target_{target}"


def tracks_schema(n_layers: int, dim: int, meta: dict[str, Any]):
    import pyarrow as pa

    fields = [
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("status", pa.string()),
        pa.field("extraction_id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("mtime_ns", pa.int64()),
        pa.field("content_hash", pa.string()),
        pa.field("duration_seconds", pa.float64()),
        pa.field("n_segments", pa.int32()),
        pa.field("targets", pa.list_(pa.string())),
        pa.field("labels", pa.string()),
        pa.field("extracted_at", pa.string()),
        pa.field("targets_at", pa.string()),
        pa.field("failure", pa.string()),
        pa.field("failure_source", pa.string()),
        pa.field("failed_at", pa.string()),
        pa.field("digest", pa.string()),
    ]
    fields += [pa.field(layer_column(i), pa.list_(pa.float32(), dim)) for i in range(n_layers)]
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(meta, ensure_ascii=False).encode()})


def windows_schema(n_layers: int, dim: int, store_dtype: str):
    import pyarrow as pa

    from messai.features.targets import TARGETS

    value = pa.float16() if store_dtype == "float16" else pa.float32()
    fields = [
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("extraction_id", pa.string(), nullable=False),
        pa.field("window", pa.int32()),
        pa.field("start", pa.int64()),
        pa.field("length", pa.int64()),
    ]
    fields += [pa.field(layer_column(i), pa.list_(value, dim)) for i in range(n_layers)]
    for name, target in TARGETS.items():
        tp = pa.float32() if target.size == 1 else pa.list_(pa.float32(), target.size)
        fields.append(pa.field(target_column(name), tp))
    return pa.schema(fields)


def to_fixed_list(values: np.ndarray, type_):
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    dim = values.shape[1]
    flat = pa.array(values.reshape(-1).astype(type_.value_type.to_pandas_dtype(), copy=False))
    return pa.FixedSizeListArray.from_arrays(flat, dim)


def fixed_list_to_numpy(column, dim: int, dtype) -> np.ndarray:
    """A (chunked) fixed-size-list column as ``[n, dim]``; nulls become NaN rows."""
    import pyarrow as pa

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        values = chunk.flatten().to_numpy(zero_copy_only=False) if chunk.null_count == 0 else None
        if values is None:
            filled = [
                np.full(dim, np.nan) if v is None else np.asarray(v) for v in chunk.to_pylist()
            ]
            values = np.asarray(filled).reshape(-1)
        parts.append(np.asarray(values).reshape(-1, dim).astype(dtype, copy=False))
    if not parts:
        return np.zeros((0, dim), dtype)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def target_array(values: np.ndarray | None, n: int, type_):
    import pyarrow as pa

    if values is None:
        return pa.nulls(n, type_)
    values = np.asarray(values, dtype=np.float32)
    if pa.types.is_fixed_size_list(type_):
        return to_fixed_list(values.reshape(n, -1), type_)
    return pa.array(values.reshape(n))


def column_values(column, idx: np.ndarray) -> np.ndarray:
    import pyarrow as pa

    taken = column.take(pa.array(idx)) if len(idx) else column.slice(0, 0)
    if pa.types.is_fixed_size_list(column.type):
        k = column.type.list_size
        return fixed_list_to_numpy(taken, k, np.float32)
    arr = taken.to_numpy(zero_copy_only=False)
    return (
        np.asarray([np.nan if v is None else v for v in arr], dtype=np.float32)
        if arr.dtype == object
        else arr.astype(np.float32)
    )
