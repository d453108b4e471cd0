"""Model pools on fake GPUs (ray.init(num_gpus=N)): scheduling is real, the model runs on CPU."""

import json
import os
import subprocess

from conftest import HEADRACE, ROOT, write

GPU_POOLS = os.path.join(ROOT, "tests", "fixtures", "gpu_pools.py")


def submit(tmp_path, *args):
    return subprocess.run(
        [*HEADRACE, "submit", GPU_POOLS, "--ds", "2026-04-01", "--conf", f"input={tmp_path}/in",
         "--conf", f"output={tmp_path}/out", "--report", str(tmp_path / "report.json"), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )


def test_pools_grow_with_backlog_and_fractions_share_a_gpu(tmp_path):
    for index in range(40):
        write(str(tmp_path / "in"), f"doc-{index:02d}.txt", ("x" * (index + 1)).encode())
    result = submit(tmp_path, "--master", "local[2]", "--num-cpus", "8", "--num-gpus", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no GPU" not in result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    slow, half = report["utilisation"]["SlowModel"], report["utilisation"]["Lengths"]
    # The slow pool grew past one actor while there was a backlog...
    assert slow["max_concurrent_actors"] > 1, slow["pool_timeline"]
    # ...and was smaller again once the input ran out.
    assert slow["pool_timeline"][-1]["actors"] < slow["max_concurrent_actors"]
    assert slow["rows"] == 40 and slow["forward_fraction"] > 0.5
    # gpus=0.5 with two actors: both on the same GPU.
    assert half["actors"] == 2 and len(half["gpu_ids"]) == 1 and len(half["gpu_ids"][0]) == 1
    placement = {p["stage"]: p for p in report["placement"]}
    assert placement["Lengths"]["gpus"] == 0.5 and placement["SlowModel"]["actors"] == [1, 3]
    assert report["counts"]["output"] == 40


def test_require_gpu_fails_before_any_work(tmp_path):
    write(str(tmp_path / "in"), "a.txt", b"text")
    # Found before Ray starts where a local Ray's GPUs are given, so a dry run finds it too.
    for dry_run in ((), ("--dry-run",)):
        result = submit(tmp_path, "--master", "local[2]", "--num-gpus", "0", "--require-gpu", *dry_run)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "stage SlowModel needs gpus=1 but the cluster has 0 GPU(s) and a GPU is required" in result.stderr
        assert not os.path.exists(tmp_path / "out")
