"""A failing record becomes an error row; its batch-mates carry on."""

import pyarrow as pa

from headrace import Stage
from headrace.envelope import ERROR, envelop, enveloped
from headrace.isolate import apply_stage

KEYS = ("doc_id", "source")


class Length(Stage):
    needs = ("text",)
    adds = {"length": pa.int64()}

    def __init__(self):
        self.calls = 0

    def process(self, batch):
        self.calls += 1
        texts = batch.column("text").to_pylist()
        if any("poison" in t for t in texts):
            raise ValueError("poisoned record")
        return batch.append_column("length", pa.array([len(t) for t in texts], pa.int64()))


def batch_of(texts):
    n = len(texts)
    return envelop(pa.table(
        {
            "doc_id": [f"id{i}" for i in range(n)],
            "source": [f"file:///d/{i}.txt" for i in range(n)],
            "text": pa.array(texts, pa.string()),
        }
    ))


OUT = enveloped(pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("text", pa.string()), ("length", pa.int64())]))


def test_bad_record_is_isolated_and_batch_mates_survive():
    texts = [f"good {i}" for i in range(32)]
    texts[13] = "poison pill"
    stage = Length()
    out = apply_stage(stage, batch_of(texts), OUT, KEYS)
    assert out.num_rows == 32
    errors = out.filter(out.column(ERROR).is_valid())
    assert errors.column("doc_id").to_pylist() == ["id13"]
    error = errors.column(ERROR).to_pylist()[0]
    assert error["stage"] == "Length" and error["error_type"] == "ValueError"
    assert error["message"] == "poisoned record" and "ValueError" in error["traceback"]
    # Its traceback tells the error once: before, once per bisection step that met it
    # (`During handling of the above exception, another exception occurred`, over and over).
    assert error["traceback"].count("ValueError: poisoned record") == 1, error["traceback"]
    assert "During handling" not in error["traceback"]
    healthy = out.filter(out.column(ERROR).is_null())
    assert healthy.column("length").to_pylist() == [len(t) for i, t in enumerate(texts) if i != 13]
    assert stage.calls <= 2 * 5 + 1  # bisection, not one call per record


def test_error_rows_pass_later_stages_untouched():
    first = apply_stage(Length(), batch_of(["a", "poison", "c"]), OUT, KEYS)

    class Shout(Stage):
        needs = ("text",)
        adds = {"text": pa.string()}

        def process(self, batch):
            return batch.set_column(2, "text", pa.array([t.upper() for t in batch.column("text").to_pylist()]))

    second = apply_stage(Shout(), first, OUT, KEYS)
    assert sorted(second.column("text").to_pylist(), key=str) == ["A", "C", None]
    failed = second.filter(second.column(ERROR).is_valid())
    assert failed.column(ERROR).to_pylist()[0]["stage"] == "Length"


def test_every_batch_has_the_declared_schema_even_when_all_rows_fail():
    out = apply_stage(Length(), batch_of(["poison"] * 3), OUT, KEYS)
    assert out.schema == OUT and out.column(ERROR).null_count == 0
    empty = apply_stage(Length(), batch_of([]), OUT, KEYS)
    assert empty.schema == OUT and empty.num_rows == 0


class Flaky(Stage):
    """Fails transiently a few times on 'flaky' records; 'down' records never recover."""

    needs = ("text",)
    adds = {"length": pa.int64()}
    retry_backoff_s = 0.001

    def __init__(self, failures):
        self.failures = failures
        self.calls = 0

    def process(self, batch):
        texts = batch.column("text").to_pylist()
        if any("down" in t for t in texts):
            raise ConnectionError("service unavailable")
        if any("flaky" in t for t in texts) and self.calls < self.failures:
            self.calls += 1
            raise TimeoutError("read timed out")
        if any("missing" in t for t in texts):
            raise FileNotFoundError("no such file")
        return batch.append_column("length", pa.array([len(t) for t in texts], pa.int64()))


def test_transient_failures_are_retried_and_permanent_ones_quarantined():
    stage = Flaky(failures=2)
    out = apply_stage(stage, batch_of(["a", "flaky b", "c"]), OUT, KEYS)
    assert out.column(ERROR).null_count == 3 and stage.calls == 2  # retried, nothing lost

    out = apply_stage(Flaky(failures=0), batch_of(["a", "down b", "missing c", "d"]), OUT, KEYS)
    errors = {r["doc_id"]: r[ERROR] for r in out.to_pylist() if r[ERROR]}
    assert set(errors) == {"id1", "id2"}
    assert errors["id1"]["error_type"] == "ConnectionError" and "failed 4 times" in errors["id1"]["message"]
    assert errors["id2"]["error_type"] == "FileNotFoundError" and "failed" not in errors["id2"]["message"]


def test_a_quarantined_traceback_keeps_a_chain_of_different_errors():
    from headrace.envelope import describe_exception

    try:
        try:
            {}["model"]
        except KeyError as missing:
            raise ValueError("no model in the config") from missing
    except ValueError as exc:
        _, message, trace = describe_exception(exc)
    assert message == "no model in the config"
    assert "KeyError: 'model'" in trace and "direct cause" in trace and trace.rstrip().endswith(message)
