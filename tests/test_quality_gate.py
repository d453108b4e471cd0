"""The quality gate: too many quarantined inputs and nothing is published (exit 3)."""

import json
import os
import subprocess

import pyarrow.parquet as pq

import headrace
from conftest import HEADRACE, QUIET, ROOT, write
from headrace import loader

WORD_COUNT = os.path.join(ROOT, "tests", "fixtures", "word_count.py")


def submit(tmp_path, *conf):
    args = [*HEADRACE, "submit", WORD_COUNT, "--master", "local[2]", "--ds", "2026-06-01",
            "--conf", f"input={tmp_path}/in", "--conf", f"output={tmp_path}/out"]
    for pair in conf:
        args += ["--conf", pair]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_above_the_gate_exits_3_and_keeps_the_published_partition(ray_cluster, tmp_path):
    for index in range(7):
        write(str(tmp_path / "in"), f"good-{index}.txt", b"three little words")
    # The partition the refused run must leave as it was.
    headrace.run(loader.load(WORD_COUNT).build(input=f"{tmp_path}/in", output=f"{tmp_path}/out"), "2026-06-01", QUIET)
    partition = tmp_path / "out" / "ds=2026-06-01"
    before = (partition / "_SUCCESS").read_text()

    for index in range(3):  # 3 of 10 inputs (30%) now fail
        write(str(tmp_path / "in"), f"bad-{index}.txt", b"please explode")
    gated = submit(tmp_path, "headrace.max_quarantine_fraction=0.1")
    assert gated.returncode == 3, gated.stderr[-2000:]
    assert "quality gate: 3 of 10 inputs (30%) ended only in the quarantine" in gated.stderr
    assert (partition / "_SUCCESS").read_text() == before  # the old partition, untouched
    assert pq.read_table(str(partition)).num_rows == 7

    # The failed attempt is kept for inspection, with its reason.
    staged = tmp_path / "out" / "_staging" / "ds=2026-06-01"
    failed = json.loads((staged / "_FAILED").read_text())
    assert failed["status"] == "failed" and "max_quarantine_fraction=0.1" in failed["reason"]
    assert pq.read_table(str(staged / "quarantine")).num_rows == 3
    assert pq.read_table(str(staged / "data")).num_rows == 10 - 3

    # At 30% allowed, the same input commits.
    # The gate is an engine setting: the rerun resumes the staged attempt instead of redoing it.
    ok = submit(tmp_path, "headrace.max_quarantine_fraction=0.3")
    assert ok.returncode == 0, ok.stderr[-2000:]
    manifest = json.loads((partition / "_SUCCESS").read_text())
    assert manifest["counts"]["input_quarantined_only"] == 3
    assert manifest["resume"]["inputs_resumed"] == 10 and manifest["resume"]["inputs_processed"] == 0
    assert pq.read_table(str(partition)).num_rows == 7
