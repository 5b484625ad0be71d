"""`distill embed`: one item-tower vector per distinct item id, streamed in chunks, written whole or
not at all, in a layout FAISS and vector databases read directly:

    item_id   the id column as the file has it (first occurrence of each id kept)
    vector    fixed_size_list<float32>[d]; ⟨user vector, item vector⟩ is the student's logit

    >>> embed(load_model("runs/demo/export-towers"), "items.parquet", "item_vectors.parquet")  # doctest: +SKIP
    >>> vectors = np.stack(pq.read_table("item_vectors.parquet")["vector"].to_numpy(zero_copy_only=False))
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from distill.data.io import file_format, resolve_files
from distill.data.kinds import KINDS
from distill.errors import DistillError
from distill.serving.exported import ExportedModel
from distill.serving.predict import _check_output, check_output, iter_chunks, require_columns, whole_or_nothing


@dataclass
class EmbedSummary:
    items: int = 0  # distinct ids written
    rows: int = 0  # rows read
    chunks: int = 0
    dim: int = 0


def default_id(model: ExportedModel) -> str:
    """`item_id` when the item tower reads it, else the item tower's first feature."""
    inputs = model.towers["item"]["inputs"]
    return "item_id" if "item_id" in inputs else inputs[0]


def vector_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


def embed(model: ExportedModel, data: str | Path, out: str | Path, id_column: str | None = None,
          chunk_rows: int = 65_536, fmt: str = "auto") -> EmbedSummary:
    """Write `out` (Parquet): `item_id`, `vector` for each distinct id of `data` (file, directory or glob)."""
    if "item" not in model.towers:
        raise DistillError(f"{model.directory}: the export has no item tower; export the run with --towers")
    out = Path(out)
    check_output(out)
    files = resolve_files(str(data))
    _check_output(out, files)
    names = model.towers["item"]["inputs"]
    id_column = id_column or default_id(model)
    dim = int(model.towers["item"]["dim"])
    summary = EmbedSummary(dim=dim)
    seen: set = set()
    with whole_or_nothing(out, "the item vectors", f"{data}: no items to embed") as write:
        for path in files:
            kind = file_format(path, fmt)
            require_columns(path, kind, {c: "--id column" if c == id_column and c not in names else "item-tower feature"
                                         for c in [id_column, *names]})
            columns = list(dict.fromkeys([id_column, *names]))
            types = {n: KINDS[model.kinds[n]].csv_type for n in names if n != id_column}
            try:
                for batch in iter_chunks(path, kind, columns, types, chunk_rows):
                    summary.rows += batch.num_rows
                    ids = batch.column(columns.index(id_column))
                    if ids.null_count:
                        raise DistillError(f"{path}: column '{id_column}' (--id) has a null; every item needs an id")
                    keep = []
                    for i, v in enumerate(ids.to_pylist()):
                        if v not in seen:
                            seen.add(v)
                            keep.append(i)
                    if not keep:
                        continue
                    table = pa.Table.from_batches([batch]).take(pa.array(keep, pa.int64()))
                    vectors = model.vectors("item", table, where=str(path))
                    chunk = pa.table({"item_id": table.column(id_column), "vector": vector_array(vectors)})
                    write(chunk)
                    summary.items += chunk.num_rows
                    summary.chunks += 1
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise DistillError(f"{path}: {str(e).strip().splitlines()[0]}") from None
    return summary
