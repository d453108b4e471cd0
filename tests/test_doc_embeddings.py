"""The doc-embeddings job end to end: real files, real Ray, the real model, real Parquet."""

import json
import os

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import headrace
from conftest import LATIN1_TEXT, QUIET, good_corpus
from pipelines.doc_embeddings import pipeline as doc_embeddings
from stages.text import default_model_path

DS = "2026-11-25"


def read_partition(output, ds=DS):
    return pq.read_table(os.path.join(output, f"ds={ds}"))


@pytest.fixture(scope="module")
def embedded(ray_cluster, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("good"))
    good_corpus(directory, count=12, seed=11)
    output = str(tmp_path_factory.mktemp("out"))
    result = headrace.run(doc_embeddings(input=directory, output=output, embed_batch_size=16), DS, QUIET)
    return directory, output, result


def test_embeddings_equal_sentence_transformers(embedded):
    from sentence_transformers import SentenceTransformer

    _, output, _ = embedded
    table = read_partition(output)
    texts = table.column("text").to_pylist()
    ours = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    reference = SentenceTransformer(str(default_model_path()), device="cpu").encode(
        texts, normalize_embeddings=True, batch_size=32
    )
    cosine = (ours * reference).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert len(texts) > 12  # long documents were split into several chunks
    assert cosine.min() >= 0.999, f"worst cosine {cosine.min():.5f}"
    assert set(table.column("model").to_pylist()) == {"sentence-transformers/all-MiniLM-L6-v2"}


def test_rows_and_manifest(embedded):
    directory, output, result = embedded
    table = read_partition(output)
    rows = table.to_pylist()
    per_doc = {}
    for row in rows:
        per_doc.setdefault(row["doc_id"], []).append(row)
    assert len(per_doc) == 12
    for chunks in per_doc.values():
        indexes = sorted(r["chunk_index"] for r in chunks)
        assert indexes == list(range(chunks[0]["num_chunks"]))  # every chunk, once
    assert any(len(c) > 1 for c in per_doc.values())
    manifest = json.load(open(os.path.join(output, f"ds={DS}", "_SUCCESS")))
    assert manifest["run_id"] == result.manifest["run_id"]
    import torch
    import transformers

    software = manifest["software"]  # what made these rows
    assert (software["torch"], software["transformers"], software["headrace"]) == (
        torch.__version__, transformers.__version__, headrace.__version__)
    assert manifest["counts"] == {
        "input": 12, "output": len(rows), "quarantined": 0, "input_with_output": 12, "input_quarantined_only": 0,
    }
    assert sum(f["rows"] for f in manifest["files"]) == len(rows)
    assert [s["name"] for s in manifest["schema"]] == [
        "doc_id", "source", "chunk_index", "num_chunks", "text", "embedding", "model",
    ]


def test_bad_files_are_quarantined_with_their_reason(ray_cluster, mixed_corpus, tmp_path):
    directory, good, bad = mixed_corpus
    output = str(tmp_path / "out")
    result = headrace.run(doc_embeddings(input=directory, output=output), DS, QUIET)

    data = read_partition(output)
    sources = set(data.column("source").to_pylist())
    assert sources == {"file://" + p for p in good}  # every good file, no bad one
    latin1 = data.filter(pads.field("source") == "file://" + good[-1]).column("text").to_pylist()
    assert LATIN1_TEXT.strip() in " ".join(latin1)  # decoded, not quarantined

    quarantine = pq.read_table(os.path.join(output, "_quarantine", f"ds={DS}")).to_pylist()
    by_name = {os.path.relpath(r["source"][len("file://"):], directory): r for r in quarantine}
    assert set(by_name) == set(bad)
    assert by_name["broken/empty.txt"]["message"] == "empty file (0 bytes)"
    assert by_name["broken/no-visible-text.html"]["error_type"] == "NoVisibleText"
    assert by_name["broken/corrupt.html"]["stage"] == "DecodeText"
    assert by_name["broken/binary.md"]["error_type"] == "UndecodableText"
    assert all(r["run_id"] == result.manifest["run_id"] and r["traceback"] for r in quarantine)

    counts = result.counts
    assert counts["input"] == len(good) + len(bad)
    assert counts["input_with_output"] + counts["input_quarantined_only"] == counts["input"]
    assert counts["quarantined"] == len(bad) and counts["output"] == data.num_rows


def test_rerunning_a_date_replaces_the_partition(ray_cluster, tmp_path):
    directory = str(tmp_path / "in")
    good_corpus(directory, count=4, seed=2, long_every=2)
    output = str(tmp_path / "out")
    first = headrace.run(doc_embeddings(input=directory, output=output), DS, QUIET)
    before = read_partition(output)
    second = headrace.run(doc_embeddings(input=directory, output=output), DS, QUIET)
    after = read_partition(output)
    assert first.manifest["run_id"] != second.manifest["run_id"]
    key = lambda t: sorted(zip(t.column("doc_id").to_pylist(), t.column("chunk_index").to_pylist()))
    assert key(after) == key(before)
    assert len(set(key(after))) == after.num_rows  # no duplicates
    assert sorted(after.column("text").to_pylist()) == sorted(before.column("text").to_pylist())
    # Readers of the whole output see exactly one copy: staging and quarantine are hidden.
    dataset = pads.dataset(output, format="parquet", partitioning="hive")
    assert dataset.count_rows() == after.num_rows
    assert all("/_" not in path for path in dataset.files)
    # Every file of the partition shares one schema.
    files = [f for f in os.listdir(os.path.join(output, f"ds={DS}")) if f.endswith(".parquet")]
    schemas = {str(pq.read_schema(os.path.join(output, f"ds={DS}", f))) for f in files}
    assert len(schemas) == 1


def test_gpu_stage_falls_back_to_cpu_with_one_warning(embedded):
    _, _, result = embedded
    assert len(result.warnings) == 1 and "EmbedText" in result.warnings[0] and "no GPU" in result.warnings[0]
    embed = [p for p in result.manifest["placement"] if p["stage"] == "EmbedText"][0]
    assert embed["device"] == "cpu" and embed["gpus"] == 0 and embed["threads"] == 1


def test_length_grouping_changes_neither_rows_nor_embeddings(embedded, tmp_path):
    directory, output, _ = embedded
    plain = str(tmp_path / "plain")
    headrace.run(doc_embeddings(input=directory, output=plain, embed_length_grouping=False), DS, QUIET)

    def by_chunk(path):
        table = read_partition(path)
        keys = zip(table.column("doc_id").to_pylist(), table.column("chunk_index").to_pylist())
        return dict(zip(keys, table.column("embedding").to_numpy(zero_copy_only=False)))

    grouped, ungrouped = by_chunk(output), by_chunk(plain)
    assert grouped.keys() == ungrouped.keys()
    cosine = [float(np.dot(grouped[k], ungrouped[k])) for k in grouped]
    assert min(cosine) >= 0.999


def test_a_small_run_is_cut_into_many_model_calls_largest_inputs_first(ray_cluster, tmp_path):
    """On CPU Ray Data fuses the text stages into the model's actors, and a fused task takes
    as many input rows as its largest batch size: with the model's 64, these 40 files
    (fewer than 64 chunks) were one task and one model call, which one actor did while
    the others idled. A task now takes about one ChunkText batch of files (16), the model
    takes all it made at once, and the inputs go largest first, so that the last calls
    of a run are short."""
    from headrace.runner import list_inputs

    directory = str(tmp_path / "in")
    good_corpus(directory, count=40, seed=5, long_every=1000)  # one long document
    pipeline = doc_embeddings(input=directory, output=str(tmp_path / "out"))
    inputs = list_inputs(pipeline, QUIET).records
    sizes = [os.path.getsize(uri.removeprefix("file://")) for uri in inputs.column("source").to_pylist()]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    result = headrace.run(pipeline, DS, QUIET)
    batches = {}
    for node in result.manifest["nodes"]:
        for stage, count in node["batches"].items():
            batches[stage] = batches.get(stage, 0) + count
    assert result.manifest["counts"]["input_with_output"] == 40 and result.manifest["counts"]["output"] < 64
    assert batches["ChunkText"] >= batches["EmbedText"] >= 2


def test_inputs_of_unknown_size_come_last_in_listing_order():
    import pyarrow as pa

    from headrace.runner import largest_first

    inputs = pa.table({"id": ["a", "b", "c", "d", "e"]})
    ordered, sizes = largest_first(inputs, pa.array([10, None, 30, 30, None], pa.int64()))
    assert ordered.column("id").to_pylist() == ["c", "d", "a", "b", "e"]
    assert sizes.to_pylist() == [30, 30, 10, None, None]
