"""Runs that read from and write to buckets, against real S3 (moto) and GCS (emulator) servers."""

import json
import os
import posixpath
import subprocess
import time

import numpy as np
import pytest

import headrace
from conftest import HEADRACE, ROOT, bucket, good_corpus, write
from test_resume import kill_when_staged, lines_corpus

DS = "2026-10-10"
DOC_EMBEDDINGS = os.path.join(ROOT, "pipelines", "doc_embeddings.py")
SLOW = os.path.join(ROOT, "tests", "fixtures", "slow_lines.py")


def submit(pipeline, *conf, ds=DS, timeout=300):
    args = [*HEADRACE, "submit", pipeline, "--master", "local[2]", "--ds", ds, "--conf", "headrace.progress=false"]
    for pair in conf:
        args += ["--conf", pair]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Six documents and one that is not text, on disk, with the local run's committed rows."""
    directory = tmp_path_factory.mktemp("store-corpus")
    good_corpus(str(directory / "docs"), count=6, seed=11)
    write(str(directory / "docs"), "broken/binary.md", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    result = submit(DOC_EMBEDDINGS, f"input={directory / 'docs'}", f"output={directory / 'out'}")
    assert result.returncode == 0, result.stderr[-3000:]
    return directory, headrace.read(str(directory / "out"), ds=DS)


def by_chunk(table):
    rows = sorted(zip(*(table.column(c).to_pylist() for c in ("source", "chunk_index", "text", "embedding"))))
    return [(os.path.basename(s), i, t) for s, i, t, _ in rows], np.array([e for *_, e in rows], np.float32)


@pytest.mark.parametrize("protocol", ["s3", "gs"])
def test_doc_embeddings_from_bucket_to_bucket_equal_a_local_run(request, corpus, protocol):
    request.getfixturevalue({"s3": "s3_server", "gs": "gcs_server"}[protocol])
    directory, local = corpus
    fs = bucket(protocol, f"hr-in-{protocol}")
    bucket(protocol, f"hr-out-{protocol}")
    for path, _, files in os.walk(directory / "docs"):
        for name in files:
            relative = os.path.relpath(os.path.join(path, name), directory / "docs")
            fs.pipe_file(f"hr-in-{protocol}/docs/{relative}", open(os.path.join(path, name), "rb").read())
    source, output = f"{protocol}://hr-in-{protocol}/docs", f"{protocol}://hr-out-{protocol}/emb"

    for attempt in range(2):  # the second run replaces the first, leaving nothing of it
        result = submit(DOC_EMBEDDINGS, f"input={source}", f"output={output}")
        assert result.returncode == 0, result.stderr[-3000:]
        committed = headrace.read(output, ds=DS)
        names, vectors = by_chunk(committed)
        local_names, local_vectors = by_chunk(local)
        assert names == local_names
        assert np.allclose(vectors, local_vectors, atol=1e-5)
        fs.invalidate_cache()
        partition = f"hr-out-{protocol}/emb/ds={DS}"
        manifest = json.loads(fs.cat_file(f"{partition}/_SUCCESS"))
        listed = {f["path"] for f in manifest["files"]} | {"_SUCCESS"}
        assert {posixpath.basename(p) for p in fs.ls(partition, detail=False)} == listed
        assert manifest["run_id"] in next(iter(listed - {"_SUCCESS"}))
        quarantine = f"hr-out-{protocol}/emb/_quarantine/ds={DS}"
        assert {posixpath.basename(p) for p in fs.ls(quarantine, detail=False)} == set(manifest["quarantine_files"])
        assert manifest["counts"]["input_quarantined_only"] == 1 and manifest["output"] == output
        assert not fs.exists(f"hr-out-{protocol}/emb/_staging/ds={DS}")


def test_on_s3_a_second_run_of_the_date_is_turned_away_and_a_killed_run_resumes(s3_server, tmp_path):
    fs = bucket("s3", "hr-lines-in")
    bucket("s3", "hr-lines-out")
    lines_corpus(str(tmp_path / "small"), 3, seed=1)
    lines_corpus(str(tmp_path / "large"), 40, seed=2, exploding=(9,))
    for folder in ("small", "large"):
        for name in os.listdir(tmp_path / folder):
            fs.pipe_file(f"hr-lines-in/{folder}/{name}", (tmp_path / folder / name).read_bytes())
    output = "s3://hr-lines-out/lines"
    first = submit(SLOW, "input=s3://hr-lines-in/small", f"output={output}")
    assert first.returncode == 0, first.stderr[-3000:]
    before = headrace.read(output, ds=DS).to_pylist()

    conf = ("input=s3://hr-lines-in/large", f"output={output}", "delay=0.4")
    args = [*HEADRACE, "submit", SLOW, "--master", "local[2]", "--ds", DS, "--conf", "headrace.progress=false"]
    for pair in conf:
        args += ["--conf", pair]
    lock = f"hr-lines-out/lines/_staging/ds={DS}.lock"
    progress = f"hr-lines-out/lines/_staging/ds={DS}/progress"
    concurrent = None

    def meanwhile():
        nonlocal concurrent
        fs.invalidate_cache()
        if concurrent is None and fs.exists(lock):
            concurrent = submit(SLOW, *conf, timeout=120)
        # The committed partition stays what it was, for a reader that follows the manifest.
        assert headrace.read(output, ds=DS).to_pylist() == before

    kill_when_staged(args, {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, progress, meanwhile,
                     listdir=lambda path: [posixpath.basename(p) for p in (fs.invalidate_cache() or fs.ls(path, detail=False))]
                     if fs.exists(path) else [])
    assert concurrent is not None and concurrent.returncode == 1, concurrent.stderr[-2000:]
    assert "another run" in concurrent.stderr and "is working on this date's output" in concurrent.stderr
    assert headrace.read(output, ds=DS).to_pylist() == before

    resumed = submit(SLOW, *conf)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming ds=" in resumed.stderr
    clean = submit(SLOW, f"input={tmp_path / 'large'}", f"output={tmp_path / 'clean'}")
    assert clean.returncode == 0, clean.stderr[-3000:]

    def rows(where):
        table = headrace.read(where, ds=DS)
        return sorted(zip(*(table.column(c).to_pylist() for c in ("line", "line_index"))))

    assert rows(output) == rows(str(tmp_path / "clean")) and len(rows(output)) > 40
    fs.invalidate_cache()
    manifest = json.loads(fs.cat_file(f"hr-lines-out/lines/ds={DS}/_SUCCESS"))
    assert 0 < manifest["resume"]["inputs_resumed"] < 40
    listed = {f["path"] for f in manifest["files"]} | {"_SUCCESS"}
    assert {posixpath.basename(p) for p in fs.ls(f"hr-lines-out/lines/ds={DS}", detail=False)} == listed
