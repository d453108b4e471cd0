"""Resume: a run killed part-way is finished by the next run of the same date and configuration."""

import json
import os
import shutil
import signal
import subprocess
import time

import psutil
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import headrace
from conftest import HEADRACE, QUIET, ROOT, lines_corpus, sigterm_when
from headrace import Stage
from headrace.errors import QualityGateError

SLOW = os.path.join(ROOT, "tests", "fixtures", "slow_lines.py")
DS = "2026-08-01"


def rows(output):
    data = pq.read_table(os.path.join(output, f"ds={DS}"))
    quarantine = pq.read_table(os.path.join(output, "_quarantine", f"ds={DS}"))
    return (
        sorted(zip(*(data.column(c).to_pylist() for c in ("doc_id", "source", "line_index", "line")))),
        sorted(zip(*(quarantine.column(c).to_pylist() for c in ("record_id", "source", "error_type")))),
    )


def submit(*conf, pipeline=SLOW):
    args = [*HEADRACE, "submit", pipeline, "--ds", DS]
    for pair in conf:
        args += ["--conf", pair]
    return args


def kill_when_staged(args, env, progress, meanwhile=lambda: None, parts=3, listdir=None):
    """Start a run, and SIGKILL its driver and the local Ray it started once ``parts`` write
    tasks have staged their files."""
    driver = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    ray_processes = []
    try:
        deadline = time.time() + 240
        while len([f for f in (listdir or _listdir)(progress) if f.endswith(".json")]) < parts:
            assert driver.poll() is None, "the run ended before it was killed"
            assert time.time() < deadline, "nothing was staged in time"
            meanwhile()
            time.sleep(0.2)
        ray_processes = psutil.Process(driver.pid).children(recursive=True)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        for process in ray_processes:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


def test_a_sigkilled_run_is_resumed_and_publishes_exactly_a_clean_runs_rows(ray_cluster, tmp_path):
    small, large, output = str(tmp_path / "small"), str(tmp_path / "large"), str(tmp_path / "out")
    lines_corpus(small, 3, seed=1)
    lines_corpus(large, 60, seed=2, exploding=(7, 33))
    first = headrace.run(headrace_pipeline(small, output), DS, QUIET)
    partition = os.path.join(output, f"ds={DS}")
    snapshot = {f: os.path.getsize(os.path.join(partition, f)) for f in os.listdir(partition)}

    conf = (f"input={large}", f"output={output}", "delay=0.15", "headrace.progress=false")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    progress = os.path.join(output, "_staging", f"ds={DS}", "progress")
    concurrent = None

    def meanwhile():
        nonlocal concurrent
        if concurrent is None and os.path.exists(os.path.join(output, "_staging", f"ds={DS}.lock")):
            # A second scheduler starting the same date meanwhile is turned away untouched.
            concurrent = subprocess.run(submit(*conf), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        # The committed partition stays readable while the new run works.
        assert pads.dataset(output, format="parquet", partitioning="hive").count_rows() == first.counts["output"]

    kill_when_staged(submit(*conf), env, progress, meanwhile)

    assert concurrent is not None and concurrent.returncode == 1, concurrent.stderr[-2000:]
    assert "another run" in concurrent.stderr and "is working on this date's output" in concurrent.stderr

    # The killed run staged files, but the published partition is the old one, byte for byte.
    assert os.listdir(progress)
    assert {f: os.path.getsize(os.path.join(partition, f)) for f in os.listdir(partition)} == snapshot
    assert json.load(open(os.path.join(partition, "_SUCCESS")))["run_id"] == first.manifest["run_id"]
    assert pads.dataset(output, format="parquet", partitioning="hive").count_rows() == first.counts["output"]

    resumed = subprocess.run(submit(*conf), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming ds=2026-08-01 (attempt 2)" in resumed.stderr
    manifest = json.load(open(os.path.join(partition, "_SUCCESS")))
    assert 0 < manifest["resume"]["inputs_resumed"] < 60
    assert manifest["resume"]["inputs_resumed"] + manifest["resume"]["inputs_processed"] == 60
    assert not os.path.exists(os.path.join(output, "_staging", f"ds={DS}"))

    clean = str(tmp_path / "clean")
    headrace.run(headrace_pipeline(large, clean), DS, QUIET)
    data, quarantine = rows(output)
    assert (data, quarantine) == rows(clean)
    assert len({(row[0], row[2]) for row in data}) == len(data)  # no row twice
    assert len(quarantine) == 2 and manifest["counts"]["input"] == 60


@pytest.mark.parametrize("signal_name, again", [("SIGTERM", False), ("SIGHUP", False), ("SIGINT", True)])
def test_sigterm_stops_a_run_as_an_interrupt_that_leaves_its_work_for_the_retry(tmp_path, signal_name, again):
    """What a scheduler sends to stop a task (Airflow, a pod's eviction, a timeout): before,
    Ray's handler printed a native stack dump and the process left with exit 15, its report
    saying `failed: SystemExit: 15`. It is an interrupt: one line, exit 130, the report says
    so, Ray's processes are gone, the lock is released and the staged work kept. SIGHUP (the
    terminal or ssh session went away) is the same: before, it killed the driver on the spot
    (exit 129, no report, the lock left, Ray's agents running on). Ctrl-C pressed again and
    again is one interrupt: before, one that came while Ray was being stopped broke that
    off, and the process left with exit 1; one that came while the run was stopping printed a
    second `headrace: interrupted` (click's), or broke off Ray Data's shutdown and left its
    executor running into a Ray that was gone (5 of 12 runs, Ctrl-C every 10 ms)."""
    corpus, output, report = str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "report.json"
    lines_corpus(corpus, 30, seed=4)
    conf = (f"input={corpus}", f"output={output}", "delay=0.1", "headrace.progress=false")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    progress = os.path.join(output, "_staging", f"ds={DS}", "progress")
    code, stderr, ray_processes = sigterm_when(
        [*submit(*conf), "--report", str(report)],
        lambda: os.path.isdir(progress) and any(f.endswith(".json") for f in os.listdir(progress)), env,
        signal_name=signal_name, again=again)
    assert code == 130, stderr[-3000:]
    how = "interrupted" if signal_name == "SIGINT" else f"terminated ({signal_name})"
    assert stderr.splitlines() == [f"headrace: {how}; nothing was published"], stderr[-3000:]
    assert "SIGTERM received" not in stderr  # no native stack dump
    document = json.loads(report.read_text())
    assert (document["status"], document["exit_code"]) == ("interrupted", 130)
    if signal_name != "SIGINT":
        assert document["reason"] == f"Terminated: terminated by {signal_name}"
    assert not os.path.exists(os.path.join(output, f"ds={DS}"))
    gone, alive = psutil.wait_procs(ray_processes, timeout=20)
    assert not alive, [p.cmdline()[:2] for p in alive]
    # The lock is released and what was staged stays: the retry goes ahead at once and
    # resumes it (as after SIGKILL, above).
    assert not os.path.exists(os.path.join(output, "_staging", f"ds={DS}.lock"))
    assert any(f.endswith(".json") for f in os.listdir(progress))


def test_a_changed_configuration_never_mixes_with_staged_files(ray_cluster, tmp_path):
    corpus, output = str(tmp_path / "in"), str(tmp_path / "out")
    lines_corpus(corpus, 6, seed=3, exploding=(2,))
    engine = headrace.EngineConf(progress=False, max_quarantine_fraction=0.0)
    with pytest.raises(QualityGateError):  # leaves its staged files behind
        headrace.run(headrace_pipeline(corpus, output), DS, engine, {"input": corpus, "delay": 0.0})
    assert os.path.exists(os.path.join(output, "_staging", f"ds={DS}", "_FAILED"))

    changed = headrace.run(headrace_pipeline(corpus, output, rows_per_file=2), DS, QUIET,
                           {"input": corpus, "delay": 0.0, "rows_per_file": 2})
    assert "configuration changed" in changed.manifest["resume"]["discarded"]
    assert changed.manifest["resume"]["inputs_resumed"] == 0 and changed.counts["input_quarantined_only"] == 1

    # The same configuration resumes; --no-resume (resume=False) starts afresh.
    with pytest.raises(QualityGateError):
        headrace.run(headrace_pipeline(corpus, output), DS, engine, {"input": corpus, "delay": 0.0})
    again = headrace.run(headrace_pipeline(corpus, output), DS, QUIET, {"input": corpus, "delay": 0.0})
    assert again.manifest["resume"]["inputs_resumed"] == 6 and again.manifest["resume"]["inputs_processed"] == 0
    resumed_rows = rows(output)
    with pytest.raises(QualityGateError):
        headrace.run(headrace_pipeline(corpus, output), DS, engine, {"input": corpus, "delay": 0.0})
    fresh = headrace.run(headrace_pipeline(corpus, output), DS, headrace.EngineConf(progress=False, resume=False),
                         {"input": corpus, "delay": 0.0})
    assert fresh.manifest["resume"]["inputs_resumed"] == 0 and "resume is off" in fresh.manifest["resume"]["discarded"]
    assert rows(output) == resumed_rows and len(resumed_rows[1]) == 1


def headrace_pipeline(input, output, pipeline=SLOW, **settings):
    from headrace import loader

    return loader.load(pipeline).build(input=input, output=output, **settings)


def _listdir(path):
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def test_editing_the_stage_after_a_kill_discards_what_the_old_code_staged(ray_cluster, tmp_path):
    corpus, output, clean = str(tmp_path / "in"), str(tmp_path / "out"), str(tmp_path / "clean")
    lines_corpus(corpus, 30, seed=4, exploding=(5,))
    job = tmp_path / "lines_job.py"  # the user's pipeline file, with its stage in it
    shutil.copy(SLOW, job)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": ROOT}
    conf = (f"input={corpus}", f"output={output}", "headrace.progress=false")
    lock, working = os.path.join(output, "_staging", f"ds={DS}.lock"), []

    def status():
        return subprocess.run([*HEADRACE, "status", output, "--ds", DS], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)

    def meanwhile():  # a sensor asking while the run works says so (before: only "is not committed")
        if not working and os.path.exists(lock):
            working.append(status())

    kill_when_staged(submit(*conf, "delay=0.2", pipeline=str(job)), env,
                     os.path.join(output, "_staging", f"ds={DS}", "progress"), meanwhile, parts=2)
    assert working[0].returncode == 1 and "is not committed: a run is working on it (run " in working[0].stdout
    left = status()
    assert left.returncode == 1 and "is not committed: a run left its lock (run " in left.stdout, left.stdout
    assert "its process is gone): the next run takes it over and resumes what it staged" in left.stdout

    source = job.read_text()
    job.write_text(source.replace("lines.append(line)", "lines.append(line.upper())"))  # the fix
    rerun = subprocess.run(submit(*conf, "delay=0.2", pipeline=str(job)), cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    manifest = json.load(open(os.path.join(output, f"ds={DS}", "_SUCCESS")))
    discarded = manifest["resume"]["discarded"]
    assert "the configuration changed" in discarded and "code of" in discarded and "lines_job" in discarded
    assert manifest["resume"]["inputs_resumed"] == 0 and "discarded" in rerun.stderr

    headrace.run(headrace_pipeline(corpus, clean, pipeline=str(job)), DS, QUIET)
    data, quarantine = rows(output)
    assert (data, quarantine) == rows(clean) and len(data) == manifest["counts"]["output"]
    assert all(row[3] == row[3].upper() for row in data)  # no row made by the old code


def test_a_lock_from_another_host_holds_until_its_heartbeat_stops(tmp_path):
    from headrace import ParquetSink
    from headrace.errors import RunInProgress
    from headrace.lock import RunLock

    storage = ParquetSink(str(tmp_path)).storage()
    path = tmp_path / "_staging" / f"ds={DS}.lock"
    path.parent.mkdir()
    RunLock(storage, str(path), "r-2").refuse_if_held()  # no lock: the check takes none and writes nothing
    assert not path.exists()
    holder = {"host": "worker-7", "pid": 1, "run_id": "r-1", "since": time.time(), "beat": time.time()}
    path.write_text(json.dumps(holder))
    for attempt in ("refuse_if_held", "acquire"):  # the check before Ray starts, and the taking
        with pytest.raises(RunInProgress, match=r"another run \(r-1, pid 1 on worker-7"):
            getattr(RunLock(storage, str(path), "r-2", stale_s=60), attempt)()
        assert json.loads(path.read_text()) == holder
    path.write_text(json.dumps({**holder, "beat": time.time() - 120}))  # no heartbeat for two minutes
    RunLock(storage, str(path), "r-2", stale_s=60).refuse_if_held()  # stale: left for acquire to take over
    assert json.loads(path.read_text())["run_id"] == "r-1"
    with RunLock(storage, str(path), "r-2", stale_s=60):
        assert json.loads(path.read_text())["run_id"] == "r-2"
    assert not path.exists()


class StallsAndIsTakenOver(Stage):
    """On its first call, does what happens to a run that stalls past the lock's
    staleness (a paused VM, a partitioned node): a retry on another host takes the lock
    (``take_over``), and the stalled run writes a part after the retry resumed."""

    needs = ("text",)
    adds = {}

    def __init__(self, output: str, take_over: bool):
        self.output, self.take_over = output, take_over

    def process(self, batch):
        import pyarrow as pa

        staging = os.path.join(self.output, "_staging", f"ds={DS}")
        marker = staging + ".stalled"
        if not os.path.exists(marker):
            open(marker, "w").close()
            if self.take_over:
                with open(staging + ".lock", "w") as handle:
                    json.dump({"host": "worker-9", "pid": 1, "run_id": "r-retry", "since": time.time(),
                               "beat": time.time()}, handle)
            os.makedirs(os.path.join(staging, "data"), exist_ok=True)
            pq.write_table(pa.table({"stray": [1]}), os.path.join(staging, "data", "part-009-00000.parquet"))
        return batch


def test_a_run_whose_lock_was_taken_over_publishes_nothing_and_never_writes_over_the_new_holder(ray_cluster, tmp_path):
    """Before, the stalled run's heartbeat wrote over the new holder's lock and both ran on,
    each publishing the date in turn; and a local partition took whatever files lay in the
    staging folder, listed in _SUCCESS or not."""
    from headrace import Files, ParquetSink, Pipeline
    from headrace.errors import LockLost
    from headrace.lock import RunLock
    from stages.files import ReadFiles
    from stages.text import DecodeText

    storage = ParquetSink(str(tmp_path)).storage()
    path = tmp_path / "lock" / f"ds={DS}.lock"
    path.parent.mkdir()
    lock = RunLock(storage, str(path), "r-stalled", heartbeat_s=0.05)
    lock.acquire()
    retry = {"host": "worker-9", "pid": 1, "run_id": "r-retry", "since": time.time(), "beat": time.time()}
    path.write_text(json.dumps(retry))  # the retry took the stale lock over
    time.sleep(0.5)  # ten heartbeats of the stalled run
    assert json.loads(path.read_text()) == retry
    with pytest.raises(LockLost, match=r"lost the date's lock .* \(now held by run r-retry, pid 1 on worker-9\)"):
        lock.check()
    lock.release()
    assert json.loads(path.read_text()) == retry

    lines_corpus(str(tmp_path / "in"), 3, seed=5)
    for take_over in (True, False):
        output = str(tmp_path / f"out-{take_over}")
        pipeline = Pipeline(name="stalled", source=Files(str(tmp_path / "in")),
                            stages=[ReadFiles(), DecodeText(), StallsAndIsTakenOver(output, take_over)],
                            sink=ParquetSink(output), columns=["doc_id", "source", "text"])
        if take_over:
            with pytest.raises(LockLost, match="nothing was published, the date is the other run's"):
                headrace.run(pipeline, DS, QUIET)
            assert not os.path.exists(os.path.join(output, f"ds={DS}"))
            assert json.load(open(os.path.join(output, "_staging", f"ds={DS}.lock")))["run_id"] == "r-retry"
        else:  # the stray part is not published: the partition holds what _SUCCESS lists
            result = headrace.run(pipeline, DS, QUIET)
            listed = {entry["path"] for entry in result.manifest["files"]} | {"_SUCCESS"}
            assert set(os.listdir(result.partition)) == listed and "part-009-00000.parquet" not in listed
            assert pq.read_table(result.partition).num_rows == 3


def test_a_run_told_to_wait_for_the_lock_goes_ahead_once_the_holders_heartbeat_is_stale(tmp_path):
    """A Kubernetes Job retries a killed pod on a new pod (another host) within seconds,
    while the dead pod's lock counts as held until its heartbeat is stale_s old: without
    headrace.lock_wait_s that retry is turned away; with it, it waits and goes ahead."""
    from headrace import ParquetSink
    from headrace.errors import RunInProgress
    from headrace.lock import RunLock

    storage = ParquetSink(str(tmp_path)).storage()
    path = tmp_path / f"ds={DS}.lock"
    dead = {"host": "pod-7", "pid": 1, "run_id": "r-1", "since": time.time(), "beat": time.time() - 2.0}
    path.write_text(json.dumps(dead))  # its last heartbeat 2 s ago; stale at 3 s
    with pytest.raises(RunInProgress, match="another run"):
        RunLock(storage, str(path), "r-2", stale_s=3.0).refuse_if_held()
    started = time.monotonic()
    RunLock(storage, str(path), "r-2", stale_s=3.0, wait_s=10.0, poll_s=0.1).refuse_if_held()
    assert 0.8 < time.monotonic() - started < 5.0
    # A live holder (its heartbeat going on) still turns the waiting run away, after the wait.
    with RunLock(storage, str(path), "r-3", heartbeat_s=0.2, stale_s=3.0):
        started = time.monotonic()
        with pytest.raises(RunInProgress, match=r"waited 1.5 s: headrace.lock_wait_s"):
            RunLock(storage, str(path), "r-4", stale_s=3.0, wait_s=1.5, poll_s=0.1).refuse_if_held()
        assert time.monotonic() - started >= 1.5


def test_sigterm_stops_a_backfill_with_its_table_and_report_of_the_dates_so_far(tmp_path):
    """Before, a stopped backfill printed no table and wrote no report: which dates had
    committed was left to find out."""
    lines_corpus(str(tmp_path / "in" / "2026-08-01"), 3, seed=5)
    lines_corpus(str(tmp_path / "in" / "2026-08-02"), 30, seed=6)
    output, report = tmp_path / "out", tmp_path / "report.json"
    command = [*HEADRACE, "backfill", SLOW, "--start", "2026-08-01", "--end", "2026-08-03", "--conf",
               f"input={tmp_path}/in/{{ds}}", "--conf", f"output={output}", "--conf", "delay=0.1",
               "--conf", "headrace.progress=false", "--report", str(report)]
    ready = (output / "_staging" / "ds=2026-08-02.lock").exists  # the second date is under way
    code, stderr, _ = sigterm_when(command, ready, {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert code == 130, stderr[-3000:]
    assert stderr.splitlines()[-1] == ("headrace: terminated (SIGTERM); ds=2026-08-02 was not published "
                                       "(the dates before it: see the table)")
    dates = json.loads(report.read_text())["dates"]
    assert [(d["ds"], d["exit"], d["status"]) for d in dates] == [
        ("2026-08-01", 0, "committed"), ("2026-08-02", 130, "terminated (SIGTERM)")]
    assert json.loads(report.read_text())["exit_code"] == 130
    assert (output / "ds=2026-08-01" / "_SUCCESS").exists() and not (output / "ds=2026-08-02").exists()
