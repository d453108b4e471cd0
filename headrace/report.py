"""The end-of-run summary and the JSON run report."""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import stat
from typing import Any

import fsspec

from headrace.errors import ConfigError, HeadraceError
from headrace.storage import Storage, probe_write
from headrace.utilisation import describe, describe_nodes


def summary(manifest: dict[str, Any], total_s: float) -> str:
    counts = manifest["counts"]
    files = counts["input"]
    unit = manifest.get("input_unit", "files")
    rows = counts["output"]
    seconds = max(total_s, 1e-9)
    lines = [
        f"headrace: {manifest['name']} ds={manifest['ds']} committed (run {manifest['run_id']})",
        f"  {unit + ' in':<13}{files:,}  ({counts['input_with_output']:,} with output, "
        f"{counts['input_quarantined_only']:,} only in quarantine"
        + (f", {counts['input_empty']:,} held no records" if counts.get("input_empty") else "") + ")",
        *([f"  ignored      {ignored['files']:,} file(s) of a type it does not read ("
           + ", ".join(f"{ext} {n:,}" for ext, n in ignored["by_extension"].items()) + ")"]
          if (ignored := manifest.get("ignored_inputs")) else []),
        f"  rows out     {rows:,}",
        f"  quarantined  {counts['quarantined']:,} rows" + (f"  -> {manifest['quarantine']}" if counts["quarantined"] else ""),
        f"  time         {total_s:.1f} s  ({files / seconds:.1f} {unit}/s, {rows / seconds:.1f} rows/s)",
        f"  output       {manifest['partition']}",
    ]
    if manifest.get("utilisation"):
        lines.append("  model stages")
        lines.extend(describe(manifest["utilisation"]))
    if len(manifest.get("nodes") or ()) > 1:
        lines.append(f"  ran on {len(manifest['nodes'])} nodes")
        lines.extend(describe_nodes(manifest["nodes"]))
    return "\n".join(lines)


def failure_report(exc: BaseException, known: dict[str, Any]) -> dict[str, Any]:
    """The report of a run that did not commit: its exit code and why, and, where the
    quality gate refused it, the whole manifest of the refused run (its ``_FAILED``)."""
    code = getattr(exc, "exit_code", None)
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else 1
    elif isinstance(exc, KeyboardInterrupt):
        code = 130
    elif code is None:
        code = 1
    lines = str(exc).strip().splitlines()
    reason = lines[-1] if lines and not isinstance(exc, HeadraceError) else (str(exc) or type(exc).__name__)
    document = dict(getattr(exc, "manifest", None) or {})
    document.update(known)
    document.update(
        status="refused" if code == 3 else "invalid" if code == 2 else "interrupted" if code == 130 else "failed",
        exit_code=code,
        reason=reason if isinstance(exc, HeadraceError) else f"{type(exc).__name__}: {reason}",
        detail=getattr(exc, "detail", "") or None,
        ended_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return document


def write_report(path: str, manifest: dict[str, Any]) -> None:
    """The run's manifest, the same document as its ``_SUCCESS``. A report that cannot be
    written is a warning: it never turns a committed run into a failure, nor hides why a
    run failed (checked before anything runs: ``check_report_path``)."""
    data = json.dumps(manifest, indent=2, default=str)
    try:
        if _special(path):
            with open(path, "w") as handle:  # /dev/stdout, a named pipe: written as they are
                handle.write(data)
            return
        # Whole or not at all (Storage's temporary file and rename): a full disk left the
        # file cut short, or the last run's report half overwritten, and a scheduler reading
        # it found no JSON there. A link's target is the report, not the link.
        Storage(fsspec.filesystem("file"), retries=0).write_bytes(os.path.realpath(path), data.encode())
    except OSError as exc:
        logging.getLogger("headrace").warning("the run report was not written to %s: %s", path, exc.strerror or exc)


def _special(path: str) -> bool:
    """An existing file that is not a regular one: a pipe, a terminal, ``/dev/stdout``."""
    return os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode)


def check_report_path(path: str | None) -> None:
    """``--report PATH`` must name a file that can be written, in a folder that exists:
    found before anything runs (exit 2), not after a run has committed."""
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"--report {path}: is a folder; name a file, e.g. {os.path.join(path, 'report.json')}")
    if not os.path.isdir(folder):
        why = "is a file, not a folder" if os.path.exists(folder) else "does not exist"
        raise ConfigError(f"--report {path}: its folder {folder} {why}")
    try:
        if _special(path):
            # Opening a named pipe waits for its reader, which may start only with the run.
            if not os.access(path, os.W_OK):
                raise PermissionError(errno.EACCES, "Permission denied")
        elif os.path.exists(path):
            open(path, "a").close()  # opened for appending, left as it is
        else:
            probe_write(folder)
    except OSError as exc:
        raise ConfigError(f"--report {path}: cannot write there ({exc.strerror or exc})") from None
