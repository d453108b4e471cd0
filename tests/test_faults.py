"""Faults Ray must absorb without losing or duplicating a record."""

import json
import os
import subprocess

import pyarrow.parquet as pq

from conftest import HEADRACE, ROOT, small_disk, write
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
    quarantine = tmp_path / "out" / "_quarantine" / "ds=2026-07-01"
    assert quarantine.is_dir() and not [f for f in os.listdir(quarantine) if f.endswith(".parquet")]


FLAKY = os.path.join(ROOT, "tests", "fixtures", "flaky_inputs.py")


def test_transient_storage_faults_are_retried_and_the_output_equals_a_clean_run(tmp_path):
    """Listings, opens, file creations, writes and renames fail now and then, on the read and the write side."""
    for index in range(10):
        write(str(tmp_path / "in"), f"doc-{index}.txt", ("word " * (index + 1)).encode())
    ledger = tmp_path / "ops"
    ledger.mkdir()
    failing = {"list": [1], "open": [2, 5, 6], "create": [3], "write": [4, 9], "rename": [2, 6]}
    outputs = {}
    for name, scheme in (("clean", ""), ("flaky", "flaky://")):
        env = {**os.environ, "FLAKY_DIR": str(ledger),
               "FLAKY_FAIL": ";".join(f"{k}:{','.join(map(str, v))}" for k, v in failing.items())}
        result = subprocess.run(
            [*HEADRACE, "submit", FLAKY, "--master", "local[2]", "--ds", "2026-07-02",
             "--conf", f"input={scheme}{tmp_path}/in", "--conf", f"output={scheme}{tmp_path}/out-{name}"],
            capture_output=True, text=True, cwd=ROOT, timeout=300, env=env,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        table = pq.read_table(str(tmp_path / f"out-{name}" / "ds=2026-07-02"))
        outputs[name] = sorted(zip([os.path.basename(s) for s in table.column("source").to_pylist()],
                                   table.column("words").to_pylist()))
        assert not list((tmp_path / f"out-{name}" / "_quarantine" / "ds=2026-07-02").iterdir())
        assert not os.path.exists(tmp_path / f"out-{name}" / "_staging" / "ds=2026-07-02")
        if name == "flaky":
            manifest = json.loads((tmp_path / "out-flaky" / "ds=2026-07-02" / "_SUCCESS").read_text())
            assert manifest["counts"] == {**manifest["counts"], "input": 10, "output": 10, "quarantined": 0}
    # Every chosen operation was reached (so it did fail), and the work went on past it.
    done = {kind: sum(1 for f in os.listdir(ledger) if f.startswith(kind + "-")) for kind in failing}
    assert all(done[kind] > max(numbers) for kind, numbers in failing.items()), done
    assert outputs["flaky"] == outputs["clean"] and len(outputs["clean"]) == 10


WORD_COUNT = os.path.join(ROOT, "tests", "fixtures", "word_count.py")


def test_a_full_disk_fails_the_run_in_a_few_lines_naming_the_file_and_the_rerun_resumes(tmp_path):
    """The output on a disk that fills up during the run (a 20 KiB tmpfs). Before, stderr
    had 245 lines: Ray Data's console printed the failed task's trace twice over headrace's
    own, whose first line was cut mid-word, and the error named no file
    (``OSError: [Errno 28] No space left on device``)."""
    import random

    disk = tmp_path / "disk"
    with small_disk(disk, "20k") as remount:
        rng = random.Random(3)
        for index in range(200):
            write(str(tmp_path / "in"), f"doc-{index:03d}.txt",
                  " ".join(f"{rng.getrandbits(64):x}" for _ in range(300)).encode())

        def run():
            return subprocess.run(
                [*HEADRACE, "submit", WORD_COUNT, "--master", "local[2]", "--ds", "2026-07-03",
                 "--conf", f"input={tmp_path}/in", "--conf", f"output={disk}/out", "--conf", "headrace.progress=false"],
                capture_output=True, text=True, cwd=ROOT, timeout=300,
            )

        full = run()
        assert full.returncode == 1, full.stderr[-3000:]
        error = [line for line in full.stderr.splitlines() if line.startswith("headrace: error:")]
        assert len(error) == 1, full.stderr[-3000:]
        assert f"OSError: [Errno 28] No space left on device: '{disk}/out/_staging/ds=2026-07-03/" in error[0]
        assert "Full stack trace" not in full.stderr and len(full.stderr.splitlines()) < 80, full.stderr
        detail = full.stderr.splitlines()[full.stderr.splitlines().index(error[0]) + 1]
        assert detail.strip() in ("...", "Traceback (most recent call last):") or detail.strip().startswith('File "'), detail
        assert not os.path.exists(disk / "out" / "ds=2026-07-03")

        remount("64m")
        again = run()
        assert again.returncode == 0, again.stderr[-3000:]
        table = pq.read_table(str(disk / "out" / "ds=2026-07-03"))
        assert sorted(os.path.basename(s) for s in table.column("source").to_pylist()) == \
            [f"doc-{index:03d}.txt" for index in range(200)]
        manifest = json.loads((disk / "out" / "ds=2026-07-03" / "_SUCCESS").read_text())
        assert manifest["resume"]["attempt"] == 2 and manifest["counts"]["quarantined"] == 0
