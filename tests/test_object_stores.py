"""Runs that read from and write to buckets, against real S3 (moto) and GCS (emulator) servers."""

import json
import os
import posixpath
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from pyarrow.fs import FSSpecHandler, PyFileSystem

import headrace
from headrace import loader
from conftest import HEADRACE, QUIET, ROOT, bucket, good_corpus, write
from fixtures.flaky_s3_proxy import FlakyS3Proxy
from test_resume import headrace_pipeline, kill_when_staged, lines_corpus

DS = "2026-10-10"
DOC_EMBEDDINGS = os.path.join(ROOT, "pipelines", "doc_embeddings.py")
SLOW = os.path.join(ROOT, "tests", "fixtures", "slow_lines.py")
WORD_COUNT = os.path.join(ROOT, "tests", "fixtures", "word_count.py")


def submit(pipeline, *conf, ds=DS, timeout=300, env=None):
    args = [*HEADRACE, "submit", pipeline, "--master", "local[2]", "--ds", ds, "--conf", "headrace.progress=false"]
    for pair in conf:
        args += ["--conf", pair]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def corpus(ray_cluster, tmp_path_factory):
    """Six documents and one that is not text, on disk, with the local run's committed rows."""
    from pipelines.doc_embeddings import pipeline as doc_embeddings

    directory = tmp_path_factory.mktemp("store-corpus")
    good_corpus(str(directory / "docs"), count=6, seed=11)
    write(str(directory / "docs"), "broken/binary.md", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    write(str(directory / "docs"), "broken/empty.txt", b"")  # S3 answers a ranged GET of it with 416
    # fp32 here and below: equal to 1e-5 whatever the batch compositions (bf16 is not).
    local = doc_embeddings(input=str(directory / "docs"), output=str(directory / "out"), embed_precision="fp32")
    headrace.run(local, DS, QUIET)
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

    # A second run that replaces the first on a bucket, leaving nothing of it, is the S3
    # kill test's resumed run below (the publish path is the same code on every store).
    result = submit(DOC_EMBEDDINGS, f"input={source}", f"output={output}", "embed_precision=fp32")
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
    assert manifest["counts"]["input_quarantined_only"] == 2 and manifest["output"] == output
    reasons = sorted((os.path.basename(r["source"]), r["error_type"]) for name in manifest["quarantine_files"]
                     for r in pq.read_table(f"{quarantine}/{name}", filesystem=PyFileSystem(FSSpecHandler(fs))).to_pylist())
    local_quarantine = pq.read_table(str(directory / "out" / "_quarantine" / f"ds={DS}")).to_pylist()
    assert reasons == sorted((os.path.basename(r["source"]), r["error_type"]) for r in local_quarantine)
    assert ("empty.txt", "EmptyDocument") in reasons
    assert not fs.exists(f"hr-out-{protocol}/emb/_staging/ds={DS}")


def test_on_s3_a_second_run_of_the_date_is_turned_away_and_a_killed_run_resumes(s3_server, ray_cluster, tmp_path):
    fs = bucket("s3", "hr-lines-in")
    bucket("s3", "hr-lines-out")
    lines_corpus(str(tmp_path / "small"), 3, seed=1)
    lines_corpus(str(tmp_path / "large"), 40, seed=2, exploding=(9,))
    for folder in ("small", "large"):
        for name in os.listdir(tmp_path / folder):
            fs.pipe_file(f"hr-lines-in/{folder}/{name}", (tmp_path / folder / name).read_bytes())
    output = "s3://hr-lines-out/lines"
    first_run = headrace.run(headrace_pipeline("s3://hr-lines-in/small", output), DS, QUIET).manifest["run_id"]
    before = headrace.read(output, ds=DS).to_pylist()

    conf = ("input=s3://hr-lines-in/large", f"output={output}", "delay=0.25")
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
    headrace.run(headrace_pipeline(str(tmp_path / "large"), str(tmp_path / "clean")), DS, QUIET)

    def rows(where):
        table = headrace.read(where, ds=DS)
        return sorted(zip(*(table.column(c).to_pylist() for c in ("line", "line_index"))))

    assert rows(output) == rows(str(tmp_path / "clean")) and len(rows(output)) > 40
    fs.invalidate_cache()
    manifest = json.loads(fs.cat_file(f"hr-lines-out/lines/ds={DS}/_SUCCESS"))
    assert 0 < manifest["resume"]["inputs_resumed"] < 40
    # The resumed run replaced the small corpus's partition: nothing of that run is left.
    listed = {f["path"] for f in manifest["files"]} | {"_SUCCESS"}
    assert {posixpath.basename(p) for p in fs.ls(f"hr-lines-out/lines/ds={DS}", detail=False)} == listed
    assert manifest["run_id"] != first_run and not any(first_run in name for name in listed)


def test_throttling_and_resets_on_every_kind_of_request_are_retried(s3_server, ray_cluster, tmp_path):
    fs = bucket("s3", "hr-flaky-in")
    for index in range(8):
        text = ("word " * (index + 1)).encode()
        fs.pipe_file(f"hr-flaky-in/docs/doc-{index}.txt", text)
        write(str(tmp_path / "docs"), f"doc-{index}.txt", text)  # the same files on disk, for the clean run
    fail = {"list": [2, 3], "get": [2, 5, 6], "put": [2, 4, 7], "copy": [1, 2], "delete": [1, 2]}
    with FlakyS3Proxy(s3_server["AWS_ENDPOINT_URL"], fail) as proxy:
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url, "RAY_USAGE_STATS_ENABLED": "0"}
        flaky = submit(WORD_COUNT, "input=s3://hr-flaky-in/docs", "output=s3://hr-flaky-in/out", env=env)
        counts, failed = dict(proxy.counts), dict(proxy.failed)
    assert flaky.returncode == 0, flaky.stderr[-3000:]
    headrace.run(loader.load(WORD_COUNT).build(input=str(tmp_path / "docs"), output=str(tmp_path / "clean")), DS, QUIET)

    def rows(where):
        table = headrace.read(where, ds=DS)
        return sorted(zip([os.path.basename(s) for s in table.column("source").to_pylist()], table.column("words").to_pylist()))

    assert rows("s3://hr-flaky-in/out") == rows(str(tmp_path / "clean")) and len(rows(str(tmp_path / "clean"))) == 8
    # Every chosen request was reached and failed, and the work went on past it.
    assert failed == {kind: len(numbers) for kind, numbers in fail.items()}, (failed, counts)
    assert all(counts[kind] > max(numbers) for kind, numbers in fail.items()), counts


def test_storage_options_from_a_conf_key_reach_every_worker_and_are_never_written(s3_server, tmp_path):
    fs = bucket("s3", "hr-options")
    for index in range(3):
        fs.pipe_file(f"hr-options/docs/doc-{index}.txt", ("word " * (index + 1)).encode())
    secret = "not-a-real-secret-4f1c"
    options = json.dumps({"s3": {"endpoint_url": s3_server["AWS_ENDPOINT_URL"], "key": "testing", "secret": secret}})
    # Nothing in the environment says where S3 is or who we are: only the conf key does.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
    report = tmp_path / "report.json"
    result = subprocess.run(
        [*HEADRACE, "submit", WORD_COUNT, "--master", "local[2]", "--ds", DS, "--report", str(report),
         "--conf", "input=s3://hr-options/docs", "--conf", "output=s3://hr-options/out",
         "--conf", f"headrace.storage_options={options}", "--conf", "headrace.progress=false", "--verbose"],
        capture_output=True, text=True, cwd=ROOT, timeout=300, env={**env, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert headrace.read("s3://hr-options/out", ds=DS).num_rows == 3
    fs.invalidate_cache()
    written = [fs.cat_file(path) for path in fs.find("hr-options/out")] + [report.read_bytes()]
    assert not any(secret.encode() in blob for blob in written)
    assert secret not in result.stdout + result.stderr
    recorded = json.loads(report.read_text())["config"]["headrace.storage_options"]
    assert recorded == {"s3": {"endpoint_url": "***", "key": "***", "secret": "***"}}

    # The sensor and the report page read the bucket with the options the run was given,
    # from each place a run takes them: before, they took none (NoCredentialsError, exit 1).
    properties = tmp_path / "job.yaml"  # the run's own file: its pipeline settings are left alone
    properties.write_text(f"input: s3://hr-options/docs\nheadrace:\n  storage_options: {options}\n")

    def command(*args, environ=()):
        return subprocess.run([*HEADRACE, *args], capture_output=True, text=True, cwd=ROOT, timeout=60,
                              env={**env, **dict(environ)})

    ways = [(["--conf", f"headrace.storage_options={options}"], ()),
            (["--properties-file", str(properties)], ()),
            ([], [("HEADRACE_STORAGE_OPTIONS", options), ("HEADRACE_CONF_INPUT", "s3://hr-options/docs")])]
    for args, environ in ways:
        status = command("status", "s3://hr-options/out", "--ds", DS, *args, environ=environ)
        assert status.returncode == 0 and f"ds={DS} committed" in status.stdout, (args, status.stderr[-2000:])
    page = command("report", "s3://hr-options/out", "--ds", DS, "--properties-file", str(properties))
    assert page.returncode == 0 and fs.exists(page.stdout.strip().removeprefix("s3://")), page.stderr[-2000:]
    # Without them it cannot tell, and says no more than that: a sensor publishes nothing.
    blind = command("status", "s3://hr-options/out", "--ds", DS)
    assert blind.returncode == 1 and "NoCredentialsError" in blind.stderr
    assert "published" not in blind.stderr
    # A --conf key that is no engine key is a mistake here as in a run.
    assert command("status", "s3://hr-options/out", "--ds", DS, "--conf", "input=x").returncode == 2
    # What reads the bucket before (or instead of) a run takes them too: a dry run's listing,
    # and a backfill's --skip-committed check (before: NoCredentialsError on each date).
    job = ["--properties-file", str(properties), "--conf", "output=s3://hr-options/out"]
    dry = command("submit", WORD_COUNT, "--ds", DS, "--dry-run", *job)
    assert dry.returncode == 0 and "3 input files" in dry.stdout, dry.stderr[-2000:]
    skipped = command("backfill", WORD_COUNT, "--start", DS, "--end", DS, "--skip-committed", *job)
    assert skipped.returncode == 0 and "skipped (committed, same configuration)" in skipped.stdout, skipped.stderr[-2000:]
    # delta-rs does not read fsspec's options: they are given to it in its own keys (before,
    # the Delta table's first read looked for an instance role and failed, exit 1).
    delta = command("submit", WORD_COUNT, "--ds", DS, "--properties-file", str(properties),
                    "--conf", "output=s3://hr-options/delta", "--conf", "output_format=delta",
                    "--conf", "headrace.progress=false")
    assert delta.returncode == 0, delta.stderr[-2000:]
    table = DeltaTable("s3://hr-options/delta", storage_options={
        "AWS_ENDPOINT_URL": s3_server["AWS_ENDPOINT_URL"], "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"})
    assert table.to_pyarrow_table().num_rows == 3


def test_a_kill_at_any_step_of_publishing_on_s3_leaves_the_old_rows_or_the_new(s3_server):
    """Publish on a store: copies, one PUT of _SUCCESS, deletes of what it does not list, clean-up."""
    from headrace import commit, staging
    from test_staging import FINGERPRINT, SCHEMA, KilledAfter, first_attempt

    fs = bucket("s3", "hr-publish")
    steps, finished = 0, False
    while not finished:
        url = f"s3://hr-publish/kill-{steps}"
        sink, area = first_attempt(None, url=url)
        partition, quarantine = sink.partition(DS), sink.quarantine(DS)
        old = "part-old.parquet"
        area.storage.write_parquet(SCHEMA.empty_table(), posixpath.join(partition, old))
        area.storage.write_json(posixpath.join(partition, "_SUCCESS"), {"run_id": "old", "files": [{"path": old}]})

        resumed = staging.prepare(area, FINGERPRINT, "run-1")
        staging.keep_complete(area, resumed, ["a", "b", "c", "d"], "doc_id")
        files = commit.layout(area, resumed.parts, SCHEMA, "run-1")
        dying = staging.StagingArea(KilledAfter(fs, steps), area.root)
        manifest = {"run_id": "run-1", "files": files.files, "quarantine_files": files.quarantine_files}
        try:
            commit.publish(dying, manifest, resumed.run, partition, quarantine, files)
            finished = True
        except Exception as exc:  # noqa: BLE001 - the kill
            assert type(exc).__name__ == "Killed", exc
        fs.invalidate_cache()
        committed = json.loads(fs.cat_file(posixpath.join(partition, "_SUCCESS")))
        rows = headrace.read(url, ds=DS)
        if committed["run_id"] == "old":
            assert rows.num_rows == 0, steps  # the old partition: its one empty file, nothing new
            # The staged files are intact: the next attempt resumes them (and publishes again).
            again = staging.prepare(area, FINGERPRINT, "run-2")
            assert not again.discarded and len(again.parts) == 2, steps
        else:
            assert sorted(rows.column("doc_id").to_pylist()) == ["a", "a", "a", "c", "c"], steps
        listed = {f["path"] for f in committed["files"]} | {"_SUCCESS"}
        present = {posixpath.basename(p) for p in fs.ls(partition, detail=False)}
        assert listed <= present, steps  # everything _SUCCESS names is there
        if finished:
            assert present == listed and not fs.exists(area.root)
        steps += 1
    assert steps >= 5
