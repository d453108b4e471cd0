"""The end-of-run summary and the JSON run report."""

from __future__ import annotations

import json
from typing import Any

from headrace.utilisation import describe, describe_nodes


def summary(manifest: dict[str, Any], total_s: float) -> str:
    counts = manifest["counts"]
    files = counts["input"]
    rows = counts["output"]
    seconds = max(total_s, 1e-9)
    lines = [
        f"headrace: {manifest['name']} ds={manifest['ds']} committed (run {manifest['run_id']})",
        f"  files in     {files:,}  ({counts['input_with_output']:,} with output, "
        f"{counts['input_quarantined_only']:,} only in quarantine)",
        f"  rows out     {rows:,}",
        f"  quarantined  {counts['quarantined']:,} rows" + (f"  -> {manifest['quarantine']}" if counts["quarantined"] else ""),
        f"  time         {total_s:.1f} s  ({files / seconds:.1f} files/s, {rows / seconds:.1f} rows/s)",
        f"  output       {manifest['partition']}",
    ]
    if manifest.get("utilisation"):
        lines.append("  model stages")
        lines.extend(describe(manifest["utilisation"]))
    if len(manifest.get("nodes") or ()) > 1:
        lines.append(f"  ran on {len(manifest['nodes'])} nodes")
        lines.extend(describe_nodes(manifest["nodes"]))
    return "\n".join(lines)


def write_report(path: str, manifest: dict[str, Any]) -> None:
    """The run's manifest, the same document as its ``_SUCCESS``."""
    with open(path, "w") as handle:
        json.dump(manifest, handle, indent=2, default=str)
