"""What decides the rows of a run, as one hash: resume never mixes two configurations.

The fingerprint covers the pipeline's settings, every effective setting of each stage
(``Stage.settings()``: class and instance attributes), the content of the source files
of each stage class (along its class hierarchy) and of the pipeline file, the output
schema, the source and the sink (their reprs: a source leaves out of it what only packs
work into tasks, such as ``files_per_block``). Engine settings (master, CPUs, the quality gate) do
not change rows and are left out, so a rerun after exit 3 with a higher gate resumes.

The versions of the libraries that make rows (``software``) are in the document but not in
its hash: a resume after an upgrade starts afresh (a partition never holds rows of two
tokenizer versions), while a date committed before the upgrade is still committed "as
configured" (``backfill --skip-committed`` does not rerun every date after a pip upgrade).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import platform
import sys
from typing import Any, Iterable

from headrace import __version__


def fingerprint(pipeline, settings: dict[str, Any], code_files: Iterable[str] = ()) -> dict:
    """The fingerprint document; its ``hash`` names it."""
    code = {name: _file_hash(path) for name, path in _stage_sources(pipeline)}
    code.update({path: _file_hash(path) for path in code_files})
    contract, check_files = _contract(pipeline.schema)
    code.update({name: _file_hash(path) for name, path in check_files})
    document = {
        "headrace": __version__,
        "pipeline": pipeline.name,
        "settings": {k: _plain(v) for k, v in sorted(settings.items())},
        "stages": {s.stage_name: {"class": _qualname(type(s)), **{k: _plain(v) for k, v in s.settings().items()}}
                   for s in pipeline.stages},
        "code": dict(sorted(code.items())),
        "state": _state(pipeline.stages),
        "output": str(pipeline.output_schema),
        "contract": contract,
        "source": repr(pipeline.source),
        "sink": repr(pipeline.sink),
    }
    document["hash"] = hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()[:16]
    document["software"] = software()
    return document


# The distributions whose version can change a run's rows (a tokenizer's rules, a kernel's
# arithmetic, an image or HTML decoder, a validation rule) or how it runs.
LIBRARIES = ("ray", "numpy", "pyarrow", "polars", "pandera", "torch", "transformers", "tokenizers",
             "pillow", "selectolax", "charset-normalizer", "fastwarc", "deltalake", "vllm")


@functools.lru_cache(maxsize=1)
def software() -> dict[str, str]:
    """Python's version, headrace's and those of LIBRARIES that are installed (in the manifest)."""
    from importlib import metadata

    found = {"python": platform.python_version(), "headrace": __version__}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def software_changed(old: dict | None, new: dict) -> str:
    """The libraries whose version differs, in words (``transformers 4.57.0 -> 5.0.0``); empty
    when none does or ``old`` predates the record."""
    before, after = (old or {}).get("software"), new.get("software") or {}
    if not before:
        return ""
    return ", ".join(f"{name} {before.get(name, '-')} -> {after.get(name, '-')}"
                     for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name))


def what_changed(old: dict | None, new: dict) -> str:
    """Which parts of the fingerprint differ, in words (for resume.discarded)."""
    if not old:
        return "an earlier fingerprint without details"
    changes = []
    for key in ("headrace", "pipeline", "output", "contract", "source", "sink"):
        if old.get(key) != new.get(key):
            changes.append(key)
    for group, label in (("settings", "setting"), ("code", "code of"), ("state", "files of")):
        before, after = old.get(group, {}), new.get(group, {})
        changes += [f"{label} {k}" for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    before, after = old.get("stages", {}), new.get("stages", {})
    for stage in sorted(set(before) | set(after)):
        a, b = before.get(stage), after.get(stage)
        if a is None or b is None:
            changes.append(f"stage {stage} {'added' if a is None else 'removed'}")
        else:
            changes += [f"{stage}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(changes[:8]) + (f" and {len(changes) - 8} more" if len(changes) > 8 else "") or "unknown"


def _stage_sources(pipeline) -> list[tuple[str, str]]:
    """(module name, source file) of every class along each stage's hierarchy."""
    found = {}
    for stage in pipeline.stages:
        for cls in type(stage).__mro__:
            module = sys.modules.get(cls.__module__)
            if cls is object or module is None or cls.__module__ == "builtins":
                continue
            try:
                found[cls.__module__] = inspect.getsourcefile(module) or ""
            except TypeError:  # a module without a file (defined interactively)
                continue
    return [(name, path) for name, path in found.items() if path]


def _file_hash(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()[:16]
    except OSError:
        return "unreadable"


def _contract(schema) -> tuple[Any, list[tuple[str, str]]]:
    """The pandera schema's rules, which decide which rows go to the quarantine: each
    column's type, nullability and checks (with their arguments), the frame's checks, and
    (module, file) of every check function of the user's own (its code: a tolerance, a
    regular expression). Its repr names none of the checks."""
    if schema is None:
        return None, []
    files: dict[str, str] = {}

    def checks(items) -> list:
        described = []
        for check in items or []:
            function = getattr(check, "_check_fn", None)
            module = sys.modules.get(getattr(function, "__module__", "") or "")
            if module is not None and not module.__name__.startswith("pandera"):
                try:
                    files[module.__name__] = inspect.getsourcefile(module) or ""
                except TypeError:  # defined interactively
                    pass
            described.append([getattr(check, "name", None), _plain(getattr(check, "statistics", None)),
                              getattr(function, "__qualname__", None)])
        return described

    columns = {
        name: {"type": str(getattr(column, "dtype", None)), "nullable": getattr(column, "nullable", None),
               "unique": getattr(column, "unique", None), "required": getattr(column, "required", None),
               "checks": checks(getattr(column, "checks", None))}
        for name, column in (getattr(schema, "columns", None) or {}).items()
    }
    contract = {"schema": _qualname(type(schema)), "columns": columns,
                "checks": checks(getattr(schema, "checks", None)),
                "strict": _plain(getattr(schema, "strict", None)), "unique": _plain(getattr(schema, "unique", None))}
    return contract, [(name, path) for name, path in files.items() if path]


def _state(stages) -> dict[str, str]:
    """Each stage's ``state_paths()`` digest; stages that load the same folder (a tokenizer
    and its model) share one walk of it."""
    digests: dict[tuple[str, ...], str] = {}
    state = {}
    for stage in stages:
        paths = tuple(stage.state_paths())
        if paths:
            if paths not in digests:
                digests[paths] = _files_digest(paths)
            state[stage.stage_name] = digests[paths]
    return state


def _files_digest(paths: Iterable[str]) -> str:
    """The names, sizes and modification times of the files under ``paths`` (links
    followed), as one hash; their content is not read (weights may be gigabytes). A path
    the driver does not have (a model on the workers only) counts as absent."""
    entries = []
    for path in paths:
        root = os.path.realpath(path)
        if os.path.isfile(root):
            found = [(root, os.path.basename(root))]
        elif os.path.isdir(root):
            found = sorted((os.path.join(folder, name), os.path.relpath(os.path.join(folder, name), root))
                           for folder, _, names in os.walk(root, followlinks=True) for name in names)
        else:
            entries.append([path, "absent"])
            continue
        for full, name in found:
            try:
                info = os.stat(full)
            except OSError:
                entries.append([path, name, "unreadable"])
                continue
            entries.append([path, name, info.st_size, info.st_mtime_ns])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _plain(value: Any) -> Any:
    """A stable, JSON-able stand-in for a setting or a stage attribute."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if type(value).__repr__ is object.__repr__:
        return _qualname(type(value))  # its repr would hold a memory address
    return repr(value)
