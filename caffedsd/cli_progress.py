"""What the commands of cli.py show while they work: the progress of a
training run or scan, and the signals that end it."""
import signal
import sys
import time

import click

from . import report


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
    gets each TEST pass as a row {iter, test}, which is no step, and a
    continued stage's replay of its data as a row {replay, tests}. Shown as a
    bar on stderr with ETA (and loss, lr and the latest test for training);
    ``total`` defaults to the first call's."""

    # Where stderr is not a terminal (nohup, a batch job's log), click draws
    # no bar: a line every this many seconds, and one per TEST pass, instead.
    LOG_EVERY = 60.0

    def __init__(self, label, total=None, done=0):
        self.label, self.total, self.done = label, total, done
        self.bar = None
        self.row = self.tested = None
        self.logged = None

    def __call__(self, row, total):
        if SIGNALLED:  # swallowed where it was raised: end at this step, not the command's end
            raise Terminated() if SIGNALLED[0] == signal.SIGTERM else KeyboardInterrupt()
        if "replay" in row:
            passes = f" and {row['tests']} TEST pass(es)" if row["tests"] else ""
            click.echo(f"{self.label}: replaying the data layers through {row['replay']} iteration(s){passes}",
                       err=True)
            return
        if self.bar is None:
            self.bar = click.progressbar(length=self.total or total, label=self.label, file=sys.stderr,
                                         show_pos=True, item_show_func=self._show)
            self.bar.__enter__()
            if self.done:
                self.bar.update(self.done)
            self.total = self.total or total
        terminal = sys.stderr.isatty()
        if "test" in row:
            self.tested = row
            self.bar.update(0, self.row)
            if not terminal:
                click.echo(f"{self.label}: " + report.test_line(row["test"], f"test at iteration {row['iter']}"),
                           err=True)
            return
        self.row = row
        self.bar.update(1, row)
        if not terminal and (self.logged is None or time.monotonic() - self.logged >= self.LOG_EVERY):
            self.logged = time.monotonic()
            click.echo(f"{self.label}: {self.bar.pos}/{self.total} {self._show(row)}".rstrip(), err=True)

    def _show(self, row):
        parts = [f"loss {row['loss']:.4f}  lr {row['lr']:.3g}"] if row and "loss" in row else []
        if self.tested and self.tested["test"]:
            name, value = report.headline(self.tested["test"], self.tested.get("headline"))
            parts.append(f"test {report.one_line(name)} {value:.4f} @{self.tested['iter']}")
        return "  ".join(parts)

    def close(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


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
