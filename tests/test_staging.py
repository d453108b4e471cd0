"""The steps of staging, resume and publish, one by one, in a temporary folder (no Ray)."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from headrace import ParquetSink, commit, staging
from headrace.envelope import FULL_WEIGHT, WEIGHT, envelop, share_weights
from headrace.isolate import FailureWatch
from headrace.part_writer import PartWriter
from headrace.storage import Storage

DS = "2026-09-01"
KEYS = ("doc_id", "source")
SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("line", pa.string())])
FINGERPRINT = {"hash": "f1", "code": {"stages.lines": "aaa"}, "stages": {"Lines": {"delay": 0}}}


def test_weights_are_shared_exactly_with_the_remainder_on_the_first_row():
    inputs = pa.table({"doc_id": ["a", "b"], WEIGHT: pa.array([FULL_WEIGHT, 10], pa.int64())})
    outputs = pa.table({"doc_id": ["a", "b", "a", "b", "b", "a"]})
    weights = share_weights(inputs, outputs, "doc_id").to_pylist()
    a = [w for w, k in zip(weights, outputs.column("doc_id").to_pylist()) if k == "a"]
    b = [w for w, k in zip(weights, outputs.column("doc_id").to_pylist()) if k == "b"]
    assert b == [4, 3, 3] and sum(b) == 10
    assert a == [FULL_WEIGHT // 3 + FULL_WEIGHT % 3, FULL_WEIGHT // 3, FULL_WEIGHT // 3] and sum(a) == FULL_WEIGHT


def lines(doc_id, count, weight=FULL_WEIGHT):
    """``count`` rows of input ``doc_id``, carrying ``weight`` between them."""
    source = envelop(pa.table({"doc_id": [doc_id], "source": [f"file:///in/{doc_id}"]}, schema=SCHEMA.remove(2)))
    rows = pa.table({"doc_id": [doc_id] * count, "source": [f"file:///in/{doc_id}"] * count,
                     "line": [f"{doc_id}-{i}" for i in range(count)]})
    table = envelop(rows).drop_columns([WEIGHT])
    shares = share_weights(source, rows, "doc_id").to_pylist()
    scale = weight / FULL_WEIGHT
    return table.append_column(WEIGHT, pa.array([int(s * scale) if scale != 1 else s for s in shares], pa.int64()))


def first_attempt(tmp_path, storage=None, url=None):
    """Attempt 0 of a run that was killed: part 0 holds all of a and half of b, part 1 all of c,
    and a task that died before its progress file left a data file behind."""
    sink = ParquetSink(url or str(tmp_path / "out"))
    area = staging.StagingArea(storage or sink.storage(), sink.staging(DS))
    resumed = staging.prepare(area, FINGERPRINT, "run-0")
    assert resumed.attempt == 0 and not resumed.parts
    writer = PartWriter(sink, area.root, 0, "run-0", KEYS, SCHEMA)
    half_b = lines("b", 2).slice(0, 1)  # one of b's two rows: half its weight
    writer.write(pa.concat_tables([lines("a", 3), half_b]), 0)
    writer.write(lines("c", 2), 1)
    area.storage.write_parquet(lines("d", 1).select(SCHEMA.names), area.path("data", "part-000-00002.parquet"))
    return sink, area


def staged_rows(area):
    """(rows of complete inputs by id, weights claimed per id) from the progress files."""
    claimed = {}
    for name in os.listdir(area.path("progress")):
        part = json.load(open(area.path("progress", name)))
        for key, weight in part["weights"].items():
            claimed[key] = claimed.get(key, 0) + weight
    rows = {}
    for name in os.listdir(area.path("data")):
        for row in pq.read_table(area.path("data", name)).to_pylist():
            rows.setdefault(row["doc_id"], []).append(row["line"])
    return rows, claimed


def test_resume_keeps_complete_inputs_strips_partial_parts_and_removes_orphans(tmp_path):
    sink, area = first_attempt(tmp_path)
    resumed = staging.prepare(area, FINGERPRINT, "run-1")
    assert resumed.attempt == 1 and len(resumed.parts) == 2
    assert "part-000-00002.parquet" not in os.listdir(area.path("data"))  # no progress file: removed
    staging.keep_complete(area, resumed, ["a", "b", "c", "d"], "doc_id")
    assert resumed.complete == {"a", "c"}
    rows, claimed = staged_rows(area)
    assert claimed == {"a": FULL_WEIGHT, "c": FULL_WEIGHT}
    assert {k: sorted(v) for k, v in rows.items()} == {"a": ["a-0", "a-1", "a-2"], "c": ["c-0", "c-1"]}
    assert sum(p.data_rows for p in resumed.parts) == 5
    assert json.load(open(area.path(staging.RUN)))["attempts"] == ["run-0", "run-1"]


def test_a_part_that_cannot_be_split_is_redone_whole_with_every_input_in_it(tmp_path):
    """Where the staged files do not say each row's input (the output has no id column, or
    the quarantine names rows by their own ids, as a table file's are), a part holding
    an unfinished input is removed whole: the finished inputs in it are made again too,
    and so are their rows in other parts, so that nothing is lost and nothing doubled."""
    for unsplittable in ("data", "quarantine"):
        sink = ParquetSink(str(tmp_path / unsplittable / "out"))
        area = staging.StagingArea(sink.storage(), sink.staging(DS))
        staging.prepare(area, FINGERPRINT, "run-0")
        schema = SCHEMA.remove(0) if unsplittable == "data" else SCHEMA
        writer = PartWriter(sink, area.root, 0, "run-0", KEYS, schema, row_id="line")

        def failed(table):
            error = pa.array([{"stage": "S", "error_type": "E", "message": "m", "traceback": ""}] * table.num_rows,
                             table.schema.field("_error").type)
            return table.set_column(table.schema.get_field_index("_error"), "_error", error)

        a, c = lines("a", 4), lines("c", 2)
        if unsplittable == "quarantine":
            a, c = failed(a), failed(c)
        # part 0: half of a and half of b (b never finished); part 1: the rest of a; part 2: all of c
        writer.write(pa.concat_tables([a.slice(0, 2), lines("b", 2).slice(0, 1)]), 0)
        writer.write(a.slice(2), 1)
        writer.write(c, 2)
        resumed = staging.prepare(area, FINGERPRINT, "run-1")
        staging.keep_complete(area, resumed, ["a", "b", "c"], "doc_id", quarantine_by_input=unsplittable != "quarantine")
        assert resumed.complete == {"c"}, unsplittable
        assert [sorted(p.weights) for p in resumed.parts] == [["c"]], unsplittable
        assert sorted(os.listdir(area.path("progress"))) == [resumed.parts[0].progress]
        assert sorted(os.listdir(area.path(unsplittable))) == [resumed.parts[0].file]


def test_another_fingerprint_discards_the_staged_files_and_says_what_changed(tmp_path):
    sink, area = first_attempt(tmp_path)
    edited = {**FINGERPRINT, "hash": "f2", "code": {"stages.lines": "bbb"}}
    resumed = staging.prepare(area, edited, "run-1")
    assert resumed.attempt == 0 and not resumed.parts
    assert "code of stages.lines" in resumed.discarded and "run-0" in resumed.discarded
    assert os.listdir(area.path("data")) == [] and os.listdir(area.path("progress")) == []
    off = staging.prepare(area, edited, "run-2", resume=False)
    assert off.discarded.startswith("resume is off")


def test_a_resume_after_a_library_upgrade_starts_afresh_and_a_committed_date_stays_committed(tmp_path, monkeypatch):
    """Rows of two tokenizer versions in one partition differ as rows of two models do: a run
    killed, then resumed after `pip install -U transformers`, kept the old rows beside the new.
    The versions are recorded apart from the hash: `backfill --skip-committed` still skips the
    dates committed before the upgrade (each partition was made by one version)."""
    from headrace.fingerprint import software

    sink, area = first_attempt(tmp_path)  # a staging record from before versions were recorded
    installed = {**FINGERPRINT, "software": {"python": "3.11.7", "transformers": "4.57.0"}}
    kept = staging.prepare(area, installed, "run-1")
    assert kept.attempt == 1 and kept.parts and not kept.discarded
    upgraded = {**FINGERPRINT, "software": {"python": "3.11.7", "transformers": "5.0.0"}}
    resumed = staging.prepare(area, upgraded, "run-2")
    assert resumed.attempt == 0 and not resumed.parts
    assert resumed.discarded.startswith("the libraries changed: transformers 4.57.0 -> 5.0.0 (earlier attempts: run-0, run-1")
    assert os.listdir(area.path("data")) == []

    from headrace import Files, Pipeline, output_sink
    from headrace.fingerprint import fingerprint

    pipeline = Pipeline(name="p", source=Files(str(tmp_path / "in")), stages=[], sink=output_sink(str(tmp_path / "out")))
    document = fingerprint(pipeline, {})
    assert document["software"] == software() and software()["pyarrow"] == pa.__version__
    monkeypatch.setattr("headrace.fingerprint.software", lambda: {"python": "3.11.7", "transformers": "5.0.0"})
    after_upgrade = fingerprint(pipeline, {})
    assert after_upgrade["hash"] == document["hash"] and after_upgrade["software"]["transformers"] == "5.0.0"


class Killed(Exception):
    pass


class KilledAfter(Storage):
    """Storage whose process dies before its ``budget``-th changing operation."""

    def __init__(self, fs, budget):
        super().__init__(fs, retries=0)
        self.budget = budget

    def _spend(self):
        self.budget -= 1
        if self.budget < 0:
            raise Killed()



def _dying(name):
    def operation(self, *args, **kwargs):
        self._spend()
        return getattr(Storage, name)(self, *args, **kwargs)

    return operation


for _name in ("write_parquet", "write_json", "remove", "copy"):  # the operations that change the store
    setattr(KilledAfter, _name, _dying(_name))


def test_a_kill_at_any_step_of_stripping_never_claims_a_row_twice(tmp_path):
    steps = 0
    while True:
        base = tmp_path / f"kill-{steps}"
        sink, area = first_attempt(base)
        resumed = staging.prepare(area, FINGERPRINT, "run-1")
        dying = staging.StagingArea(KilledAfter(sink.filesystem(), steps), area.root)
        try:
            staging.keep_complete(dying, resumed, ["a", "b", "c", "d"], "doc_id")
            finished = True
        except Killed:
            finished = False
        # The next attempt resumes from whatever the kill left.
        again = staging.prepare(area, FINGERPRINT, "run-2")
        staging.keep_complete(area, again, ["a", "b", "c", "d"], "doc_id")
        rows, claimed = staged_rows(area)
        assert again.complete <= {"a", "c"}
        assert all(claimed[k] == FULL_WEIGHT for k in again.complete), (steps, claimed)
        assert set(claimed) == again.complete, steps  # nothing half-claimed survives
        for key in again.complete:  # each complete input's rows exactly once
            assert sorted(rows[key]) == sorted(f"{key}-{i}" for i in range({"a": 3, "c": 2}[key])), (steps, rows)
        if finished:
            break
        steps += 1
    assert steps >= 4  # the kill did land between every step


def test_what_a_run_stages_and_publishes_is_on_the_disk_before_its_name_says_it_is(tmp_path, monkeypatch):
    """A power loss or host crash keeps a rename that is in the filesystem's journal, and
    may lose data written just before it (ext4's delayed allocation: a new file stays empty
    for up to 30 s). Before, nothing was fsynced: a crash soon after a commit could leave
    `_SUCCESS` listing empty files, or a progress file claiming a part whose data was lost,
    which the resume then published. Now each file is fsynced before it is named and its
    folder after; the partition's folder after the swap."""
    synced = []  # (what was fsynced, the names in the partition at that moment)
    real_fsync = os.fsync

    def fsync(descriptor):
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    sink, area = first_attempt(tmp_path)
    data, progress = area.path("data"), area.path("progress")
    def after(index, path):
        return path in synced[index + 1:]

    claims = sorted(os.listdir(progress))
    assert claims == ["part-000-00000.json", "part-000-00001.json"]
    for claim in claims:  # a part's data, then its folder, then its progress file (the claim), then that folder
        part = claim.replace(".json", ".parquet")
        written = next(i for i, p in enumerate(synced) if p.startswith(f"{data}/.{part}."))
        claimed = next(i for i, p in enumerate(synced) if p.startswith(f"{progress}/.{claim}."))
        assert written < claimed and data in synced[written + 1:claimed] and after(claimed, progress), (claim, synced)
    resumed = staging.prepare(area, FINGERPRINT, "run-1")
    staging.keep_complete(area, resumed, ["a", "b", "c", "d"], "doc_id")
    synced.clear()
    partition = sink.partition(DS)
    manifest = {"run_id": "new", "files": [{"path": p.file, "rows": p.data_rows} for p in resumed.parts]}
    commit.publish(area, manifest, resumed.run, partition, sink.quarantine(DS),
                   commit.layout(area, resumed.parts, SCHEMA, "run-1"))
    assert synced.index(data) < min(i for i, p in enumerate(synced) if "_SUCCESS" in p)  # the sweep's removals
    assert synced[-1] == os.path.dirname(partition) or os.path.dirname(partition) in synced[-2:], synced
    assert json.load(open(os.path.join(partition, "_SUCCESS")))["run_id"] == "new"


def test_a_kill_at_any_step_of_publishing_leaves_the_old_partition_or_the_new(tmp_path, monkeypatch):
    """Publish order: manifest, publishing mark, quarantine swap, data swap, clean-up."""
    real = commit.publish_directory
    for steps in range(6):
        sink, area = first_attempt(tmp_path / f"pub-{steps}")
        partition, quarantine = sink.partition(DS), sink.quarantine(DS)
        os.makedirs(partition)
        pq.write_table(SCHEMA.empty_table(), os.path.join(partition, "part-old.parquet"))
        json.dump({"run_id": "old", "files": [{"path": "part-old.parquet"}]}, open(os.path.join(partition, "_SUCCESS"), "w"))
        resumed = staging.prepare(area, FINGERPRINT, "run-1")
        staging.keep_complete(area, resumed, ["a", "b", "c", "d"], "doc_id")
        dying = staging.StagingArea(KilledAfter(sink.filesystem(), steps), area.root)

        def dying_publish(staged, final):
            dying.storage._spend()
            real(staged, final)

        monkeypatch.setattr(commit, "publish_directory", dying_publish)
        manifest = {"run_id": "new", "files": [{"path": p.file, "rows": p.data_rows} for p in resumed.parts]}
        try:
            commit.publish(dying, manifest, resumed.run, partition, quarantine, commit.layout(area, resumed.parts, SCHEMA, "run-1"))
            finished = True
        except Killed:
            finished = False
        monkeypatch.setattr(commit, "publish_directory", real)
        published = json.load(open(os.path.join(partition, "_SUCCESS")))
        assert published["run_id"] == ("new" if steps >= 4 else "old"), steps
        assert all(os.path.exists(os.path.join(partition, f["path"])) for f in published["files"]), steps
        assert finished == (steps == 5)
        if finished:
            assert not os.path.exists(area.root)
            continue
        again = staging.prepare(area, FINGERPRINT, "run-2")
        if steps >= 2:  # past the publishing mark: the next attempt starts afresh
            assert again.discarded.startswith("the earlier run was publishing") and not again.parts, steps
        else:  # before it: the staged parts are resumed, the stray staged manifest is dropped
            assert not again.discarded and len(again.parts) == 2, steps
            assert staging.MANIFEST not in os.listdir(area.path("data"))


def test_the_watch_tells_a_broken_stage_from_bad_records():
    watch = FailureWatch(limit=4)
    for _ in range(3):
        assert watch.failed("Parse", "NameError", "name 'x' is not defined", "tb") is None
    assert watch.failed("Parse", "ValueError", "bad", "tb") is None  # counted per exception type
    broken = watch.failed("Parse", "NameError", "name 'x' is not defined", "tb")
    assert broken and "stage Parse is broken: NameError" in broken[0] and "4 records" in broken[0]
    assert "tb" in broken[1]
    assert watch.failed("Other", "NameError", "", "") is None  # per stage

    healthy = FailureWatch(limit=2)
    healthy.succeeded("Parse")
    assert all(healthy.failed("Parse", "ValueError", "bad", "") is None for _ in range(10))
    assert all(FailureWatch(limit=0).failed("Parse", "E", "", "") is None for _ in range(100))


def test_how_a_source_packs_its_work_is_not_in_the_fingerprint_what_it_reads_is(tmp_path):
    """Retuning files_per_block or footer_threads between a killed run and its resume must
    not discard the staged work: they do not change the splits or the rows."""
    from headrace import Pipeline, output_sink
    from headrace.fingerprint import fingerprint
    from headrace.source import Files
    from headrace.tables import Tables
    from stages.tables import ReadTable

    def hashed(source):
        stages = [ReadTable({"text": pa.string()})] if isinstance(source, Tables) else []
        pipeline = Pipeline(name="p", source=source, stages=stages, sink=output_sink(str(tmp_path / "out")))
        return fingerprint(pipeline, {})["hash"]

    url = str(tmp_path / "in")
    assert hashed(Tables(url)) == hashed(Tables(url, files_per_block=4, footer_threads=2))
    assert hashed(Tables(url)) != hashed(Tables(url, split_bytes=4096))  # other byte ranges: other splits
    assert hashed(Files(url)) == hashed(Files(url, files_per_block=2))
    assert hashed(Files(url)) != hashed(Files(url, extensions=(".txt",)))


def test_a_model_replaced_in_place_changes_the_fingerprint_so_a_resume_never_mixes_two_models(tmp_path):
    """A nightly job reads its model from a fixed folder that a release process updates.
    Before, a run killed before the update and resumed after it published rows of both
    models in one partition (embeddings that cannot be compared): the fingerprint held the
    folder's path only. Now it covers the names, sizes and modification times of the
    files each stage loads (``Stage.state_paths``), without reading the weights."""
    import shutil
    import time

    from headrace.fingerprint import fingerprint, what_changed
    from pipelines.doc_embeddings import pipeline as doc_embeddings
    from stages.text import default_model_path

    model = tmp_path / "models" / "current"
    shutil.copytree(default_model_path(), model, copy_function=os.symlink)  # links: no 90 MB copy

    def printed():
        return fingerprint(doc_embeddings(input=str(tmp_path / "in"), output=str(tmp_path / "out"), model=str(model)), {})

    before = printed()
    assert printed()["hash"] == before["hash"]  # nothing changed, nothing discarded
    weights = next(name for name in os.listdir(model) if name.endswith((".safetensors", ".bin")))
    (model / weights).unlink()
    time.sleep(0.01)
    (model / weights).write_bytes(b"the next release's weights")
    after = printed()
    assert after["hash"] != before["hash"]
    assert what_changed(before, after) == "files of ChunkText, files of EmbedText"
    # The packaged model (model=None) and a model folder that the driver does not have
    # (on a cluster, on the workers only) are fingerprinted too.
    assert fingerprint(doc_embeddings(input="x", output=str(tmp_path / "o")), {})["state"]["EmbedText"]
    assert fingerprint(doc_embeddings(input="x", output=str(tmp_path / "o"), model=str(tmp_path / "nowhere")), {})


def test_a_helper_module_next_to_the_pipeline_file_is_in_the_fingerprint(tmp_path):
    """A stage in the pipeline file calls a function of helpers.py next to it (shipped to
    the workers with it). Before, only the pipeline file and the stage classes' own files
    were fingerprinted: helpers.py edited between a killed run and its resume left the
    staged rows of the old code in the partition beside rows of the new."""
    from headrace import loader
    from headrace.fingerprint import fingerprint, what_changed

    (tmp_path / "helpers.py").write_text("def clean(text):\n    return text.strip()\n")
    job = tmp_path / "helper_job.py"
    job.write_text(
        "import pyarrow as pa\n"
        "from helpers import clean\n"
        "from headrace import Files, Pipeline, Stage, output_sink\n"
        "from stages.files import ReadFiles\n"
        "from stages.text import DecodeText\n\n"
        "class Clean(Stage):\n"
        "    needs = ('text',)\n"
        "    adds = {'clean': pa.string()}\n\n"
        "    def process(self, batch):\n"
        "        return batch.append_column('clean', pa.array([clean(t) for t in batch.column('text').to_pylist()]))\n\n"
        "def pipeline(input: str = 'in', output: str = 'out'):\n"
        "    return Pipeline(name='helper_job', source=Files(input), stages=[ReadFiles(), DecodeText(), Clean()],\n"
        "                    sink=output_sink(output), columns=['doc_id', 'clean'])\n"
    )

    def printed():
        factory = loader.load(str(job))
        assert str(tmp_path / "helpers.py") in factory.code_files
        return fingerprint(factory.build(input=str(tmp_path / "in"), output=str(tmp_path / "out")), {},
                           factory.code_files)

    before = printed()
    assert printed()["hash"] == before["hash"]  # loaded again in this process: the same files, the same hash
    (tmp_path / "helpers.py").write_text("def clean(text):\n    return text.strip().lower()\n")
    after = printed()
    assert after["hash"] != before["hash"] and what_changed(before, after) == f"code of {tmp_path / 'helpers.py'}"


def test_the_output_contract_s_rules_are_in_the_fingerprint(tmp_path):
    """The pandera schema decides which rows go to the quarantine. Its repr names none of
    its checks, and only the Arrow schema of the output was fingerprinted: a check
    tightened between a killed run and its resume (a minimum length raised, a custom check's
    tolerance) left staged rows that the new rules would have quarantined."""
    import pandera.polars as pa_pl
    import polars as pl

    from headrace import Files, Pipeline, output_sink
    from headrace.fingerprint import fingerprint, what_changed
    from stages.files import ReadFiles

    def printed(check):
        schema = pa_pl.DataFrameSchema({"source": pa_pl.Column(pl.Utf8, check, nullable=False)})
        pipeline = Pipeline(name="p", source=Files(str(tmp_path / "in")), stages=[ReadFiles()], schema=schema,
                            sink=output_sink(str(tmp_path / "out")), columns=["doc_id", "source"])
        return fingerprint(pipeline, {})

    loose = printed(pa_pl.Check.str_length(min_value=1))
    assert printed(pa_pl.Check.str_length(min_value=1))["hash"] == loose["hash"]
    strict = printed(pa_pl.Check.str_length(min_value=8))
    assert strict["hash"] != loose["hash"] and what_changed(loose, strict) == "contract"
    # A check of the user's own: its module's code counts (this file's, here).
    custom = printed(pa_pl.Check(lambda data: data.lazyframe.select(pl.col(data.key).str.len_chars() < 4096), name="short"))
    assert custom["contract"]["columns"]["source"]["checks"][0][0] == "short" and __name__ in custom["code"]
