"""The GPU check runs where no GPU has been lent yet: its CPU rehearsal runs the same code
(the stage against the bare loop over the stage's own micro-batches, then the
doc-embeddings job end to end), so the script is known to work before a GPU is lent."""

import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_rehearses_on_cpu(tmp_path):
    """As on the lent GPU machine, where the weights cannot travel: a folder with the
    model's config and tokenizer (benchmarks/device_bundle.py), random weights, the
    section written where it can come back."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from gpu_check import model_files
    from stages.text import default_model_path

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = os.path.join(ROOT, "benchmarks", "RESULTS.md")
    before = open(results).read()
    config = tmp_path / "no-weights"
    config.mkdir()
    for name in model_files(default_model_path()):
        shutil.copy(os.path.join(default_model_path(), name), config)
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--rows", "64", "--docs", "8",
         "--work", str(tmp_path), "--model", str(config), "--random-weights", "--results", str(tmp_path / "gpu.md")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = {line.split(":", 1)[0]: line.split(":", 1)[1] for line in done.stdout.splitlines() if line.startswith(("stage vs bare:", "doc-embeddings:"))}
    stage = json.loads(lines["stage vs bare"])
    assert stage["rows"] == 64 and stage["stage_rows_s"] > 0 and stage["bare_rows_s"] > 0
    job = json.loads(lines["doc-embeddings"])
    manifest = json.load(open(tmp_path / "report-gpu-cpu.json"))
    assert manifest["status"] == "committed" and job["rows"] == manifest["counts"]["output"] > 0
    assert "GPU check (rehearsal on CPU)" in done.stdout
    section = (tmp_path / "gpu.md").read_text()
    assert "random weights" in section and "doc-embeddings, 8 docs" in section
    assert open(results).read() == before  # a rehearsal records nothing
