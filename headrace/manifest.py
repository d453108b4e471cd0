"""The run's manifest: built once, written as ``_SUCCESS`` (or ``_FAILED``) and as ``--report``.

One document says everything about a run: what ran where, what came in and out, how
long each phase took, what resume kept, and the warnings. The report file is this
same document, byte for byte.
"""

from __future__ import annotations

from typing import Any

from headrace.fingerprint import software


def build_manifest(
    *,
    pipeline,
    engine,
    run_id: str,
    ds: str,
    started_at: str,
    config: dict[str, Any],
    placements: list,
    cluster,
    utilisation: dict,
    nodes: list[dict],
    timeline: list[dict],
    input_sizes: dict | None,
    ignored_inputs: dict | None,
    quarantine_causes: list[dict],
    timings: dict[str, float],
    resumed,
    processed: int,
    gate: float,
    counts: dict[str, int],
    files: list[dict],
    quarantine_files: list[str],
    warnings: list[str],
    status: str,
) -> dict[str, Any]:
    sink = pipeline.sink
    return {
        "status": status,
        "pipeline": pipeline.name,
        "fingerprint": resumed.run.get("fingerprint"),
        "software": software(),  # Python's and the libraries' versions that made the rows
        "name": engine.name or pipeline.name,
        "run_id": run_id,
        "ds": ds,
        "started_at": started_at,
        "input": pipeline.source.url,
        "input_unit": getattr(pipeline.source, "unit", "files"),  # what counts.input counts
        "output": sink.url,
        "output_format": sink.format,
        "partition": sink.url_of(sink.partition(ds)),
        "quarantine": sink.url_of(sink.quarantine(ds)),
        "files": files,
        "quarantine_files": quarantine_files,
        "counts": counts,
        "schema": [{"name": f.name, "type": str(f.type)} for f in pipeline.output_schema],
        "config": config,
        "max_quarantine_fraction": gate,
        "placement": [
            {"stage": p.stage, "actors": p.actors, "cpus": p.cpus, "gpus": p.gpus, "device": p.device, "threads": p.threads}
            for p in placements
        ],
        "cluster": {"cpus": cluster.cpus, "gpus": cluster.gpus, "cores": cluster.cores,
                    "object_store_memory": cluster.object_store, "nodes": cluster.nodes},
        "utilisation": utilisation,
        "nodes": nodes,
        "timeline": timeline,
        "input_sizes": input_sizes,
        "ignored_inputs": ignored_inputs,  # files the input matched of a type the source does not read
        "quarantine_causes": quarantine_causes,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "resume": {
            "attempt": resumed.attempt + 1,
            "inputs_resumed": len(resumed.complete),
            "inputs_processed": processed,
            "discarded": resumed.discarded or None,
        },
        "warnings": warnings,
    }
