"""The usage chart's geometry: stacked bars that add up, days without usage kept as gaps, series
past the palette folded into one."""

from __future__ import annotations

from glmaas.api.console.charts import MIN_DAYS, OTHER_COLOUR, PALETTE, stacked_by_day


def _row(day: str, model: str, tokens: int) -> dict:
    return {"day": day, "model": model, "total_tokens": tokens, "requests": 1, "cost_micro": tokens * 10}


def test_bars_stack_to_the_days_total() -> None:
    rows = [_row("2026-11-28", "a", 300), _row("2026-11-28", "b", 100), _row("2026-11-30", "a", 200)]
    chart = stacked_by_day(rows, "model")
    assert [name for name, _ in chart.legend] == ["a", "b"]
    day = [b for b in chart.bars if b.title.startswith("2026-11-28")]
    assert len(day) == 2 and day[0].y == round(day[1].y + day[1].height, 1)  # b sits on a
    scale = day[0].height / 300
    assert abs(day[1].height - 100 * scale) < 0.2
    later = [b for b in chart.bars if b.title.startswith("2026-11-30")]
    assert abs(later[0].height - 200 * scale) < 0.2
    assert chart.y_ticks[-1].position <= min(b.y for b in chart.bars)  # the axis covers the tallest bar


def test_one_day_is_shown_among_a_week() -> None:
    chart = stacked_by_day([_row("2026-12-01", "a", 5)], "model")
    assert len(chart.bars) == 1 and chart.bars[0].width < chart.plot_width / MIN_DAYS
    assert chart.x_ticks[-1].label == "12-01" and len(chart.x_ticks) == MIN_DAYS


def test_series_past_the_palette_are_one_other() -> None:
    rows = [_row("2026-12-01", f"m{i}", 100 + i) for i in range(len(PALETTE) + 3)]
    chart = stacked_by_day(rows, "model")
    assert chart.legend[-1] == ("other", OTHER_COLOUR) and len(chart.legend) == len(PALETTE)
    assert sum(b.colour == OTHER_COLOUR for b in chart.bars) == 1


def test_cost_is_labelled_in_currency() -> None:
    chart = stacked_by_day([_row("2026-12-01", "a", 150_000)], "model", "cost")  # 1.5 units
    assert chart.y_ticks[-1].label in {"1.50", "2.00"}


def test_no_usage_is_an_empty_chart() -> None:
    assert stacked_by_day([], "model").empty
