"""The operator's side of `headrace submit`: strict dates and keys, pipelines that fail to
load, helper modules next to a pipeline, --dry-run with every setting's origin, a report
on every outcome, and an empty input committed on request. Each through the CLI."""

import json
import os
import shutil
import subprocess
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import HEADRACE, ROOT, free_port, write

WORD_COUNT = os.path.join(ROOT, "tests", "fixtures", "word_count.py")


def cli(*args, env=None, cwd=ROOT, timeout=300):
    environment = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    return subprocess.run([*HEADRACE, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=environment)


@pytest.fixture
def docs(tmp_path):
    for index in range(4):
        write(str(tmp_path / "docs"), f"doc-{index}.txt", ("word " * (index + 1)).encode())
    return tmp_path / "docs"


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--ds", "20261101"], {}, "--ds '20261101': expected a date as YYYY-MM-DD"),
        (["--ds", "2026-11-31"], {}, "--ds '2026-11-31': expected a date as YYYY-MM-DD"),
        ([], {"HEADRACE_CONF_OUTPTU": "x"}, "unknown environment variable HEADRACE_CONF_OUTPTU: pipeline word_count "
                                            "takes HEADRACE_CONF_INPUT, HEADRACE_CONF_OUTPUT"),
        ([], {"HEADRACE_MASTRE": "local"}, "unknown environment variable HEADRACE_MASTRE"),
    ],
)
def test_dates_and_environment_keys_are_strict(docs, args, env, message):
    result = cli("submit", WORD_COUNT, "--dry-run", "--conf", f"input={docs}", *args, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


@pytest.mark.parametrize(
    "source, where, error",
    [
        ("import pyarrow\n\ndef pipeline(:\n    pass\n", "line 3", "SyntaxError: invalid syntax"),
        ("import json\nimport no_such_module_here\n", "line 2", "ModuleNotFoundError: No module named 'no_such_module_here'"),
        ("X = 1 / 0\n", "line 1", "ZeroDivisionError"),
    ],
)
def test_a_pipeline_that_fails_to_load_exits_2_with_file_and_line(tmp_path, source, where, error):
    path = tmp_path / "job.py"
    path.write_text(source)
    for extra in ([], ["--dry-run"]):
        result = cli("submit", str(path), *extra)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert f"{path}, {where}: {error}" in result.stderr, result.stderr
        assert "nothing was published" not in result.stderr


def test_a_module_next_to_the_pipeline_file_is_importable_on_the_driver_and_the_workers(tmp_path, docs):
    job = tmp_path / "job"
    job.mkdir()
    (job / "shouting.py").write_text(
        "import pyarrow as pa\n"
        "import pyarrow.compute as pc\n"
        "from headrace import Stage\n\n\n"
        "class Shout(Stage):\n"
        "    needs = ('text',)\n"
        "    adds = {'loud': pa.string()}\n\n"
        "    def process(self, batch):\n"
        "        return batch.append_column('loud', pc.utf8_upper(batch.column('text')))\n"
    )
    (job / "loud.py").write_text(
        "from headrace import Files, Pipeline, output_sink\n"
        "from stages.files import ReadFiles\n"
        "from stages.text import DecodeText\n"
        "from shouting import Shout\n\n\n"
        "def pipeline(input: str, output: str) -> Pipeline:\n"
        "    return Pipeline(name='loud', source=Files(input, extensions=('.txt',)),\n"
        "                    stages=[ReadFiles(), DecodeText(), Shout()], sink=output_sink(output, 'parquet'),\n"
        "                    columns=['doc_id', 'loud'])\n"
    )
    # Run from elsewhere, with no PYTHONPATH naming the job's folder.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [*HEADRACE, "submit", str(job / "loud.py"), "--master", "local[1]", "--ds", "2026-11-01",
         "--conf", f"input={docs}", "--conf", f"output={tmp_path / 'out'}", "--conf", "headrace.progress=false"],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path), env={**env, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loud = sorted(pq.read_table(str(tmp_path / "out" / "ds=2026-11-01")).column("loud").to_pylist())
    assert loud == ["WORD " * n for n in range(1, 5)]


def test_dry_run_prints_every_setting_with_its_origin_and_checks_the_master(tmp_path, docs):
    properties = tmp_path / "job.yaml"
    properties.write_text("output_format: parquet\nheadrace:\n  broken_stage_after: 7\n")
    result = cli("submit", WORD_COUNT, "--dry-run", "--properties-file", str(properties), "--conf", f"input={docs}",
                 "--num-cpus", "3", "--ds", "2026-11-02", env={"HEADRACE_CONF_OUTPUT": str(tmp_path / "out")})
    assert result.returncode == 0, result.stderr
    block = result.stdout.split("settings (value, origin):\n", 1)[1].split("\npipeline ", 1)[0]
    lines = {line.split()[0]: line for line in block.splitlines()}
    assert lines["ds"].endswith("(--ds)")
    assert lines["input"].endswith("(--conf)")
    assert lines["output"].endswith("(environment)")
    assert lines["output_format"].endswith(f"(properties file {properties})")
    assert "7" in lines["headrace.broken_stage_after"] and lines["headrace.broken_stage_after"].endswith(
        f"(properties file {properties})")
    assert lines["headrace.num_cpus"].endswith("(flag)") and lines["headrace.resume"].endswith("(default)")
    assert "dry run: ds=2026-11-02" in result.stdout and "4 input files" in result.stdout
    nobody = f"127.0.0.1:{free_port()}"
    checked = cli("submit", WORD_COUNT, "--dry-run", "--conf", f"input={docs}", "--master", nobody)
    assert checked.returncode == 2 and f"--master {nobody}: nothing answers there" in checked.stderr


def test_a_report_that_cannot_be_written_at_the_end_is_a_warning_not_the_runs_outcome(tmp_path, caplog):
    """Its folder is checked before the run (test_cli); one that goes away during a run made
    a committed run say `failed ... nothing was published` and exit 1."""
    from headrace.report import write_report

    write_report(str(tmp_path / "gone" / "report.json"), {"status": "committed"})
    assert f"the run report was not written to {tmp_path}/gone/report.json: No such file or directory" in caplog.text


def test_a_report_is_written_whole_or_not_at_all_and_to_a_pipe_as_it_is(tmp_path, caplog):
    """Before, a full disk cut the report short (over the last run's): a scheduler that
    reads it found no JSON there."""
    import threading

    from conftest import small_disk
    from headrace.report import check_report_path, write_report

    disk = tmp_path / "disk"
    with small_disk(disk, "20k"):
        report = disk / "report.json"
        write_report(str(report), {"status": "committed", "ds": "2026-11-01"})
        write_report(str(report), {"status": "committed", "ds": "2026-11-02", "warnings": ["x" * 40_000]})
        assert "the run report was not written to" in caplog.text and "No space left on device" in caplog.text
        assert json.loads(report.read_text())["ds"] == "2026-11-01" and os.listdir(disk) == ["report.json"]
    # A link is followed; a named pipe (or --report /dev/stdout) is written as it is.
    target, link, pipe = tmp_path / "target.json", tmp_path / "link.json", tmp_path / "pipe"
    target.write_text("{}")
    link.symlink_to(target)
    write_report(str(link), {"status": "failed"})
    assert link.is_symlink() and json.loads(target.read_text()) == {"status": "failed"}
    os.mkfifo(pipe)
    # The check before the run does not open it: that waits for a reader, which may start
    # only with the run (before, `--report PIPE` hung there).
    checking = threading.Thread(target=check_report_path, args=(str(pipe),), daemon=True)
    checking.start()
    checking.join(timeout=10)
    assert not checking.is_alive(), "the --report check waited for the pipe's reader"
    received = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_text()))
    reader.start()
    write_report(str(pipe), {"status": "invalid"})
    reader.join(timeout=10)
    assert json.loads(received[0]) == {"status": "invalid"} and pipe.is_fifo()


def test_the_report_is_written_on_every_outcome(tmp_path, docs):
    report = tmp_path / "report.json"
    bad = cli("submit", WORD_COUNT, "--conf", "inptu=x", "--report", str(report))
    assert bad.returncode == 2
    document = json.loads(report.read_text())
    assert (document["status"], document["exit_code"]) == ("invalid", 2)
    assert "unknown conf key 'inptu'" in document["reason"]

    dry = cli("submit", WORD_COUNT, "--dry-run", "--conf", f"input={docs}", "--report", str(report))
    assert dry.returncode == 0
    assert json.loads(report.read_text())["status"] == "dry_run"

    for index in range(3):
        write(str(docs), f"doc-{index}.txt", b"explode")  # WordCount raises: 3 of 4 quarantined
    refused = cli("submit", WORD_COUNT, "--master", "local[1]", "--ds", "2026-11-03", "--conf", f"input={docs}",
                  "--conf", f"output={tmp_path / 'out'}", "--conf", "headrace.progress=false", "--report", str(report))
    assert refused.returncode == 3, refused.stderr[-2000:]
    document = json.loads(report.read_text())
    assert (document["status"], document["exit_code"]) == ("refused", 3)
    assert document["reason"].startswith("quality gate: 3 of 4 inputs")
    assert document["counts"]["input_quarantined_only"] == 3 and document["run_id"]  # the refused run's manifest

    busy = tmp_path / "out" / "_staging" / "ds=2026-11-04.lock"
    busy.parent.mkdir(parents=True, exist_ok=True)
    busy.write_text(json.dumps({"run_id": "another", "beat": 4102444800.0}))  # held by a live run
    ray_tmp = tempfile.mkdtemp(prefix="hr-t", dir="/tmp")  # short: Ray's socket paths would live under it
    try:
        locked = cli("submit", WORD_COUNT, "--master", "local[1]", "--ds", "2026-11-04", "--conf", f"input={docs}",
                     "--conf", f"output={tmp_path / 'out'}", "--conf", "headrace.progress=false", "--report", str(report),
                     env={"RAY_TMPDIR": ray_tmp})
        assert locked.returncode == 1, locked.stderr[-2000:]
        assert "another run (another" in locked.stderr
        assert os.listdir(ray_tmp) == []  # turned away before starting a Ray of its own
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    document = json.loads(report.read_text())
    assert (document["status"], document["exit_code"], document["ds"]) == ("failed", 1, "2026-11-04")
    assert document["reason"]


def test_an_empty_input_commits_an_empty_partition_when_allowed(tmp_path):
    empty = tmp_path / "quiet-day"
    empty.mkdir()
    common = ["submit", WORD_COUNT, "--master", "local[1]", "--ds", "2026-11-05", "--conf", f"input={empty}",
              "--conf", f"output={tmp_path / 'out'}", "--conf", "headrace.progress=false"]
    refused = cli(*common)
    assert refused.returncode == 2 and "headrace.allow_empty_input=true" in refused.stderr
    allowed = cli(*common, "--conf", "headrace.allow_empty_input=true")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    partition = tmp_path / "out" / "ds=2026-11-05"
    manifest = json.loads((partition / "_SUCCESS").read_text())
    assert manifest["counts"]["input"] == 0 and manifest["counts"]["output"] == 0
    assert any("empty partition" in warning for warning in manifest["warnings"])
    table = pq.read_table(str(partition))
    assert table.num_rows == 0 and "words" in table.column_names


def test_backfill_goes_on_past_a_failed_date_skips_committed_ones_and_sums_up(tmp_path):
    for day in ("2026-11-03", "2026-11-05"):
        write(str(tmp_path / "in" / day), "a.txt", b"one two three")
    write(str(tmp_path / "in" / "2026-11-05"), "b.txt", b"please explode now")  # the pipeline file's stage quarantines it
    report = tmp_path / "backfill.json"
    common = ["backfill", WORD_COUNT, "--start", "2026-11-03", "--end", "2026-11-05", "--master", "local[1]",
              "--conf", f"input={tmp_path}/in/{{ds}}", "--conf", f"output={tmp_path}/out",
              "--conf", "headrace.progress=false", "--report", str(report)]
    first = cli(*common)
    assert first.returncode != 0, first.stdout  # 2026-11-04 has no input
    dates = {d["ds"]: d for d in json.loads(report.read_text())["dates"]}
    assert [dates[d]["exit"] for d in sorted(dates)] == [0, 2, 0]  # went on past the failed date
    assert "2026-11-04" in first.stderr and "does not exist" in dates["2026-11-04"]["reason"]
    table = first.stdout[first.stdout.index("backfill of 3 date(s)"):]
    assert "2026-11-05" in table and "committed" in table and dates["2026-11-05"]["rows"] == 1
    assert first.stdout.count(" committed (run ") == 2 and dates["2026-11-05"]["quarantined"] == 1
    quarantine = pq.read_table(str(tmp_path / "out" / "_quarantine" / "ds=2026-11-05")).to_pylist()
    assert [(q["stage"], q["message"]) for q in quarantine] == [("WordCount", "asked to explode")]

    write(str(tmp_path / "in" / "2026-11-04"), "a.txt", b"four five")
    dry = cli(*common, "--skip-committed", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    statuses = [d["status"] for d in json.loads(report.read_text())["dates"]]
    assert statuses == ["skipped (committed, same configuration)", "would run: 1 input files",
                        "skipped (committed, same configuration)"]
    again = cli(*common, "--skip-committed")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count(" committed (run ") == 1  # only the missing date ran
    assert pq.read_table(str(tmp_path / "out" / "ds=2026-11-04")).column("words").to_pylist() == [2]

    write(str(tmp_path / "in" / "2026-11-03"), "a.txt", b"explode")
    stopped = cli(*common, "--no-resume", "--fail-fast")
    assert stopped.returncode == 3, stopped.stderr[-2000:]  # 11-03 refused by the gate; nothing after it ran
    assert [d["ds"] for d in json.loads(report.read_text())["dates"]] == ["2026-11-03"]
    assert "stopped after 1 of 3 dates" in stopped.stdout


def test_status_is_a_sensor_for_a_committed_date(tmp_path, docs):
    output = tmp_path / "out"
    before = cli("status", str(output), "--ds", "2026-11-06")
    assert before.returncode == 1 and "ds=2026-11-06 is not committed" in before.stdout
    # Its reader goes away after the first line (`headrace submit ... | head -1`): before, the
    # committed run then said `failed: BrokenPipeError ... nothing was published`, exit 1.
    started = time.time()
    run = subprocess.Popen([*HEADRACE, "submit", WORD_COUNT, "--master", "local[1]", "--ds", "2026-11-06", "--conf",
                            f"input={docs}", "--conf", f"output={output}", "--conf", "headrace.progress=false"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                           env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert "word_count ds=2026-11-06 committed" in run.stdout.readline()
    run.stdout.close()
    stderr = run.stderr.read()
    assert run.wait(timeout=300) == 0, stderr[-2000:]
    assert "nothing was published" not in stderr, stderr[-2000:]
    # The local Ray it started left its session folder (logs) marked as headrace's, for the
    # next run to remove once there are more than ray_adapter.KEPT_SESSIONS of them.
    import glob

    # (Its process id only: an older session of another process with the same id may be there.)
    sessions = [path for path in glob.glob(os.path.join(tempfile.gettempdir(), "ray", f"session_*_{run.pid}"))
                if os.path.getmtime(path) >= started - 1]
    assert len(sessions) == 1 and os.path.isfile(os.path.join(sessions[0], "headrace")), sessions
    after = cli("status", str(output), "--ds", "2026-11-06")
    assert after.returncode == 0, after.stderr
    assert "ds=2026-11-06 committed by run" in after.stdout and "4 rows" in after.stdout
    assert cli("status", str(output), "--ds", "11/06/2026").returncode == 2
    # An output no run could have written is configuration (exit 2), not "not committed yet",
    # on which a sensor waits for ever: before, `headrace status "$OUTPUT"` with the variable
    # unset looked in the working directory (exit 1), an unknown protocol failed with exit 1.
    for command in ("status", "report"):
        unset, typo = cli(command, "", "--ds", "2026-11-06"), cli(command, "s4://bucket/out", "--ds", "2026-11-06")
        assert (unset.returncode, typo.returncode) == (2, 2), (unset.stderr, typo.stderr)
        assert "output is empty" in unset.stderr and "Protocol not known: s4" in typo.stderr


def test_glob_characters_in_an_output_on_a_bucket_are_exit_2_before_anything_runs(tmp_path, docs):
    """fsspec reads `*`, `?` and `[` in a path it removes or lists recursively as a pattern:
    before, a run on `s3://lake/exp[1]/emb` committed but left its staging area and its lock
    behind (their removal matched nothing), and every later run of the date was turned away
    (`could not take the run lock`). On a local disk such names work, and still do."""
    output = "s3://lake/exp[1]/emb"
    run = cli("submit", WORD_COUNT, "--ds", "2026-11-06", "--conf", f"input={docs}", "--conf", f"output={output}")
    status = cli("status", output, "--ds", "2026-11-06")
    assert (run.returncode, status.returncode) == (2, 2), (run.stderr, status.stderr)
    assert "glob characters (*, ?, [) cannot be part of an output on s3://" in run.stderr
    assert "starting" not in run.stdout + run.stderr  # refused before Ray starts
    local = cli("submit", WORD_COUNT, "--dry-run", "--ds", "2026-11-06", "--conf", f"input={docs}",
                "--conf", f"output={tmp_path / 'exp[1]'}")
    assert local.returncode == 0, local.stderr


def test_a_run_whose_home_folder_cannot_be_written_runs(tmp_path, docs):
    """A container with a read-only root filesystem, a service user whose home is `/`: Ray
    saves a new local cluster's token in ~/.ray, and the run failed with `PermissionError:
    .../.ray` (exit 1). The run's own Ray gets its token in the environment instead."""
    from conftest import AS_IF_NOT_ROOT

    home = tmp_path / "home"
    home.mkdir(mode=0o555)
    command = [*HEADRACE, "submit", WORD_COUNT, "--master", "local[1]", "--ds", "2026-11-07", "--conf", f"input={docs}",
               "--conf", f"output={tmp_path / 'out'}", "--conf", "headrace.progress=false"]
    if os.geteuid() == 0:
        command = [*AS_IF_NOT_ROOT, *command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={**env, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "committed" in result.stdout and os.listdir(home) == []


def test_the_scheduling_examples_parse(tmp_path):
    """The README's cron line, Airflow DAG and Kubernetes CronJob, kept as files."""
    import ast
    import re
    import shlex

    import yaml

    examples = os.path.join(ROOT, "examples")
    dag = open(os.path.join(examples, "airflow", "doc_embeddings_dag.py")).read()
    ast.parse(dag)
    assert "--ds {{{{ ds }}}}" in dag and "headrace status" in dag and "skip_on_exit_code=99" in dag
    entries = [line for line in open(os.path.join(examples, "cron", "headrace.cron"))
               if line.strip() and not line.startswith("#") and "=" not in line.split()[0]]
    assert len(entries) == 1
    fields = entries[0].split(None, 5)
    assert all(re.fullmatch(r"[\d*/,-]+", f) for f in fields[:5])
    command = shlex.split(fields[5].split(">>")[0].replace("\\%", "%"))
    submit = command[command.index("submit") - 1:]
    assert submit[0].endswith("headrace") and submit[2] == "pipelines/doc_embeddings.py"
    cronjob = yaml.safe_load(open(os.path.join(examples, "kubernetes", "cronjob.yaml")))
    assert cronjob["kind"] == "CronJob" and cronjob["spec"]["schedule"] == "15 2 * * *"
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0].startswith("exec headrace submit")  # process 1: the pod's SIGTERM reaches it
    assert "--conf headrace.lock_wait_s=240" in container["args"][0]  # a retry pod waits out the killed pod's lock
    codes = {rule["onExitCodes"]["values"][0] for rule in cronjob["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]}
    assert codes == {2, 3}
    # The pipeline and the conf keys the examples use exist.
    check = cli("submit", os.path.join(ROOT, "pipelines", "doc_embeddings.py"), "--dry-run",
                "--conf", f"input={tmp_path}", "--conf", "output=s3://lake/doc_embeddings",
                "--conf", "headrace.allow_empty_input=true", "--conf", "headrace.progress=false")
    assert check.returncode == 0, check.stderr


def lines_corpus(directory, files=12, lines=5):
    for index in range(files):
        text = "\n".join(f"line {n} of file {index}" for n in range(lines))
        write(str(directory), f"f-{index:02d}.txt", (text if index != 3 else "explode\n").encode())


def test_progress_off_a_terminal_is_one_line_every_interval_and_no_ray_dump(tmp_path):
    lines_corpus(tmp_path / "docs")
    result = cli("submit", os.path.join(ROOT, "tests", "fixtures", "slow_lines.py"), "--master", "local[1]",
                 "--ds", "2026-11-07", "--conf", f"input={tmp_path / 'docs'}", "--conf", f"output={tmp_path / 'out'}",
                 "--conf", "delay=0.1", "--conf", "headrace.progress_every_s=1")
    assert result.returncode == 0, result.stderr[-3000:]
    progress = [line for line in result.stderr.splitlines() if line.startswith("headrace: elapsed")]
    assert len(progress) >= 3, result.stderr  # about 6 s of work at one line a second
    assert "inputs 12/12 (100%)" in progress[-1] and "ETA 0m00s" in progress[-1]
    assert "Lines 12 rows" in progress[-1] and "1 quarantined" in progress[-1]
    # Ray's operator table, progress bars and info lines stay off without --verbose.
    for noise in ("streaming_executor", "Progress bars disabled", "Running Dataset", "Data sink"):
        assert noise not in result.stderr + result.stdout, noise


def test_progress_on_a_terminal_is_a_live_table(tmp_path):
    lines_corpus(tmp_path / "docs")
    command = [*HEADRACE, "submit", os.path.join(ROOT, "tests", "fixtures", "slow_lines.py"), "--master", "local[1]",
               "--ds", "2026-11-08", "--conf", f"input={tmp_path / 'docs'}", "--conf", f"output={tmp_path / 'out'}",
               "--conf", "delay=0.1"]
    # script(1) runs the command on a pseudo-terminal, as a user's shell would.
    result = subprocess.run(["script", "-qec", " ".join(command), "/dev/null"], capture_output=True, text=True,
                            timeout=300, cwd=ROOT, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "120"})
    assert result.returncode == 0, result.stdout[-3000:]
    screen = result.stdout
    assert "┃" in screen and "rows/s" in screen and "quarantined" in screen  # a rich table, redrawn in place
    assert "ETA" in screen and "inputs 12/12 (100%)" in screen
    assert "\x1b[" in screen  # drawn with terminal control sequences
    assert "slow_lines ds=2026-11-08 committed" in screen


def test_a_stop_signal_soon_after_the_one_that_stopped_the_run_is_the_same_stop(monkeypatch):
    """Ctrl-C pressed again, or a scheduler repeating its SIGTERM, while the run stops is
    passed over; after errors.STOPPING_S a signal stops again (a stop that got stuck)."""
    import signal
    import time

    from headrace import errors

    monkeypatch.setattr(errors, "_stopped_at", None)
    with pytest.raises(KeyboardInterrupt) as first:
        errors.raise_terminated(signal.SIGINT, None)
    assert not isinstance(first.value, errors.Terminated)
    errors.raise_terminated(signal.SIGINT, None)
    errors.raise_terminated(signal.SIGTERM, None)
    monkeypatch.setattr(errors, "_stopped_at", time.monotonic() - errors.STOPPING_S - 1)
    with pytest.raises(errors.Terminated) as later:
        errors.raise_terminated(signal.SIGHUP, None)
    assert later.value.signal_name == "SIGHUP"


def test_version_names_headrace_and_the_libraries_a_bug_report_needs():
    import ray

    import headrace

    printed = cli("--version")
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert lines[0] == f"headrace {headrace.__version__}" and f"  ray {ray.__version__}" in lines
    assert any(line.startswith("  python 3.") for line in lines)


def test_a_run_that_would_change_a_column_s_type_across_dates_is_exit_2_before_it_starts(tmp_path, docs):
    """A stage changed `words` from int32 to string and the next night's run committed into
    the same output: `headrace.read` of all dates then failed (`ArrowTypeError: Unable to
    merge: Field words has incompatible types`), and pyarrow.dataset read every date with
    the first file's type. Delta refused it already; Parquet output does too now. A column
    added is no such change (readers fill it with nulls for the earlier dates)."""
    output = tmp_path / "out"
    first = cli("submit", WORD_COUNT, "--master", "local[1]", "--ds", "2026-11-01", "--conf", f"input={docs}",
                "--conf", f"output={output}", "--conf", "headrace.progress=false")
    assert first.returncode == 0, first.stderr
    source = open(WORD_COUNT).read()
    as_text = source.replace('adds = {"words": pa.int32()}', 'adds = {"words": pa.string()}').replace(
        '.list.len())', '.list.len().cast(str))')
    added = source.replace('adds = {"words": pa.int32()}', 'adds = {"words": pa.int32(), "chars": pa.int32()}').replace(
        '.list.len())', '.list.len(), chars=batch["text"].str.split(" ").list.len())')
    added = added.replace('columns=["doc_id", "source", "words"]', 'columns=["doc_id", "source", "words", "chars"]')
    for name, text in (("as_text.py", as_text), ("added.py", added)):
        assert text != source
        (tmp_path / name).write_text(text)
    changed = cli("submit", str(tmp_path / "as_text.py"), "--ds", "2026-11-02", "--conf", f"input={docs}",
                  "--conf", f"output={output}", "--dry-run")
    assert changed.returncode == 2, changed.stderr
    assert "holds another type in a column this run writes (words: int32 -> string; committed ds=2026-11-01" in changed.stderr
    again = cli("submit", str(tmp_path / "as_text.py"), "--ds", "2026-11-01", "--conf", f"input={docs}",
                "--conf", f"output={output}", "--dry-run")
    assert again.returncode == 0, again.stderr  # the only date there: rerun, it is replaced whole
    more = cli("submit", str(tmp_path / "added.py"), "--ds", "2026-11-02", "--conf", f"input={docs}",
               "--conf", f"output={output}", "--dry-run")
    assert more.returncode == 0, more.stderr
    # An output written before this check: headrace.read names the column and the dates.
    shutil.copytree(output / "ds=2026-11-01", output / "ds=2026-10-31")
    for part in (output / "ds=2026-10-31").glob("part-*.parquet"):
        table = pq.read_table(part)
        pq.write_table(table.set_column(table.schema.get_field_index("words"), "words",
                                        table.column("words").cast(pa.string())), part)
    import headrace

    with pytest.raises(pa.ArrowTypeError, match=r"column 'words' is string in ds=2026-10-31 but int32 in ds=2026-11-01: "
                                                r"read the dates apart"):
        headrace.read(str(output))


def test_only_headrace_s_finished_ray_session_folders_beyond_the_latest_few_are_removed(tmp_path):
    """Ray never removes a local Ray's session folder (its logs): a nightly job left one a
    night under /tmp/ray."""
    from headrace.ray_adapter import SESSION_MARK, _keep_few_sessions

    finished = subprocess.Popen(["true"])
    finished.wait()
    gone, alive = finished.pid, os.getpid()

    def session(day, pid, marked=True):
        folder = tmp_path / f"session_2026-11-{day:02d}_01-00-00_000000_{pid}"
        (folder / "logs").mkdir(parents=True)
        if marked:
            (folder / SESSION_MARK).write_text(f"{pid}\n")
        return folder

    old = [session(day, gone) for day in range(1, 6)]
    running, foreign = session(6, alive), session(7, gone, marked=False)
    (tmp_path / "session_latest").symlink_to(old[0])
    current = session(8, alive, marked=False)
    _keep_few_sessions(str(current), keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [old[3].name, old[4].name, running.name, foreign.name, "session_latest", current.name])
    assert (current / SESSION_MARK).read_text() == f"{alive}\n"
