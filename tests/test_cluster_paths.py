"""A job submitted to a Ray cluster started elsewhere: relative paths mean the submitting shell's."""

import os
import subprocess

import pyarrow.parquet as pq

from conftest import HEADRACE, ROOT, write
from ray_nodes import RayNodes

WORD_COUNT = os.path.join(ROOT, "tests", "fixtures", "word_count.py")


def test_relative_input_and_output_resolve_on_the_driver_not_on_the_workers(tmp_path):
    job = tmp_path / "job"
    for index in range(5):
        write(str(job / "docs"), f"doc-{index}.txt", ("word " * (index + 1)).encode())
    nodes = RayNodes()
    try:
        nodes.start_head(cpus=3)  # its processes run in their own folder, not the job's
        result = subprocess.run(
            [*HEADRACE, "submit", WORD_COUNT, "--master", nodes.address, "--ds", "2026-10-02",
             "--conf", "input=docs", "--conf", "output=out/words", "--conf", "headrace.progress=false"],
            cwd=job, env=nodes.driver_env, capture_output=True, text=True, timeout=300,
        )
        head = nodes.temp_dirs[0]
        assert result.returncode == 0, result.stderr[-3000:]
        assert not os.path.exists(os.path.join(head, "out"))  # nothing was written where the workers run
    finally:
        nodes.stop()
    partition = job / "out" / "words" / "ds=2026-10-02"
    words = sorted(pq.read_table(str(partition)).column("words").to_pylist())
    assert words == [2, 3, 4, 5, 6]  # "word " * n splits into n + 1 pieces
    manifest = (partition / "_SUCCESS").read_text()
    assert f'"output": "file://{job}/out/words"' in manifest and f'"input": "file://{job}/docs"' in manifest
