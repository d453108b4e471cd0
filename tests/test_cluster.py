"""headrace on a real multi-node Ray cluster: three `ray start` nodes on this machine.

The head has no CPUs, as production heads often do: every task and actor runs on the two
worker nodes (1 CPU each), so the run must spread across nodes, and killing a worker kills
real work. The head runs the dashboard (Ray Jobs) and takes token authentication; drivers
get the token file alone (RAY_AUTH_TOKEN_PATH), as a user's shell would.
"""

import json
import os
import subprocess
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

import headrace
from conftest import HEADRACE, QUIET, ROOT, good_corpus, lines_corpus, sigterm_when, write
from pipelines.doc_embeddings import pipeline as doc_embeddings
from ray_nodes import RayNodes

DOC_EMBEDDINGS = os.path.join(ROOT, "pipelines", "doc_embeddings.py")
WORD_COUNT = os.path.join(ROOT, "tests", "fixtures", "word_count.py")
DS = "2026-11-03"


@pytest.fixture(scope="module")
def nodes():
    cluster = RayNodes()
    try:
        cluster.start_head(cpus=0, dashboard=True)
        cluster.add_worker(cpus=1)
        cluster.add_worker(cpus=1)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("cluster-docs"))
    good_corpus(directory, count=40, seed=21, long_every=3)
    return directory


# fp32: embeddings comparable across batch compositions to 1e-5, and the node-loss test's
# model actors busy long enough to be killed mid-run (bf16 is 2.5x faster on CPUs with it).
FP32 = ("--conf", "embed_precision=fp32")


def cli(nodes, *args, timeout=300, env=None, **kwargs):
    return subprocess.run([*HEADRACE, *args], capture_output=True, text=True, timeout=timeout,
                          env=env or nodes.driver_env, cwd=ROOT, **kwargs)


def rows(partition) -> dict:
    table = pq.read_table(str(partition), columns=["doc_id", "chunk_index", "text", "embedding"])
    keyed = {}
    for row in table.to_pylist():
        key = (row["doc_id"], row["chunk_index"])
        assert key not in keyed, f"duplicate row {key}"
        keyed[key] = (row["text"], np.asarray(row["embedding"], dtype=np.float32))
    return keyed


def assert_same_rows(ours: dict, reference: dict) -> None:
    assert ours.keys() == reference.keys()
    for key, (text, embedding) in reference.items():
        assert ours[key][0] == text
        # Other batch compositions pad differently: the same vectors up to float noise.
        assert np.allclose(ours[key][1], embedding, atol=1e-5), key


@pytest.fixture(scope="module")
def clean_run(nodes, corpus, tmp_path_factory):
    """doc-embeddings over the cluster, with nothing going wrong."""
    output = tmp_path_factory.mktemp("cluster-out") / "emb"
    report = output.parent / "report.json"
    result = cli(nodes, "submit", DOC_EMBEDDINGS, "--master", nodes.address, "--ds", DS,
                 "--conf", f"input={corpus}", "--conf", f"output={output}", "--conf", "headrace.progress=false", *FP32,
                 "--report", str(report))
    assert result.returncode == 0, result.stderr[-4000:]
    return output / f"ds={DS}", json.loads(report.read_text()), result


def test_doc_embeddings_runs_on_several_nodes_and_equals_a_local_run(clean_run, corpus, ray_cluster, tmp_path):
    partition, report, result = clean_run
    assert report["cluster"]["nodes"] == 3 and report["cluster"]["cpus"] == 2
    busy = [n for n in report["nodes"] if n["batches"] or n["actors"]]
    assert len(busy) >= 2, report["nodes"]  # the report says what ran where
    assert sum(sum(n["actors"].values()) for n in report["nodes"]) >= 2
    assert "ran on" in result.stdout and report["counts"]["quarantined"] == 0
    local = headrace.run(doc_embeddings(input=corpus, output=str(tmp_path / "local"), embed_precision="fp32"), DS, QUIET)
    assert_same_rows(rows(partition), rows(local.partition))


def test_a_worker_node_lost_mid_run_changes_nothing(nodes, corpus, clean_run, tmp_path):
    """SIGKILL a worker node (raylet, workers, agents) while its model actor works: Ray
    restarts the lost actor and re-runs the lost tasks, and the run commits exactly the
    clean run's rows."""
    output = tmp_path / "emb"
    report = tmp_path / "report.json"
    process = subprocess.Popen(
        [*HEADRACE, "submit", DOC_EMBEDDINGS, "--master", nodes.address, "--ds", DS,
         "--conf", f"input={corpus}", "--conf", f"output={output}", "--conf", "headrace.progress=false", *FP32,
         "--report", str(report)],
        env=nodes.driver_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    killed = {}

    def kill_the_busy_worker():
        # Wait until a worker node's model actor has done real work (loading the model
        # takes a few CPU seconds; past that it embeds), then take that node away.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            for index in (1, 2):
                if nodes.actor_cpu_seconds(index) > 12:
                    killed["node"], killed["processes"] = index, nodes.kill(index)
                    return
            time.sleep(0.5)

    killer = threading.Thread(target=kill_the_busy_worker)
    killer.start()
    stdout, stderr = process.communicate(timeout=600)
    killer.join()
    assert killed.get("processes", 0) >= 3, "no worker node was killed mid-run"
    assert process.returncode == 0, stderr[-4000:]
    manifest = json.loads(report.read_text())
    assert manifest["counts"]["input"] == 40 and manifest["counts"]["quarantined"] == 0
    assert_same_rows(rows(output / f"ds={DS}"), rows(clean_run[0]))
    nodes.add_worker(cpus=1)  # the next tests get two workers again


def test_token_authentication_missing_or_wrong_token_exits_2_at_once(nodes, tmp_path):
    docs = tmp_path / "docs"
    write(str(docs), "a.txt", b"one two")
    args = ["submit", WORD_COUNT, "--master", nodes.address, "--conf", f"input={docs}",
            "--conf", f"output={tmp_path / 'out'}"]
    no_token = {k: v for k, v in nodes.driver_env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    for env in ({**no_token, "HOME": str(tmp_path)}, {**no_token, "RAY_AUTH_TOKEN": "0" * 32}):
        started = time.monotonic()
        result = cli(nodes, *args, env=env, timeout=60)
        assert result.returncode == 2, result.stderr[-2000:]
        assert time.monotonic() - started < 30
        assert result.stderr.count("\n") == 1, result.stderr
        assert "refused this driver's authentication token" in result.stderr and "RAY_AUTH_TOKEN_PATH" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cluster_deploy_mode_runs_the_job_on_the_cluster_with_the_runs_exit_code(nodes, tmp_path):
    docs = tmp_path / "docs"
    for index in range(6):
        write(str(docs), f"doc-{index}.txt", ("word " * (index + 1)).encode())
    output = tmp_path / "out"
    common = ["--deploy-mode", "cluster", "--master", nodes.dashboard, "--conf", f"input={docs}",
              "--conf", f"output={output}", "--conf", "headrace.progress=false"]
    result = cli(nodes, "submit", WORD_COUNT, *common, "--ds", "2026-11-04")
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    assert "committed" in result.stdout and "raysubmit_" in result.stderr  # the job's own logs came back
    words = pq.read_table(str(output / "ds=2026-11-04")).column("words").to_pylist()
    assert sorted(words) == [2, 3, 4, 5, 6, 7]

    submitted = cli(nodes, "submit", WORD_COUNT, *common, "--ds", "2026-11-05", "--no-wait")
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    submission = submitted.stdout.strip()
    assert submission.startswith("raysubmit_")
    deadline = time.monotonic() + 180
    while True:
        status = cli(nodes, "job", "status", submission, "--master", nodes.dashboard)
        assert status.returncode == 0, status.stderr
        if "SUCCEEDED" in status.stdout or time.monotonic() > deadline:
            break
        assert "FAILED" not in status.stdout, status.stdout
        time.sleep(1)
    assert status.stdout.strip() == f"{submission} SUCCEEDED (exit 0)"
    assert (output / "ds=2026-11-05" / "_SUCCESS").exists()
    logs = cli(nodes, "job", "logs", submission, "--master", nodes.dashboard)
    assert "word_count ds=2026-11-05 committed" in logs.stdout

    # Five inputs of six make the stage raise: quarantined, and the gate refuses the date.
    for index in range(5):
        write(str(docs), f"doc-{index}.txt", b"explode")
    tripped = cli(nodes, "submit", WORD_COUNT, *common, "--ds", "2026-11-06")
    assert tripped.returncode == 3, tripped.stderr[-3000:] + tripped.stdout[-3000:]
    assert not (output / "ds=2026-11-06").exists()


def test_a_cluster_mode_submit_stopped_by_its_scheduler_stops_its_job(nodes, tmp_path):
    """SIGTERM to `headrace submit --deploy-mode cluster` while it follows its job: before,
    the command died and the job went on running on the cluster, holding the date's lock
    against the scheduler's retry (which failed: another run is working on this date)."""
    import re

    docs, output = tmp_path / "docs", tmp_path / "out"
    lines_corpus(str(docs), 30, seed=8)
    command = [*HEADRACE, "submit", os.path.join(ROOT, "tests", "fixtures", "slow_lines.py"), "--deploy-mode",
               "cluster", "--master", nodes.dashboard, "--ds", DS, "--conf", f"input={docs}",
               "--conf", f"output={output}", "--conf", "delay=0.2", "--conf", "headrace.progress=false"]
    lock = output / "_staging" / f"ds={DS}.lock"
    # Ready once the job's driver runs on the cluster and holds the date.
    code, stderr, _ = sigterm_when(command, lock.exists, nodes.driver_env, timeout=180, what="the job")
    assert code == 130, stderr[-3000:]
    submission = re.search(r"submitted (raysubmit_\w+)", stderr).group(1)
    assert f"headrace: job {submission} stopped on the cluster" in stderr, stderr[-3000:]
    deadline = time.monotonic() + 60
    while True:
        status = cli(nodes, "job", "status", submission, "--master", nodes.dashboard)
        if "STOPPED" in status.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "STOPPED" in status.stdout, status.stdout + status.stderr
    assert not (output / f"ds={DS}").exists()
    # The job's driver, stopped by Ray with SIGTERM, let go of the date: a retry can run at once.
    deadline = time.monotonic() + 30
    while lock.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not lock.exists()


def test_master_local_starts_its_own_ray_beside_a_running_or_dead_cluster(nodes, tmp_path):
    """RAY_ADDRESS names the live cluster while Ray's current-cluster file (in
    RAY_TMPDIR/ray) names a dead one, as after a cluster killed without `ray stop`: either
    would have made `ray.init()` attach to a cluster or fail."""
    import shutil
    import tempfile

    from conftest import free_port

    docs = tmp_path / "docs"
    write(str(docs), "a.txt", b"one two three")
    ray_tmp = tempfile.mkdtemp(prefix="hr-t", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        os.makedirs(os.path.join(ray_tmp, "ray"))
        current = os.path.join(ray_tmp, "ray", "ray_current_cluster")
        with open(current, "w") as handle:
            handle.write(f"127.0.0.1:{free_port()}")
        report = tmp_path / "report.json"
        result = cli(nodes, "submit", WORD_COUNT, "--master", "local[1]", "--conf", f"input={docs}",
                     "--conf", f"output={tmp_path / 'out'}", "--conf", "headrace.progress=false", "--report",
                     str(report), env={**nodes.driver_env, "RAY_TMPDIR": ray_tmp, "RAY_ADDRESS": nodes.address})
        assert result.returncode == 0, result.stderr[-3000:]
        cluster = json.loads(report.read_text())["cluster"]
        assert cluster["nodes"] == 1 and cluster["cpus"] == 2  # its own: local[1], two slots per core
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_cluster_deploy_mode_checks_before_submitting(nodes, tmp_path):
    unknown = cli(nodes, "submit", WORD_COUNT, "--deploy-mode", "cluster", "--master", nodes.dashboard,
                  "--conf", "inptu=x")
    assert unknown.returncode == 2 and "unknown conf key 'inptu'" in unknown.stderr
    not_http = cli(nodes, "submit", WORD_COUNT, "--deploy-mode", "cluster", "--master", nodes.address)
    assert not_http.returncode == 2 and "needs --master http://HEAD:8265" in not_http.stderr
    from conftest import free_port

    started = time.monotonic()
    nobody = cli(nodes, "submit", WORD_COUNT, "--deploy-mode", "cluster", "--master", f"http://127.0.0.1:{free_port()}",
                 timeout=60)
    assert nobody.returncode == 2 and "no Ray dashboard answers there" in nobody.stderr, nobody.stderr
    assert time.monotonic() - started < 30
    unknown_job = cli(nodes, "job", "status", "raysubmit_nosuchjob", "--master", nodes.dashboard)
    assert unknown_job.returncode == 2, unknown_job.stderr
