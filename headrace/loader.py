"""Load a pipeline definition from a file path or a ``package.module:attr`` reference."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from headrace.errors import ConfigError, PipelineError
from headrace.pipeline import Pipeline

DEFAULT_ATTR = "pipeline"
# Modules loaded from a file path: Ray workers cannot import them, so what they define
# is shipped by value (see ray_adapter.build_dataset).
FILE_MODULES: list = []
_HELPERS: dict[str, tuple[str, ...]] = {}  # pipeline file -> the helper modules its first load imported


@dataclass(frozen=True)
class PipelineFactory:
    """A pipeline definition: a function of its settings (or a fixed Pipeline)."""

    name: str
    target: Callable[..., Pipeline] | Pipeline
    source_file: str = ""  # the file that defines it, for the fingerprint
    helper_files: tuple[str, ...] = ()  # modules next to a pipeline file that loading it imported

    @property
    def code_files(self) -> list[str]:
        """The files whose code the fingerprint covers besides the stages' own: the pipeline
        file and the helper modules next to it (a function a stage calls lives there too)."""
        return [path for path in (self.source_file, *self.helper_files) if path]

    @property
    def parameters(self) -> dict[str, inspect.Parameter]:
        if isinstance(self.target, Pipeline):
            return {}
        return {
            name: p
            for name, p in inspect.signature(self.target).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    def build(self, **settings: Any) -> Pipeline:
        if isinstance(self.target, Pipeline):
            return self.target
        try:
            pipeline = self.target(**settings)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure here is a configuration problem
            raise ConfigError(f"pipeline {self.name}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(pipeline, Pipeline):
            raise PipelineError(f"pipeline {self.name} returned {type(pipeline).__name__}, not a Pipeline")
        return pipeline


def load(spec: str) -> PipelineFactory:
    """``path/to/pipeline.py[:attr]`` or ``package.module[:attr]``; attr defaults to ``pipeline``."""
    module_ref, _, attr = spec.partition(":") if not _is_windows_drive(spec) else (spec, "", "")
    attr = attr or DEFAULT_ATTR
    if not module_ref:
        raise ConfigError(f"pipeline {spec!r} names no file or module before ':' "
                          f"(path/to/pipeline.py[:{attr}] or package.module[:{attr}])")
    helpers: tuple[str, ...] = ()
    if module_ref.endswith(".py") or os.sep in module_ref:
        module = _load_file(module_ref)
        helpers = _HELPERS.get(os.path.abspath(module_ref), ())
    else:
        try:
            module = importlib.import_module(module_ref)
        except ModuleNotFoundError as exc:
            if exc.name and module_ref.startswith(exc.name):
                raise ConfigError(f"pipeline {spec!r}: no module named {exc.name!r}") from exc
            raise ConfigError(_load_error(spec, exc)) from exc
        except Exception as exc:  # noqa: BLE001 - a module that fails to import is bad configuration
            raise ConfigError(_load_error(spec, exc)) from exc
    target = getattr(module, attr, None)
    if target is None:
        raise ConfigError(f"pipeline {spec!r}: {module_ref} defines no {attr!r}")
    if not (isinstance(target, Pipeline) or callable(target)):
        raise ConfigError(f"pipeline {spec!r}: {attr} is neither a Pipeline nor a function returning one")
    name = os.path.splitext(os.path.basename(module_ref))[0] if module_ref.endswith(".py") else module_ref.rsplit(".", 1)[-1]
    return PipelineFactory(name=name, target=target, source_file=getattr(module, "__file__", None) or "",
                           helper_files=helpers)


def _load_file(path: str):
    """Execute a pipeline file. Its folder is importable while it loads (and after), and
    every module it imports from that folder is shipped to the workers by value along with
    it, so a helper module next to the pipeline works on any node without PYTHONPATH."""
    if os.path.isdir(path):
        raise ConfigError(f"pipeline file {path!r} is a folder: name the pipeline's .py file in it")
    if not os.path.isfile(path):
        raise ConfigError(f"pipeline file {path!r} not found")
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    before = set(sys.modules)
    stem = os.path.splitext(os.path.basename(path))[0]
    module_name = f"headrace_pipeline_{stem}"
    spec = importlib.util.spec_from_file_location(module_name, os.path.abspath(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - a file that fails to load is bad configuration
        del sys.modules[module_name]
        raise ConfigError(_load_error(path, exc)) from exc
    FILE_MODULES.append(module)
    helpers = []
    for name in sorted(set(sys.modules) - before):
        neighbour = sys.modules[name]
        source = getattr(neighbour, "__file__", None) or ""
        if neighbour is not module and os.path.abspath(source).startswith(folder + os.sep) \
                and "site-packages" not in source:
            FILE_MODULES.append(neighbour)
            helpers.append(os.path.abspath(source))
    # A second load in this process imports nothing new: the first one's helpers stand.
    _HELPERS.setdefault(os.path.abspath(path), tuple(helpers))
    return module


def _load_error(spec: str, exc: Exception) -> str:
    """One line: where loading the pipeline failed (file and line) and why."""
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename}, line {exc.lineno}"
        return f"pipeline {spec!r} does not load: {where}: SyntaxError: {exc.msg}"
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if "importlib" not in f.filename] or frames
    where = f"{own[-1].filename}, line {own[-1].lineno}" if own else spec
    return f"pipeline {spec!r} does not load: {where}: {type(exc).__name__}: {exc}"


def _is_windows_drive(spec: str) -> bool:
    return len(spec) > 2 and spec[1] == ":" and spec[2] in "\\/"
