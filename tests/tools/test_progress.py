"""workers/tools/progress.py: a tqdm bar on a terminal, plain periodic lines (no carriage return) elsewhere."""

from __future__ import annotations

import io

from workers.tools.progress import PlainLines, Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_gets_plain_lines_with_the_final_count():
    out = io.StringIO()
    with Progress("rotating", 3, unit="key", done="keys rotated", out=out, interval=3600) as bar:
        for done in (1, 2, 3):
            bar.update_to(done)
    text = out.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    # one line at the start, none in between (the interval is an hour), one at the end
    assert [line.split(" after ")[0] for line in lines] == ["rotating: 0/3 keys rotated", "rotating: 3/3 keys rotated"]


def test_an_unknown_total_still_counts():
    out = io.StringIO()
    with Progress("rotating", None, unit="key", done="keys rotated", out=out, interval=3600) as bar:
        bar.update_to(5)
    assert out.getvalue().splitlines()[-1].startswith("rotating: 5/? keys rotated after ")


def test_a_terminal_gets_the_redrawn_bar():
    out = Terminal()
    with Progress("rotating", 2, unit="key", done="keys rotated", out=out) as bar:
        bar.update_to(2)
    assert "\r" in out.getvalue() and "2/2" in out.getvalue()


def test_plain_lines_drop_carriage_returns_padding_and_repeats():
    out = io.StringIO()
    lines = PlainLines(out)
    for status in ("\rrotating: 1/2   ", "\rrotating: 1/2", "\n", "\rrotating: 2/2"):
        lines.write(status)
    assert out.getvalue() == "rotating: 1/2\nrotating: 2/2\n"
