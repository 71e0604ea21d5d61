"""report.html for a block run: one self-contained page, plots drawn here as inline SVG (no network).

    write_report(record, verdict, path)

Plots: readings/s emitted vs stored over time with the fault timeline shaded; the latency
distribution per kind; latency over time; not-yet-stored readings over time (emitted so far minus
matched-and-stored so far: the backlog wherever it sits), with where it sits sampled: the gateways'
logs, the broker's message store and the collector's spool. Then
the per-kind and per-gateway tables of lost/duplicated/altered/invented and the alarms. Each plot is
an <svg class="plot"> whose series are <polyline>/<rect> elements: tests/integration checks that
headless Chromium draws them (docs/hil.md, "The report").
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hil.judge import ALARM, Tally, Verdict, backlog_series, recovery

W, H = 860, 260
PAD_L, PAD_R, PAD_T, PAD_B = 60, 150, 24, 36
# One colour per series, the same in every plot (and searched for by the screenshot test).
COLORS = {"emitted": "#1f77b4", "stored": "#d62728", "parking": "#2ca02c", "thermometer": "#ff7f0e",
          "water": "#17becf", "manhole": "#9467bd", ALARM: "#e31a1c", "backlog": "#8c564b",
          "gateway logs": "#7f7f7f", "broker store": "#bcbd22", "collector spool": "#e377c2"}
FAULT_FILL = "#f2c94c"


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def _esc(s: object) -> str:
    return html.escape(str(s), quote=True)


class Plot:
    """A minimal x/y chart: axes with ticks, shaded bands, polylines and bars, a legend."""

    def __init__(self, title: str, xlabel: str, ylabel: str, xmax: float, ymax: float, plot_id: str,
                 xmin: float = 0.0) -> None:
        self.title, self.xlabel, self.ylabel, self.id = title, xlabel, ylabel, plot_id
        self.xmin, self.xmax = xmin, max(xmax, xmin + 1e-9)
        self.ymax = _nice_max(ymax)
        self.parts: list[str] = []
        self.legend: list[tuple[str, str]] = []

    def x(self, v: float) -> float:
        return PAD_L + (v - self.xmin) / (self.xmax - self.xmin) * (W - PAD_L - PAD_R)

    def y(self, v: float) -> float:
        return H - PAD_B - min(v, self.ymax) / self.ymax * (H - PAD_T - PAD_B)

    def band(self, x0: float, x1: float, label: str) -> None:
        a, b = self.x(max(x0, self.xmin)), self.x(min(max(x1, x0 + (self.xmax - self.xmin) / 200), self.xmax))
        self.parts.append(f'<rect class="fault" x="{a:.1f}" y="{PAD_T}" width="{max(b - a, 1):.1f}" '
                          f'height="{H - PAD_T - PAD_B}" fill="{FAULT_FILL}" fill-opacity="0.45">'
                          f"<title>{_esc(label)}</title></rect>")

    def line(self, name: str, pts: Sequence[tuple[float, float]], color: str) -> None:
        if not pts:
            return
        coords = " ".join(f"{self.x(a):.1f},{self.y(b):.1f}" for a, b in pts)
        self.parts.append(f'<polyline class="series" data-series="{_esc(name)}" points="{coords}" '
                          f'fill="none" stroke="{color}" stroke-width="2"/>')
        self.legend.append((name, color))

    def dots(self, name: str, pts: Sequence[tuple[float, float]], color: str) -> None:
        if not pts:
            return
        marks = "".join(f'<rect x="{self.x(a) - 1.5:.1f}" y="{self.y(b) - 1.5:.1f}" width="3" height="3"/>'
                        for a, b in pts)
        self.parts.append(f'<g class="series" data-series="{_esc(name)}" fill="{color}">{marks}</g>')
        self.legend.append((name, color))

    def svg(self) -> str:
        out = [f'<svg class="plot" id="{self.id}" xmlns="http://www.w3.org/2000/svg" '
               f'width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{_esc(self.title)}">',
               f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>',
               f'<text x="{PAD_L}" y="16" font-size="13" font-weight="bold">{_esc(self.title)}</text>']
        x0, x1, y0, y1 = PAD_L, W - PAD_R, PAD_T, H - PAD_B
        for i in range(6):
            yv = self.ymax * i / 5
            yy = self.y(yv)
            out.append(f'<line x1="{x0}" y1="{yy:.1f}" x2="{x1}" y2="{yy:.1f}" stroke="#e5e5e5"/>'
                       f'<text x="{x0 - 6}" y="{yy + 4:.1f}" font-size="11" text-anchor="end">{yv:g}</text>')
            xv = self.xmin + (self.xmax - self.xmin) * i / 5
            xx = self.x(xv)
            out.append(f'<text x="{xx:.1f}" y="{y1 + 16}" font-size="11" text-anchor="middle">'
                       f"{xv:.3g}</text>")
        out += self.parts
        out.append(f'<line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="#333"/>'
                   f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/>')
        out.append(f'<text x="{(x0 + x1) / 2:.0f}" y="{H - 4}" font-size="12" text-anchor="middle">'
                   f"{_esc(self.xlabel)}</text>")
        out.append(f'<text x="14" y="{(y0 + y1) / 2:.0f}" font-size="12" text-anchor="middle" '
                   f'transform="rotate(-90 14 {(y0 + y1) / 2:.0f})">{_esc(self.ylabel)}</text>')
        for i, (name, color) in enumerate(self.legend):
            ly = PAD_T + 10 + 18 * i
            out.append(f'<rect x="{x1 + 14}" y="{ly - 8}" width="14" height="10" fill="{color}"/>'
                       f'<text x="{x1 + 34}" y="{ly + 1}" font-size="12">{_esc(name)}</text>')
        out.append("</svg>")
        return "".join(out)


def _per_second(times: Sequence[float], t0: float, n: int) -> list[tuple[float, float]]:
    bins = [0] * n
    for t in times:
        i = int(t - t0)
        if 0 <= i < n:
            bins[i] += 1
    return [(i + 0.5, float(c)) for i, c in enumerate(bins)]


def _thin(pts: list[tuple[float, float]], most: int = 2500) -> list[tuple[float, float]]:
    step = max(1, len(pts) // most)
    return pts[::step]


def plots(record: Mapping[str, Any], verdict: Verdict) -> list[str]:
    t0 = record["t0"]
    faults = [(s - t0, (e if e is not None else s) - t0, label) for s, e, label in record.get("faults", [])]
    emitted = [e[0] for e in record["emissions"] if e[4] is not None]
    stored = [s[0] for s in record["stored"] if s[1] != ALARM]
    end = max([*emitted, *stored, t0 + record["scenario"]["duration"]]) - t0
    n = int(end) + 1

    def shade(p: Plot) -> None:
        for a, b, label in faults:
            p.band(a, b, label)

    # 1. readings/s emitted vs stored (water is polled: it has no emissions, so it is left out of both)
    em = _per_second(emitted, t0, n)
    st = _per_second([s[0] for s in record["stored"] if s[1] not in (ALARM, "water")], t0, n)
    p1 = Plot("Readings per second: emitted by the sensors vs stored in InfluxDB (water excluded: polled)",
              "seconds since the timeline started", "readings/s", n, max(b for _, b in em + st), "rate")
    shade(p1)
    p1.line("emitted", _thin(em, 2000), COLORS["emitted"])
    p1.line("stored", _thin(st, 2000), COLORS["stored"])

    # 2. latency distribution: share of readings stored within x seconds (a CDF per kind)
    lat_max = max((v for lat in verdict.latency.values() for _, v in lat.samples), default=1.0)
    p2 = Plot("Latency distribution: share of readings queryable within x seconds of emission",
              "seconds from emission to queryable in InfluxDB", "% of readings", lat_max, 100, "latency-cdf")
    for kind, lat in sorted(verdict.latency.items()):
        xs = sorted(v for _, v in lat.samples)
        if xs:
            cdf = [(x, 100 * (i + 1) / len(xs)) for i, x in enumerate(xs)]
            p2.line(kind, _thin(cdf, 400), COLORS.get(kind, "#333"))

    # 3. latency over time, each reading a dot at its emission time
    p3 = Plot("Latency over time (each reading at its emission time; faults shaded)",
              "seconds since the timeline started", "latency, s", n, lat_max, "latency-time")
    shade(p3)
    for kind, lat in sorted(verdict.latency.items()):
        p3.dots(kind, _thin([(t - t0, v) for t, v in lat.samples], 1500), COLORS.get(kind, "#333"))

    # 4. backlog: readings emitted and not yet queryable (hil.judge.backlog_series)
    backlog = [(t, float(b)) for t, b in backlog_series(record, verdict)] or [(0.0, 0.0)]
    # where it sits, sampled: the gateways' logs (statuses), the broker's message store ($SYS) and
    # the collector's spool (/metrics; points), each absent while its service was down
    logs = gateway_logs(record, n)
    broker = [(t - t0, float(v)) for t, v in record.get("broker_store", [])]
    spool = [(t - t0, float(lines)) for t, _rows, lines in record.get("collector_spool", [])]
    top = max(b for _, b in [*backlog, *logs, *broker, *spool])
    p4 = Plot("Backlog: readings not yet queryable; gateway logs, broker store (messages), collector spool",
              "seconds since the timeline started", "readings / messages", n, top, "backlog")
    shade(p4)
    p4.line("backlog", _thin(backlog, 2000), COLORS["backlog"])
    p4.line("gateway logs", _thin(logs, 2000), COLORS["gateway logs"])
    if broker:
        p4.line("broker store", _thin(broker, 2000), COLORS["broker store"])
    if spool:
        p4.line("collector spool", _thin(spool, 2000), COLORS["collector spool"])
    return [p.svg() for p in (p1, p2, p3, p4)]


def gateway_logs(record: Mapping[str, Any], n: int) -> list[tuple[float, float]]:
    """Sum over gateways of the records pending in their logs (their last status), every 0.5 s.
    A gateway's value holds between statuses (none arrive while it or the broker is down)."""
    t0 = record["t0"]
    series = {gw: sorted((t - t0, v or 0) for t, v, _ in pts)
              for gw, pts in record.get("gateway_spools", {}).items()}
    out: list[tuple[float, float]] = []
    idx = dict.fromkeys(series, 0)
    last = dict.fromkeys(series, 0)
    for k in range(n * 2 + 1):
        t = k / 2
        for gw, pts in series.items():
            while idx[gw] < len(pts) and pts[idx[gw]][0] <= t:
                last[gw] = pts[idx[gw]][1]
                idx[gw] += 1
        out.append((t, float(sum(last.values()))))
    return out


def _table(title: str, rows: Mapping[str, Tally]) -> str:
    head = ("emitted", "stored", "lost", "excused", "duplicated", "altered", "invented", "mistimed")
    out = [f"<h2>{_esc(title)}</h2><table><tr><th></th>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for name, t in rows.items():
        cells = [t.emitted, t.stored, t.lost, t.excused, t.duplicated, t.altered, t.invented, t.mistimed]
        bad = ' class="bad"' if t.bad else ""
        out.append(f"<tr{bad}><td>{_esc(name)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "".join(out) + "</table>"


def _ms(v: Any) -> str:
    return "–" if v is None else f"{v * 1000:.0f}"


def write_report(record: Mapping[str, Any], verdict: Verdict, path: str | Path) -> Path:
    sc = record["scenario"]
    t0 = record["t0"]
    kinds = sorted(verdict.latency, key=lambda k: (k == ALARM, k))
    lat_rows = ""
    for k in kinds:
        st = verdict.latency[k].stats()
        lat_rows += f"<tr><td>{_esc(k)}</td><td>{st['n']}</td>" + "".join(
            f"<td>{_ms(st[q])}</td>" for q in ("p50", "p95", "p99", "max")) + "</tr>"
    alarms = sorted((s for s in record["stored"] if s[1] == ALARM), key=lambda s: s[5])
    alarm_rows = "".join(
        f"<tr><td>{s[5] / 1000 - t0:.1f}</td><td>{_esc(s[2])}</td><td>{_esc(s[3])}</td><td>{_esc(s[4])}</td>"
        f"<td>{s[0] - s[5] / 1000:.3f}</td></tr>" for s in alarms[:200])
    faults = "".join(f"<li>{_esc(label)}</li>" for _, _, label in record.get("faults", [])) or "<li>none</li>"
    verdict_word = "OK" if verdict.ok else "FAIL"
    rec_rows = "".join(
        f"<tr><td>{_esc(r['fault'])}</td><td>{r['peak_backlog']}</td>"
        f"<td>{'–' if r['drained_s'] is None else format(r['drained_s'], '.2f')}</td>"
        f"<td>{'–' if r.get('latency_back_s') is None else format(r['latency_back_s'], '.1f')}</td></tr>"
        for r in recovery(record, verdict))
    rec_head = ("<tr><th>fault</th><th>peak backlog (readings)</th><th>backlog back to nominal, s after "
                "its end</th><th>latency back to nominal, s after its end</th></tr>")
    rec_table = f"<h2>Recovery per fault</h2><table>{rec_head}{rec_rows}</table>" if rec_rows else ""
    problems = "".join(f"<li>{_esc(s)}</li>" for s in [*verdict.goals_missed, *verdict.samples[:30]])
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>citybrain hil: {_esc(sc['name'])}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; max-width: 900px; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:first-child {{ text-align: left; }}
tr.bad td {{ background: #fde2e2; }}
.verdict {{ font-size: 20px; font-weight: bold; color: {'#1a7f37' if verdict.ok else '#c62828'}; }}
svg.plot {{ display: block; margin: 8px 0 20px; border: 1px solid #ddd; }}
</style></head><body>
<h1>{_esc(sc['name'])} <span class="verdict" id="verdict">{verdict_word}</span></h1>
<p>{_esc(sc.get('description', ''))} — seed {sc['seed']}, {len(sc['gateways'])} gateways,
{sc['duration']:g} s; latency from emission to first seen in InfluxDB by polling every
{record['poller']['period'] * 1000:.0f} ms.</p>
<p>Faults: <ul>{faults}</ul></p>
{''.join(plots(record, verdict))}
<h2>Latency (ms)</h2><table><tr><th></th><th>n</th><th>p50</th><th>p95</th><th>p99</th><th>max</th></tr>
{lat_rows}</table>
{rec_table}
{_table("Per kind", verdict.by_kind())}
{_table("Per gateway", verdict.by_gateway())}
{"<h2>Problems</h2><ul>" + problems + "</ul>" if problems else ""}
<h2>Alarms stored ({len(alarms)})</h2>
<table><tr><th>t, s</th><th>gateway</th><th>sensor</th><th>kind</th><th>latency, s</th></tr>
{alarm_rows}</table>
</body></html>
"""
    out = Path(path)
    out.write_text(body, encoding="utf-8")
    return out


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--no-first-run", "--hide-scrollbars")


def screenshot(html_path: str | Path, png_path: str | Path, *, width: int = 940, height: int = 2400) -> Path:
    """A PNG of the page as headless Chromium (Debian's `chromium`) draws it; offline (file://)."""
    import subprocess
    import tempfile

    from hil.services import find_binary

    out = Path(png_path).resolve()
    with tempfile.TemporaryDirectory(prefix="citybrain-chromium-") as profile:
        proc = subprocess.run(
            [find_binary("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             f"--window-size={width},{height}", f"--screenshot={out}", Path(html_path).resolve().as_uri()],
            capture_output=True, timeout=120, check=False)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"chromium screenshot failed ({proc.returncode}): {proc.stderr[-500:]!r}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Draw report.html from a saved run.json, and optionally a PNG of it (docs/hil-report.png)."""
    import argparse
    import json

    from hil.judge import judge

    ap = argparse.ArgumentParser(prog="python -m hil.report", description=main.__doc__,
                                 epilog="example: python -m hil.report /tmp/storm/run.json "
                                        "--html /tmp/storm/report.html --png docs/hil-report.png")
    ap.add_argument("run_json")
    ap.add_argument("--html", required=True)
    ap.add_argument("--png", default=None)
    args = ap.parse_args(argv)
    record = json.loads(Path(args.run_json).read_text(encoding="utf-8"))
    page = write_report(record, judge(record), args.html)
    print(f"wrote {page}")
    if args.png:
        print(f"wrote {screenshot(page, args.png)}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
