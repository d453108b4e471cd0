"""`headrace` as a user runs it: a subprocess, real exit codes, real output."""

import json
import os
import subprocess
import time

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from conftest import HEADRACE, ROOT, good_corpus

PIPELINE = os.path.join(ROOT, "pipelines", "doc_embeddings.py")
# Proves a failure came before Ray: connecting to this address would fail differently.
NO_RAY = ["--master", "127.0.0.1:1"]


def headrace_cli(*args, timeout=300, env=None):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    return subprocess.run([*HEADRACE, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli") / "in" / "2026-11-20"
    good_corpus(str(directory), count=6, seed=4)
    return str(directory)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--conf", "inptu=x"], "unknown conf key 'inptu'"),
        (["--conf", "input=/does/not/exist"], "input '/does/not/exist' does not exist"),
        (["--conf", "input=/tmp/*.nothing-matches"], "matched no .html/.htm/.md/.txt files"),
        (["--conf", "max_tokens=many"], "conf max_tokens='many'"),
        (["--ds", "yesterday"], "--ds 'yesterday': expected a date"),
        (["--conf", "noequals"], "expected KEY=VALUE"),
        (["--conf", "headrace.object_store_memory=lots"], "expected a size such as 2GiB"),
        (["--conf", "headrace.broken_stage_after=-1"], "broken_stage_after=-1: 0 (off) or more"),
        (["--conf", "max_quarantine_fraction=2"], "max_quarantine_fraction must be a number from 0 to 1"),
        # Taken before: 0 CPUs as all cores, -1 by Ray once started, a gate of 2 as off.
        (["--num-cpus", "0"], "headrace.num_cpus=0 (--num-cpus): at least 1"),
        (["--num-gpus", "-1"], "headrace.num_gpus=-1 (--num-gpus): 0 or more"),
        (["--conf", "headrace.max_quarantine_fraction=2"], "max_quarantine_fraction=2.0: a number from 0 to 1"),
        (["--conf", "headrace.progress_every_s=0"], "progress_every_s=0.0: more than 0 seconds"),
        (["--conf", "headrace.lock_wait_s=-1"], "lock_wait_s=-1.0: 0 (do not wait) or more seconds"),
        # Found only after the run had committed, which then said `failed ... nothing was published` (exit 1).
        (["--report", "/nonexistent/folder/report.json"], "--report /nonexistent/folder/report.json: its folder "
                                                          "/nonexistent/folder does not exist"),
        (["--report", ROOT], f"--report {ROOT}: is a folder; name a file"),
        # Taken before: a GPU share of NaN, a GPU batch of 0 as "batch_size" and of -5 as -5.
        (["--conf", "embed_gpus=nan"], "cpus and gpus must be finite numbers, not negative (cpus=1.0, gpus=nan)"),
        (["--conf", "embed_gpus=inf"], "cpus and gpus must be finite numbers, not negative"),
        (["--conf", "embed_gpu_batch_size=0"], "gpu_batch_size must be at least 1"),
        (["--conf", "embed_gpu_batch_size=-5"], "gpu_batch_size must be at least 1"),
        # Chunks longer than the model's positions failed in the model, one by one, on the workers.
        (["--conf", "max_tokens=513"], "max_tokens=513 is more than the model takes: 512 tokens"),
        # An unset variable in a scheduler's command: not the working directory.
        (["--conf", "output="], "output is empty: give a path or URL"),
        (["--conf", "input="], "input is empty: give a path or URL"),
    ],
)
def test_bad_configuration_exits_2_with_one_line_before_ray(args, message):
    result = headrace_cli("submit", PIPELINE, *NO_RAY, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


@pytest.mark.parametrize(
    "pipeline, message",
    [
        ("pipelines/no_such_pipeline.py", "pipeline file 'pipelines/no_such_pipeline.py' not found"),
        ("no_such_package.jobs:pipeline", "no module named 'no_such_package'"),
        ("pipelines.doc_embeddings:nothing", "defines no 'nothing'"),
        (":pipeline", "names no file or module before ':'"),  # before: "ValueError: Empty module name"
        ("pipelines/", "pipeline file 'pipelines/' is a folder: name the pipeline's .py file in it"),
    ],
)
def test_unknown_pipeline_exits_2(pipeline, message):
    result = headrace_cli("submit", pipeline, *NO_RAY)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_explain_and_dry_run(small_corpus):
    explain = headrace_cli("explain", PIPELINE, "--conf", "embed_batch_size=8")
    assert explain.returncode == 0, explain.stderr
    for expected in ("ReadFiles", "ChunkText", "EmbedText", "actors", "gpus=1 batch=8", "schema  doc_embeddings"):
        assert expected in explain.stdout
    dry = headrace_cli("submit", "pipelines.doc_embeddings", "--master", "local[1]", "--dry-run",
                       "--conf", f"input={small_corpus}")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: ds=" in dry.stdout and "6 input files" in dry.stdout


def test_files_of_a_type_the_pipeline_does_not_read_are_named_not_passed_over(tmp_path):
    """A folder of documents with a PDF and a spreadsheet among them: the doc job reads the
    documents and says which files it ignored, on the console and in the report (before
    this, they left no trace)."""
    folder = tmp_path / "in"
    good_corpus(str(folder), count=2, seed=6)
    (folder / "scan.pdf").write_bytes(b"%PDF-1.7 not text")
    (folder / "sheets").mkdir()
    (folder / "sheets" / "Budget.XLSX").write_bytes(b"PK")
    (folder / "_SUCCESS").write_text("")  # hidden by convention, like Spark's: not reported
    report = tmp_path / "report.json"
    dry = headrace_cli("submit", PIPELINE, "--master", "local[1]", "--dry-run", "--conf", f"input={folder}",
                       "--report", str(report))
    assert dry.returncode == 0, dry.stderr
    assert "2 input files, 2 ignored" in dry.stdout, dry.stdout
    warning = next(line for line in dry.stderr.splitlines() if "ignored" in line)
    assert "2 file(s) of a type this pipeline does not read" in warning and ".pdf 1, .xlsx 1" in warning
    assert f"file://{folder}/scan.pdf" in warning and f"file://{folder}/sheets/Budget.XLSX" in warning
    ignored = json.loads(report.read_text())["ignored_inputs"]
    assert ignored == {"files": 2, "by_extension": {".pdf": 1, ".xlsx": 1},
                       "examples": [f"file://{folder}/scan.pdf", f"file://{folder}/sheets/Budget.XLSX"]}


def test_submit_runs_commits_and_reports(small_corpus, tmp_path):
    inputs = small_corpus.replace("2026-11-20", "{ds}")
    report = tmp_path / "report.json"
    result = headrace_cli(
        "submit", PIPELINE, "--master", "local[2]", "--ds", "2026-11-20", "--report", str(report),
        "--conf", f"input={inputs}", "--", "--output", str(tmp_path / "out"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "files in     6" in result.stdout and "rows out" in result.stdout
    assert "no GPU" in result.stderr  # the CPU fallback is announced
    # Ray's native notice about actor constructor arguments (ray#53727) is not the user's news.
    assert "core_worker.cc" not in result.stderr and "constructor arguments" not in result.stderr
    manifest = json.loads(report.read_text())
    assert manifest["counts"]["input"] == 6 and manifest["config"]["input"].endswith("2026-11-20")
    assert manifest["warnings"] and manifest["cluster"]["cores"] == 2
    # The report is the committed manifest, the same document, timings included.
    assert json.loads((tmp_path / "out" / "ds=2026-11-20" / "_SUCCESS").read_text()) == manifest
    assert manifest["timings"]["total_s"] > manifest["timings"]["commit_s"] >= 0
    committed = pads.dataset(str(tmp_path / "out"), format="parquet", partitioning="hive")
    assert committed.count_rows() == manifest["counts"]["output"]


def test_demo_data_writes_documents_and_images(tmp_path):
    result = headrace_cli("demo-data", str(tmp_path), "--count", "9")
    assert result.returncode == 0, result.stderr
    assert "wrote 13 documents and 26 images" in result.stdout
    names = [os.path.relpath(os.path.join(d, f), tmp_path) for d, _, files in os.walk(tmp_path) for f in files]
    assert {n.split("/")[0] for n in names} == {"html", "md", "txt", "broken", "images"}
    assert len([n for n in names if n.startswith("images/img-")]) == 24

    # The nightly job over the demo corpus commits, with exactly its four broken files quarantined.
    run = headrace_cli("submit", PIPELINE, "--master", "local[2]", "--ds", "2026-11-21", "--conf", f"input={tmp_path}",
                       "--conf", f"output={tmp_path / 'out'}", "--conf", "headrace.progress=false")
    assert run.returncode == 0, run.stderr[-3000:]
    quarantine = pq.read_table(str(tmp_path / "out" / "_quarantine" / "ds=2026-11-21")).to_pylist()
    assert sorted(os.path.relpath(r["source"][len("file://"):], tmp_path) for r in quarantine) == sorted(
        n for n in names if n.startswith("broken/"))
    data = pq.read_table(str(tmp_path / "out" / "ds=2026-11-21"))
    assert len(set(data.column("doc_id").to_pylist())) == 9
    # The images beside the documents are named as files the doc job does not read.
    assert "ignored      26 file(s) of a type it does not read (.bmp 3, .gif 3, .jpeg 3, .jpg 5, .png 9, .webp 3)" \
        in run.stdout, run.stdout


def test_object_store_memory_sizes_a_local_ray(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a few words")
    report = tmp_path / "report.json"
    result = headrace_cli("submit", os.path.join(ROOT, "tests", "fixtures", "word_count.py"), "--master", "local[1]",
                          "--conf", f"input={tmp_path / 'in'}", "--conf", f"output={tmp_path / 'out'}",
                          "--conf", "headrace.object_store_memory=300MiB", "--report", str(report))
    assert result.returncode == 0, result.stderr[-2000:]
    store = json.loads(report.read_text())["cluster"]["object_store_memory"]
    assert abs(store - 300 * 2**20) < 0.01 * 300 * 2**20


@pytest.mark.parametrize("form", ["host:port", "ray://", "auto"])
def test_a_master_that_cannot_work_exits_2_at_once_naming_it(small_corpus, form, tmp_path):
    from conftest import free_port

    port = free_port()
    address, message, env = {
        "host:port": (f"127.0.0.1:{port}", f"--master 127.0.0.1:{port}: nothing answers there", {}),
        "ray://": (f"ray://127.0.0.1:{port}", "Ray Data does not run over Ray Client", {}),
        # Ray's current-cluster file names a cluster that is gone.
        "auto": ("auto", f"--master auto (127.0.0.1:{port}): nothing answers there", {"RAY_ADDRESS": f"127.0.0.1:{port}"}),
    }[form]
    started = time.monotonic()
    result = headrace_cli("submit", PIPELINE, "--master", address, "--conf", f"input={small_corpus}", timeout=60,
                          env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert time.monotonic() - started < 30
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
