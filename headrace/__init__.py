"""headrace: declarative stages compiled into one Ray Data streaming graph."""

__version__ = "0.1.0"

from headrace.config import EngineConf
from headrace.errors import ConfigError, ConservationError, HeadraceError, PipelineError, QualityGateError, StageBroken
from headrace.pipeline import Pipeline
from headrace.retry import TransientError
from headrace.sink import ParquetSink, output_sink
from headrace.source import Files, stable_id
from headrace.stage import Stage, StageContext, fixed_size_list, table_to_numpy

__all__ = [
    "ConfigError",
    "ConservationError",
    "EngineConf",
    "Files",
    "HeadraceError",
    "ParquetSink",
    "output_sink",
    "Pipeline",
    "PipelineError",
    "QualityGateError",
    "Stage",
    "StageBroken",
    "StageContext",
    "fixed_size_list",
    "read",
    "run",
    "scan",
    "stable_id",
    "table_to_numpy",
    "TransientError",
]


def read(output, ds=None, columns=None, storage_options=None):
    """The committed rows under ``output`` (one date, or all with a ``ds`` column), from the manifests."""
    from headrace.committed import read as _read

    return _read(output, ds, columns, storage_options)


def scan(output, ds=None, storage_options=None):
    """Like ``read``, as a polars LazyFrame."""
    from headrace.committed import scan as _scan

    return _scan(output, ds, storage_options)


def run(pipeline, ds=None, engine=None, config=None):
    """Run ``pipeline`` for logical date ``ds`` on Ray and publish its partition."""
    from headrace.runner import run as _run

    return _run(pipeline, ds, engine, config)
