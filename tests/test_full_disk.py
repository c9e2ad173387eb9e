"""Commands on a really full disk: a tmpfs with no byte or no inode to spare,
in a mount namespace of the test's own (conftest.run_on_a_full_disk). A
want of room is one line and exit status 1, never bad input (exit 2), a
traceback or Caffe aborting the process, and leaves nothing behind."""
import shutil
import subprocess
import sys

import pytest

from conftest import REGRESSION_NET, run_on_a_full_disk, save_net, write_solver

CLI = [sys.executable, "-c", "from caffedsd.cli import main; main()"]


def _inputs(tmp_path, tiny):
    content = tmp_path / "content"
    content.mkdir()
    for path in tiny:
        shutil.copy(path, content / path.name)
    (tmp_path / "disk").mkdir()
    return content


def _then_list(argv):
    """``argv``, then what is left on the disk, its exit status kept."""
    return ["sh", "-c", '"$@"; rc=$?; echo "left: $(ls -A | tr "\\n" " ")"; exit $rc', "sh", *argv]


def test_check_room_counts_the_inodes_a_writer_needs(tmp_path):
    """Caffe aborts the process (glog Check failed) when it cannot create a
    snapshot's file: check_room counted bytes only."""
    (tmp_path / "content").mkdir()
    (tmp_path / "disk").mkdir()
    code = ("import sys\nfrom caffedsd.atomic import check_room\nfrom caffedsd.errors import OutputError\n"
            "check_room('a', 10, files=3)\n"
            "try:\n    check_room('a', 10, files=4)\nexcept OutputError as exc:\n    print(exc)\n")
    done = run_on_a_full_disk([sys.executable, "-c", code], content=tmp_path / "content", mount=tmp_path / "disk",
                              spare_inodes=3)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("a: could not be written (No space left on device: it needs 4 new files, "
                                   "3 inodes are free); no part of it was left")


def test_no_inode_left_for_an_output_is_no_room_not_bad_input(tiny, tmp_path):
    proto, weights = tiny
    content = _inputs(tmp_path, tiny)
    for argv, output in ((["prune", "-w", weights.name, "-s", "0.5", "-o", "out.caffemodel"], "out.caffemodel"),
                         (["compress", "-w", weights.name, "-o", "out.dcz"], "out.dcz"),
                         (["squeezenet", "-o", "sq"], "sq")):
        done = run_on_a_full_disk(_then_list(CLI + argv), content=content, mount=tmp_path / "disk")
        assert done.returncode == 1, (argv, done.stderr)
        assert done.stderr.strip() == (f"caffedsd: {output}: could not be written (No space left on device); no "
                                       "part of it was left"), argv
        assert sorted(done.stdout.splitlines()[-1].split()) == ["left:", weights.name, proto.name], argv


def test_a_folder_output_that_cannot_be_made_leaves_no_parent_folder(tiny, tmp_path):
    content = _inputs(tmp_path, tiny)
    done = run_on_a_full_disk(_then_list(CLI + ["squeezenet", "-o", "a/b/sq"]), content=content,
                              mount=tmp_path / "disk", spare_inodes=2)  # a and b, not sq's temporary
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == "caffedsd: a/b/sq: could not be written (No space left on device); no part of it " \
                                  "was left"
    assert sorted(done.stdout.splitlines()[-1].split()) == ["left:", "net.caffemodel", "net.prototxt"]


@pytest.mark.caffe
def test_a_run_folder_with_no_room_for_its_lock_is_one_line_and_gone(caffe, tmp_path):
    """The line naming the process that holds a run folder did not fit:
    a traceback, twice over (closing the file flushed it again), and an
    empty folder left."""
    content = tmp_path / "content"
    content.mkdir()
    proto, weights = save_net(caffe, content, REGRESSION_NET)
    (tmp_path / "disk").mkdir()
    argv = ["sensitivity", "-p", proto.name, "-w", weights.name, "-n", "1", "--sparsities", "0.5", "-o", "runs/sens"]
    done = run_on_a_full_disk(_then_list(CLI + argv), content=content, mount=tmp_path / "disk", spare_inodes=5,
                              fill="fill")
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == "caffedsd: runs/sens: could not be written (No space left on device); no part " \
                                  "of it was left"
    assert sorted(done.stdout.splitlines()[-1].split()) == ["fill", "left:", weights.name, proto.name]


@pytest.mark.caffe
def test_training_with_snapshots_never_aborts_in_caffe_for_want_of_inodes(caffe, tmp_path):
    """With an inode or two left, Caffe's snapshot could not be created and
    glog's Check failed aborted the process (exit 134), leaving its scratch
    folder: at every count, the run succeeds or says so in one line. Each
    file is checked for before training, and the snapshot again after the
    output, written first, took the inodes it was counted with."""
    content = tmp_path / "content"
    content.mkdir()
    _, weights = save_net(caffe, content, REGRESSION_NET)
    solver = write_solver(content)  # snapshot_after_train: the one at the end
    solver.write_text(solver.read_text().replace(f"{content}/", ""))  # its snapshots on the small disk
    (tmp_path / "disk").mkdir()
    argv = CLI + ["train-dense", "--solver", solver.name, "-w", weights.name, "-n", "4", "-o", "out.caffemodel"]
    endings = []
    for spare in range(12):
        done = run_on_a_full_disk(_then_list(argv), content=content, mount=tmp_path / "disk", spare_inodes=spare)
        if done.returncode == 0:
            break
        assert done.returncode == 1, (spare, done.stderr[-2000:])
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith("caffedsd: ") and "could not be written (No space left on device" in line, \
            (spare, done.stderr[-2000:])
        assert not [name for name in done.stdout.split() if name.endswith(".tmp")], (spare, done.stdout)
        if line.endswith("(out.caffemodel was written before it, whole)"):  # the snapshot after the output
            assert line.startswith("caffedsd: snap_iter_4.caffemodel: "), line
            assert "out.caffemodel" in done.stdout.split(), done.stdout
            endings.append("after")
        endings.append(line)
    assert done.returncode == 0, endings
    assert any("new files" in line for line in endings), endings  # the check before Caffe writes was reached
    assert "after" in endings, endings


def test_data_force_replaces_all_its_files_or_none(tmp_path):
    """Into an existing folder, with room for the new train.h5 but not
    test.h5: train.h5 was replaced, leaving it beside the earlier test.h5."""
    from test_datasets import make_source

    content = tmp_path / "content"
    content.mkdir()
    make_source(content / "src", n_train=25, n_test=10)  # 78 and 31 kB as float32
    (tmp_path / "disk").mkdir()
    (content / "fm").mkdir()
    data = CLI + ["data", "fashion-mnist", "--source", "src", "-o", "fm"]
    first = subprocess.run(data + ["--train-limit", "2", "--test-limit", "2"], cwd=content, capture_output=True,
                           text=True)
    assert first.returncode == 0, first.stderr
    script = 'sha256sum fm/*; "$@" --force; rc=$?; sha256sum fm/*; exit $rc'
    done = run_on_a_full_disk(["sh", "-c", script, "sh", *data], content=content, mount=tmp_path / "disk",
                              spare_inodes=20, fill="fill", leave=100 << 10)
    assert done.returncode == 1, done.stderr
    assert "/fm/train.h5 and " in done.stderr and done.stderr.strip().endswith(
        "/fm/test.txt: could not be written (No space left on device); no part of it was left"), done.stderr
    before, after = done.stdout.splitlines()[:4], done.stdout.splitlines()[4:]
    assert len(before) == 4 and after == before  # train.h5, test.h5 and their lists, as they were


def _train_sparse_of_a_pruned_net(caffe, tmp_path):
    """(a folder with a pruned net and its solver, train-sparse's argv for it)."""
    content = tmp_path / "content"
    content.mkdir()
    proto, weights = save_net(caffe, content, REGRESSION_NET)
    solver = write_solver(content, extra="momentum: 0.9\nsnapshot_after_train: false")
    solver.write_text(solver.read_text().replace(f"{content}/", ""))
    (tmp_path / "disk").mkdir()
    pruned = subprocess.run(CLI + ["prune", "-w", weights.name, "-s", "0.5", "-o", "p.caffemodel"], cwd=content,
                            capture_output=True, text=True)
    assert pruned.returncode == 0, pruned.stderr
    argv = CLI + ["train-sparse", "--solver", solver.name, "-w", "p.caffemodel", "-n", "3", "-o", "out.caffemodel"]
    return content, argv


@pytest.mark.caffe
def test_no_training_is_lost_for_want_of_inodes_for_its_output(caffe, tmp_path):
    """The check before training counted the temporaries of a model and its
    masks, not the probe of the room check made once they are there: with
    two inodes spare, train-sparse trained, then could not write its output."""
    content, argv = _train_sparse_of_a_pruned_net(caffe, tmp_path)
    for spare in range(6):
        done = run_on_a_full_disk(argv, content=content, mount=tmp_path / "disk", spare_inodes=spare)
        if done.returncode == 0:
            break
        assert done.returncode == 1 and "1/3" not in done.stderr, (spare, done.stderr[-2000:])  # not trained
    assert done.returncode == 0


@pytest.mark.caffe
def test_no_training_is_lost_for_want_of_bytes_for_its_masks(caffe, tmp_path):
    """The check before training counted the model's bytes, not its masks
    file's: with room for the model alone, train-sparse (train-quantized,
    train-lowrank) trained, then could not write its output."""
    content, argv = _train_sparse_of_a_pruned_net(caffe, tmp_path)
    refused = 0
    # tmpfs gives whole pages: the model takes one and its masks three (HDF5
    # 1.10's format), which the check, knowing only their sum, may round up
    # to two more.
    for pages in range(8):
        done = run_on_a_full_disk(argv, content=content, mount=tmp_path / "disk", spare_inodes=3, fill="fill",
                                  leave=4096 * pages)
        if done.returncode == 0:
            break
        assert done.returncode == 1 and "1/3" not in done.stderr, (pages, done.stderr[-2000:])  # not trained
        refused += 1
    assert done.returncode == 0 and refused >= 2  # the model fits in one page: the masks' refused it


@pytest.mark.caffe
def test_decompose_into_a_folder_puts_all_its_files_in_place_or_none(tiny, tmp_path):
    """Into an existing folder, decompose wrote its files one at a time: a
    disk that filled up left its model beside no rewritten prototxt (or an
    earlier one), and the line said nothing of it was left."""
    proto, weights = tiny
    content = _inputs(tmp_path, tiny)
    (content / "d").mkdir()
    argv = CLI + ["decompose", "-p", proto.name, "-w", weights.name, "--energy", "0.9", "-o", "d"]
    files = ["model.caffemodel", proto.name, "report.md"]
    for spare in range(12):
        done = run_on_a_full_disk(["sh", "-c", '"$@"; rc=$?; ls -A d; exit $rc', "sh", *argv], content=content,
                                  mount=tmp_path / "disk", spare_inodes=spare)
        left = sorted(done.stdout.split())
        if done.returncode == 0:
            break
        assert done.returncode == 1 and done.stderr.strip().endswith("no part of it was left"), done.stderr
        assert left == [], (spare, left)
    assert done.returncode == 0, done.stderr
    assert set(files) <= set(left), left
