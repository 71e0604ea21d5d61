"""hil/live.py: `citybrain hil run`'s live view on a terminal, plain lines when stdout is not one."""

from __future__ import annotations

import io

from rich.console import Console

from hil.live import LiveView, PlainView, Snapshot, view_for

SNAP = Snapshot(elapsed=30.0, duration=60.0, online=5, gateways=6, emitted=1234, at_broker=1200,
                stored=1150, firing=("gateway_power_cut gw-02 at 28s for 2s",))


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_gets_one_plain_line_per_event_and_snapshot() -> None:
    out = io.StringIO()
    view = view_for(out)
    assert isinstance(view, PlainView)
    with view:
        view.message("fault: broker_restart at 20s for 0s")
        view.update(SNAP)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith("s fault: broker_restart at 20s for 0s")
    assert lines[1].endswith("[##########          ]    30/60s  gateways up 5/6  emitted 1234  at the broker "
                             "1200  stored 1150  fault: gateway_power_cut gw-02 at 28s for 2s")
    assert "\x1b[" not in out.getvalue()  # no escape codes in a CI log


def test_a_terminal_gets_the_live_panel() -> None:
    assert isinstance(view_for(Tty()), LiveView)
    out = Tty()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    with LiveView(console) as view:
        view.message("3 gateways online")
        view.update(SNAP)
    text = out.getvalue()
    for shown in ("3 gateways online", "gateways online", "5/6", "emitted 1234", "at the broker 1200",
                  "stored 1150", "gateway_power_cut gw-02 at 28s for 2s", "30/60 s", "━"):
        assert shown in text, shown
