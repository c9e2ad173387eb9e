"""The `caffedsd` program: ``python -m caffedsd`` and the console script.

Importing the command line takes a few tenths of a second (numpy, click,
every command's options); a Ctrl-C then, before cli.program installs its
handlers, printed an import traceback. Nothing has been written by then, so
it ends in one line, with a shell's status for a Ctrl-C.
"""
import signal
import sys


def _quit_while_starting(signum, frame):
    print("caffedsd: interrupted while starting; nothing was written", file=sys.stderr)
    raise SystemExit(128 + signum)


def main(**kwargs):
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where it starts ignored (nohup &)
        signal.signal(signal.SIGINT, _quit_while_starting)
    from .cli import program

    return program(**kwargs)


if __name__ == "__main__":
    sys.exit(main(prog_name="caffedsd"))
