"""What the commands of cli.py show while they work: the progress of a
training run or scan, and the signals that end it."""
import os
import shutil
import signal
import sys
import time
import unicodedata

import click

from . import report
from .caffe_env import caffe_logs_info


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, a batch scheduler), raised where Python next
    runs: left to its default, the process ended where it stood, with the
    temporary files of its writes left behind and nothing said."""

    exit_code = 128 + int(signal.SIGTERM)  # a shell's for it


# The signals the `caffedsd` program was sent (cli.program()): one raised where
# Python swallows exceptions (an h5py object's finalizer, which prints it as
# "Exception ignored") would otherwise let the command go on to exit 0.
SIGNALLED = []


def interrupt(signum, frame):
    SIGNALLED.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def catch_signals():
    """Ctrl-C and SIGTERM raise where Python next runs (interrupt), for the
    `caffedsd` program; what Python can only print ("Exception ignored",
    from a finalizer or at exit) is not printed once one was sent: the
    command's one line says it."""
    signal.signal(signal.SIGTERM, interrupt)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # not where it starts ignored (nohup &)
        signal.signal(signal.SIGINT, interrupt)
    shown = sys.unraisablehook

    def unraisable(info):
        if not (SIGNALLED and isinstance(info.exc_value, KeyboardInterrupt)):
            shown(info)
    sys.unraisablehook = unraisable


def release_signals():
    """Once the command's work is over (its last line printed, or on its
    way): a signal ends the process as it ends any program. Raised in
    click's exit or the interpreter's, it was a traceback, or "Aborted!"."""
    for number in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(number) is interrupt:
            signal.signal(number, signal.SIG_DFL)


class Progress:
    """The progress protocol of the library: ``Progress(label, total, done)``
    (what run_recipe and scan call ``progress``) gives a callback(row, total)
    called once per step (a training iteration, a sensitivity point) and
    closed at the end; training's on_iteration is such a callback, and also
    gets each TEST pass as a row {iter, test}, which is no step, a row
    {testing: iteration} as one starts, and a continued stage's replay of
    its data as a row {replay, tests}. Shown on stderr as a bar with ETA
    (and loss, lr and the latest test for training) cut to the terminal's
    width; ``total`` defaults to the first call's."""

    # Where stderr is not a terminal (nohup, a batch job's log), or Caffe's
    # log shares it (--verbose), no bar: a line at the start, one every
    # this many seconds, and one per TEST pass, instead.
    LOG_EVERY = 60.0
    BAR = 36

    def __init__(self, label, total=None, done=0, file=None):
        self.label, self.total, self.done = label, total, done
        self.file = file or sys.stderr
        self.live = self.file.isatty() and not caffe_logs_info()
        self.begun = False  # a first row seen: the total known, the label said
        self.row = self.tested = self.testing = self.logged = None
        self.first = None  # (time, position) at the first step: the ETA's clock
        self.pos = done
        self.drawn = 0  # the terminal cells the bar line takes

    def __call__(self, row, total):
        if SIGNALLED:  # swallowed where it was raised: end at this step, not the command's end
            raise Terminated() if SIGNALLED[0] == signal.SIGTERM else KeyboardInterrupt()
        if "replay" in row:
            passes = f" and {row['tests']} TEST pass(es)" if row["tests"] else ""
            self._say(f"{self.label}: replaying the data layers through {row['replay']} iteration(s){passes}")
            return
        if not self.begun:
            self.begun, self.total = True, self.total or total
            if not self.live:
                self._say(self.label)
        if "testing" in row:
            self.testing = row["testing"]
            self._draw()
            return
        self.testing = None
        if "test" in row:
            self.tested = row
            if self.live:
                self._draw()
            else:
                self._say(f"{self.label}: " + report.test_line(row["test"], f"test at iteration {row['iter']}"))
            return
        self.row = row
        self.pos += 1
        if self.first is None:  # timed from the end of the first step: the net's set-up is no step
            self.first = (time.monotonic(), self.pos)
        if self.live:
            self._draw()
        elif self.logged is None or time.monotonic() - self.logged >= self.LOG_EVERY:
            self.logged = time.monotonic()
            self._say(f"{self.label}: {self.pos}/{self.total} {self._info(self._parts())}".rstrip())

    def _parts(self):
        """The notes beside the bar, most wanted first, as (place, text):
        place orders them on the line (loss, lr, then the tests)."""
        row, parts = self.row, []
        if self.testing is not None:
            parts.append((3, f"testing @{self.testing}"))
        if self.tested and self.tested["test"]:
            name, value = report.headline(self.tested["test"], self.tested.get("headline"))
            parts.append((2, f"test {report.one_line(name)} {value:.4f} @{self.tested['iter']}"))
        if row and "loss" in row:
            parts += [(0, f"loss {row['loss']:.4f}"), (1, f"lr {row['lr']:.3g}")]
        return parts

    @staticmethod
    def _info(parts):
        return "  ".join(text for _, text in sorted(parts))

    def line(self, columns):
        """The bar line, in at most ``columns`` - 1 terminal cells: a line as
        wide as the terminal wraps, and each redraw then starts a new one."""
        width = max(columns - 1, 10)
        eta = ""
        if self.first is not None and self.total and self.first[1] < self.pos < self.total:
            since, at = self.first
            left = (time.monotonic() - since) / (self.pos - at) * (self.total - self.pos)
            eta = f"  {int(left) // 3600:02d}:{int(left) // 60 % 60:02d}:{int(left) % 60:02d}"
        head, tail = f"{self.label}  [", f"]  {self.pos}/{self.total}{eta}"
        # The notes that fit beside a bar of at least 10, the most wanted first.
        parts = []
        for part in self._parts():
            if _cells(head) + 10 + _cells(tail) + 2 + _cells(self._info(parts + [part])) <= width:
                parts.append(part)
        info = f"  {self._info(parts)}" if parts else ""
        bar = min(self.BAR, width - _cells(head) - _cells(tail) - _cells(info))
        if bar < 10:
            return _cut(f"{self.label}  {self.pos}/{self.total}{info}", width)
        filled = bar * min(self.pos, self.total) // self.total if self.total else 0
        return f"{head}{'#' * filled}{'-' * (bar - filled)}{tail}{info}"

    def _draw(self):
        # Every step: writing a line costs a tiny net's step a few percent at most.
        if not self.live or not self.begun:
            return
        text = self.line(self._columns())
        self.file.write("\r" + text + " " * max(0, self.drawn - _cells(text)))
        self.file.flush()
        self.drawn = _cells(text)

    def _columns(self):
        """The width of the terminal the bar is drawn on: stderr's, where
        stdout may be a file (shutil asks stdout's); COLUMNS first, as
        shutil does."""
        fallback = shutil.get_terminal_size()  # COLUMNS, else stdout's terminal, else 80
        if os.environ.get("COLUMNS", "").isdigit() and int(os.environ["COLUMNS"]) > 0:
            return fallback.columns
        try:
            return os.get_terminal_size(self.file.fileno()).columns or fallback.columns
        except (AttributeError, ValueError, OSError):  # no file descriptor, or not a terminal
            return fallback.columns

    def _say(self, text):
        """A line of its own: over the bar, which is drawn again below it."""
        if self.drawn:
            self.file.write("\r" + " " * self.drawn + "\r")
            self.drawn = 0
        click.echo(text, file=self.file)
        self._draw()

    def close(self):
        self.testing = None
        if self.drawn:
            self._draw()
            self.file.write("\n")
            self.file.flush()
            self.drawn = 0
        self.begun = False


def _cells(text):
    """The terminal cells ``text`` takes: two for a wide character (CJK)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 0 if unicodedata.combining(c) else 1 for c in text)


def _cut(text, cells):
    """``text`` cut to at most ``cells`` terminal cells."""
    while _cells(text) > cells:
        text = text[:-1]
    return text


def train_with_progress(label, call, **kwargs):
    """A train-* library call with a progress bar; prints its TEST passes."""
    progress = Progress(label)
    try:
        result = call(on_iteration=progress, **kwargs)
    finally:
        progress.close()
    for n, row in enumerate(result.tests):
        first = n == 0 and result.test_first is not None
        label = "test after quantization" if first else f"test at iteration {row['iter']}"
        click.echo(report.test_line(row["test"], label))
    click.echo(report.test_line(result.test))
    return result
