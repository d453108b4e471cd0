"""A broken stage stops the run; it is not bad data. Nothing is published either way."""

import json
import os
import subprocess
import time

import numpy as np
import pyarrow as pa
import pytest

import headrace
from conftest import HEADRACE, QUIET, ROOT, write
from headrace import Files, ParquetSink, Pipeline, Stage
from schemas.doc_embeddings import doc_embeddings_schema
from stages.files import ReadFiles
from stages.text import DecodeText

BROKEN = os.path.join(ROOT, "tests", "fixtures", "broken_stage.py")
MISSING_MODEL = os.path.join(ROOT, "tests", "fixtures", "missing_model.py")
DS = "2026-10-01"


def snapshot(directory):
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


def test_a_stage_that_raises_on_every_record_stops_the_run_early(tmp_path):
    for index in range(300):
        write(str(tmp_path / "in"), f"doc-{index:03d}.txt", f"document {index}".encode())
    calls = tmp_path / "calls"

    def submit(broken):
        return subprocess.run(
            [*HEADRACE, "submit", BROKEN, "--master", "local[2]", "--ds", DS, "--conf", f"input={tmp_path / 'in'}",
             "--conf", f"output={tmp_path / 'out'}", "--conf", f"broken={broken}", "--conf", f"calls={calls}",
             "--conf", "headrace.progress=false"],
            capture_output=True, text=True, cwd=ROOT, timeout=300,
        )

    good = submit(False)
    assert good.returncode == 0, good.stderr[-3000:]
    partition = tmp_path / "out" / f"ds={DS}"
    before = snapshot(partition)
    calls.unlink()

    bad = submit(True)
    assert bad.returncode == 1, bad.stderr[-3000:]
    reason = [line for line in bad.stderr.splitlines() if line.startswith("headrace: error:")]
    assert len(reason) == 1 and "stage Score is broken: NameError" in reason[0], bad.stderr[-3000:]
    assert "undefined_helper" in reason[0] and "none succeeded" in reason[0]
    assert "Traceback" in bad.stderr and "broken_stage.py" in bad.stderr  # the first failure's traceback
    sizes = [int(line) for line in calls.read_text().split()]
    single = sizes.count(1)
    # Stopped long before every record was tried: 32 records isolated (plus what other
    # workers had in hand), not 300 records in about 600 bisection calls.
    assert 32 <= single <= 48 and len(sizes) < 150, (single, len(sizes))
    assert snapshot(partition) == before  # the previous partition, byte for byte
    assert json.loads((partition / "_SUCCESS").read_bytes())["counts"]["output"] == 300


def test_a_model_folder_that_does_not_exist_stops_the_run_naming_it_and_a_backfill_at_its_first_date(tmp_path):
    """A stage whose setup() fails is broken at once. Before, a backfill then went on to
    the next date, failing every date the same way (a Ray start, a listing and a model
    load each); it stops there."""
    for index in range(4):
        write(str(tmp_path / "in"), f"doc-{index}.txt", f"a short document {index}".encode())
    missing = str(tmp_path / "models" / "no-such-model")
    report = tmp_path / "backfill.json"
    started = time.monotonic()
    result = subprocess.run(
        [*HEADRACE, "backfill", MISSING_MODEL, "--start", "2026-10-01", "--end", "2026-10-03", "--master", "local[2]",
         "--conf", f"input={tmp_path / 'in'}", "--conf", f"output={tmp_path / 'out'}", "--conf", f"model={missing}",
         "--conf", "headrace.progress=false", "--report", str(report)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert time.monotonic() - started < 60
    assert result.returncode == 1, result.stderr[-3000:]
    reason = [line for line in result.stderr.splitlines() if line.startswith("headrace: ds=2026-10-01: error:")]
    assert len(reason) == 1 and "stage EmbedText failed in setup()" in reason[0] and missing in reason[0], result.stderr[-3000:]
    dates = json.loads(report.read_text())["dates"]
    assert [(d["ds"], d["exit"], d["status"]) for d in dates] == [("2026-10-01", 1, "broken stage")]
    assert "stopped after 1 of 3 dates: a broken stage stops a backfill" in result.stdout
    assert not any(n.startswith("ds=") for n in os.listdir(tmp_path / "out"))  # nothing published


class RejectedEverywhere(Stage):
    """Embeddings of norm 2: the doc-embeddings schema rejects every row."""

    needs = ("text",)
    adds = {"chunk_index": pa.int32(), "num_chunks": pa.int32(), "embedding": pa.list_(pa.float32(), 4), "model": pa.string()}
    batch_format = "numpy"

    def process(self, batch):
        n = len(batch["text"])
        return {**batch, "chunk_index": np.zeros(n, np.int32), "num_chunks": np.ones(n, np.int32),
                "embedding": np.ones((n, 4), np.float32), "model": np.array(["fake"] * n)}


def test_a_pipeline_without_a_gate_setting_whose_schema_rejects_every_row_publishes_nothing(ray_cluster, tmp_path):
    for index in range(5):
        write(str(tmp_path / "in"), f"doc-{index}.txt", f"document {index}".encode())
    pipeline = Pipeline(
        name="rejected", source=Files(str(tmp_path / "in")), stages=[ReadFiles(), DecodeText(), RejectedEverywhere()],
        schema=doc_embeddings_schema(dimensions=4), sink=ParquetSink(str(tmp_path / "out")),
        columns=["doc_id", "source", "chunk_index", "num_chunks", "text", "embedding", "model"],
    )
    assert pipeline.max_quarantine_fraction == 0.5  # every pipeline has a gate
    with pytest.raises(headrace.QualityGateError) as refused:
        headrace.run(pipeline, DS, QUIET)
    assert refused.value.exit_code == 3
    assert "5 of 5 inputs" in str(refused.value) and "schema:doc_embeddings: SchemaError (5)" in str(refused.value)
    assert not os.path.exists(tmp_path / "out" / f"ds={DS}")

    # Turning the gate off is explicit, and an empty output is then published with a warning.
    opened = headrace.run(pipeline, DS, headrace.EngineConf(progress=False, max_quarantine_fraction=1.0))
    assert opened.counts["output"] == 0 and any("output is empty" in w for w in opened.warnings)


class ForgetsItsColumn(Stage):
    """Declares a column it never returns: a bug in the stage, found on its first batch."""

    needs = ("text",)
    adds = {"words": pa.int32()}

    def process(self, batch):
        return batch


def test_a_stage_that_breaks_its_contract_fails_the_run_with_the_reason_not_rays_advice(ray_cluster, tmp_path):
    write(str(tmp_path / "in"), "doc.txt", b"some words")
    pipeline = Pipeline(name="contract", source=Files(str(tmp_path / "in")),
                        stages=[ReadFiles(), DecodeText(), ForgetsItsColumn()], sink=ParquetSink(str(tmp_path / "out")))
    with pytest.raises(headrace.HeadraceError) as failed:
        headrace.run(pipeline, DS, QUIET)
    assert failed.value.exit_code == 1
    assert "ContractError: stage ForgetsItsColumn did not return its column 'words'" in str(failed.value)
    assert not os.path.exists(tmp_path / "out" / f"ds={DS}")
