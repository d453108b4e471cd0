"""Run configuration: defaults < properties file < environment < --conf < flags.

Keys are the pipeline's own settings (the parameters of its ``pipeline`` function) and
engine settings prefixed ``headrace.``. An unknown key is an error, found before Ray starts.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import yaml

from headrace.errors import ConfigError
from headrace.loader import PipelineFactory

ENGINE_PREFIX = "headrace."


@dataclass
class EngineConf:
    """Engine settings (conf keys ``headrace.<field>``; env ``HEADRACE_<FIELD>``)."""

    master: str = "local"
    num_cpus: int | None = None
    num_gpus: int | None = None
    name: str | None = None
    require_gpu: bool = False
    max_quarantine_fraction: float | None = None  # overrides the pipeline's quality gate
    broken_stage_after: int = 32  # a stage failing this often with one error before any success stops the run; 0: never
    progress: bool = True  # headrace's progress display: live on a terminal, else a line every progress_every_s
    progress_every_s: float = 30.0
    verbose: bool = False
    resume: bool = True  # keep what a killed run of the same ds and configuration staged
    allow_empty_input: bool = False  # an input that matches no file commits an empty partition
    object_store_memory: str | None = None  # e.g. 2GiB: a local Ray's object store, and Ray Data's budget
    lock_wait_s: float = 0.0  # how long to wait for another run's lock on the date (a retry on a new host)
    storage_options: str | None = None  # JSON: {"s3": {"endpoint_url": ...}}, fsspec options per protocol; never recorded


@dataclass
class RunConf:
    engine: EngineConf
    settings: dict[str, Any]
    ds: str
    sources: dict[str, str] = field(default_factory=dict)  # key -> where its value came from

    def as_dict(self) -> dict[str, Any]:
        engine = {f"{ENGINE_PREFIX}{f.name}": getattr(self.engine, f.name) for f in fields(self.engine)}
        return {**self.settings, **engine}


def describe_settings(run_conf: "RunConf", ds_given: bool = True) -> list[str]:
    """Every resolved setting, its value and where it came from, as spark-submit --verbose
    prints them; storage options are shown without their values."""
    values = run_conf.as_dict()
    storage = f"{ENGINE_PREFIX}storage_options"
    if values.get(storage) is not None:
        values[storage] = redacted(values[storage])
    width = max(len(key) for key in values)
    lines = [f"  {'ds':<{width}}  {run_conf.ds!r:<30}  ({'--ds' if ds_given else 'default: yesterday, UTC'})"]
    for key, value in values.items():
        lines.append(f"  {key:<{width}}  {value!r:<30}  ({run_conf.sources.get(key, 'default')})")
    return lines


def default_ds(today: dt.date | None = None) -> str:
    today = today or dt.datetime.now(dt.timezone.utc).date()
    return (today - dt.timedelta(days=1)).isoformat()


def parse_ds(value: "str | dt.date | None", what: str = "--ds") -> str:
    """The logical date as YYYY-MM-DD; None is yesterday (UTC). From Python a ``date`` (or a
    ``datetime``: its date) will do too."""
    if value is None:
        return default_ds()
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return value.isoformat()
    # fromisoformat alone would also take 20261101 and 2026-W44-7.
    try:
        if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise ConfigError(f"{what} {value!r}: expected a date as YYYY-MM-DD") from None


_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_bytes(value: str | int, what: str = "size") -> int:
    """``2GiB``, ``512MB``, ``1.5g`` or a plain number of bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", str(value).lower())
    if not match:
        raise ConfigError(f"{what}={value!r}: expected a size such as 2GiB, 512MB or a number of bytes")
    size = int(float(match.group(1)) * _UNITS[match.group(2) or ""])
    if size < 100 * 2**20:
        raise ConfigError(f"{what}={value!r}: at least 100MiB, please")
    return size


def parse_storage_options(value: str | dict) -> dict[str, dict]:
    """``{"s3": {...}, "gs": {...}}``: fsspec options per protocol. The value is never echoed:
    it may hold secrets."""
    what = f"{ENGINE_PREFIX}storage_options"
    if isinstance(value, dict):
        options = value
    else:
        try:
            options = json.loads(value)
        except ValueError:
            raise ConfigError(f"{what} is not valid JSON (expected {{\"s3\": {{\"endpoint_url\": ...}}}})") from None
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ConfigError(f"{what} must map each protocol to its options, e.g. {{\"s3\": {{\"anon\": true}}}}")
    return options


def use_storage_options(options: str | dict | None) -> dict[str, str]:
    """Apply ``headrace.storage_options`` to this process and every worker it starts, through
    fsspec's own ``FSSPEC_<PROTOCOL>`` variables (set before Ray starts, so local workers
    inherit them); returns those variables, for a cluster job's runtime environment."""
    if options is None:
        return {}
    import fsspec.config

    env = {}
    for protocol, values in parse_storage_options(options).items():
        fsspec.config.conf.setdefault(protocol, {}).update(values)
        env[f"FSSPEC_{protocol.upper()}"] = json.dumps(values)
    os.environ.update(env)
    return env


def redacted(options: str | dict | None) -> dict | None:
    """What a manifest may say of storage options: the protocols and keys, no values."""
    if options is None:
        return None
    parsed = parse_storage_options(options)
    return {protocol: {key: "***" for key in values} for protocol, values in parsed.items()}


def parse_pairs(pairs: list[str], what: str = "--conf") -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {pair!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


def parse_pipeline_args(args: list[str]) -> dict[str, str]:
    """``-- --input x --batch-size=8`` after the pipeline: its settings, as flags."""
    out, index = {}, 0
    while index < len(args):
        arg = args[index]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"pipeline argument {arg!r}: expected --name value or --name=value")
        name, sep, value = arg[2:].partition("=")
        if not sep:
            if index + 1 >= len(args):
                raise ConfigError(f"pipeline argument {arg!r} needs a value")
            index += 1
            value = args[index]
        out[name.replace("-", "_")] = value
        index += 1
    return out


def resolve(
    factory: PipelineFactory,
    *,
    properties_file: str | None = None,
    conf: Mapping[str, Any] | None = None,
    flags: Mapping[str, Any] | None = None,
    ds: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> RunConf:
    environ = os.environ if environ is None else environ
    parameters = factory.parameters
    hints = _hints(factory)
    engine_hints = typing.get_type_hints(EngineConf)
    known = {**{k: hints.get(k, str) for k in parameters}, **{ENGINE_PREFIX + k: t for k, t in engine_hints.items()}}

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def apply(layer: Mapping[str, Any], origin: str) -> None:
        for key, value in layer.items():
            if key not in known:
                raise ConfigError(_unknown(key, factory.name, list(parameters), origin))
            values[key] = _coerce(key, value, known[key], origin)
            sources[key] = origin

    if properties_file:
        apply(_read_properties(properties_file, known), f"properties file {properties_file}")
    apply(_from_env(known, environ, factory.name), "environment")
    apply(conf or {}, "--conf")
    apply({k: v for k, v in (flags or {}).items() if v is not None}, "flag")

    settings = {}
    for name, parameter in parameters.items():
        if name in values:
            settings[name] = values[name]
        elif parameter.default is not parameter.empty:
            settings[name] = parameter.default
        else:
            raise ConfigError(f"pipeline {factory.name} needs setting {name!r} (--conf {name}=...)")
    engine = EngineConf(**{k[len(ENGINE_PREFIX):]: v for k, v in values.items() if k.startswith(ENGINE_PREFIX)})
    check_engine(engine)
    day = parse_ds(ds)
    settings = {k: v.replace("{ds}", day) if isinstance(v, str) else v for k, v in settings.items()}
    return RunConf(engine=engine, settings=settings, ds=day, sources=sources)


def resolve_engine(*, properties_file: str | None = None, conf: Mapping[str, Any] | None = None,
                   environ: Mapping[str, str] | None = None) -> EngineConf:
    """Engine settings for a command that runs no pipeline (``status``, ``report``), from the
    same places as a run's: the properties file, ``HEADRACE_*`` variables and ``--conf
    headrace.*``. The run's own properties file may be given: its pipeline settings are not
    this command's and are left alone, but a ``--conf`` key that is not an engine key, or a
    ``HEADRACE_*`` variable that names nothing, is an error as in a run."""
    environ = os.environ if environ is None else environ
    known = {ENGINE_PREFIX + k: t for k, t in typing.get_type_hints(EngineConf).items()}
    values: dict[str, Any] = {}

    def apply(layer: Mapping[str, Any], origin: str, others_allowed: bool) -> None:
        for key, value in layer.items():
            if key in known:
                values[key] = _coerce(key, value, known[key], origin)
            elif key.startswith(ENGINE_PREFIX) or not others_allowed:
                raise ConfigError(f"unknown conf key {key!r} (from {origin}); this command takes engine keys only: "
                                  f"{', '.join(sorted(known))}")

    if properties_file:
        apply(_read_properties(properties_file, known), f"properties file {properties_file}", True)
    apply(_from_env(known, environ, None), "environment", True)
    apply(conf or {}, "--conf", False)
    engine = EngineConf(**{k[len(ENGINE_PREFIX):]: v for k, v in values.items()})
    check_engine(engine)
    return engine


def check_engine(engine: EngineConf) -> None:
    """Out-of-range engine settings: exit 2 before anything runs."""
    if engine.object_store_memory is not None:
        parse_bytes(engine.object_store_memory, f"{ENGINE_PREFIX}object_store_memory")
    if engine.storage_options is not None:
        parse_storage_options(engine.storage_options)
    if engine.broken_stage_after < 0:
        raise ConfigError(f"{ENGINE_PREFIX}broken_stage_after={engine.broken_stage_after}: 0 (off) or more, please")
    # Each of these was taken before: 0 CPUs as "all cores", a negative count by Ray once it
    # had started, a gate above 1 as off and one below 0 as refusing every run.
    if engine.num_cpus is not None and engine.num_cpus < 1:
        raise ConfigError(f"{ENGINE_PREFIX}num_cpus={engine.num_cpus} (--num-cpus): at least 1, please")
    if engine.num_gpus is not None and engine.num_gpus < 0:
        raise ConfigError(f"{ENGINE_PREFIX}num_gpus={engine.num_gpus} (--num-gpus): 0 or more, please")
    if engine.max_quarantine_fraction is not None and not 0 <= engine.max_quarantine_fraction <= 1:
        raise ConfigError(f"{ENGINE_PREFIX}max_quarantine_fraction={engine.max_quarantine_fraction}: "
                          "a number from 0 to 1, please (1 turns the gate off)")
    if not engine.lock_wait_s >= 0:
        raise ConfigError(f"{ENGINE_PREFIX}lock_wait_s={engine.lock_wait_s}: 0 (do not wait) or more seconds, please")
    if not engine.progress_every_s > 0:
        raise ConfigError(f"{ENGINE_PREFIX}progress_every_s={engine.progress_every_s}: more than 0 seconds, please")


def _hints(factory: PipelineFactory) -> dict[str, Any]:
    try:
        return typing.get_type_hints(factory.target)
    except Exception:  # noqa: BLE001 - unresolvable annotations: treat values as given
        return {}


def _env_name(key: str) -> str:
    if key.startswith(ENGINE_PREFIX):
        return "HEADRACE_" + re.sub(r"\W", "_", key[len(ENGINE_PREFIX):]).upper()
    return "HEADRACE_CONF_" + re.sub(r"\W", "_", key).upper()


def _from_env(known: Mapping[str, Any], environ: Mapping[str, str], pipeline: str | None) -> dict[str, str]:
    """The settings given as HEADRACE_* variables; a HEADRACE_* variable that names no
    setting is a typo, refused like an unknown --conf key. Without a pipeline (``status``)
    the ``HEADRACE_CONF_*`` variables are some pipeline's, not this command's."""
    names = {_env_name(key): key for key in known}
    for variable in sorted(environ):
        if pipeline is None and variable.startswith("HEADRACE_CONF_"):
            continue
        if pipeline is None and variable.startswith("HEADRACE_") and variable not in names:
            raise ConfigError(f"unknown environment variable {variable}: engine settings are "
                              f"{', '.join(sorted(names))}")
        if variable.startswith("HEADRACE_") and variable not in names:
            settings = sorted(n for n in names if n.startswith("HEADRACE_CONF_"))
            raise ConfigError(
                f"unknown environment variable {variable}: pipeline {pipeline} takes "
                f"{', '.join(settings) or 'no settings'}; engine settings are HEADRACE_<KEY> "
                f"({', '.join(sorted(n for n in names if n not in settings)[:4])}, ...)"
            )
    return {key: environ[variable] for variable, key in names.items() if variable in environ}


def _read_properties(path: str, known: Mapping[str, Any]) -> dict[str, Any]:
    try:
        with open(path) as handle:
            data = yaml.load(handle, Loader=_UniqueKeys) or {}  # noqa: S506 - a SafeLoader
    except OSError as exc:
        raise ConfigError(f"properties file {path!r}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"properties file {path!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"properties file {path!r} must hold a mapping of KEY: VALUE")
    try:
        return _flatten(data, known)
    except ConfigError as exc:
        raise ConfigError(f"properties file {path!r}: {exc}") from None


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error: PyYAML keeps the
    last silently, so `output: s3://prod/...` with a forgotten `output: /tmp/test` below it
    wrote to the test folder."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges a mapping whose keys the ones after it override
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _flatten(data: Mapping[str, Any], known: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (`headrace: {master: ...}` is `headrace.master`); a
    mapping under a key that is a setting itself (`headrace.storage_options`) is its value.
    A setting given both ways (`headrace.num_cpus: 1` and `headrace: {num_cpus: 2}`) is an
    error, not one of them chosen in silence."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in known:
            nested = _flatten(value, known, f"{prefix}{key}.")
        else:
            nested = {f"{prefix}{key}": value}
        for name, setting in nested.items():
            if name in out:
                raise ConfigError(f"{name!r} is given twice (as a dotted key and in a nested mapping)")
            out[name] = setting
    return out


def _unknown(key: str, name: str, parameters: list[str], origin: str) -> str:
    takes = ", ".join(parameters) or "no settings"
    return f"unknown conf key {key!r} (from {origin}); pipeline {name} takes {takes}; engine keys start with {ENGINE_PREFIX}"


def _coerce(key: str, value: Any, hint: Any, origin: str) -> Any:
    target, optional = _unwrap(hint)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("", "none", "null")):
        if optional or target is Any:
            return None
        raise ConfigError(f"conf {key} (from {origin}) may not be empty")
    if target in (Any, str) or target is None:
        if target is str and isinstance(value, dict):
            return json.dumps(value)  # a YAML mapping given for a JSON setting (storage_options)
        if target is str and isinstance(value, list):  # its Python repr was taken as the text
            raise ConfigError(f"conf {key} (from {origin}) is a list; it takes one text value")
        return value if target is Any else str(value)
    try:
        if target is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if target in (int, float):
            if isinstance(value, bool):
                raise ValueError
            number = target(value)
            return number
    except ValueError:
        raise ConfigError(f"conf {key}={value!r} (from {origin}): expected {target.__name__}") from None
    return value


def _unwrap(hint: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), True
    return hint, False
