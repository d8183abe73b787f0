"""meshcore.duration: durations as Go (and Cilium's flags) write them, or plain seconds."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from meshcore.duration import Duration, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("720h", 720 * 3600.0),
        ("30m", 1800.0),
        ("1h30m", 5400.0),
        ("90s", 90.0),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        ("500ms", 0.5),
        ("250us", 250e-6),
        ("1µs", 1e-6),
        ("10ns", 10e-9),
        ("2h45m30s", 2 * 3600 + 45 * 60 + 30.0),
        ("120", 120.0),
        ("2.5", 2.5),
        (" 30m ", 1800.0),
    ],
)
def test_go_durations_and_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "h", "5x", "5 m", "1h 30m", "m5", "1d", "-5m", "-1", "inf", "nan", "5m-"])
def test_what_is_not_a_duration_is_refused_saying_so(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_zero_only_where_allowed() -> None:
    for zero in ("0", "0s", "0h0m", "0.0"):
        assert parse_duration(zero, allow_zero=True) == 0.0
        with pytest.raises(ValueError, match="must be positive"):
            parse_duration(zero)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(720 * 3600.0, "720h"), (5400.0, "1h30m"), (3601.0, "1h1s"), (90.5, "1m30.5s"), (0.25, "0.25s"), (0.0, "0s"),
     (60.0, "1m")],
)  # fmt: skip
def test_format_is_the_shortest_go_form_and_parses_back(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text, allow_zero=True) == pytest.approx(seconds)


def test_format_refuses_negative_and_infinite() -> None:
    for bad in (-1.0, float("inf")):
        with pytest.raises(ValueError):
            format_duration(bad)


def test_click_type_reports_a_usage_error() -> None:
    @click.command()
    @click.option("--interval", type=Duration(allow_zero=True), default="0")
    def cmd(interval: float) -> None:
        click.echo(repr(interval))

    runner = CliRunner()
    assert runner.invoke(cmd, []).output.strip() == "0.0"
    assert runner.invoke(cmd, ["--interval", "720h"]).output.strip() == "2592000.0"
    bad = runner.invoke(cmd, ["--interval", "soon"])
    assert bad.exit_code == 2 and "'soon' is not a duration" in bad.output
