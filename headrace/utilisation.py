"""Model utilisation: where each actor-pool stage spends its time.

Every call of an actor stage is reported (actor, start, end, rows, forward seconds) and
summed per actor; from these the run report shows, per stage, rows/s, the fraction of actor wall time in
process() and in forward passes, the time actors waited for input, and the pool size
over the run. This is how a user sees whether the model or its feed is the bottleneck.

Every task batch and every actor is also counted per Ray node, so a run on a cluster says
where its work ran.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

SAMPLES = 20


@dataclass
class Call:
    stage: str
    actor: str
    ready: float  # when the actor finished setup()
    started: float
    ended: float
    rows: int
    forward_s: float | None
    gpu_ids: tuple = ()
    node: str = ""
    inputs: float = 0.0  # inputs' worth in the batch (headrace.progress)
    quarantined: int = 0  # rows the stage quarantined


@dataclass
class StageTotals:
    """What a stage did so far, for the progress display."""

    rows: int = 0
    inputs: float = 0.0
    quarantined: int = 0


@dataclass
class ActorTotals:
    """What one actor did, summed over its calls (memory stays constant however long the run)."""

    ready: float
    last: float
    busy_s: float = 0.0
    rows: int = 0
    forward_s: float | None = None
    gpu_ids: tuple = ()


@dataclass
class NodeWork:
    """What ran on one Ray node: actors started and batches processed, per stage."""

    actors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    batches: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass
class Ledger:
    actors: dict[tuple[str, str], ActorTotals] = field(default_factory=dict)
    nodes: dict[str, NodeWork] = field(default_factory=dict)
    stages: dict[str, StageTotals] = field(default_factory=dict)

    def batch(self, stage: str, node: str, rows: int = 0, inputs: float = 0.0, quarantined: int = 0) -> None:
        """A task (or a fused task inside an actor) processed one batch of ``stage`` on ``node``."""
        self.nodes.setdefault(node, NodeWork()).batches[stage] += 1
        self._count(stage, rows, inputs, quarantined)

    def _count(self, stage: str, rows: int, inputs: float, quarantined: int) -> None:
        totals = self.stages.setdefault(stage, StageTotals())
        totals.rows += rows
        totals.inputs += inputs
        totals.quarantined += quarantined

    def progress(self) -> dict[str, dict]:
        """Per stage so far: rows, inputs' worth, quarantined rows, actors started."""
        actors: dict[str, int] = defaultdict(int)
        for stage, _ in self.actors:
            actors[stage] += 1
        return {
            stage: {"rows": t.rows, "inputs": t.inputs, "quarantined": t.quarantined, "actors": actors.get(stage, 0)}
            for stage, t in self.stages.items()
        }

    def record(self, call: Call) -> None:
        if call.rows:
            self._count(call.stage, call.rows, call.inputs, call.quarantined)
        if (call.stage, call.actor) not in self.actors:
            self.nodes.setdefault(call.node, NodeWork()).actors[call.stage] += 1
        if call.rows:
            self.nodes.setdefault(call.node, NodeWork()).batches[call.stage] += 1
        totals = self.actors.setdefault((call.stage, call.actor), ActorTotals(call.ready, call.ended, gpu_ids=call.gpu_ids))
        totals.last = max(totals.last, call.ended)
        totals.busy_s += call.ended - call.started
        totals.rows += call.rows
        if call.forward_s is not None:
            totals.forward_s = (totals.forward_s or 0.0) + call.forward_s

    def summary(self) -> dict[str, dict]:
        by_stage: dict[str, list[ActorTotals]] = defaultdict(list)
        for (stage, _), totals in self.actors.items():
            by_stage[stage].append(totals)
        return {stage: _stage_summary(actors) for stage, actors in by_stage.items()}

    def node_summary(self) -> list[dict]:
        """Per node, sorted by node: the actors each stage started there and its batches."""
        return [
            {"node": node, "actors": dict(sorted(work.actors.items())), "batches": dict(sorted(work.batches.items()))}
            for node, work in sorted(self.nodes.items())
        ]


def _stage_summary(actors: list[ActorTotals]) -> dict:
    wall = sum(a.last - a.ready for a in actors)
    busy = sum(a.busy_s for a in actors)
    forward = [a.forward_s for a in actors if a.forward_s is not None]
    first = min(a.ready for a in actors)
    span = max(max(a.last for a in actors) - first, 1e-9)
    rows = sum(a.rows for a in actors)
    timeline = []
    for index in range(SAMPLES + 1):
        moment = first + span * index / SAMPLES
        alive = sum(1 for a in actors if a.ready <= moment <= a.last)
        timeline.append({"t_s": round(moment - first, 2), "actors": alive})
    return {
        "rows": rows,
        "rows_per_s": rows / span,
        "actors": len(actors),
        "max_concurrent_actors": max(p["actors"] for p in timeline),
        "actor_wall_s": wall,
        "process_fraction": busy / wall if wall else 0.0,
        "forward_fraction": (sum(forward) / wall if wall else 0.0) if forward else None,
        "waiting_s": max(wall - busy, 0.0),
        "pool_timeline": timeline,
        "gpu_ids": sorted({tuple(a.gpu_ids) for a in actors}),
    }


def describe_nodes(nodes: list[dict]) -> list[str]:
    lines = []
    for entry in nodes:
        actors = sum(entry["actors"].values())
        batches = ", ".join(f"{stage} {count}" for stage, count in entry["batches"].items()) or "none"
        lines.append(f"  {entry['node']:<24} {actors} actor(s); batches: {batches}")
    return lines


def describe(stages: dict[str, dict]) -> list[str]:
    lines = []
    for stage, s in stages.items():
        forward = f", forward {s['forward_fraction']:.0%} of actor time" if s["forward_fraction"] is not None else ""
        lines.append(
            f"  {stage:<12} {s['actors']} actor(s) (at most {s['max_concurrent_actors']} at once), "
            f"{s['rows_per_s']:.1f} rows/s, in process() {s['process_fraction']:.0%}{forward}, "
            f"waiting {s['waiting_s']:.1f} actor-s"
        )
    return lines
