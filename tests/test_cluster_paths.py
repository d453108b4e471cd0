"""A job submitted to a Ray cluster started elsewhere: relative paths mean the submitting shell's."""

import os
import shutil
import subprocess
import sys
import tempfile

import psutil

import pyarrow.parquet as pq

from conftest import HEADRACE, ROOT, free_port, write

WORD_COUNT = os.path.join(ROOT, "tests", "fixtures", "word_count.py")
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def test_relative_input_and_output_resolve_on_the_driver_not_on_the_workers(tmp_path):
    head, job = tmp_path / "head", tmp_path / "job"
    head.mkdir()
    for index in range(5):
        write(str(job / "docs"), f"doc-{index}.txt", ("word " * (index + 1)).encode())
    port = free_port()
    # Its own temp dir names every process of this cluster, so only they are stopped after
    # (`ray stop` would also stop the test session's Ray).
    temp_dir = tempfile.mkdtemp(prefix="hr-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    started = subprocess.run(
        [RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=3",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        cwd=head, env=env, capture_output=True, text=True, timeout=120,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        result = subprocess.run(
            [*HEADRACE, "submit", WORD_COUNT, "--master", f"127.0.0.1:{port}", "--ds", "2026-10-02",
             "--conf", "input=docs", "--conf", "output=out/words", "--conf", "headrace.progress=false"],
            cwd=job, env={**env, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=300,
        )
    finally:
        stop(temp_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    partition = job / "out" / "words" / "ds=2026-10-02"
    words = sorted(pq.read_table(str(partition)).column("words").to_pylist())
    assert words == [2, 3, 4, 5, 6]  # "word " * n splits into n + 1 pieces
    assert not (head / "out").exists()  # nothing was written where the workers' working directory is
    manifest = (partition / "_SUCCESS").read_text()
    assert f'"output": "file://{job}/out/words"' in manifest and f'"input": "file://{job}/docs"' in manifest


def stop(temp_dir: str) -> None:
    mine = []
    for process in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in process.info["cmdline"] or ()):
            mine.append(process)
            try:
                mine += process.children(recursive=True)  # workers, renamed ray::IDLE and so on
            except psutil.NoSuchProcess:
                pass
    for process in mine:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(mine, timeout=30)
    shutil.rmtree(temp_dir, ignore_errors=True)
