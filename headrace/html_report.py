"""The HTML run report: one self-contained page per run, next to the output.

``OUT/_reports/ds=D/RUN_ID.json`` is the run's report document (the manifest, or for a
run that did not commit its status and reason) and ``RUN_ID.html`` the page made from it
and from the earlier reports of the same output. The page inlines plotly's script, so it
opens with no network: rows/s of each stage over time, actor pool sizes, model time in
forward passes against waiting, quarantine by cause with sample messages, input sizes,
and this run beside the earlier ones.
"""

from __future__ import annotations

import html
import json
import posixpath
from typing import Any

import fsspec

from headrace.storage import Storage, at_once, read_small

REPORTS = "_reports"
HISTORY = 60  # earlier runs shown beside this one


def write(output: str, document: dict[str, Any]) -> str:
    """Store ``document`` and its page under OUT/_reports/ds=D/; return the page's URL."""
    fs, root = fsspec.core.url_to_fs(output)
    folder = posixpath.join(root.rstrip("/"), REPORTS, f"ds={document['ds']}")
    fs.makedirs(folder, exist_ok=True)
    name = document.get("run_id") or f"failed-{document.get('ended_at', 'unknown').replace(':', '')}"
    # Whole or not at all (a temporary file renamed on a disk): a full disk left half a
    # document, and `headrace report` for that date failed on it from then on.
    storage = Storage(fs, retries=1)
    storage.write_bytes(posixpath.join(folder, f"{name}.json"), json.dumps(document, indent=1, default=str).encode())
    page = posixpath.join(folder, f"{name}.html")
    storage.write_bytes(page, render(document, history(fs, root)).encode())
    return fs.unstrip_protocol(page) if not _local(fs) else page


def rewrite(output: str, ds: str) -> str | None:
    """Make the page of the latest run of ``ds`` again (headrace report); None if there is none."""
    fs, root = fsspec.core.url_to_fs(output)
    fs.invalidate_cache()
    found = _listed(fs, posixpath.join(root.rstrip("/"), REPORTS, f"ds={ds}"), ".json")
    if not found:
        return None
    documents = _readable(fs, found)
    if not documents:
        return None
    latest = max(documents, key=lambda d: str(d.get("started_at") or d.get("ended_at") or ""))
    return write(output, latest)


def history(fs, root: str) -> list[dict]:
    """The latest HISTORY report documents, oldest first. Paths sort by date, then by run id
    (which starts with the run's UTC start time), so only those are read."""
    fs.invalidate_cache()
    reports = posixpath.join(root.rstrip("/"), REPORTS)
    paths: list[str] = []
    for folder in reversed([f for f in _listed(fs, reports) if posixpath.basename(f).startswith("ds=")]):
        if len(paths) >= HISTORY:  # the latest dates' folders only (a glob listed every date's)
            break
        paths = _listed(fs, folder, ".json") + paths
    documents = _readable(fs, paths[-HISTORY:])
    documents.sort(key=lambda d: (str(d.get("ds")), str(d.get("started_at") or d.get("ended_at") or "")))
    return documents[-HISTORY:]


def _listed(fs, folder: str, suffix: str = "") -> list[str]:
    """The paths in ``folder`` (none where it does not exist), sorted; those ending in
    ``suffix`` where given. Listed, not globbed: an output's own name may hold glob
    characters (`out[1]`), which a glob read as a pattern and so found no report."""
    try:
        names = fs.ls(folder, detail=False)
    except FileNotFoundError:
        return []
    return sorted(name.rstrip("/") for name in names if name.rstrip("/").endswith(suffix))


def _readable(fs, paths: list[str]) -> list[dict]:
    """The report documents among ``paths`` that can be read: one cut short by an older
    version's write into a full disk (or a file someone put there) is passed over."""
    def one(path: str) -> dict | None:
        try:
            document = json.loads(read_small(fs, path))
        except (OSError, ValueError):
            return None
        return document if isinstance(document, dict) else None

    # STORE_REQUESTS at a time: the HISTORY reports a run's page shows are read at its end.
    return [document for document in at_once(one, paths) if document is not None]


def _local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def render(document: dict[str, Any], earlier: list[dict]) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figures: list[tuple[str, Any]] = []
    timeline = document.get("timeline") or []
    if len(timeline) > 1:
        figure = go.Figure()
        stages = list(timeline[-1]["rows"])
        window = 5  # samples: model actors report whole batches seconds apart, so rates are averaged
        for stage in stages:
            xs, ys = [], []
            for index in range(1, len(timeline)):
                before, after = timeline[max(0, index - window)], timeline[index]
                span = max(after["t_s"] - before["t_s"], 1e-9)
                xs.append(after["t_s"])
                ys.append((after["rows"].get(stage, 0) - before["rows"].get(stage, 0)) / span)
            figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=stage))
        figure.update_layout(xaxis_title="seconds since processing started", yaxis_title=f"rows/s (over {window} samples)")
        figures.append(("Rows per second of each stage", figure))
    utilisation = document.get("utilisation") or {}
    if utilisation:
        figure = go.Figure()
        for stage, values in utilisation.items():
            points = values.get("pool_timeline") or []
            figure.add_trace(go.Scatter(x=[p["t_s"] for p in points], y=[p["actors"] for p in points],
                                        mode="lines", line_shape="hv", name=stage))
        figure.update_layout(xaxis_title="seconds since the first actor was ready", yaxis_title="actors alive")
        figures.append(("Actor pool size", figure))
        figure = go.Figure()
        names = list(utilisation)
        wall = [utilisation[s].get("actor_wall_s") or 0.0 for s in names]
        forward = [(utilisation[s].get("forward_fraction") or 0.0) * w for s, w in zip(names, wall)]
        busy = [(utilisation[s].get("process_fraction") or 0.0) * w for s, w in zip(names, wall)]
        other = [max(b - f, 0.0) for b, f in zip(busy, forward)]
        waiting = [utilisation[s].get("waiting_s") or 0.0 for s in names]
        for label, values in (("forward passes", forward), ("rest of process()", other), ("waiting for input", waiting)):
            figure.add_trace(go.Bar(x=names, y=values, name=label))
        figure.update_layout(barmode="stack", yaxis_title="actor seconds")
        figures.append(("Model actors: forward passes against waiting", figure))
    causes = document.get("quarantine_causes") or []
    if causes:
        figure = go.Figure(go.Bar(x=[c["rows"] for c in causes], y=[c["cause"] for c in causes], orientation="h"))
        figure.update_layout(xaxis_title="rows quarantined", yaxis={"autorange": "reversed"})
        figures.append(("Quarantine by stage and error type", figure))
    sizes = document.get("input_sizes") or {}
    if sizes.get("counts"):
        edges = sizes["edges"]
        labels = [f"< {_bytes(edges[i + 1])}" if i + 1 < len(edges) else f">= {_bytes(edges[-1])}"
                  for i in range(len(sizes["counts"]))]
        figure = go.Figure(go.Bar(x=labels, y=sizes["counts"]))
        figure.update_layout(xaxis_title="input file size", yaxis_title="files")
        figures.append(("Input sizes", figure))
    runs = [d for d in earlier if d.get("run_id") != document.get("run_id")] + [document]
    if len(runs) > 1:
        figure = make_subplots(rows=3, cols=1, shared_xaxes=True,
                               subplot_titles=("rows out", "total seconds", "share of inputs only in quarantine"))
        labels = [f"{d.get('ds')} {str(d.get('run_id') or d.get('status'))[-6:]}" for d in runs]
        colours = ["#d62728" if d is document else "#1f77b4" for d in runs]
        series = (
            [(d.get("counts") or {}).get("output") for d in runs],
            [(d.get("timings") or {}).get("total_s") for d in runs],
            [_share(d) for d in runs],
        )
        for row, values in enumerate(series, start=1):
            figure.add_trace(go.Bar(x=labels, y=values, marker_color=colours, showlegend=False), row=row, col=1)
        figure.update_layout(height=700)
        figures.append(("This run (red) beside the earlier runs of this output", figure))

    sections = []
    for index, (title, figure) in enumerate(figures):
        figure.update_layout(margin={"l": 60, "r": 20, "t": 30, "b": 50})
        body = figure.to_html(full_html=False, include_plotlyjs=index == 0, config={"displaylogo": False})
        sections.append(f"<section><h2>{html.escape(title)}</h2>{body}</section>")
    return _PAGE.format(
        title=html.escape(f"headrace {document.get('pipeline', '')} ds={document.get('ds', '')}"),
        heading=_heading(document),
        numbers=_numbers(document),
        samples=_samples(causes),
        warnings="".join(f"<li>{html.escape(w)}</li>" for w in document.get("warnings") or []),
        sections="\n".join(sections) or "<p>No activity was recorded for this run.</p>",
    )


def _share(document: dict) -> float | None:
    counts = document.get("counts") or {}
    return counts["input_quarantined_only"] / counts["input"] if counts.get("input") else None


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            return f"{value:g} {unit}"
        value /= 1024
    return f"{value:g} PiB"


def _heading(document: dict) -> str:
    status = str(document.get("status", "unknown"))
    reason = document.get("reason")
    line = (f"<h1>{html.escape(str(document.get('pipeline', '')))} ds={html.escape(str(document.get('ds', '')))}"
            f" <span class='status {html.escape(status)}'>{html.escape(status)}</span></h1>"
            f"<p>run {html.escape(str(document.get('run_id') or '-'))}, started "
            f"{html.escape(str(document.get('started_at') or '-'))}, exit code "
            f"{html.escape(str(document.get('exit_code', 0)))}</p>")
    if reason:
        line += f"<p class='reason'>{html.escape(str(reason))}</p>"
    software = document.get("software") or {}
    if software:
        line += "<p class='software'>" + html.escape(", ".join(f"{k} {v}" for k, v in software.items())) + "</p>"
    return line


def _numbers(document: dict) -> str:
    counts = document.get("counts") or {}
    timings = document.get("timings") or {}
    rows = [
        ("inputs", counts.get("input")),
        ("rows out", counts.get("output")),
        ("rows quarantined", counts.get("quarantined")),
        ("inputs only in the quarantine", counts.get("input_quarantined_only")),
        ("total seconds", timings.get("total_s")),
        ("processing seconds", timings.get("process_s")),
        ("output", document.get("partition") or document.get("output")),
    ]
    cells = "".join(
        f"<tr><th>{html.escape(label)}</th><td class='number'>{html.escape(_show(value))}</td></tr>"
        for label, value in rows if value is not None
    )
    return f"<table class='numbers'>{cells}</table>"


def _show(value: Any) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def _samples(causes: list[dict]) -> str:
    if not causes:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(c['cause'])}</td><td class='number'>{c['rows']:,}</td>"
        f"<td>{'<br>'.join(html.escape(m) for m in c.get('samples') or [])}</td></tr>"
        for c in causes
    )
    return (f"<section><h2>Quarantined records: causes and samples</h2><table class='samples'>"
            f"<tr><th>stage: error</th><th>rows</th><th>sample messages</th></tr>{rows}</table></section>")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
td.number {{ text-align: right; font-variant-numeric: tabular-nums; }}
.status {{ font-size: 0.6em; padding: 0.2em 0.5em; border-radius: 0.3em; background: #eee; }}
.status.committed {{ background: #c8f0c8; }} .status.refused, .status.failed {{ background: #f6c6c6; }}
.reason {{ color: #a00; }}
section {{ margin-top: 2em; }}
</style></head>
<body>
{heading}
{numbers}
<ul class="warnings">{warnings}</ul>
{samples}
{sections}
</body></html>
"""
