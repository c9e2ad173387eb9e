"""Outputs that appear whole or not at all.

Every file caffedsd writes goes to a temporary file in the destination folder
and is renamed over the destination only once complete, so a killed run leaves
no half-written output.
"""
import contextlib
import os
import re
import tempfile
from pathlib import Path

from .errors import InputError


def same_file(a, b):
    """True when paths a and b name the same existing file (or the same path)."""
    a, b = Path(a), Path(b)
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path, inputs=(), force=False):
    """Refuse to overwrite an input unless ``force``, and fail early when the
    output's folder cannot take a new file."""
    path = Path(path)
    for given in inputs:
        if given is not None and (same_file(path, given) or Path(os.path.abspath(path)) == Path(os.path.abspath(given))):
            if not force:
                raise InputError(f"{path}: output would overwrite the input {given}; pass --force to allow it")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{folder}: output folder does not exist or is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".probe")
    except OSError as exc:
        raise InputError(f"{folder}: cannot write to the output folder ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


# mkstemp's names: the prefix, 8 random letters, digits or _, the suffix.
_LEFTOVER = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def remove_leftovers(folder):
    """Delete the temporary files that a killed run's unfinished writes left
    under ``folder`` (a SIGKILL skips atomic_path's clean-up); returns their
    paths. Only names atomic_path makes are touched."""
    removed = []
    for tmp in sorted(Path(folder).rglob(".*.tmp")):
        if _LEFTOVER.fullmatch(tmp.name) and tmp.is_file() and not tmp.is_symlink():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` on success,
    remove it on any error or interruption."""
    path = Path(path)
    try:
        # remove_leftovers knows this name: keep the two in step.
        fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"{path.parent}: cannot write to the output folder ({exc.strerror})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file owner-only; give it the usual umask mode.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Like ``open(path, mode)`` for writing, but atomic (see module doc)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)
