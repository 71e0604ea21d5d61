"""report.html as people see it: headless Chromium (Debian's `chromium`) opens the page offline and
draws every plot. Checked on the screenshot's pixels, not on the file: each series colour must cover
far more pixels than its legend swatch (14x10), so a plot that did not render fails."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from devices.parking import codec as parking
from devices.parking import sim_encode as parking_sim
from devices.thermometer import codec as thermometer
from hil.judge import judge
from hil.report import COLORS, FAULT_FILL, screenshot, write_report

pytestmark = pytest.mark.integration

T0 = 1_795_676_000.0
LEGEND_PIXELS = 14 * 10


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit non-interlaced PNG, as Chromium writes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line) if channels == 3 else bytes(v for k, v in enumerate(line) if k % 4 != 3))
        prev = line
    return width, height, rows


def blend(color: str, opacity: float) -> str:
    """The colour a fill of `opacity` shows on the page's white."""
    rgb = bytes.fromhex(color[1:])
    return "#" + bytes(round(255 - opacity * (255 - v)) for v in rgb).hex()


def count_colors(rows: list[bytes], colors: dict[str, str], tolerance: int = 2) -> dict[str, int]:
    """Pixels of each colour, each channel within `tolerance` (anti-aliasing, rounding)."""
    want: dict[bytes, str] = {}
    steps = range(-tolerance, tolerance + 1)
    for name, c in colors.items():
        r, g, b = bytes.fromhex(c[1:])
        for dr in steps:
            for dg in steps:
                for db in steps:
                    if all(0 <= v <= 255 for v in (r + dr, g + dg, b + db)):
                        want[bytes((r + dr, g + dg, b + db))] = name
    counts = dict.fromkeys(colors, 0)
    for row in rows:
        for i in range(0, len(row), 3):
            name = want.get(row[i:i + 3])
            if name is not None:
                counts[name] += 1
    return counts


def synthetic_run() -> dict[str, Any]:
    """40 s of two kinds on two gateways, a fault from 10 s to 15 s, one fever alarm."""
    emissions: list[list[Any]] = []
    stored: list[list[Any]] = []
    hb = [True, parking_sim.HEARTBEAT, 0, 212, -268, -731, 3612, -97]
    for i in range(800):
        t = i * 0.05
        gw = f"gw-0{1 + i % 2}"
        delay = 0.3 + (i % 7) * 0.05 + (4.0 if 10 <= t < 15 else 0.0)
        if i % 3:
            fields = [*hb]
            fields[2] = i
            emissions.append([T0 + t, gw, "P-1", "parking", fields])
            stored.append([T0 + t + delay, "parking", gw, "P-1", "parking", int((T0 + t) * 1000) + 1,
                           dict(zip(parking.FIELDS, fields, strict=True))])
        else:
            fields = [38.0 if i == 300 else 36.5, 21.0, i, 40, True]
            emissions.append([T0 + t, gw, "T-1", "thermometer", fields])
            point = dict(zip(thermometer.FIELDS, fields, strict=True))
            ts = int((T0 + t) * 1000) + 1
            stored.append([T0 + t + delay, "thermometer", gw, "T-1", "thermometer", ts, point])
            if i == 300:
                stored.append([T0 + t + 0.1, "alarm", gw, "T-1", "thermometer", ts, point])
    types = {"parking": {"occupied": "boolean", **dict.fromkeys(parking.FIELDS[1:], "integer")},
             "thermometer": {"body_c": "float", "ambient_c": "float", "seq": "integer",
                             "distance_cm": "integer", "mask": "boolean"}}
    types["alarm"] = types["thermometer"]
    return {"scenario": {"name": "synthetic", "description": "report test", "seed": 1, "duration": 40,
                         "gateways": [{}, {}], "faults": [], "goals": {}},
            "t0": T0, "sync_every_ms": 500, "emissions": emissions, "outages": {}, "polled": {},
            "stored": stored, "field_types": types, "faults": [[T0 + 10, T0 + 15, "db_down at 10s for 5s"]],
            "timeline": [], "poller": {"period": 0.25}, "dead_letters": {},
            # sampled once a second: the broker's store and the collector's spool fill during the fault
            "broker_store": [[T0 + k, 6.0 + (150 if 10 <= k < 15 else 0)] for k in range(40)],
            "collector_spool": [[T0 + k, 0, 250 if 10 <= k < 16 else 0] for k in range(40)]}


def test_chromium_draws_every_plot_of_the_report(tmp_path: Path) -> None:
    record = synthetic_run()
    verdict = judge(record)
    assert verdict.ok, verdict.samples
    page = write_report(record, verdict, tmp_path / "report.html")
    text = page.read_text(encoding="utf-8")
    offline = text.replace("http://www.w3.org/2000/svg", "")  # the SVG namespace is a name, not a fetch
    assert text.count('<svg class="plot"') == 4 and "http://" not in offline and "https://" not in offline
    png = screenshot(page, tmp_path / "report.png")
    width, height, rows = png_pixels(png.read_bytes())
    assert (width, height) == (940, 2400)
    series = ("emitted", "stored", "parking", "thermometer", "backlog", "broker store", "collector spool")
    seen = count_colors(rows, {**{k: COLORS[k] for k in series}, "fault": blend(FAULT_FILL, 0.45)})
    for name, n in seen.items():
        assert n > 2 * LEGEND_PIXELS, (name, seen)


def test_a_page_without_plots_fails_the_pixel_check(tmp_path: Path) -> None:
    """The check above can fail: the same page with its SVG removed shows only legends' absence."""
    record = synthetic_run()
    page = write_report(record, judge(record), tmp_path / "report.html")
    text = page.read_text(encoding="utf-8")
    start, end = text.index("<svg"), text.rindex("</svg>") + len("</svg>")
    page.write_text(text[:start] + text[end:], encoding="utf-8")
    _, _, rows = png_pixels(screenshot(page, tmp_path / "bare.png").read_bytes())
    seen = count_colors(rows, {"emitted": COLORS["emitted"], "backlog": COLORS["backlog"]})
    assert all(n <= 2 * LEGEND_PIXELS for n in seen.values()), seen
