"""Progress while a run executes: per stage rows done, rows/s, quarantined so far, actors,
and elapsed time with an ETA from the inputs finished.

Every task batch and actor call tells the run's ledger what it did (headrace.utilisation);
the driver polls the ledger and shows a snapshot. On a terminal the display is live
(rich); off a terminal (logs, cron, Airflow) it is one line every ``every_s`` seconds.
Nothing here talks to Ray.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from headrace.envelope import ERROR, FULL_WEIGHT, WEIGHT


@dataclass
class BatchProgress:
    """What one stage did to one batch."""

    rows: int  # rows in
    inputs: float  # inputs' worth in: the batch's share of whole inputs (weights / FULL_WEIGHT)
    quarantined: int  # rows this stage sent to the quarantine


def _errors(table: pa.Table) -> int:
    return table.num_rows - table.column(ERROR).null_count if ERROR in table.column_names else 0


def measure(before: pa.Table, after: pa.Table) -> BatchProgress:
    worth = 0.0
    if WEIGHT in before.column_names and before.num_rows:
        # float: a few whole inputs' weights already overflow int64
        worth = (pc.sum(pc.cast(before.column(WEIGHT), pa.float64(), safe=False)).as_py() or 0.0) / FULL_WEIGHT
    return BatchProgress(before.num_rows, worth, max(0, _errors(after) - _errors(before)))


class Timeline:
    """Rows done per stage over the run, for the report's plots: a sample every
    ``every_s`` seconds, thinned to at most ``limit`` samples however long the run."""

    every_s = 2.0
    limit = 240

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.samples: list[dict] = [{"t_s": 0.0, "rows": {}, "actors": {}}]  # a short run still has a line

    def add(self, snapshot: dict[str, dict]) -> None:
        self.samples.append({"t_s": round(time.monotonic() - self.started, 2),
                             "rows": {stage: values["rows"] for stage, values in snapshot.items()},
                             "actors": {stage: values.get("actors", 0) for stage, values in snapshot.items()}})
        if len(self.samples) > self.limit:
            self.samples = self.samples[::2]


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Display:
    """Shows progress snapshots: ``{stage: {"rows", "inputs", "quarantined", "actors"}}``."""

    def __init__(self, stages: list[str], total_inputs: int, every_s: float = 30.0, stream=None, live: bool | None = None):
        self.stages, self.total = stages, total_inputs
        self.stream = stream or sys.stderr
        self.live_mode = self.stream.isatty() if live is None else live
        self.every_s = 0.5 if self.live_mode else every_s
        self.started = time.monotonic()
        self.last: dict[str, dict] = {}
        self.rates: dict[str, float] = {}
        self._live = None
        if self.live_mode:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._table(), console=Console(file=self.stream), refresh_per_second=4, transient=False)
            self._live.start()

    def update(self, snapshot: dict[str, dict]) -> None:
        # Rows/s since the start: model actors report whole batches, seconds apart, so a
        # rate between two snapshots would jump between zero and bursts.
        span = max(time.monotonic() - self.started, 1e-9)
        self.rates = {stage: values["rows"] / span for stage, values in snapshot.items()}
        self.last = snapshot
        if self._live is not None:
            self._live.update(self._table())
        else:
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.stop()

    def done_inputs(self) -> float:
        """Inputs that went through every stage (their worth entering the last one)."""
        last = [s for s in self.stages if s in self.last]
        return self.last[last[-1]]["inputs"] if last else 0.0

    def eta(self) -> str:
        done, elapsed = self.done_inputs(), time.monotonic() - self.started
        if not self.total or done <= 0:
            return "-"
        return _clock(elapsed * (self.total - done) / done) if done < self.total else "0m00s"

    def header(self) -> str:
        done = self.done_inputs()
        share = f" ({done / self.total:.0%})" if self.total else ""
        return (f"elapsed {_clock(time.monotonic() - self.started)}, inputs {done:,.0f}/{self.total:,}{share}, "
                f"ETA {self.eta()}")

    def line(self) -> str:
        parts = []
        for stage in self.stages:
            values = self.last.get(stage)
            if not values:
                continue
            actors = f", {values['actors']} actor(s)" if values.get("actors") else ""
            quarantined = f", {values['quarantined']:,} quarantined" if values.get("quarantined") else ""
            parts.append(f"{stage} {values['rows']:,} rows ({self.rates.get(stage, 0.0):.1f}/s{actors}{quarantined})")
        return f"headrace: {self.header()} | " + "; ".join(parts or ["starting"])

    def _table(self):
        from rich.table import Table

        table = Table(title=f"headrace: {self.header()}", title_justify="left")
        for column in ("stage", "rows", "rows/s", "quarantined", "actors"):
            table.add_column(column, justify="left" if column == "stage" else "right")
        for stage in self.stages:
            values = self.last.get(stage, {})
            table.add_row(stage, f"{values.get('rows', 0):,}", f"{self.rates.get(stage, 0.0):.1f}",
                          f"{values.get('quarantined', 0):,}", str(values.get("actors") or "-"))
        return table
