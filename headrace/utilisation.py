"""Model utilisation: where each actor-pool stage spends its time.

Every call of an actor stage is recorded (actor, start, end, rows, forward seconds);
from these the run report shows, per stage, rows/s, the fraction of actor wall time in
process() and in forward passes, the time actors waited for input, and the pool size
over the run. This is how a user sees whether the model or its feed is the bottleneck.
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


@dataclass
class Ledger:
    calls: list[Call] = field(default_factory=list)

    def record(self, call: Call) -> None:
        self.calls.append(call)

    def summary(self) -> dict[str, dict]:
        by_stage: dict[str, list[Call]] = defaultdict(list)
        for call in self.calls:
            by_stage[call.stage].append(call)
        return {stage: _stage_summary(calls) for stage, calls in by_stage.items()}


def _stage_summary(calls: list[Call]) -> dict:
    actors: dict[str, list[Call]] = defaultdict(list)
    for call in calls:
        actors[call.actor].append(call)
    lives = {a: (min(c.ready for c in cs), max(c.ended for c in cs)) for a, cs in actors.items()}
    wall = sum(end - start for start, end in lives.values())
    busy = sum(c.ended - c.started for c in calls)
    forward = [c.forward_s for c in calls if c.forward_s is not None]
    first = min(start for start, _ in lives.values())
    last = max(end for _, end in lives.values())
    span = max(last - first, 1e-9)
    rows = sum(c.rows for c in calls)
    timeline = []
    for index in range(SAMPLES + 1):
        moment = first + span * index / SAMPLES
        alive = sum(1 for start, end in lives.values() if start <= moment <= end)
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
        "gpu_ids": sorted({tuple(c.gpu_ids) for c in calls}),
    }


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
