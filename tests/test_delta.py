"""Delta Lake output: one transaction per run replaces a date; a killed run leaves the table as it was."""

import os
import subprocess
import sys

import polars as pl
import pytest
from deltalake import DeltaTable

import headrace
from headrace import loader
from conftest import HEADRACE, QUIET, ROOT, bucket, write
from test_resume import headrace_pipeline, kill_when_staged, lines_corpus

WORD_COUNT = os.path.join(ROOT, "tests", "fixtures", "word_count.py")
SLOW = os.path.join(ROOT, "tests", "fixtures", "slow_lines.py")


def submit(pipeline, ds, *conf, env=None):
    args = [*HEADRACE, "submit", pipeline, "--master", "local[2]", "--ds", ds, "--conf", "headrace.progress=false",
            "--conf", "output_format=delta"]
    for pair in conf:
        args += ["--conf", pair]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)


def words_by_date(frame: pl.DataFrame) -> dict:
    rows = frame.select("ds", "source", "words").sort("ds", "source").rows()
    return {ds: [(os.path.basename(s), w) for d, s, w in rows if d == ds] for ds in sorted({r[0] for r in rows})}


# On a local disk, replacing a date is also what the killed-run test below ends with.
@pytest.mark.parametrize("where", ["s3"])
def test_rerunning_a_date_leaves_one_version_of_its_partition(request, ray_cluster, tmp_path, where):
    for index in range(4):
        write(str(tmp_path / "in"), f"doc-{index}.txt", ("word " * (index + 1)).encode())
    write(str(tmp_path / "in-b"), "doc-b.txt", b"one two")
    if where == "s3":
        request.getfixturevalue("s3_server")
        bucket("s3", "hr-delta")
        table, options = "s3://hr-delta/words", {"AWS_ALLOW_HTTP": "true", "aws_conditional_put": "etag"}
    else:
        table, options = str(tmp_path / "words"), {}

    job = loader.load(WORD_COUNT)
    for ds, source in (("2026-10-01", "in"), ("2026-10-02", "in-b"), ("2026-10-01", "in")):
        headrace.run(job.build(input=str(tmp_path / source), output=table, output_format="delta"), ds, QUIET)

    delta = DeltaTable(table, storage_options=options)
    assert delta.version() == 2 and delta.metadata().partition_columns == ["ds"]
    seen = words_by_date(pl.read_delta(table, storage_options=options))
    expected = {"2026-10-01": [(f"doc-{i}.txt", i + 2) for i in range(4)], "2026-10-02": [("doc-b.txt", 2)]}
    assert seen == expected  # each row once, though 2026-10-01 ran twice
    # The manifests name the same files the log does.
    assert words_by_date(pl.from_arrow(headrace.read(table))) == expected

    # A run that writes other columns is refused before it starts: before, delta-rs took
    # its schema as the table's, under which the other dates' files were no longer read.
    other = headrace_pipeline(str(tmp_path / "in"), table, output_format="delta")
    with pytest.raises(headrace.ConfigError, match=r"the Delta table s3://hr-delta/words has another schema than "
                                                   r"this run writes \(.*line_index added; .*words dropped"):
        headrace.run(other, "2026-10-03", QUIET)
    assert DeltaTable(table, storage_options=options).version() == 2


def test_a_killed_run_leaves_the_table_at_its_previous_version_and_the_rerun_resumes(ray_cluster, tmp_path):
    lines_corpus(str(tmp_path / "small"), 2, seed=1)
    lines_corpus(str(tmp_path / "large"), 30, seed=2)
    table = str(tmp_path / "lines")
    headrace.run(headrace_pipeline(str(tmp_path / "small"), table, output_format="delta"), "2026-10-03", QUIET)
    before = pl.read_delta(table).sort("source", "line_index")

    args = [*HEADRACE, "submit", SLOW, "--master", "local[2]", "--ds", "2026-10-03", "--conf", "headrace.progress=false",
            "--conf", "output_format=delta", "--conf", f"input={tmp_path / 'large'}", "--conf", f"output={table}",
            "--conf", "delay=0.2"]
    kill_when_staged(args, {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
                     os.path.join(table, "_staging", "ds=2026-10-03", "progress"))
    assert DeltaTable(table).version() == 0
    assert pl.read_delta(table).sort("source", "line_index").equals(before)  # staged files are invisible

    rerun = submit(SLOW, "2026-10-03", f"input={tmp_path / 'large'}", f"output={table}", "delay=0.2")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming ds=2026-10-03" in rerun.stderr
    after = pl.read_delta(table)
    assert DeltaTable(table).version() == 1 and after.select("source").n_unique() == 30
    assert after.height == after.select("source", "line_index").unique().height  # no row twice


CONCURRENT_COMMITS = r"""
import json, os, sys, threading, time
import pyarrow as pa, pyarrow.parquet as pq
from deltalake import DeltaTable, Schema
from deltalake.transaction import AddAction
from headrace.delta import commit_partition

uri, dates, commits = sys.argv[1], [f"2026-09-0{d}" for d in range(1, 5)], 8
schema = Schema.from_arrow(pa.schema([("n", pa.int64()), ("ds", pa.string())]))

def add(ds, n):
    path = f"ds={ds}/part-{n}.parquet"
    os.makedirs(os.path.join(uri, f"ds={ds}"), exist_ok=True)
    pq.write_table(pa.table({"n": [n]}), os.path.join(uri, path))
    return AddAction(path=path, size=os.path.getsize(os.path.join(uri, path)), partition_values={"ds": ds},
                     modification_time=int(time.time() * 1000), data_change=True, stats=json.dumps({"numRecords": 1}))

tries, errors, start = [], [], threading.Barrier(len(dates))
def dated(ds):
    start.wait()  # the first commits race to create the table
    for n in range(commits):
        try:
            tries.append(commit_partition(uri, {}, schema, [add(ds, n)], ds))
        except Exception as exc:
            errors.append(f"{ds}: {type(exc).__name__}: {exc}")
threads = [threading.Thread(target=dated, args=(ds,)) for ds in dates]
[t.start() for t in threads]
[t.join() for t in threads]
rows = sorted(DeltaTable(uri).to_pyarrow_table().to_pylist(), key=lambda r: r["ds"])
print(json.dumps({"tries": tries, "errors": errors, "rows": rows}))
sys.stdout.flush()
os._exit(0)  # delta-rs may abort in its teardown at exit (README), after the work
"""


def test_runs_of_other_dates_committing_at_once_all_land(tmp_path):
    """delta-rs refuses a transaction when another landed since it read the table, even in
    another partition: runs of different dates publishing together (an Airflow backfill
    with max_active_runs > 1) failed after all their work (38 of 60 commits of three dates
    at once), and two first runs racing to create the table did too. Each commit is made
    again on the newer version now; every date ends with its own last rows."""
    import json

    result = subprocess.run([sys.executable, "-c", CONCURRENT_COMMITS, str(tmp_path / "table")],
                            capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["errors"] == []
    assert outcome["rows"] == [{"n": 7, "ds": f"2026-09-0{d}"} for d in range(1, 5)]
    assert len(outcome["tries"]) == 32 and sum(outcome["tries"]) > 32  # commits did meet one another
