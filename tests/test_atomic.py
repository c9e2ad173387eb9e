"""Atomic outputs: what a killed write leaves, and who removes it."""
import errno
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from caffedsd.atomic import (process_id_space, atomic_folder, atomic_open, atomic_paths, remove_leftovers, replace_held,
                             write_text)
from caffedsd.errors import InputError, OutputError
from conftest import kill_while_writing


def test_the_next_write_of_an_output_removes_what_a_killed_one_left(tmp_path):
    kill_while_writing(tmp_path / "model.caffemodel")
    other = kill_while_writing(tmp_path / "other.caffemodel")
    with atomic_open(tmp_path / "model.caffemodel", "w") as handle:
        handle.write("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other, "model.caffemodel"])
    assert (tmp_path / "model.caffemodel").read_text() == "whole"


def test_a_live_writers_temporary_is_kept(tmp_path):
    with atomic_open(tmp_path / "a.csv", "w") as handle:
        handle.write("1")
        with atomic_open(tmp_path / "a.csv", "w") as inner:  # the outer write is still going on
            inner.write("2")
        assert remove_leftovers(tmp_path) == []
        assert len([p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]) == 1
    assert (tmp_path / "a.csv").read_text() == "1"


def test_remove_leftovers_looks_in_subfolders_and_spares_live_writers(tmp_path):
    (tmp_path / "stage").mkdir()
    left = kill_while_writing(tmp_path / "stage" / "checkpoint.json")
    # Our own pid but no write of ours: an earlier process with the same pid
    # (in a container every run may be pid 1) left it.
    ours = tmp_path / f".model.caffemodel.{os.getpid()}.abcdefgh.tmp"
    ours.write_text("half")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kept = [".notes.tmp", f".out.csv.{live.pid}.abcd_123.tmp"]  # the user's; a running writer's
        for name in kept:
            (tmp_path / name).write_text("not ours to remove")
        assert remove_leftovers(tmp_path) == sorted([tmp_path / "stage" / left, ours])
    finally:
        live.kill()
        live.wait()
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(kept + ["stage"])


def _reaped_pid():
    """A pid no process has here now: what the pid in a temporary's name
    says of a writer in another pid namespace (a container on a shared
    volume), which may be running all the same."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# A writer elsewhere: it holds a flock on its temporary (a file or folder)
# until it is killed, as caffedsd's writers do.
_LOCKING_WRITER = ("import fcntl, os, sys, time\n"
                   "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
                   "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                   "print('held', flush=True)\n"
                   "time.sleep(120)\n")


def test_a_temporary_whose_writer_holds_its_lock_is_kept_though_its_pid_is_gone(tmp_path):
    """A second run in another container took a live run's temporaries for
    a dead run's leftovers (its pid named no process there) and removed
    them: the live run then died in Caffe's snapshot, or with a traceback."""
    live_file = tmp_path / f".out.csv.{_reaped_pid()}.abcdefgh.tmp"
    live_file.write_text("being written")
    # Our own pid, as every container's first process is pid 1.
    live_folder = tmp_path / f".snapshots.{os.getpid()}.abcdefgh.tmp"
    live_folder.mkdir()
    writers = [subprocess.Popen([sys.executable, "-c", _LOCKING_WRITER, str(held)], stdout=subprocess.PIPE, text=True)
               for held in (live_file, live_folder)]
    try:
        assert [writer.stdout.readline() for writer in writers] == ["held\n"] * 2
        assert remove_leftovers(tmp_path) == []
        with atomic_open(tmp_path / "out.csv", "w") as handle:
            handle.write("whole")
        with atomic_folder(tmp_path / "snapshots") as folder:
            write_text(folder / "a.txt", "a")
        assert live_file.read_text() == "being written" and live_folder.is_dir()
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
    assert remove_leftovers(tmp_path) == [live_file]  # killed: its lock went with it
    with atomic_folder(tmp_path / "snapshots"):
        pass
    assert not live_folder.exists()


def test_a_writers_temporaries_are_locked_while_it_writes(tmp_path):
    probe = ("import fcntl, os, sys\n"
             "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
             "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    print('locked')\n"
             "else:\n    print('free')\n")

    def lock_of(path):
        return subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True).stdout.strip()

    with atomic_open(tmp_path / "out.csv", "w"):
        (tmp,) = tmp_path.glob(".out.csv.*.tmp")
        assert lock_of(tmp) == "locked"
    with atomic_folder(tmp_path / "new") as folder:
        assert lock_of(folder) == "locked"
    assert lock_of(tmp_path / "new") == "free" and lock_of(tmp_path / "out.csv") == "free"
    # A file made whole elsewhere (Caffe's snapshot) and renamed over the
    # temporary: the lock on the temporary's own file went with that file.
    (tmp_path / "made").write_text("snapshot")
    with atomic_open(tmp_path / "snap.caffemodel", "w"):
        (tmp,) = tmp_path.glob(".snap.caffemodel.*.tmp")
        replace_held(tmp_path / "made", tmp)
        assert lock_of(tmp) == "locked"
    assert (tmp_path / "snap.caffemodel").read_text() == "snapshot" and lock_of(tmp_path / "snap.caffemodel") == "free"


@pytest.mark.skipif(os.geteuid() != 0, reason="writes as two users")
def test_another_users_dead_writers_temporary_is_removed(tmp_path):
    """mkstemp makes a temporary owner-only: another user cannot open it to
    see its lock, and it was taken for locked, and kept for ever. In a
    sticky folder it is not theirs to remove: that was a traceback."""
    import tempfile

    import shutil

    for mode in (0o777, 0o1777):  # sticky, as /tmp: only its owner may remove it, and it stays
        shared = Path(tempfile.mkdtemp(prefix="caffedsd-users-"))  # one both users reach
        try:
            shared.chmod(mode)
            left = shared / f".out.csv.{_reaped_pid()}.abcdefgh.tmp"
            left.write_text("half")
            left.chmod(0o600)
            child = os.fork()  # this Python as another user: that one may not be allowed to run its binary
            if child == 0:
                code = 1
                try:
                    os.setuid(65534)
                    with atomic_open(shared / "out.csv", "w") as handle:
                        handle.write("whole")
                    code = 0 if remove_leftovers(shared) == [] else 3
                finally:
                    os._exit(code)
            assert os.waitpid(child, 0)[1] == 0
            assert sorted(p.name for p in shared.iterdir()) == sorted(["out.csv"] + ([left.name] if mode & 0o1000 else []))
        finally:
            shutil.rmtree(shared)


def test_a_pipe_or_device_is_never_replaced(tmp_path):
    """The rename that makes outputs whole would put a regular file in place
    of a pipe or a device (`-o /dev/null` as root: /dev/null itself). A FIFO
    stands in for both here: a test that got this wrong on /dev/null would
    break the machine it runs on."""
    import pytest

    from caffedsd.atomic import check_output
    from caffedsd.errors import InputError

    fifo = tmp_path / "out.caffemodel"
    os.mkfifo(fifo)
    for attempt in (lambda: check_output(fifo), lambda: atomic_open(fifo).__enter__()):
        with pytest.raises(InputError, match="out.caffemodel: is a device, pipe or socket, not a regular file"):
            attempt()
    assert fifo.is_fifo()
    assert [p.name for p in tmp_path.iterdir()] == ["out.caffemodel"]  # no temporary left either


def test_no_room_for_an_output_is_one_line_and_leaves_nothing(tmp_path):
    """A full disk, a full quota or a file-size limit: ulimit -f stands in
    for all three (the write fails with EFBIG where a full disk gives ENOSPC)."""
    import numpy as np

    from caffedsd.caffe_proto import LayerParameter
    from caffedsd.caffemodel import new_caffemodel

    ip = LayerParameter(name="ip", type="InnerProduct", bottom=["data"], top=["ip"])
    ip.inner_product_param.num_output = 100
    new_caffemodel(tmp_path / "w.caffemodel", [(ip, [np.ones((100, 200), np.float32)])])  # 80 kB
    limited = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from caffedsd.cli import main\n"
        "main(['prune', '-w', 'w.caffemodel', '-s', '0.5', '-o', 'p.caffemodel'], prog_name='caffedsd')\n")
    result = subprocess.run([sys.executable, "-c", limited], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == ("caffedsd: p.caffemodel and p.masks.h5: could not be written (File too large); "
                                     "no part of it was left")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.caffemodel"]


def _limited(folder, limit, *args):
    """caffedsd ``args`` under ulimit -f ``limit`` bytes."""
    limited = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from caffedsd.cli import main\n"
        f"main([{', '.join(map(repr, args))}], prog_name='caffedsd')\n")
    return subprocess.run([sys.executable, "-c", limited], cwd=folder, capture_output=True, text=True)


def _prune_limited(folder, limit, *args):
    return _limited(folder, limit, "prune", *args)


@pytest.mark.parametrize("limit", [20000, 36000])
def test_no_room_for_hdf5_data_is_one_line_and_leaves_nothing(tmp_path, limit):
    """HDF5's own writes failing under h5py made it crash closing the file
    (a segfault, exit 139), its temporaries left: now the file is made in
    memory and written whole (atomic.atomic_hdf5). 20 kB: no room for the
    first file; 36 kB: for the first (31 kB of images), not the second (38)."""
    (tmp_path / "d").mkdir()
    result = _limited(tmp_path, limit, "data", "fashion-mnist", "--train-limit", "10", "--test-limit", "12",
                      "-o", "d")
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "(File too large); no part of it was left" in \
        result.stderr, result.stderr
    # A dataset's files go in together or not at all (as with --force, where
    # a new train.h5 was left beside an earlier test.h5): none of them here.
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and not list((tmp_path / "d").iterdir())


def test_a_model_and_its_masks_are_replaced_together(tmp_path):
    """Room for a pruned model but not for its masks (ulimit -f between their
    sizes): the earlier pruned model and masks both stay, not the new model
    beside the old masks."""
    import numpy as np

    from caffedsd.caffe_proto import LayerParameter
    from caffedsd.caffemodel import new_caffemodel, read_caffemodel
    from caffedsd.maskfile import load_masks

    ip = LayerParameter(name="ip", type="InnerProduct", bottom=["data"], top=["ip"])
    ip.inner_product_param.num_output = 2
    new_caffemodel(tmp_path / "w.caffemodel", [(ip, [np.arange(1, 7, dtype=np.float32).reshape(2, 3)])])
    assert _prune_limited(tmp_path, 1 << 30, "-w", "w.caffemodel", "-s", "0.5", "-o", "p.caffemodel").returncode == 0
    before = {name: (tmp_path / name).read_bytes() for name in ("p.caffemodel", "p.masks.h5")}
    assert len(before["p.caffemodel"]) < 1000 < len(before["p.masks.h5"])
    result = _prune_limited(tmp_path, 1000, "-w", "w.caffemodel", "-s", "0.2", "-o", "p.caffemodel")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == ("caffedsd: p.caffemodel and p.masks.h5: could not be written (File too large); "
                                     "no part of it was left")
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.caffemodel", "p.masks.h5", "w.caffemodel"]
    # Half of six weights: the three smallest of 1..6 pruned, in model and masks alike.
    assert read_caffemodel(tmp_path / "p.caffemodel").layer("ip").blobs[0].data.ravel().tolist() == [0] * 3 + [4, 5, 6]
    assert load_masks(tmp_path / "p.masks.h5").masks["ip"].ravel().tolist() == [False] * 3 + [True] * 3


def test_atomic_paths_renames_all_or_none(tmp_path):
    first, second = tmp_path / "a.caffemodel", tmp_path / "a.masks.h5"
    first.write_text("old model")
    second.write_text("old masks")
    with pytest.raises(OutputError, match=r"a.caffemodel and .*a.masks.h5: could not be written \(File too large\)"):
        with atomic_paths(first, second) as (model, masks):
            model.write_text("new model")
            raise OSError(errno.EFBIG, "File too large")  # what writing the masks met
    assert (first.read_text(), second.read_text()) == ("old model", "old masks")
    with atomic_paths(first, second) as (model, masks):
        model.write_text("new model")
        masks.write_text("new masks")
    assert (first.read_text(), second.read_text()) == ("new model", "new masks")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.caffemodel", "a.masks.h5"]


def test_atomic_paths_puts_the_first_path_in_place_last(tmp_path):
    # The model's rename fails (a folder made where it goes, after the
    # check): the masks, renamed first, are in, and no model appeared
    # without them.
    first, second = tmp_path / "a.caffemodel", tmp_path / "a.masks.h5"
    with pytest.raises(OSError):
        with atomic_paths(first, second) as (model, masks):
            model.write_text("new model")
            masks.write_text("new masks")
            first.mkdir()
            (first / "x").write_text("")
    assert second.read_text() == "new masks"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.caffemodel", "a.masks.h5"]


# os._exit inside atomic_folder skips its clean-up, as a SIGKILL would.
KILLED_FOLDER = ("import os, sys; from caffedsd.atomic import atomic_folder, write_text\n"
                 "with atomic_folder(sys.argv[1]) as folder:\n"
                 "    write_text(folder / 'model.caffemodel', 'whole'); os._exit(9)\n")


def test_a_new_output_folder_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "deep" / "out"
    with atomic_folder(out) as folder:
        write_text(folder / "a.prototxt", "a")
        assert not out.exists() and folder.parent == out.parent  # renamed into place only at the end
    assert sorted(p.name for p in out.iterdir()) == ["a.prototxt"]
    assert out.stat().st_mode & 0o777 == 0o777 & ~_umask()
    # A failure halfway (bad input found late, no room) leaves nothing.
    with pytest.raises(OutputError, match=r"^.*/gone: could not be written \(File too large\)"):
        with atomic_folder(tmp_path / "gone") as folder:
            write_text(folder / "a.prototxt", "a")
            raise OutputError(folder / "b.caffemodel", "File too large")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]
    # A killed writer's folder goes at the next write of the same folder.
    assert subprocess.run([sys.executable, "-c", KILLED_FOLDER, str(tmp_path / "k")]).returncode == 9
    (left,) = [p for p in tmp_path.iterdir() if p.name.startswith(".k.")]
    assert (left / "model.caffemodel").read_text() == "whole" and not (tmp_path / "k").exists()
    with atomic_folder(tmp_path / "k") as folder:
        write_text(folder / "model.caffemodel", "again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "k"]
    # Also when the folder is there by then (made by a later run), written into.
    (tmp_path / "k").rename(tmp_path / "saved")
    assert subprocess.run([sys.executable, "-c", KILLED_FOLDER, str(tmp_path / "k")]).returncode == 9
    (tmp_path / "saved").rename(tmp_path / "k")
    assert len(list(tmp_path.iterdir())) == 3
    with atomic_folder(tmp_path / "k") as folder:
        assert folder == tmp_path / "k"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "k"]


def test_an_existing_output_folder_is_written_into(tmp_path):
    (tmp_path / "mine.txt").write_text("kept")
    with atomic_folder(tmp_path) as folder:
        assert folder == tmp_path
        write_text(folder / "new.txt", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt", "new.txt"]
    (tmp_path / "file").write_text("mine")
    for path, expect in [(tmp_path / "file", "file: exists and is not a folder"),
                         (tmp_path / "file" / "out", "file/out: cannot create the output folder (Not a directory)")]:
        with pytest.raises(InputError, match=re.escape(expect)):
            with atomic_folder(path):
                pytest.fail("no folder to write into")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_check_room_for_a_writer_that_aborts(tmp_path):
    from caffedsd.atomic import check_room

    # The probe a SIGKILL left (our pid with no write of ours: an earlier
    # process's) is no output's temporary: the next probe removes it.
    (tmp_path / f".caffedsd.{os.getpid()}.abcdefgh.tmp").write_text("")
    check_room(tmp_path / "m.caffemodel", 1000)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match=r"m.caffemodel: could not be written \(No space left on device: "
                                          r"it needs at least 1,000,000,000,000,00[0-9,]{5} bytes, [0-9,]+ are free\)"):
        check_room(tmp_path / "m.caffemodel", 10 ** 18)
    # A folder that takes no file (read-only: /proc refuses files even to
    # root) would make Caffe abort at its write.
    with pytest.raises(InputError, match="/proc: cannot write to the output folder"):
        check_room(Path("/proc/m.caffemodel"), 1000)
    assert list(tmp_path.iterdir()) == []


def test_a_writer_handed_a_temporary_writes_it_in_place(tmp_path):
    """prune writes its model into atomic_paths' temporary through atomic_open:
    a second temporary inside the first would be one a kill leaves for good
    (no later write of the output looks for a name of that shape)."""
    with atomic_paths(tmp_path / "m.caffemodel", tmp_path / "m.masks.h5") as (model, masks):
        with atomic_open(model, "w") as handle:
            handle.write("model")
            assert len(list(tmp_path.iterdir())) == 2
        write_text(masks, "masks")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.caffemodel", "m.masks.h5"]
    assert (tmp_path / "m.caffemodel").read_text() == "model"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="no /proc: a zombie is taken as running")
def test_a_killed_writer_not_yet_reaped_is_dead(tmp_path):
    import time

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not end"  # nobody waits for it yet
            time.sleep(0.01)
        left = tmp_path / f".out.csv.{child.pid}.abcdefgh.tmp"
        left.write_text("half")
        with atomic_open(tmp_path / "out.csv", "w") as handle:
            handle.write("whole")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
    finally:
        child.wait()


def test_a_folder_another_process_made_meanwhile_is_one_line(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputError, match="out: another process made this folder while this one wrote it; nothing"):
        with atomic_folder(out) as folder:
            write_text(folder / "a.prototxt", "mine")
            out.mkdir()
            write_text(out / "a.prototxt", "theirs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "a.prototxt").read_text() == "theirs"


def test_a_path_through_a_symlink_and_dotdot_is_written_where_the_kernel_finds_it(tmp_path):
    (tmp_path / "deep" / "inner").mkdir(parents=True)
    (tmp_path / "lnk").symlink_to(tmp_path / "deep" / "inner")
    with atomic_open(tmp_path / "lnk" / ".." / "x.csv", "w") as handle:  # deep/x.csv, not x.csv
        handle.write("whole")
    with atomic_folder(tmp_path / "lnk" / ".." / "out") as folder:
        write_text(folder / "a.txt", "a")
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["inner", "out", "x.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "lnk"]


def test_a_name_too_long_for_the_temporary_says_so(tmp_path):
    from caffedsd.atomic import check_output

    name = "m" * 250 + ".caffemodel"[:5]  # a legal 255-byte name
    for call in (lambda: check_output(tmp_path / name), lambda: atomic_open(tmp_path / name).__enter__()):
        with pytest.raises(InputError, match=r"m{250}\.caff: the name is too long for the temporary caffedsd "
                                             r"writes it under first \(.NAME.PID.xxxxxxxx.tmp\); give a name of "
                                             r"at most \d+ bytes"):
            call()
    assert list(tmp_path.iterdir()) == []
    # A name that fits: the checks before Caffe writes into its temporary
    # (check_room, handed that longer name) must not refuse it after training.
    from caffedsd.atomic import check_room

    fits = "m" * 230
    check_output(tmp_path / fits)
    with atomic_open(tmp_path / fits, "w") as handle:
        check_room(Path(handle.name), 10)
        handle.write("whole")
    assert [p.name for p in tmp_path.iterdir()] == [fits]
    # A path that fits PATH_MAX (4096), and whose temporary does not, is that, not a name too long.
    deep = tmp_path
    while len(str(deep)) < 3880:
        deep = deep / ("d" * 200)
        deep.mkdir()
    with pytest.raises(InputError, match="the path is too long for the system"):
        check_output(deep / ("x" * (4085 - len(str(deep)) - 1)))


def test_signals_are_held_back_until_files_that_belong_together_are_in(tmp_path):
    """Ctrl-C or SIGTERM between the renames of a model and the prototxt
    beside it left the pair mismatched; held back, it acts once all are in."""
    from caffedsd.atomic import signals_deferred

    class Stopped(Exception):
        pass

    def stop(number, frame):
        raise Stopped(number)

    previous, hangup = signal.signal(signal.SIGTERM, stop), signal.getsignal(signal.SIGHUP)
    # As in a terminal: a shell's background job (a CI step) starts with SIGINT ignored.
    interrupt = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(Stopped):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)  # only the first acts
                write_text(tmp_path / "model", "new")
                write_text(tmp_path / "net.prototxt", "new")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "net.prototxt"]
        assert signal.getsignal(signal.SIGTERM) is stop
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGHUP) == hangup  # as it was (ignored under nohup)
        with pytest.raises(Stopped), atomic_paths(tmp_path / "a", tmp_path / "b") as (a, b):
            os.kill(os.getpid(), signal.SIGTERM)  # while they are written: none goes in
            a.write_text("a")
        assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, interrupt)


@pytest.mark.parametrize("sig, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_that_code_turned_into_its_own_error_ends_the_command_as_the_signal(tmp_path, sig, status):
    """Ctrl-C or SIGTERM while matplotlib's Agg drew a plot (dsd's
    curves.png) came out as its "ValueError: Invalid bounding box" and a
    traceback. A command that turns the signal's exception into its own
    error stands in for it."""
    code = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "import click\n"
        "from caffedsd import cli\n"
        "@cli.main.group(cls=cli._Group)\n"
        "def outer():\n"
        "    pass\n"
        "@outer.command()\n"
        "def draw():\n"
        "    try:\n"
        f"        os.kill(os.getpid(), signal.{sig})\n"
        "        for _ in range(10 ** 8):\n"
        "            pass\n"
        "    except KeyboardInterrupt:\n"
        "        raise ValueError('Invalid bounding box')\n"
        "cli.program(args=['outer', 'draw'], prog_name='caffedsd')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(
        f"caffedsd: {'interrupted' if sig == 'SIGINT' else 'terminated (SIGTERM)'}; outputs that had finished are kept")


def test_ctrl_c_while_starting_that_python_drops_still_stops_the_command(tmp_path):
    """Ctrl-C while the command line is imported, raised where Python drops
    exceptions (a finalizer of the import system): "interrupted while
    starting; nothing was written", then a traceback, then the command ran,
    wrote its outputs and exited 0. A gc callback stands in for the
    finalizer."""
    code = (
        "import gc, os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from caffedsd.__main__ import _quit_while_starting, main\n"
        "def send_once(phase, info):\n"
        "    if phase == 'stop' and 'caffedsd.cli' in sys.modules and not sent:\n"
        "        if signal.getsignal(signal.SIGINT) is _quit_while_starting:\n"
        "            sent.append(1)\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "sent = []\n"
        "gc.callbacks.append(send_once)\n"
        "sys.exit(main(args=['squeezenet', '-o', 'sq'], prog_name='caffedsd'))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 130, result.stderr
    assert result.stderr == "caffedsd: interrupted while starting; nothing was written\n"
    assert not (tmp_path / "sq").exists()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_once_the_work_is_over_ends_the_process_without_a_traceback(tmp_path, sig):
    """Ctrl-C as a finished command exited (a second one, after the first's
    line) was raised in the interpreter's exit: "Exception ignored in
    atexit callback" and a traceback, exit status 0. An atexit callback
    that sends it stands in for the timing."""
    code = (
        "import atexit, os, signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from caffedsd.cli import program\n"
        f"atexit.register(lambda: (os.kill(os.getpid(), signal.{sig}), time.sleep(1)))\n"
        "program(args=['squeezenet', '-o', 'sq'], prog_name='caffedsd')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == -getattr(signal, sig), result.stderr  # as the signal ends any program
    assert result.stderr == "" and (tmp_path / "sq" / "train_val.prototxt").exists()


@pytest.mark.parametrize("sig, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_raised_where_python_swallows_it_still_ends_the_command(caffe, tmp_path, sig, status):
    """Ctrl-C or SIGTERM raised inside an h5py object's finalizer is dropped
    (Python can only print it, "Exception ignored ... KeyboardInterrupt",
    which it no longer does): the command went on and exited 0. A gc
    callback stands in for the finalizer (the same dropping)."""
    import numpy as np

    from caffedsd.caffe_proto import LayerParameter
    from caffedsd.caffemodel import new_caffemodel

    ip = LayerParameter(name="ip", type="InnerProduct", bottom=["data"], top=["ip"])
    ip.inner_product_param.num_output = 2
    new_caffemodel(tmp_path / "w.caffemodel", [(ip, [np.arange(1, 7, dtype=np.float32).reshape(2, 3)])])
    code = (
        "import gc, os, signal, sys\n"
        # As in a terminal: a shell's background job (a CI step) starts with SIGINT ignored.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from caffedsd.cli import program\n"
        "sent = []\n"
        "def send_once(phase, info):\n"
        "    if phase == 'start' and not sent:\n"
        "        sent.append(1)\n"
        f"        os.kill(os.getpid(), signal.{sig})\n"
        "gc.callbacks.append(send_once)\n"
        "program(args=['prune', '-w', 'w.caffemodel', '-s', '0.5', '-o', 'p.caffemodel'], prog_name='caffedsd')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == status, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # no "Exception ignored" and its traceback
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"caffedsd: {'interrupted' if sig == 'SIGINT' else 'terminated (SIGTERM)'}; outputs that had finished are kept")
    # Training stops at its next step, not at the command's end.
    from conftest import write_solver

    solver = write_solver(tmp_path)
    caffe.get_solver(str(solver)).net.save(str(tmp_path / "r.caffemodel"))
    train = code.replace("['prune', '-w', 'w.caffemodel', '-s', '0.5', '-o', 'p.caffemodel']",
                         f"['train-dense', '--solver', {str(solver)!r}, '-w', 'r.caffemodel', '-n', '5000', "
                         "'-o', 'd.caffemodel']")
    result = subprocess.run([sys.executable, "-c", train], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == status, result.stderr
    assert not (tmp_path / "d.caffemodel").exists()


def test_a_killed_processs_scratch_folder_is_removed_by_the_next(tmp_path):
    """train-* copy a solverstate (up to a gigabyte) into a scratch folder in
    TMPDIR: one a SIGKILL left stayed there for good, one per kill."""
    code = ("import os, sys\nfrom caffedsd.atomic import scratch_folder\n"
            "with scratch_folder() as work:\n"
            "    (work / 'clean.solverstate').write_bytes(b'x' * 100)\n"
            "    print(work, flush=True)\n"
            "    if sys.argv[1] == 'kill': os._exit(9)\n"
            "    with scratch_folder():\n"  # another in the same process keeps it
            "        assert (work / 'clean.solverstate').is_file()\n")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        space = process_id_space()
        alive = tmp_path / f".caffedsd-{space}.{sleeper.pid}.abcdefgh.tmp"  # a running process's: kept
        alive.mkdir()
        # Another machine's or container's, whose process ids this one cannot tell: kept.
        elsewhere = tmp_path / f".caffedsd-{space}9.{sleeper.pid + 99999}.abcdefgh.tmp"
        elsewhere.mkdir()
        killed = subprocess.run([sys.executable, "-c", code, "kill"], env=env, capture_output=True, text=True)
        assert killed.returncode == 9
        left = Path(killed.stdout.strip())
        assert left.parent == tmp_path and (left / "clean.solverstate").is_file()
        done = subprocess.run([sys.executable, "-c", code, "end"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, elsewhere.name])
        # A relative TMPDIR names the same folders.
        again = subprocess.run([sys.executable, "-c", code, "end"], env=dict(env, TMPDIR="."), cwd=tmp_path,
                               capture_output=True, text=True)
        assert again.returncode == 0 and Path(again.stdout.strip()).is_absolute(), again.stderr
    finally:
        sleeper.kill()
        sleeper.wait()
