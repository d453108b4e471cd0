"""Hostile input in one doc-embeddings run: each file is processed or quarantined with a reason."""

import os

import pyarrow.parquet as pq

import headrace
from conftest import QUIET, write
from headrace import Pipeline, Stage
from pipelines.doc_embeddings import pipeline as doc_embeddings


class VanishBeforeReading(Stage):
    """Deletes one listed file before it is read, as a concurrent clean-up job would."""

    needs = ("source",)
    adds = {}

    def process(self, batch):
        for source in batch.column("source").to_pylist():
            path = source[len("file://"):]
            if path.endswith("vanishing.txt") and os.path.exists(path):
                os.remove(path)
        return batch


def test_hostile_files_in_one_run(ray_cluster, tmp_path):
    directory = tmp_path / "in"
    write(str(directory), "normal.txt", b"An ordinary document about rivers and bridges.")
    write(str(directory), "vanishing.txt", b"here at listing time, gone at reading time")
    write(str(directory), "binary.html", bytes(range(256)) * 64)
    write(str(directory), "nested.html", ("<div>" * 100_000 + "deep" + "</div>" * 100_000).encode())
    write(str(directory), "long-line.txt", ("river " * 50_000).encode())  # 300,000 characters, no newline
    with open(directory / "huge.txt", "wb") as handle:  # 200 MB: refused before it is read
        handle.truncate(200 * 2**20)

    base = doc_embeddings(input=str(directory), output=str(tmp_path / "out"))
    pipeline = Pipeline(
        name=base.name, source=base.source, stages=[VanishBeforeReading(), *base.stages],
        schema=base.schema, sink=base.sink, columns=base.columns, max_quarantine_fraction=None,
    )
    result = headrace.run(pipeline, "2026-08-01", QUIET)

    data = pq.read_table(result.partition)
    by_file = {}
    for source, index, count in zip(*(data.column(c).to_pylist() for c in ("source", "chunk_index", "num_chunks"))):
        by_file.setdefault(os.path.basename(source), set()).add((index, count))
    assert set(by_file) == {"normal.txt", "long-line.txt"}
    assert len(by_file["long-line.txt"]) > 100  # one 300,000-character line, many chunks
    reasons = {os.path.basename(q["source"]): (q["error_type"], q["message"]) for q in pq.read_table(result.quarantine).to_pylist()}
    assert reasons["vanishing.txt"][0] == "FileNotFoundError"
    assert reasons["huge.txt"] == ("FileTooLarge", "file is larger than 67,108,864 bytes (209,715,200)")
    assert reasons["binary.html"][0] == "UndecodableText"
    assert reasons["nested.html"][0] == "HtmlTooDeep"
    assert result.counts["input"] == 6 and result.counts["input_quarantined_only"] == 4
