"""Deterministic Parquet artifacts: fixed layout, parameters in the schema metadata.

Every training-data artifact is written through :class:`ParquetSink`, which

* writes into a temporary file that :func:`irflow.io.atomic_output` renames into place only once
  the file is complete (an exception leaves nothing behind);
* cuts row groups at fixed row counts, whatever the sizes of the tables handed to it, so the bytes
  depend only on the rows (a file merged from four shards is byte-identical to one written in a
  single pass);
* uses one fixed compression (zstd, level 3) and stores no timestamp: the only metadata is the
  schema and a JSON object under the key ``irflow`` (sorted keys) holding the artifact kind and
  the parameters that made it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from irflow.io import InputError, atomic_output

META_KEY = b"irflow"
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 3
ROW_GROUP_ROWS = 8192


def meta_json(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def read_meta(path: str | os.PathLike, artifact: str | None = None) -> dict[str, Any]:
    """The ``irflow`` metadata of a Parquet artifact; ``artifact`` checks its kind."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{path}: not a readable Parquet file ({err})") from None
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise InputError(f"{path}: no 'irflow' metadata; not written by irflow.training_data")
    meta = json.loads(raw)
    if artifact is not None and meta.get("artifact") != artifact:
        raise InputError(f"{path}: is a {meta.get('artifact')!r} artifact, expected {artifact!r}")
    return meta


def _type_name(data_type: pa.DataType) -> str:
    # Parquet renames a list's item field ("element"); only the value type matters.
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return f"list<{_type_name(data_type.value_type)}>"
    return str(data_type)


def check_columns(path: str | os.PathLike, expected: pa.Schema) -> None:
    """Refuse a Parquet file whose columns or types differ from ``expected``."""
    actual = pq.read_schema(path)
    got = [(f.name, _type_name(f.type)) for f in actual]
    want = [(f.name, _type_name(f.type)) for f in expected]
    if got != want:
        raise InputError(f"{path}: columns {got} do not match the expected {want}")


def check_finite_scores(table: pa.Table, path: str | os.PathLike, first_row: int = 0) -> None:
    """Refuse a scores table (:data:`~irflow.training_data.teacher.SCORES_SCHEMA` columns) with
    a NaN or infinite ``pos_score``/``neg_scores`` value, naming the file, the row (counted
    from 0 in the file; ``first_row`` is the table's first) and its query and documents."""
    import numpy as np
    import pyarrow.compute as pc

    pos = table.column("pos_score").to_numpy(zero_copy_only=False)
    lists = table.column("neg_scores").combine_chunks()
    neg = lists.flatten().to_numpy(zero_copy_only=False)
    bad_pos = np.flatnonzero(~np.isfinite(pos))
    bad_neg = np.flatnonzero(~np.isfinite(neg))
    if not bad_pos.size and not bad_neg.size:
        return
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    owner = np.repeat(np.arange(table.num_rows), lengths)
    rows = sorted({*bad_pos.tolist(), *owner[bad_neg].tolist()})
    row = rows[0]
    sample = table.slice(row, 1).to_pylist()[0]
    what = [f"pos_score {sample['pos_score']} (positive {sample['pos_id']!r})"] * (
        not np.isfinite(pos[row])
    )
    what += [
        f"neg_scores {score} (negative {doc!r})"
        for doc, score in zip(sample["neg_ids"], sample["neg_scores"], strict=True)
        if not np.isfinite(score)
    ]
    raise InputError(
        f"{path}: {len(rows)} samples have non-finite teacher scores; first: row "
        f"{first_row + row} (query {sample['query_id']!r}): " + ", ".join(what)
    )


class ParquetSink:
    """Append tables to an atomically written Parquet file in fixed-size row groups.

    Use as a context manager; the file appears at ``path`` only when the block exits normally.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        schema: pa.Schema,
        meta: dict[str, Any],
        row_group_rows: int = ROW_GROUP_ROWS,
    ):
        self.path = Path(path)
        self.schema = schema.with_metadata({META_KEY: meta_json(meta)})
        self.row_group_rows = row_group_rows
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._output = atomic_output(self.path)
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> ParquetSink:
        tmp = self._output.__enter__()
        self._writer = pq.ParquetWriter(
            tmp,
            self.schema,
            compression=COMPRESSION,
            compression_level=COMPRESSION_LEVEL,
        )
        return self

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table.cast(self.schema.remove_metadata()))
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.row_group_rows:
            self._flush(self.row_group_rows)

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self._pending)
        head, rest = table.slice(0, rows), table.slice(rows)
        self._writer.write_table(
            head.combine_chunks().replace_schema_metadata(self.schema.metadata),
            row_group_size=rows,
        )
        self.rows += head.num_rows
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def __exit__(self, exc_type, exc, tb) -> bool:
        error = exc
        try:
            if error is None and self._pending_rows:
                self._flush(self._pending_rows)
        except BaseException as err:
            error = err
        try:
            self._writer.close()
        except BaseException as err:
            error = error or err
        # Renames the file into place, or removes it when anything above raised.
        if error is None:
            self._output.__exit__(None, None, None)
            return False
        self._output.__exit__(type(error), error, error.__traceback__)
        if exc is None:
            raise error
        return False


def write_table(
    path: str | os.PathLike,
    table: pa.Table,
    schema: pa.Schema,
    meta: dict[str, Any],
    row_group_rows: int = ROW_GROUP_ROWS,
) -> None:
    with ParquetSink(path, schema, meta, row_group_rows) as sink:
        sink.write(table)


# ---------------------------------------------------------------------------------------------
# Teacher scores (rules score_teacher_shard / merge_teacher_scores; read by the consistency
# filter and the students' and decoders' sample loaders): one row per (query, positive), the
# negatives as lists, every score a finite float32 of the kind the teacher's kind gives.
# ---------------------------------------------------------------------------------------------
SCORES_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("pos_id", pa.string(), nullable=False),
        pa.field("pos_score", pa.float32(), nullable=False),
        pa.field("neg_ids", pa.list_(pa.string()), nullable=False),
        pa.field("neg_scores", pa.list_(pa.float32()), nullable=False),
    ]
)

SCORE_KINDS = {
    "bi-encoder": "cosine",
    "cross-encoder": "logit",
    "causal-lm": "yes_minus_no_logit",
}
