"""Pipelines a user writes: own stages in a file, polars and numpy batches, schema checks."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import headrace
from conftest import QUIET, write
from headrace import Files, ParquetSink, Pipeline, Stage
from schemas.doc_embeddings import doc_embeddings_schema
from stages.files import ReadFiles
from stages.text import DecodeText


class FakeEmbed(Stage):
    """One chunk per document with a 4-d embedding; 'unnormalised' documents break the norm."""

    needs = ("text", "source")
    adds = {
        "chunk_index": pa.int32(),
        "num_chunks": pa.int32(),
        "embedding": pa.list_(pa.float32(), 4),
        "model": pa.string(),
    }
    batch_format = "numpy"

    def process(self, batch):
        n = len(batch["text"])
        vectors = np.full((n, 4), 0.5, np.float32)
        for row, source in enumerate(batch["source"]):
            if "unnormalised" in source:
                vectors[row] *= 2
        return {
            **batch,
            "chunk_index": np.zeros(n, np.int32),
            "num_chunks": np.ones(n, np.int32),
            "embedding": vectors,
            "model": np.array(["fake"] * n),
        }


def test_schema_violations_are_quarantined_with_the_failed_check(ray_cluster, tmp_path):
    directory = tmp_path / "in"
    for index in range(6):
        write(str(directory), f"doc-{index}.txt", f"document number {index}".encode())
    write(str(directory), "unnormalised.txt", b"this one breaks the unit norm")
    pipeline = Pipeline(
        name="fake_embeddings",
        source=Files(str(directory)),
        stages=[ReadFiles(), DecodeText(), FakeEmbed()],
        schema=doc_embeddings_schema(dimensions=4),
        sink=ParquetSink(str(tmp_path / "out")),
        columns=["doc_id", "source", "chunk_index", "num_chunks", "text", "embedding", "model"],
    )
    result = headrace.run(pipeline, "2026-02-01", QUIET)
    data = pq.read_table(result.partition)
    assert data.num_rows == 6 and not any("unnormalised" in s for s in data.column("source").to_pylist())
    quarantine = pq.read_table(result.quarantine).to_pylist()
    assert len(quarantine) == 1
    assert quarantine[0]["source"].endswith("unnormalised.txt")
    assert quarantine[0]["stage"] == "schema:doc_embeddings" and quarantine[0]["error_type"] == "SchemaError"
    assert "unit_norm" in quarantine[0]["message"] and "embedding" in quarantine[0]["message"]
    assert result.counts["input_quarantined_only"] == 1


class DropEverySecond(Stage):
    """A filter that silently loses whole documents: the commit must refuse it."""

    needs = ("text",)
    adds = {}

    def process(self, batch):
        return batch.filter(pa.array([i % 2 == 0 for i in range(batch.num_rows)]))


def test_commit_refuses_when_an_input_vanishes(ray_cluster, tmp_path):
    directory = tmp_path / "in"
    for index in range(4):
        write(str(directory), f"doc-{index}.txt", f"document {index}".encode())
    pipeline = Pipeline(
        name="lossy",
        source=Files(str(directory), files_per_block=4),
        stages=[ReadFiles(), DecodeText(), DropEverySecond()],
        sink=ParquetSink(str(tmp_path / "out")),
        columns=["doc_id", "source", "text"],
    )
    try:
        headrace.run(pipeline, "2026-02-02", QUIET)
    except headrace.ConservationError as exc:
        assert "2 input(s) neither in the output nor in the quarantine" in str(exc)
    else:
        raise AssertionError("a run that lost inputs was committed")
    assert not os.path.exists(tmp_path / "out" / "ds=2026-02-02")
