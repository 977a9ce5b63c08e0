"""Usage as a chart: stacked bars by day, one colour per series (a model or an account), drawn
as SVG geometry that a template writes out. No script draws it, so it shows under the console's
Content-Security-Policy and in any screenshot."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

from glmaas.platform.pricing import MICRO

# Colour-blind-safe (Okabe–Ito), then a grey for everything past them.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
OTHER_COLOUR = "#999999"
MAX_DAYS = 31
MIN_DAYS = 7  # a week at least, so one day's usage is a bar among days, not the whole width
METRICS = {"tokens": "total_tokens", "requests": "requests", "cost": "cost_micro"}

WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 12, 36


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str  # shown on hover


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class Chart:
    metric: str
    bars: list[Bar] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)  # (series, colour)
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    plot_width: int = WIDTH - LEFT - RIGHT
    plot_height: int = HEIGHT - TOP - BOTTOM

    @property
    def empty(self) -> bool:
        return not self.bars


def _label(metric: str, value: float) -> str:
    if metric == "cost":
        whole, _, frac = f"{value / MICRO:.6f}".partition(".")
        return f"{whole}.{frac.rstrip('0').ljust(2, '0')}"
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1_000:
        return f"{value / 1_000:g}k"
    return f"{value:g}"


def _nice_step(top: float, ticks: int = 4) -> float:
    raw = top / ticks
    magnitude = 10 ** (len(str(int(raw))) - 1) if raw >= 1 else 1
    for multiple in (1, 2, 2.5, 5, 10):
        if raw <= multiple * magnitude:
            return multiple * magnitude
    return 10 * magnitude


def _days(first: str, last: str) -> list[str]:
    start, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    start = min(max(start, end - dt.timedelta(days=MAX_DAYS - 1)), end - dt.timedelta(days=MIN_DAYS - 1))
    return [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def stacked_by_day(rows: list[dict], series: str, metric: str = "tokens") -> Chart:
    """Rows of a usage report grouped by day and `series` ('model' or 'account'), as stacked bars of
    `metric` ('tokens', 'requests' or 'cost') over the days from the first with usage to the last
(`MIN_DAYS` to `MAX_DAYS` of them)."""
    column = METRICS[metric]
    if not rows:
        return Chart(metric)
    days = _days(min(r["day"] for r in rows), max(r["day"] for r in rows))
    totals: dict[str, int] = defaultdict(int)
    for row in rows:
        totals[str(row[series])] += row[column]
    ranked = sorted(totals, key=lambda s: (-totals[s], s))
    named = ranked[:len(PALETTE)] if len(ranked) <= len(PALETTE) + 1 else ranked[:len(PALETTE) - 1]
    colours = {s: PALETTE[i] for i, s in enumerate(named)}
    values: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        if row["day"] in days:
            values[row["day"]][str(row[series]) if str(row[series]) in colours else "other"] += row[column]
    peak = max((sum(v.values()) for v in values.values()), default=0)
    chart = Chart(metric, legend=[(s, colours[s]) for s in named]
                  + ([("other", OTHER_COLOUR)] if len(named) < len(ranked) else []))
    if peak <= 0:
        return chart
    step = _nice_step(peak)
    top = step * -(-peak // step)
    slot = chart.plot_width / len(days)
    scale = chart.plot_height / top
    for i, day in enumerate(days):
        x = chart.left + i * slot + slot * 0.15
        y = chart.top + chart.plot_height
        for name in [*named, "other"]:
            value = values[day].get(name, 0)
            if value <= 0:
                continue
            height = value * scale
            y -= height
            chart.bars.append(Bar(round(x, 1), round(y, 1), round(slot * 0.7, 1), round(height, 1),
                                  colours.get(name, OTHER_COLOUR), f"{day} · {name}: {_label(metric, value)}"))
        if len(days) <= 10 or i % -(-len(days) // 10) == 0:
            chart.x_ticks.append(Tick(round(x + slot * 0.35, 1), day[5:]))
    ticks = int(top // step)
    chart.y_ticks.extend(Tick(round(chart.top + chart.plot_height - k * step * scale, 1), _label(metric, k * step))
                         for k in range(ticks + 1))
    return chart
