"""What a grid shows while it runs: a bar on stderr and one line on stdout per finished run."""

from __future__ import annotations

import sys

from tqdm import tqdm

from bench.core.train import SELECTION_METRIC


class GridProgress:
    """A bar on stderr (done/running/failed/skipped) when it is a terminal, and one line on stdout per finished run."""

    def __init__(self, total: int, skipped: int, enabled: bool) -> None:
        self.enabled = enabled
        self.counts = {"done": 0, "running": 0, "failed": 0, "interrupted": 0, "skipped": skipped}
        self.remaining = total
        self.slots = 0  # nothing runs until the executor is up
        # Only a terminal gets the redrawn bar: in a log file it would be one endless line that the runs'
        # epoch lines are appended to. The line per finished run is written either way.
        self.bar = tqdm(
            total=total, desc="grid", unit="run", file=sys.stderr, disable=not (enabled and sys.stderr.isatty()),
            dynamic_ncols=True,
        )
        self._refresh()

    def _refresh(self, redraw: bool = True) -> None:
        self.counts["running"] = min(self.slots, self.remaining)
        self.bar.set_postfix(self.counts, refresh=redraw)

    def started(self, slots: int) -> None:
        self.slots = slots
        self._refresh()

    def finished(self, record: dict) -> None:
        self.remaining -= 1
        ok = record["status"] == "ok"
        stopped = record["status"] == "interrupted"
        self.counts["done" if ok else "interrupted" if stopped else "failed"] += 1
        if self.enabled:
            head = f"{record['method']:<8} {record['dataset']:<20} seed {record['seed']:<3}"
            if ok:
                best = (record.get("best_valid") or {}).get(SELECTION_METRIC, float("nan"))
                wall = (record.get("totals") or {}).get("wall_s", float("nan"))
                line = f"{head} ok      valid {SELECTION_METRIC} {best:.4f}  {wall:8.1f} s"
            elif stopped:
                info = record.get("interrupted") or {}
                line = (f"{head} INTERRUPTED at epoch {info.get('epochs_done')} of {info.get('max_epochs')}: "
                        f"{info.get('reason')}")
            else:
                line = f"{head} FAILED  {record.get('error')}"
            self.bar.write(line, file=sys.stdout)
        self._refresh(redraw=False)
        self.bar.update(1)  # redraws with the new counts

    def close(self) -> None:
        self.bar.close()
