"""headrace: declarative stages compiled into one Ray Data streaming graph."""

__version__ = "0.1.0"

from headrace.config import EngineConf
from headrace.errors import ConfigError, ConservationError, HeadraceError, PipelineError, QualityGateError, StageBroken
from headrace.pipeline import Pipeline
from headrace.retry import TransientError
from headrace.sink import ParquetSink
from headrace.source import Files, stable_id
from headrace.stage import Stage, StageContext, fixed_size_list, table_to_numpy

__all__ = [
    "ConfigError",
    "ConservationError",
    "EngineConf",
    "Files",
    "HeadraceError",
    "ParquetSink",
    "Pipeline",
    "PipelineError",
    "QualityGateError",
    "Stage",
    "StageBroken",
    "StageContext",
    "fixed_size_list",
    "run",
    "stable_id",
    "table_to_numpy",
    "TransientError",
]


def run(pipeline, ds=None, engine=None, config=None):
    """Run ``pipeline`` for logical date ``ds`` on Ray and publish its partition."""
    from headrace.runner import run as _run

    return _run(pipeline, ds, engine, config)
