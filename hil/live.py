"""What `citybrain hil run` shows while a block runs: a live view (rich) on a terminal, plain
lines otherwise (CI logs, a pipe).

Block (hil/block.py) hands a `Snapshot` once a second to its `status` callback and every other
event (bring-up, a fault firing, the drain) as a line to `progress`. `view_for(stream)` picks:

    with view_for(sys.stdout) as view:        # LiveView on a tty, PlainView otherwise
        run_block(scenario, progress=view.message, status=view.update)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table


@dataclass(frozen=True)
class Snapshot:
    elapsed: float  # seconds since the timeline started (may pass `duration` during the drain)
    duration: float
    online: int  # gateways whose agent process is running
    gateways: int
    emitted: int  # readings the simulated sensors sent
    at_broker: int  # readings in the /up batches the rig's subscribers got
    stored: int  # points the rig has seen in InfluxDB (readings and alarms)
    firing: tuple[str, ...]  # labels of the faults active now

    def line(self) -> str:
        bar = "#" * int(20 * min(1.0, self.elapsed / self.duration))
        now_firing = f"  fault: {'; '.join(self.firing)}" if self.firing else ""
        return (f"[{bar:20s}] {self.elapsed:5.0f}/{self.duration:.0f}s  gateways up {self.online}/"
                f"{self.gateways}  emitted {self.emitted}  at the broker {self.at_broker}  "
                f"stored {self.stored}{now_firing}")


class PlainView:
    """One line per event and per snapshot, each prefixed with the seconds since the run began."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.started = time.monotonic()

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def message(self, line: str) -> None:
        print(f"{time.monotonic() - self.started:6.1f}s {line}", file=self.stream, flush=True)

    def update(self, snap: Snapshot) -> None:
        self.message(snap.line())


class LiveView:
    """A panel redrawn in place: progress over the timeline, gateways online, readings emitted / at
    the broker / stored, the faults firing now; events scroll above it."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = time.monotonic()
        self.bar = Progress(TextColumn("timeline"), BarColumn(bar_width=40),
                            TextColumn("{task.completed:.0f}/{task.total:.0f} s"), console=console)
        self.task = self.bar.add_task("timeline", total=1.0, completed=0)
        self.snap: Snapshot | None = None
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=False)

    def _render(self) -> Any:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        s = self.snap
        if s is None:
            table.add_row("starting", "services and gateways")
        else:
            style = "green" if s.online == s.gateways else "yellow"
            table.add_row("gateways online", f"[{style}]{s.online}/{s.gateways}[/]")
            table.add_row("readings", f"emitted {s.emitted}   at the broker {s.at_broker}   "
                                      f"stored {s.stored}")
            table.add_row("fault now", "[red]" + "; ".join(s.firing) + "[/]" if s.firing else "none")
        return Group(self.bar, table)

    def __enter__(self) -> LiveView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def message(self, line: str) -> None:
        self.console.print(f"{time.monotonic() - self.started:6.1f}s {line}", markup=False, highlight=False)

    def update(self, snap: Snapshot) -> None:
        self.snap = snap
        self.bar.update(self.task, total=snap.duration, completed=min(snap.elapsed, snap.duration))
        self.live.update(self._render(), refresh=True)


def view_for(stream: IO[str]) -> PlainView | LiveView:
    """The live view when `stream` is a terminal, else plain lines (CI logs keep every line)."""
    if stream.isatty():
        return LiveView(Console(file=stream))
    return PlainView(stream)
