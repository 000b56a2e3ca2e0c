"""The parts of `datasets` below its public API that the data stage relies on, in one place: tests/test_datasets_internals.py
fails when a `datasets` release changes one of them (the pinned range in pyproject.toml allows new minor releases).

- a dataset's fingerprint: its cache identity, which the data stage extends with its settings and code digests;
- its indices mapping: a split is a mapping over the step's one table, so lengths and record batches read through it;
- `ArrowWriter`: one chunk of a batched map written straight to Arrow;
- a Dataset over an existing table and an indices table: a split without a copy or a pickled index list.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def fingerprint(dataset) -> str:
    return dataset._fingerprint


def indices(dataset) -> Optional[np.ndarray]:
    """The row positions a dataset maps to in its table, or None when it has no indices mapping."""
    return None if dataset._indices is None else dataset._indices.column(0).to_numpy()


def arrow_writer(features, stream):
    from datasets.arrow_writer import ArrowWriter

    return ArrowWriter(features=features, stream=stream)


def indexed_view(dataset, positions: np.ndarray, new_fingerprint: str):
    """The rows of `dataset` (which has no indices mapping) at `positions`, as a mapping over its table."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    mapping = InMemoryTable(pa.table({"indices": pa.array(np.asarray(positions).astype(np.uint64))}))
    return Dataset(dataset.data, info=dataset.info.copy(), split=dataset.split, indices_table=mapping,
                   fingerprint=new_fingerprint)
