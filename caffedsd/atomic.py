"""Outputs that appear whole or not at all.

Every file caffedsd writes goes to a temporary file in the destination folder
and is renamed over the destination only once complete, so a killed run leaves
no half-written output. What a SIGKILL leaves is a temporary file, named after
its writer's pid; the next write of that output removes it once the writer is
dead, and so does a rerun that continues a run folder (remove_leftovers). A
writer holds a flock on its temporary: the kernel drops it when the writer
ends, however it ends, and it tells a live writer in another container (pid
namespace), where its pid names nothing, from a dead one.
A new output folder is made the same way (atomic_folder): under a temporary
name, renamed once all its files are in.
"""
import contextlib
import errno
import fcntl
import io
import os
import re
import resource
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path

from .errors import InputError, OutputError

# What a write fails with when there is no room for it: a full disk, a full
# quota, a file-size limit (ulimit -f).
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def same_file(a, b):
    """True when paths a and b name the same existing file (or the same path)."""
    a, b = Path(a), Path(b)
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def same_path(a, b):
    """Whether ``a`` names the file ``b`` is, or would be written where ``b``
    is (a path not there yet, through a link)."""
    return same_file(a, b) or os.path.realpath(a) == os.path.realpath(b)


def check_input(path, kind="file", error=InputError):
    """``path`` as a Path, or a one-line ``error``: no such ``kind``, or not
    a regular file (a folder, or a device or pipe, which reading would hang
    on or take for empty)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: " + ("not a regular file (a folder, device or pipe)" if path.exists()
                                   else f"no such {kind}"))
    return path


def read_input(path, kind="file", error=InputError):
    """The bytes of the input file ``path`` (check_input), or a one-line
    ``error``: unreadable, or gone since (a file a recipe names is no CLI
    argument, which click would check)."""
    path = check_input(path, kind, error)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror})") from None


def check_replaceable(path):
    # The rename below would put a regular file in place of a device or a
    # pipe: `-o /dev/null`, run as root, would replace /dev/null itself.
    if path.exists() and not path.is_file():
        what = "a folder" if path.is_dir() else "a device, pipe or socket"
        raise InputError(f"{path}: is {what}, not a regular file; caffedsd replaces an output by renaming a "
                         "finished file over it, so give the path of a file")


def check_not_data(path, data, reader):
    """Refuse an output ``path`` that is one of ``data``, files ``reader``
    reads as data, even with --force: they are read while the run goes on,
    or by its rerun."""
    for given in data:
        if same_path(path, given):
            raise InputError(f"{path}: output would overwrite {given}, which {reader} as data")


def output_folder(path):
    """Make the output folder ``path`` and its parents where missing; returns it."""
    path = Path(path)
    _check_not_masks(path)
    with folders_made(path):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise InputError(f"{path}: exists and is not a folder; give a folder for the output") from None
        except OSError as exc:
            raise_no_room(path, exc)
            raise InputError(f"{path}: cannot create the output folder ({exc.strerror})") from None
    return path


def _check_not_masks(path):
    from .maskfile import check_not_masks_of_another  # it reads masks files: h5py

    check_not_masks_of_another(path)


@contextlib.contextmanager
def folders_made(path):
    """Remove the folders up to ``path`` that the block made, on any error:
    an output that could not be written leaves no part of it."""
    missing = []
    for folder in (path, *path.parents):
        if os.path.lexists(folder):
            break
        missing.append(folder)
    try:
        yield
    except BaseException:
        for folder in missing:  # innermost first; one holding anything stays
            try:
                folder.rmdir()
            except OSError:
                pass
        raise


def check_output(path, inputs=(), force=False):
    """Refuse to overwrite an input unless ``force``, or anything but a
    regular file, and fail early when the output's folder cannot take a new
    file."""
    path = Path(path)
    check_replaceable(path)
    for given in inputs:
        if given is not None and same_path(path, given):
            if not force:
                raise InputError(f"{path}: output would overwrite the input {given}; pass --force to allow it")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{folder}: output folder does not exist or is not a folder")
    _probe(path, folder)


def _probe(path, folder, name=None):
    """Make and remove a file named as the temporary of ``name`` (default:
    path's) in ``folder``; named so, a kill leaves nothing the next write
    of it (check_room's: the next probe) would not remove."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{name or path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as exc:
        raise _unwritable(path, folder, exc) from None
    os.close(fd)
    _unlink(probe)  # gone already, if a process of another pid namespace took it for a dead one's


# This process's temporaries still being written, each with the descriptor
# that holds its flock. A name with our pid that is not among them was left
# by an earlier process that had the same pid (in a container, every run
# may be pid 1), or is being written by a process of another pid namespace
# that has it: that one holds its lock.
_WRITING = {}


def _hold(tmp, fd=None):
    """Count the temporary ``tmp`` (made by this process; ``fd`` open on it)
    as being written, and lock it until _release: a process in another pid
    namespace, where the pid in its name means nothing, sees the lock.
    HDF5 takes a flock of its own on a file it opens, which this one
    refuses: h5py opens a held temporary with locking=False."""
    if fd is None:
        fd = os.open(tmp, os.O_RDONLY)  # a folder too; not inherited by children
    with contextlib.suppress(OSError):  # a file system without locks: the pid alone tells
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _WRITING[tmp] = fd


def _release(tmp):
    fd = _WRITING.pop(tmp, None)
    if fd is not None:
        os.close(fd)


def _locked(tmp):
    """True when some process holds ``tmp``'s flock, or it is gone. One
    this user cannot open (another user's: mkstemp makes it owner-only)
    cannot tell: its pid alone does."""
    try:
        fd = os.open(tmp, os.O_RDONLY)
    except (PermissionError, IsADirectoryError):
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no locks here
        return False
    finally:
        os.close(fd)
    return False


def _temporaries(folder, name_pattern, recursive=False, folders=False):
    """Temporary files (with ``folders``, atomic_folder's temporary folders)
    under ``folder`` whose writer has died: a SIGKILL skips atomic_path's
    clean-up. A live writer's are not touched."""
    pattern = _temporary_name(name_pattern)
    for tmp in sorted((Path(folder).rglob if recursive else Path(folder).glob)(".*.tmp")):
        match = pattern.fullmatch(tmp.name)
        if match and not tmp.is_symlink() and (tmp.is_dir() if folders else tmp.is_file()) \
                and _dead(int(match.group(1)), tmp):
            yield tmp


def _dead(pid, tmp):
    if pid == os.getpid():
        return os.path.abspath(tmp) not in _WRITING and not _locked(tmp)
    return _pid_dead(pid) and not _locked(tmp)


def _pid_dead(pid):
    if pid <= 0:  # kill(0) would signal our own process group
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    return _zombie(pid)


def _zombie(pid):
    """True for a process that has ended and not yet been reaped (kill(pid, 0)
    still finds it): a killed writer, for the second or so before its parent
    waits for it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc: taken as running
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _temporary_name(name_pattern):
    # atomic_path's names: .NAME.PID. + mkstemp's 8 letters, digits or _ + .tmp
    return re.compile(rf"\.{name_pattern}\.(\d+)\.[a-z0-9_]{{8}}\.tmp")


def is_leftover(path):
    """True for a temporary file (of any output) whose writer has died:
    what remove_leftovers removes."""
    path = Path(path)
    match = _temporary_name(".+").fullmatch(path.name)
    return bool(match) and path.is_file() and not path.is_symlink() and _dead(int(match.group(1)), path)


def is_temporary_of(path, name):
    """True when ``path`` is named as atomic_path's temporaries of a file
    ``name`` are, whichever process wrote it."""
    return bool(_temporary_name(re.escape(name)).fullmatch(Path(path).name))


def remove_leftovers(folder):
    """Delete what killed writers left anywhere under ``folder`` (see
    _temporaries); returns their paths."""
    removed = []
    for tmp in _temporaries(folder, ".+", recursive=True):
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # another user's, in a sticky folder (/tmp): not ours to remove
            continue
        removed.append(tmp)
    return removed


def check_room(path, nbytes, largest=None, files=1):
    """Raise OutputError unless ``nbytes`` (in files of which the largest is
    ``largest`` bytes; default one file) fit beside ``path``, in ``files``
    new files or folders at the most at once: for a writer that aborts the
    process when a write fails, as Caffe's do (glog CHECK). The free space,
    free inodes and ulimit -f are seen; a quota is not. A folder that
    cannot take a file (read-only), or a name it cannot hold, is an
    InputError. ``path`` may be a temporary of atomic_path's."""
    path = Path(path)
    if len(os.fsencode(path.name)) > _name_max(path.parent):
        raise InputError(f"{path}: the name is too long for the folder's file system")
    _probe(path, path.parent, name="caffedsd")
    # Under a short name of its own (``path`` may be a long temporary name):
    # one a SIGKILL left is no output's temporary, which that output's next
    # write would remove, so the next probe does.
    for stale in _temporaries(path.parent, "caffedsd"):
        _unlink(stale)  # another user's, in a sticky folder (/tmp), stays
    stat = os.statvfs(Path(path).parent)
    free = stat.f_bavail * stat.f_frsize
    # Each file takes whole blocks: its last one, part filled, counts whole
    # (a model of one block's bytes and its masks of 2.5 took four).
    needed = nbytes + files * (stat.f_frsize - 1)
    if needed > free:
        raise OutputError(path, f"No space left on device: it needs at least {needed:,} bytes, {free:,} are free")
    # A file system that counts no inodes (f_files 0) has no limit to see.
    if stat.f_files and files > stat.f_favail:
        raise OutputError(path, f"No space left on device: it needs {files} new files, {stat.f_favail:,} inodes "
                                "are free")
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and (largest or nbytes) > limit:
        raise OutputError(path, f"File too large: at least {largest or nbytes:,} bytes, "
                                f"over the file-size limit (ulimit -f) of {limit:,}")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Bytes a temporary's name adds to its output's: ".", and ".PID.xxxxxxxx.tmp"
# with the longest pid Linux gives (pid_max 4194304).
_TEMPORARY_EXTRA = len("..4194304.abcdefgh.tmp")


def _name_max(folder):
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _unwritable(path, folder, exc):
    """The error for a temporary that could not be made beside ``path``: an
    InputError, or an OutputError for a want of room (no inode left)."""
    if exc.errno in _NO_ROOM:
        return OutputError(path, os.strerror(exc.errno))
    if exc.errno == errno.ENAMETOOLONG:
        limit = _name_max(folder) - _TEMPORARY_EXTRA
        if len(os.fsencode(path.name)) > limit:
            return InputError(f"{path}: the name is too long for the temporary caffedsd writes it under first "
                              f"(.NAME.PID.xxxxxxxx.tmp); give a name of at most {limit} bytes")
        return InputError(f"{path}: the path is too long for the system (PATH_MAX); give a shorter one")
    return InputError(f"{folder}: cannot write to the output folder ({exc.strerror})")


def raise_no_room(path, exc):
    """Raise OutputError naming the output ``path`` if ``exc`` was a want of
    room: an OSError of one, or an OutputError from inside (a writer that
    writes its own temporary atomically too, a file of an output folder)."""
    if isinstance(exc, OutputError):
        raise OutputError(path, exc.reason) from None
    if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
        raise OutputError(path, os.strerror(exc.errno)) from None


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` on success,
    remove it on any error or interruption."""
    path = Path(path)
    if os.path.abspath(path) in _WRITING:
        # A temporary this process is writing already (a writer handed the
        # temporary of atomic_paths): it is renamed into place once whole.
        yield path
        return
    check_replaceable(path)
    # The folder the kernel finds: os.path.abspath would take lnk/.. for the
    # folder lnk is in, while a rename to lnk/../x goes where lnk points.
    folder = Path(os.path.realpath(path.parent if str(path.parent) else "."))
    # An earlier write of this output that was killed left its temporary.
    for stale in _temporaries(folder, re.escape(path.name)) if folder.is_dir() else ():
        _unlink(stale)  # another user's, in a sticky folder (/tmp), stays
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as exc:
        raise _unwritable(path, path.parent, exc) from None
    _hold(os.path.abspath(tmp), fd)
    with _into_place(os.path.abspath(tmp), path, 0o666, _unlink) as written:
        yield written


@contextlib.contextmanager
def atomic_paths(*paths):
    """atomic_path for files that belong together (a model and its masks):
    yield a temporary beside each of ``paths``; only once the block has
    written all of them is each renamed to its path, and on any error or
    interruption all are removed: a write that fails (no room for the
    second file) leaves no path replaced beside another's earlier file.
    The renames go last path first, so the first (the model) appears only
    once the others (its masks) are there; a kill between two renames
    leaves the first path's earlier file beside the others' new ones,
    which is why masks record their model's sha256 (maskfile).
    An OutputError names them all."""
    paths = [Path(p) for p in paths]
    try:
        with contextlib.ExitStack() as held:  # left after the renames
            with contextlib.ExitStack() as stack:
                temporaries = [stack.enter_context(atomic_path(p)) for p in paths]
                yield temporaries
                held.enter_context(signals_deferred())  # the renames: all of them, or (on error) none
    except BaseException as exc:
        raise_no_room(" and ".join(map(str, paths)), exc)
        raise


@contextlib.contextmanager
def signals_deferred():
    """Hold Ctrl-C (SIGINT), SIGTERM and SIGHUP (a closed terminal) back
    until the block ends, then act on the first as its handler would: files
    that belong together (a model and the prototxt beside it) are then all
    renamed into place, or none (SIGKILL aside). Outside the main thread,
    where Python cannot set handlers, nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {number: signal.signal(number, lambda number, frame: pending.append((number, frame)))
                for number in caught}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        if pending:
            number, frame = pending[0]
            handler = previous[number]
            if callable(handler):
                handler(number, frame)
            elif handler in (signal.SIG_DFL, None):
                os.kill(os.getpid(), number)


def _unlink(path):
    with contextlib.suppress(OSError):
        os.unlink(path)


def replace_held(source, tmp):
    """``os.replace`` the whole file ``source`` over ``tmp``, a temporary
    this process holds (atomic_path's), which stays held: locked before
    the rename, the file takes its lock along, where a lock on the
    temporary's own file would go with that file."""
    tmp = os.path.abspath(tmp)
    fd = os.open(source, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(source, tmp)
    except BaseException:
        os.close(fd)
        raise
    _release(tmp)
    _WRITING[tmp] = fd


@contextlib.contextmanager
def _into_place(tmp, path, mode, remove):
    """Yield the temporary ``tmp`` (held: _hold); give it ``mode`` (less the
    umask: mkstemp and mkdtemp make it owner-only) and rename it to ``path``
    on success; ``remove`` it on any error or interruption; then release it."""
    try:
        yield Path(tmp)
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        remove(tmp)
        raise_no_room(path, exc)
        raise
    finally:
        _release(tmp)


@contextlib.contextmanager
def atomic_folder(path):
    """Yield the folder to write an output folder's files into. A new folder
    is made under a temporary name beside ``path`` and renamed to it once
    complete, so it appears whole or not at all, as atomic_path's files do;
    this also finds a folder that cannot be made before any work. An
    existing folder is written into: each file atomically, on its own."""
    path = Path(path)
    if path.is_dir():
        # A write of a new folder killed before its rename left its temporary.
        for stale in _temporaries(path.parent, re.escape(path.name), folders=True):
            shutil.rmtree(stale, ignore_errors=True)
        yield path
        return
    if path.exists() or path.is_symlink():
        raise InputError(f"{path}: exists and is not a folder; give a folder for the output")
    _check_not_masks(path)
    with folders_made(path.parent):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file on the way
            raise InputError(f"{path}: cannot create the output folder (Not a directory)") from None
        except OSError as exc:
            raise_no_room(path, exc)
            raise InputError(f"{path}: cannot create the output folder ({exc.strerror})") from None
        tmp = _temporary_folder(path, "cannot create the output folder")
        try:
            with _into_place(tmp, path, 0o777, lambda folder: shutil.rmtree(folder, ignore_errors=True)) as written:
                yield written
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and path.is_dir():
                raise InputError(f"{path}: another process made this folder while this one wrote it; nothing of "
                                 "this run's was left: run it again to write into that folder") from None
            raise


def _temporary_folder(path, failure):
    """A new temporary folder beside ``path``, under atomic_path's kind of
    name, held (_hold) until _release; what killed writers left under such
    names is removed first."""
    parent = Path(os.path.realpath(path.parent))  # as atomic_path's folder
    for stale in _temporaries(parent, re.escape(path.name), folders=True):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp = os.path.abspath(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"))
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise _unwritable(path, parent, exc) from None
        raise_no_room(path, exc)  # a full disk is not the input's fault (exit status 1)
        raise InputError(f"{path}: {failure} ({exc.strerror})") from None
    _hold(tmp)
    return tmp


@contextlib.contextmanager
def temporary_folder(path):
    """Yield a scratch folder beside ``path`` (same file system: what is
    written there can be renamed into place), removed on leaving; one a
    killed writer left is removed by the next."""
    # Held (not a killed writer's): another temporary_folder of the name, in
    # this process or another, keeps it.
    tmp = _temporary_folder(Path(path), "cannot write a temporary folder beside it")
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _release(tmp)


def process_id_space():
    """This machine and process id namespace, as a name: where a process
    id names the same process."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64]
    return f"{host}-{namespace}"


def scratch_folder():
    """A temporary_folder in the system's temporary folder: one whose process
    was killed (a SIGKILL runs no clean-up, and a solverstate's copy there
    may be a gigabyte) is removed by the next."""
    # Process ids tell a live process only on this machine, in this process
    # id namespace: a TMPDIR shared with containers or other machines holds
    # folders of processes this one cannot see.
    return temporary_folder(Path(tempfile.gettempdir()) / f"caffedsd-{process_id_space()}")


@contextlib.contextmanager
def atomic_open(path, mode="wb", encoding=None):
    """Like ``open(path, mode, encoding=encoding)`` for writing, but atomic
    (see module doc)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_hdf5(path, **options):
    """An h5py File (``options``: h5py.File's) to fill; written to ``path``
    atomically when the block ends. Made in memory, then written as bytes:
    when the disk or ulimit -f runs out under HDF5's own writes, h5py
    crashes the process closing the file (a segfault, temporaries left)."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w", **options) as h5:
        yield h5
    with atomic_open(path) as handle:
        handle.write(buffer.getbuffer())


@contextlib.contextmanager
def rewritten_hdf5(path):
    """The HDF5 file ``path`` open for change, in memory; written back
    atomically when the block ends (why in memory: atomic_hdf5)."""
    import h5py

    buffer = io.BytesIO()
    with open(path, "rb") as handle:
        shutil.copyfileobj(handle, buffer)
    with h5py.File(buffer, "r+") as h5:
        yield h5
    with atomic_open(path) as handle:
        handle.write(buffer.getbuffer())


def write_text(path, text):
    """Write ``text`` to ``path`` atomically, as UTF-8 whatever the locale:
    the same run writes the same bytes anywhere, and any name fits."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
