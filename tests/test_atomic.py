"""Atomic outputs: what a killed write leaves, and who removes it."""
import os

from caffedsd.atomic import atomic_open, remove_leftovers
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


def test_remove_leftovers_looks_in_subfolders_and_only_at_its_own_names(tmp_path):
    (tmp_path / "stage").mkdir()
    left = kill_while_writing(tmp_path / "stage" / "checkpoint.json")
    user_files = [".notes.tmp", f".x.otherhost-{os.getpid() + 10**7}.abcdefgh.tmp"]
    for name in user_files:
        (tmp_path / name).write_text("not ours")
    assert remove_leftovers(tmp_path) == [tmp_path / "stage" / left]
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(user_files + ["stage"])
