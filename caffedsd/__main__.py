"""The `caffedsd` program: ``python -m caffedsd`` and the console script.

Importing the command line takes a few tenths of a second (numpy, click,
every command's options); a Ctrl-C then, before cli.program installs its
handlers, printed an import traceback. Nothing has been written by then, so
it ends in one line, with a shell's status for a Ctrl-C.
"""
import os
import signal
import sys


# Raised where Python drops exceptions (a finalizer the import runs), the
# SystemExit would let the command run after its line: it is noted here too.
_STOPPED = []


def _quit_while_starting(signum, frame):
    if not _STOPPED:
        print("caffedsd: interrupted while starting; nothing was written", file=sys.stderr)
    _STOPPED.append(signum)
    raise SystemExit(128 + signum)


def _unraisable(info, shown=sys.unraisablehook):
    if not (_STOPPED and isinstance(info.exc_value, (SystemExit, KeyboardInterrupt))):
        shown(info)


def main(**kwargs):
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where it starts ignored (nohup &)
        signal.signal(signal.SIGINT, _quit_while_starting)
        sys.unraisablehook = _unraisable
    from .cli import program

    if _STOPPED:
        return 128 + _STOPPED[0]
    return program(**kwargs)


if __name__ == "__main__":
    # `python -m` searches the current folder first; the console script
    # does not, nor does the caffe binary that verify runs: a Python layer's
    # module is found on PYTHONPATH alike in all three. Not in a source
    # checkout, though, where the folder is caffedsd's own (sensitivity's
    # workers import it from the path they are handed).
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if sys.path and sys.path[0] == os.getcwd() and os.path.realpath(here) != os.path.realpath(os.getcwd()):
        del sys.path[0]
    sys.exit(main(prog_name="caffedsd"))
