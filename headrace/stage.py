"""The stage model: a declarative class with one method that turns a batch into a batch."""

from __future__ import annotations

import copy
import inspect
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

BATCH_FORMATS = ("arrow", "polars", "numpy")


@dataclass
class StageContext:
    """What the engine tells a stage in ``setup()``, and how the stage reports back.

    ``device`` is where this copy runs ("cpu" or "cuda"), ``threads`` how many torch
    threads it may use, ``gpu_ids`` the GPUs Ray gave it. ``add_time("forward_s", s)``
    accumulates a timing that the run report shows per actor.
    """

    device: str = "cpu"
    threads: int = 1
    gpu_ids: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)

    def add_time(self, name: str, seconds: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + seconds


class Stage:
    """One step of a pipeline.

    Subclasses declare what they need and what they produce as class attributes and
    implement ``process``. A stage that overrides ``setup`` holds state (a model, a
    tokenizer) and runs on an actor pool; any other stage runs as stateless tasks.

    ``process`` receives only healthy rows; raising an exception marks the rows of the
    batch as failed, and headrace splits the batch to find the records at fault. A stage
    that fails on every record is broken, and stops the run (see headrace.isolate).

    ``settings()`` lists every effective setting (class and instance attributes); they,
    and the source of the stage's module, make up the run's fingerprint.
    """

    name: ClassVar[str | None] = None
    needs: tuple[str, ...] = ()  # columns read
    adds: dict[str, pa.DataType] = {}  # columns written (new or replaced), with types
    drops: tuple[str, ...] = ()  # columns removed after this stage
    batch_size: int | None = 64
    gpu_batch_size: int | None = None  # rows per batch where the stage runs on a GPU; None: batch_size
    cpus: float = 1.0
    gpus: float = 0.0  # whole, fractional (0.5 = two actors per GPU) or several
    memory: int | None = None  # bytes of heap to reserve per task or actor
    concurrency: int | tuple[int, ...] | None = None  # pool size: n, (min, max) or (min, max, initial)
    batch_format: str = "arrow"
    retries: int = 3  # transient failures (timeouts, resets, 429/5xx) retried per call
    retry_backoff_s: float = 0.2  # first wait; doubles each retry

    cpu_threads: int | None = None  # torch threads per actor on CPU; None: headrace decides
    # False keeps this stage's tasks apart from the stages around it. Ray Data fuses
    # consecutive stages into one task and counts the fused task's batch in the rows that
    # enter it: a stage that turns one input into thousands of rows (a table split) would
    # otherwise hand the next stage 64 *splits* per call, and the run one task.
    fuse: bool = True

    def setup(self, context: StageContext) -> None:
        """Load expensive state once per actor. Overriding it makes the stage stateful.

        ``context`` says where this copy runs; an override may leave it out (``setup(self)``).
        """

    def process(self, batch: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement process()")

    # -- declarative helpers -------------------------------------------------

    @property
    def stage_name(self) -> str:
        return self.name or type(self).__name__

    @property
    def stateful(self) -> bool:
        return type(self).setup is not Stage.setup

    def start(self, context: StageContext) -> None:
        """Call setup(), with the context where the override takes one."""
        if len(inspect.signature(self.setup).parameters) >= 1:
            self.setup(context)
        else:
            self.setup()

    def state_paths(self) -> list[str]:
        """Local files or folders that the stage loads (in ``setup()`` or ``process()``) and
        that decide its rows besides its settings and code: a model's weights, a tokenizer.
        The run's fingerprint covers the names, sizes and modification times of the files
        in them, so a run resumed after the model was replaced in place starts afresh
        instead of publishing rows of two models in one partition. None by default."""
        return []

    def settings(self) -> dict[str, Any]:
        """Every effective setting of this stage: public class attributes along the class
        hierarchy, overridden by instance attributes. Methods and properties are not settings."""
        values: dict[str, Any] = {}
        for cls in reversed(type(self).__mro__):
            if cls is object:
                continue
            for key, value in vars(cls).items():
                if key.startswith("_") or callable(value) or isinstance(value, (property, classmethod, staticmethod)):
                    continue
                values[key] = value
        values.update({k: v for k, v in vars(self).items() if not k.startswith("_")})
        values["name"] = self.stage_name
        return dict(sorted(values.items()))

    def with_(self, **overrides: Any) -> "Stage":
        """A copy of this stage with some attributes replaced (batch_size, gpus, ...)."""
        clone = copy.copy(self)
        for key, value in overrides.items():
            if not hasattr(clone, key):
                raise AttributeError(f"{self.stage_name} has no setting {key!r}")
            setattr(clone, key, value)
        return clone

    def pool_bounds(self) -> tuple[int, int] | None:
        """(min, max) actors, or None when the engine decides."""
        if self.concurrency is None:
            return None
        if isinstance(self.concurrency, int):
            return (self.concurrency, self.concurrency)
        low, high = self.concurrency[:2]
        return (int(low), int(high))

    def call_size(self, on_gpu: bool) -> int | None:
        """Rows per call: ``gpu_batch_size`` where the stage runs on a GPU and has one, else
        ``batch_size`` (None: a whole block)."""
        return self.gpu_batch_size if on_gpu and self.gpu_batch_size else self.batch_size

    def pool_initial(self) -> int | None:
        """The number of actors to start with, where declared as (min, max, initial)."""
        if isinstance(self.concurrency, tuple) and len(self.concurrency) == 3:
            return int(self.concurrency[2])
        return None

    # -- batch format conversion -------------------------------------------------

    def call(self, table: pa.Table) -> pa.Table:
        """Run process() on an Arrow table, converting to and from the declared format."""
        if self.batch_format == "arrow":
            return _as_table(self.process(table))
        if self.batch_format == "polars":
            import polars as pl  # only where a stage asks for it: a model worker can go without

            return _as_table(self.process(pl.from_arrow(table)))
        if self.batch_format == "numpy":
            return _as_table(self.process(table_to_numpy(table)))
        raise ValueError(f"{self.stage_name}: unknown batch_format {self.batch_format!r}")


def table_to_numpy(table: pa.Table) -> dict[str, np.ndarray]:
    """Columns as numpy arrays; fixed-size lists become 2-D arrays without copying."""
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(column.type) and column.null_count == 0:
            width = column.type.list_size
            out[name] = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


def fixed_size_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """A 2-D numpy array as an Arrow fixed-size list column (one row per matrix row)."""
    matrix = np.ascontiguousarray(matrix)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def _as_table(result: Any) -> pa.Table:
    if isinstance(result, pa.Table):
        return result
    polars = sys.modules.get("polars")  # a polars DataFrame comes only from where polars is imported
    if polars is not None and isinstance(result, polars.DataFrame):
        return result.to_arrow()
    if isinstance(result, dict):
        columns = {
            k: fixed_size_list(v) if isinstance(v, np.ndarray) and v.ndim == 2 else v
            for k, v in result.items()
        }
        return pa.table(columns)
    raise TypeError(f"process() returned {type(result).__name__}; expected a table")
