"""The parts of `datasets` below its public API the data stage relies on (llm_engineering/data/datasets_internals.py):
each checked as the data stage uses it, so a `datasets` release that changes one fails here, by name."""

import numpy as np
import pyarrow as pa
from datasets import Dataset, Features, Value

from llm_engineering.data.datasets_internals import arrow_writer, fingerprint, indexed_view, indices


def test_a_fingerprint_names_the_content_and_changes_with_a_map():
    first = Dataset.from_dict({"text": ["a", "b", "c"]})
    assert isinstance(fingerprint(first), str) and fingerprint(first)
    mapped = first.map(lambda row: {"text": row["text"] + "!"})
    assert fingerprint(mapped) != fingerprint(first)


def test_a_split_reads_through_its_indices_mapping_and_a_view_is_one():
    table = Dataset.from_dict({"n": list(range(10))})
    assert indices(table) is None
    assert indices(table.select([7, 2, 5])).tolist() == [7, 2, 5]
    view = indexed_view(table, np.array([9, 0, 4]), "view-fingerprint")
    assert (view["n"], indices(view).tolist(), fingerprint(view)) == ([9, 0, 4], [9, 0, 4], "view-fingerprint")
    def address(dataset):
        return dataset.data.table.column("n").chunks[0].buffers()[1].address

    assert address(view) == address(table)  # the same Arrow buffers: no rows were copied


def test_the_arrow_writer_writes_a_chunk_the_features_describe():
    features = Features({"n": Value("int32"), "text": Value("string")})
    sink = pa.BufferOutputStream()
    with arrow_writer(features, sink) as writer:
        writer.write_batch({"n": [1, 2], "text": ["x", "y"]})
        writer.finalize()
    batches = list(pa.ipc.open_stream(sink.getvalue()))
    assert pa.Table.from_batches(batches).to_pydict() == {"n": [1, 2], "text": ["x", "y"]}
