"""Faults Ray must absorb without losing or duplicating a record."""

import os
import subprocess

import pyarrow.parquet as pq

from conftest import HEADRACE, ROOT, write
from headrace.source import stable_id

CRASHING = os.path.join(ROOT, "tests", "fixtures", "crashing_actor.py")


def test_an_actor_that_dies_mid_batch_is_restarted_and_nothing_is_lost_or_doubled(tmp_path):
    sources = [write(str(tmp_path / "in"), f"doc-{i:02d}.txt", f"document {i}".encode()) for i in range(16)]
    marker = tmp_path / "crashed"
    result = subprocess.run(
        [*HEADRACE, "submit", CRASHING, "--master", "local[2]", "--ds", "2026-07-01",
         "--conf", f"input={tmp_path}/in", "--conf", f"output={tmp_path}/out", "--conf", f"marker={marker}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert marker.exists()  # the crash did happen
    ids = pq.read_table(str(tmp_path / "out" / "ds=2026-07-01")).column("doc_id").to_pylist()
    assert sorted(ids) == sorted(stable_id("file://" + s) for s in sources)  # each input once
    assert not os.path.exists(tmp_path / "out" / "_quarantine" / "ds=2026-07-01" / "part-00000.parquet")
