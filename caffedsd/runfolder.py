"""An output folder that a rerun of the same command continues.

A marker file records what made the folder (a fingerprint of the inputs and
settings). Rerunning with the same ones continues the work already there;
with others, or on a non-empty folder without the marker, the folder is
refused rather than mixed or overwritten. Work done so far is kept as JSON
files and append-only JSON-lines journals, each record whole or absent.
"""
import errno
import fcntl
import json
import locale
import os
import re
import shutil
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .atomic import (folders_made, is_leftover, is_temporary_of, output_folder, raise_no_room, remove_leftovers,
                     write_text)
from .errors import InputError, OutputError
from .report import to_json
from .values import is_finite_number

LOCK_FILE = ".caffedsd.lock"  # held by the process working in the folder


@dataclass(frozen=True)
class Kind:
    """What a value in a record must be: ``test`` holds for it; ``what``
    names it in a message. Records are caffedsd's own, so a value of
    another kind was edited in: taken, it would be a traceback, or a report
    of a stage or point that never ran, far from the record at fault."""

    what: str
    test: Callable

    def __call__(self, value):
        return self.test(value)


COUNT = Kind("a count", lambda v: type(v) is int and v >= 0)
NUMBER = Kind("a number", is_finite_number)
SECONDS = Kind("a number of seconds", lambda v: is_finite_number(v) and v >= 0)
FRACTION = Kind("a fraction", lambda v: is_finite_number(v) and 0 <= v <= 1)
NAME = Kind("a name", lambda v: isinstance(v, str) and v != "")
SHA256 = Kind("a sha256", lambda v: isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v) is not None)


def optional(kind):
    """``kind`` or null."""
    return Kind(f"{kind.what} or null", lambda v: v is None or kind(v))


def table(kind, keys=None):
    """A JSON object of ``kind`` values, with names for keys (of ``keys``
    only, when given)."""
    return Kind(f"a table of {kind.what.removeprefix('a ')} values",
                lambda v: isinstance(v, dict) and all(isinstance(k, str) and k and (keys is None or k in keys)
                                                      and kind(each) for k, each in v.items()))


def wrong_value(record, kinds):
    """The first of ``kinds`` ({key: Kind}) that a value ``record`` holds
    is not, as a phrase ("its iter "5" is not a count"), or None."""
    for key, kind in kinds.items():
        if key in record and not kind(record[key]):
            shown = json.dumps(record[key])
            return f"its {key} {shown if len(shown) <= 40 else shown[:37] + '...'} is not {kind.what}"
    return None


def write_json(path, data):
    """``data`` as indented JSON in ``path`` (report.to_json), atomically."""
    write_text(path, to_json(data) + "\n")


def read_own(path):
    """The bytes of ``path``, a file in a folder of caffedsd's own. OSError
    as reading raises it, and for a pipe or device in its place, on which a
    read would wait forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "a pipe or device, not a regular file", str(path))
        return handle.read()


def read_own_text(path, errors="strict"):
    """The text of ``path``, a file of caffedsd's own (read_own): UTF-8, as
    write_text writes it, or else in the locale's encoding, in which
    earlier caffedsd wrote it (a TEST output's name in Latin-1), decoded
    with ``errors`` (str.decode's)."""
    data = read_own(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode(locale.getpreferredencoding(False), errors)


def read_json(path, keys=(), known=None, remedy="remove it to redo its work", kinds=None):
    """The JSON object in ``path``, with ``keys`` present and, when ``known``
    is given, no others; the values of ``kinds`` ({key: Kind}) of their
    kinds. These files are caffedsd's own, written whole, so a
    damaged one was edited or cut by something else: a one-line error that
    names it, rather than a traceback from deep in a continued run."""
    try:
        data = json.loads(read_own(path))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InputError(f"{path}: damaged, not the JSON caffedsd wrote ({exc}); {remedy}") from None
    except OSError as exc:  # a folder in its place, unreadable
        raise InputError(f"{path}: cannot be read ({exc.strerror}); {remedy}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: damaged, not a JSON object; {remedy}")
    missing = [key for key in keys if key not in data]
    unknown = sorted(set(data) - set(known)) if known is not None else []
    if missing or unknown:
        what = "; ".join(part for part in (missing and f"lacks {', '.join(missing)}",
                                            unknown and f"has unknown {', '.join(unknown)}") if part)
        raise InputError(f"{path}: damaged, {what}; {remedy}")
    if kinds and (wrong := wrong_value(data, kinds)):
        raise InputError(f"{path}: damaged, {wrong}; {remedy}")
    return data


class RunFolder:
    """``path`` with its ``marker`` file; ``kind`` ("run", "sensitivity") and
    ``made_of`` ("recipe, solver, net or weights") name it in messages.

    open() also holds the folder for this process until close() (or the end
    of a ``with`` block, or of the process, however it ends): a second
    caffedsd on the same folder would redo the same work beside it, and take
    its temporary files for a killed run's leftovers."""

    def __init__(self, path, marker, kind, made_of):
        self.path = Path(path)
        self.marker = self.path / marker
        self.kind, self.made_of = kind, made_of
        self._made = None  # set by an open() that started the folder: whether it made it
        self._lock = None

    def open(self, record, files=None, takeover=None):
        """Create the folder with ``files`` ({name: text}) and the marker
        holding ``record``, or check that an existing one was made with the
        same ``record``. Returns self, holding the folder.

        A folder made with another record is refused, unless ``takeover``
        is given: ``takeover(self, found)`` (``found``: the marker's record)
        then runs, holding the folder, and
        either raises (refused) or removes what the new record cannot use;
        the folder is then the new record's."""
        expected = json.loads(json.dumps(record))
        existed = self.path.exists()
        # No room for the lock's line in a folder made just now: nothing of
        # it is left, nor of the parent folders made for it.
        with folders_made(self.path):
            output_folder(self.path)
            # A run killed while it wrote its marker left only the lock and the
            # marker's temporary: a folder of this kind still, and put right below.
            # (Its process id may be another's by now: a live marker writer
            # would hold the lock, and _hold refuse the folder.)
            if existed and not self.marker.exists() \
                    and any(p.name != LOCK_FILE and not is_leftover(p) and not is_temporary_of(p, self.marker.name)
                            for p in self.path.iterdir()):
                raise InputError(f"{self.path}: exists and is not a caffedsd {self.kind} folder; give a new -o")
            try:
                self._hold()
            except OutputError:
                if not existed:  # (not on InputError: "in use" is another process's folder, made since)
                    shutil.rmtree(self.path, ignore_errors=True)
                raise
        try:
            if self._lock is not None:  # then no other process writes the marker: its temporaries are dead
                for path in self.path.iterdir():
                    if is_temporary_of(path, self.marker.name) and path.is_file() and not path.is_symlink():
                        path.unlink(missing_ok=True)
            if self.marker.exists():  # made before, or by another process since the check above
                found = read_json(self.marker, remedy=f"remove {self.path} to start over")
                if found != expected:
                    if takeover is None:
                        raise InputError(f"{self.path}: made by a different {self.made_of}; give a new -o, "
                                         "or remove it to start over")
                    takeover(self, found)
                    write_json(self.marker, record)
                    self._made = False  # abandon() may empty it again while nothing is done
                remove_leftovers(self.path)  # a killed run's half-written files
            else:
                remove_leftovers(self.path)
                write_json(self.marker, record)
                self._made = not existed
            # The files follow the marker: a folder killed between the two
            # writes (made or taken over) is put right by the same record.
            for name, text in (files or {}).items():
                path = self.path / name
                if not path.is_file() or path.read_bytes() != text.encode("utf-8"):
                    write_text(path, text)
            return self
        except BaseException:
            self.close()
            raise

    def _hold(self):
        lock = self.path / LOCK_FILE
        if os.path.exists(lock) and not os.path.isfile(lock):  # a pipe: append mode's seek fails, with no reason
            raise InputError(f"{lock}: not a regular file (a folder, device or pipe); remove it")
        try:
            handle = open(lock, "a+")
        except OSError as exc:
            raise_no_room(self.path, exc)
            raise InputError(f"{self.path}: cannot write to the {self.kind} folder ({exc.strerror})") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise InputError(f"{self.path}: in use by caffedsd ({holder}); wait for it to end, "
                             "or give another -o") from None
        except OSError:  # a filesystem without locks: unguarded, as before there were locks
            handle.close()
            return
        try:  # who holds it, for the message of a process refused; unbuffered, so close() writes nothing
            os.ftruncate(handle.fileno(), 0)
            os.pwrite(handle.fileno(), f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError as exc:
            handle.close()
            raise_no_room(self.path, exc)
            raise
        self._lock = handle

    def close(self):
        """Let other processes have the folder."""
        if self._lock is not None:
            self._lock.close()  # closing the file drops its lock
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def abandon(self):
        """Undo a run refused before it did any work (bad input found late):
        otherwise its marker would refuse the corrected rerun as made by
        other inputs. Only a folder this object's open() started (it was
        absent or empty then) is emptied, and removed if open() made it."""
        if self._made is None:
            return
        self.close()
        made_folder, self._made = self._made, None
        if made_folder:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for entry in self.path.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def journal(self, name, keys=(), kinds=None):
        """The records appended to journal ``name``, in order. A line that is
        not a JSON object holding ``keys``, with values of ``kinds`` ({key:
        Kind}), (a last line cut short by a kill, or one edited since) is
        skipped, so its work is done again."""
        path = self.path / name
        records = []
        if path.exists():
            try:
                lines = read_own(path).splitlines()
            except OSError as exc:  # a folder in its place, unreadable
                raise InputError(f"{path}: cannot be read ({exc.strerror}); remove it to redo its work") from None
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:  # JSONDecodeError and UnicodeDecodeError
                    continue
                if isinstance(record, dict) and all(key in record for key in keys) \
                        and not (kinds and wrong_value(record, kinds)):
                    records.append(record)
        return records

    def append(self, name, record):
        """Add ``record`` to journal ``name``, on disk before this returns."""
        try:
            with open(self.path / name, "a+b") as handle:
                # After a last line cut short (a full disk, a crash mid-write),
                # on a line of its own: glued to it, it would be skipped too.
                cut = False
                if handle.tell():  # appending: at the end
                    handle.seek(-1, os.SEEK_END)
                    cut = handle.read(1) != b"\n"
                handle.write((("\n" if cut else "") + json.dumps(record) + "\n").encode())
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:  # the records before it stay; a cut line is skipped when read
            raise_no_room(self.path / name, exc)
            raise
