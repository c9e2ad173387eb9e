"""The progress bar of cli_progress, drawn into a stand-in terminal."""
import io
import time

import pytest

from caffedsd.cli_progress import Progress, _cells


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _rows(total):
    """A training run's rows: a TEST pass at 0, then steps, the last pass starting."""
    yield {"testing": 0}
    yield {"iter": 0, "test": {"accuracy": 0.5, "loss": 1.25}, "headline": "accuracy"}
    for step in range(total):
        yield {"iter": step, "loss": 1.0 / (step + 1), "lr": 0.01}
    yield {"testing": total}


def _drawn(text):
    """What the bar showed at each draw: the text between carriage returns."""
    return [part.rstrip(" \n") for part in text.split("\r") if part.strip()]


@pytest.mark.parametrize("columns", [40, 60, 80, 200])
def test_the_bar_stays_on_one_line_of_the_terminal(columns, monkeypatch):
    """click's bar and its notes made a line of 116 characters (dsd's), and
    an 80-column terminal took each redraw as a new line: one per step."""
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setenv("GLOG_minloglevel", "2")
    screen = Terminal()
    progress = Progress("01-dense", file=screen)
    for row in _rows(12):
        progress(row, 12)
    progress.close()
    assert screen.getvalue().count("\n") == 1 and screen.getvalue().endswith("\n")
    drawn = _drawn(screen.getvalue())
    assert len(drawn) > 12 and all(len(line) < columns for line in drawn), drawn
    assert drawn[0].startswith("01-dense  [---") and ("testing @0" in drawn[0]) == (columns > 40)
    assert drawn[-1].startswith("01-dense  [####") and "12/12" in drawn[-1] and "testing" not in drawn[-1]
    if columns > 90:
        assert drawn[5].endswith("  loss 0.2500  lr 0.01  test accuracy 0.5000 @0"), drawn[5]


def test_the_notes_that_do_not_fit_go_first_the_least_wanted():
    progress = Progress("sparse", total=100, file=Terminal())
    progress({"iter": 0, "test": {"accuracy": 0.5}}, 100)
    progress({"iter": 0, "loss": 0.5, "lr": 0.01}, 100)
    progress({"testing": 1}, 100)
    assert progress.line(200).endswith("  loss 0.5000  lr 0.01  test accuracy 0.5000 @0  testing @1")
    # testing first, then the test, loss and lr, each where it still fits.
    assert progress.line(72).endswith("]  1/100  test accuracy 0.5000 @0  testing @1")
    assert progress.line(60).endswith("]  1/100  loss 0.5000  testing @1")
    assert progress.line(50).endswith("]  1/100  lr 0.01  testing @1")
    assert progress.line(20) == "sparse  1/100"  # no room for a bar, nor for a note


def test_without_a_terminal_or_with_caffes_log_it_writes_lines(monkeypatch):
    """Caffe's INFO lines (--verbose) were written into the bar, glued to it."""
    for terminal, level in ((False, "2"), (True, "0")):
        monkeypatch.setenv("GLOG_minloglevel", level)
        out = Terminal() if terminal else io.StringIO()
        progress = Progress("sparse", file=out)
        for row in _rows(3):
            progress(row, 3)
        progress.close()
        assert out.getvalue().splitlines() == [
            "sparse", "sparse: test at iteration 0: accuracy = 0.5000, loss = 1.2500",
            "sparse: 1/3 loss 1.0000  lr 0.01  test accuracy 0.5000 @0"]


def test_a_line_of_its_own_is_not_drawn_over(monkeypatch):
    monkeypatch.setenv("GLOG_minloglevel", "2")
    screen = Terminal()
    progress = Progress("03-sparse", total=10, done=4, file=screen)
    progress({"replay": 4, "tests": 1}, 10)
    progress({"iter": 4, "loss": 0.5, "lr": 0.01}, 10)
    progress({"replay": 5, "tests": 0}, 10)
    progress.close()
    text = screen.getvalue()
    assert text.startswith("03-sparse: replaying the data layers through 4 iteration(s) and 1 TEST pass(es)\n")
    # The bar (5/10) is wiped before the line, and drawn again after it.
    assert "5/10" in text.split("\n")[1] and "\r" + " " * len(_drawn(text.split("\n")[1])[0]) + "\r" in text
    assert "\n03-sparse: replaying the data layers through 5" in text or "\r03-sparse: replaying" in text


def test_wide_characters_take_two_cells():
    """A TEST output named in CJK took 119 cells of a line cut to 99 characters."""
    progress = Progress("sparse", total=10, file=Terminal())
    progress({"iter": 0, "test": {"精度" * 10: 0.5}}, 10)
    progress({"iter": 0, "loss": 0.5, "lr": 0.01}, 10)
    for columns in (40, 60, 100, 200):
        line = progress.line(columns)
        assert _cells(line) < columns, (columns, line)
    assert "精度" in progress.line(200) and "精度" not in progress.line(60)
    assert _cells("精度a\u0301") == 5


def test_the_eta_is_timed_from_the_first_step():
    """The clock started after the first step, which it counted: 10 s steps
    gave 0 s left after the first, 40 s after the second (not 80)."""
    progress = Progress("points", total=10, file=Terminal())
    progress({"layer": "a"}, 10)
    assert "00:00" not in progress.line(200)  # one step: no time between steps yet
    progress({"layer": "b"}, 10)
    progress({"layer": "c"}, 10)
    progress.first = (time.monotonic() - 2000, 1)  # as if each step took 1000 s
    assert "3/10  01:56:4" in progress.line(200)  # 7 steps left
