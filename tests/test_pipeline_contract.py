"""A pipeline is checked when it is built, before anything runs."""

import pyarrow as pa
import pytest

from headrace import Files, ParquetSink, Pipeline, PipelineError, Stage
from headrace.placement import place
from headrace.errors import ConfigError
from headrace.placement import Cluster, Master


class Upper(Stage):
    needs = ("text",)
    adds = {"text": pa.string()}

    def process(self, batch):
        return batch


class Decode(Stage):
    needs = ("bytes",)
    adds = {"text": pa.string()}
    drops = ("bytes",)

    def process(self, batch):
        return batch


class Read(Stage):
    needs = ("source",)
    adds = {"bytes": pa.binary()}

    def process(self, batch):
        return batch


class Model(Stage):
    needs = ("text",)
    adds = {"score": pa.float32()}
    gpus = 1

    def setup(self):
        pass

    def process(self, batch):
        return batch


def build(stages, **kwargs):
    return Pipeline(name="t", source=Files("/nowhere"), stages=stages, sink=ParquetSink("/tmp/out"), **kwargs)


def test_missing_column_names_the_stage_and_the_column():
    with pytest.raises(PipelineError, match=r"stage Upper \(#1\) needs column 'text'"):
        build([Upper()])


def test_dropped_column_is_gone_for_later_stages():
    class NeedsBytes(Stage):
        needs = ("bytes",)
        adds = {"size": pa.int64()}

        def process(self, batch):
            return batch

    with pytest.raises(PipelineError, match=r"NeedsBytes .* needs column 'bytes'"):
        build([Read(), Decode(), NeedsBytes()])


def test_key_columns_cannot_be_dropped_and_names_are_unique():
    class DropSource(Stage):
        drops = ("source",)

        def process(self, batch):
            return batch

    with pytest.raises(PipelineError, match="may not drop key column 'source'"):
        build([DropSource()])
    with pytest.raises(PipelineError, match="two stages are named 'Read'"):
        build([Read(), Read()])


def test_resources_are_checked():
    with pytest.raises(PipelineError, match="concurrency"):
        build([Read().with_(concurrency=(3, 1))])
    with pytest.raises(PipelineError, match="initial pool size"):
        build([Read(), Decode(), Model().with_(concurrency=(1, 4, 6))])
    assert Model().with_(concurrency=(1, 4, 2)).pool_initial() == 2
    with pytest.raises(PipelineError, match="GPUs but has no setup"):
        build([Read().with_(gpus=1)])
    with pytest.raises(AttributeError, match="no setting 'gpu'"):
        Read().with_(gpu=1)
    for bad in (dict(cpus=float("nan")), dict(cpus=-1), dict(gpus=float("inf"))):
        with pytest.raises(PipelineError, match="cpus and gpus must be finite numbers, not negative"):
            build([Read(), Decode(), Model().with_(**bad)])
    for bad in (dict(memory=0), dict(memory=-1), dict(memory=float("nan"))):
        with pytest.raises(PipelineError, match="memory must be a number of bytes above 0"):
            build([Read().with_(**bad)])


def test_output_schema_follows_the_declared_contract():
    pipeline = build([Read(), Decode(), Model()], columns=["doc_id", "text", "score"])
    assert pipeline.output_schema == pa.schema([("doc_id", pa.string()), ("text", pa.string()), ("score", pa.float32())])
    with pytest.raises(PipelineError, match="output column 'bytes'"):
        build([Read(), Decode()], columns=["bytes"])


def test_an_output_column_named_ds_is_refused_it_is_the_partition_column():
    """Before, such a run committed and every reader of the output failed on it
    (headrace.read: `Can't unify schema with duplicate field names`)."""
    class Dated(Stage):
        needs = ("text",)
        adds = {"ds": pa.string()}

        def process(self, batch):
            return batch

    with pytest.raises(PipelineError, match="output column 'ds' is the output's partition column"):
        build([Read(), Decode(), Dated()])
    with pytest.raises(PipelineError, match="output column 'ds'"):
        build([Read(), Decode(), Dated()], columns=["doc_id", "ds"])
    assert build([Read(), Decode(), Dated()], columns=["doc_id", "text"]).output_schema.names == ["doc_id", "text"]


def test_with_returns_a_copy():
    original = Model()
    changed = original.with_(batch_size=8, gpus=0.5)
    assert (original.batch_size, original.gpus) == (64, 1)
    assert (changed.batch_size, changed.gpus) == (8, 0.5)


def test_explain_shows_pools_resources_and_schema():
    text = build([Read(), Decode(), Model().with_(concurrency=(1, 4))]).explain()
    assert "Read" in text and "tasks" in text
    assert "actors 1..4" in text and "gpus=1" in text
    assert "drops bytes" in text
    assert "parquet file:///tmp/out/ds={ds}" in text
    assert "output cut into" not in text  # every stage fuses: nothing is cut


def test_explain_says_a_stage_kept_apart_is_cut_to_the_call_size_of_the_pool_after_it():
    apart = Decode().with_(fuse=False)
    text = build([Read(), apart, Model().with_(gpu_batch_size=256)]).explain()
    assert "output cut into blocks of Model's call size (64 rows; 256 on a GPU)" in text
    assert "output cut into" not in build([Read(), apart]).explain()  # no pool after it


def test_gpu_stage_falls_back_to_one_thread_cpu_actors_per_core():
    pipeline = build([Read(), Decode(), Model()])
    placements = place(pipeline, Cluster(cpus=4, gpus=0, cores=2))
    model = placements[-1]
    assert (model.actors, model.gpus, model.device, model.threads) == ((2, 2), 0.0, "cpu", 1)
    assert "no GPU" in model.note
    assert [p.note for p in placements].count("") == 2  # one warning, for the GPU stage only
    with pytest.raises(ConfigError, match="GPU is required"):
        place(pipeline, Cluster(cpus=4, gpus=0, cores=2), require_gpu=True)


def test_cpu_actors_leave_a_cpu_for_the_tasks_of_a_stage_kept_apart():
    """Before, the CPU actors of a GPU stage took every CPU slot on a cluster without GPUs
    (one per CPU), and the tasks of a stage kept apart (ReadTable) waited for ever: the
    table job hung at "starting" with --num-cpus 2."""
    apart = build([Read().with_(fuse=False), Decode(), Model()])
    model = place(apart, Cluster(cpus=2, gpus=0, cores=2))[-1]
    assert (model.actors, model.threads) == ((1, 1), 1) and "leaving a CPU for the Read tasks" in model.note
    assert place(apart, Cluster(cpus=4, gpus=0, cores=2))[-1].actors == (2, 2)  # a local Ray: 2 slots a core
    assert place(build([Read(), Decode(), Model()]), Cluster(cpus=2, gpus=0, cores=2))[-1].actors == (2, 2)  # fused
    with pytest.raises(ConfigError, match=r"needs at least 2 CPU slots, Ray has 1: .* stage Read runs as tasks"):
        place(apart, Cluster(cpus=1, gpus=0, cores=1))


def test_gpu_stage_gets_gpus_and_fractions_share_them():
    pipeline = build([Read(), Decode(), Model().with_(gpus=0.5)])
    model = place(pipeline, Cluster(cpus=8, gpus=2, cores=8))[-1]
    assert (model.actors, model.gpus, model.device) == ((1, 4), 0.5, "cuda")
    with pytest.raises(ConfigError, match="at least 3 actor"):
        place(build([Read(), Decode(), Model().with_(concurrency=3)]), Cluster(cpus=8, gpus=2, cores=8))


def test_master_parsing():
    assert Master.parse("local[3]") == Master("local", cores=3)
    assert Master.parse("head:6379") == Master("cluster", address="head:6379")
    with pytest.raises(ConfigError, match="Ray Data does not run over Ray Client"):
        Master.parse("ray://head:10001")
    with pytest.raises(ConfigError, match="goes with --deploy-mode cluster"):
        Master.parse("http://head:8265")
    assert Master.parse("auto").kind == "cluster"
    with pytest.raises(ConfigError, match="expected local"):
        Master.parse("yarn")


def test_threads_and_pool_size_can_be_overridden():
    pipeline = build([Read(), Decode(), Model().with_(concurrency=1, cpu_threads=2)])
    model = place(pipeline, Cluster(cpus=4, gpus=0, cores=2))[-1]
    assert (model.actors, model.threads) == ((1, 1), 2)
    model = place(build([Read(), Decode(), Model().with_(concurrency=1)]), Cluster(cpus=4, gpus=0, cores=2))[-1]
    assert (model.actors, model.threads) == ((1, 1), 2)  # one actor gets both cores' threads
