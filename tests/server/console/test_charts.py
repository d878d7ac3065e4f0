"""The console's inline SVG charts (pure): escaped labels, gaps for missing values, marks."""

from __future__ import annotations

from server.console.charts import Series, bar_chart, line_chart


def test_line_chart_escapes_labels_and_breaks_lines_at_missing_values() -> None:
    svg = line_chart("<b>drift</b>", [0.0, 60.0, 120.0, 180.0],
                     [Series("a&b", "#000", [0.1, None, 0.3, 0.4])], ident="c<1>",
                     marks=[False, False, True, True])

    assert svg.startswith('<svg class="chart" id="c&lt;1&gt;"')
    assert "&lt;b&gt;drift&lt;/b&gt;" in svg and "<b>" not in svg
    assert "a&amp;b" in svg
    assert svg.count("<circle") == 1  # the lone point before the gap
    assert svg.count("<polyline") == 1  # the two points after it
    assert svg.count('class="mark"') == 2


def test_line_chart_without_windows_says_so() -> None:
    assert "no windows yet" in line_chart("volume", [], [Series("n", "#000", [])])


def test_bar_chart_scales_to_the_largest_value_and_handles_no_bars() -> None:
    svg = bar_chart("top", ["feature 3", "feature 9"], [0.8, 0.4])

    assert "feature 3" in svg and ">0.8<" in svg and ">0.4<" in svg
    assert "no drifted features" in bar_chart("top", [], [])
