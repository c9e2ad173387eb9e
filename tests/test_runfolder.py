"""The one run folder: made once, continued by the same inputs, refused to others."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from caffedsd.errors import InputError
from caffedsd.runfolder import (COUNT, FRACTION, NAME, SHA256, RunFolder, optional, read_json, table,
                                wrong_value)
from conftest import kill_while_writing


def _folder(path):
    return RunFolder(path, "run.json", "run", "recipe, solver or net")


def test_made_once_and_continued_by_the_same_record(tmp_path):
    with _folder(tmp_path / "run").open({"fingerprint": "a"}, files={"recipe.yaml": "seed: 0\n"}) as folder:
        assert (tmp_path / "run" / "recipe.yaml").read_text() == "seed: 0\n"
        folder.append("points.jsonl", {"n": 1})
    with _folder(tmp_path / "run").open({"fingerprint": "a"}) as again:
        assert again.journal("points.jsonl") == [{"n": 1}]


def test_another_record_or_a_foreign_folder_is_refused(tmp_path):
    _folder(tmp_path / "run").open({"fingerprint": "a"}).close()
    with pytest.raises(InputError, match="run: made by a different recipe, solver or net; give a new -o"):
        _folder(tmp_path / "run").open({"fingerprint": "b"})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="other: exists and is not a caffedsd run folder"):
        _folder(tmp_path / "other").open({"fingerprint": "a"})
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["notes.txt"]


def test_a_takeover_makes_the_folder_the_new_records(tmp_path):
    _folder(tmp_path / "run").open({"fingerprint": "a"}, files={"recipe.yaml": "a\n"}).close()

    def refuse(folder, found):
        raise InputError(f"{folder.path}: not taken")

    with pytest.raises(InputError, match="run: not taken"):
        _folder(tmp_path / "run").open({"fingerprint": "b"}, files={"recipe.yaml": "b\n"}, takeover=refuse)
    assert (tmp_path / "run" / "recipe.yaml").read_text() == "a\n"
    seen = []
    with _folder(tmp_path / "run").open({"fingerprint": "b"}, files={"recipe.yaml": "b\n"},
                                        takeover=lambda *args: seen.append(args)) as folder:
        assert seen == [(folder, {"fingerprint": "a"})]
    assert (tmp_path / "run" / "run.json").read_text() == '{\n  "fingerprint": "b"\n}\n'
    assert (tmp_path / "run" / "recipe.yaml").read_text() == "b\n"
    # Killed between the marker and the files: the same record puts them right.
    (tmp_path / "run" / "recipe.yaml").write_text("a\n")
    _folder(tmp_path / "run").open({"fingerprint": "b"}, files={"recipe.yaml": "b\n"}).close()
    assert (tmp_path / "run" / "recipe.yaml").read_text() == "b\n"
    # And a new folder killed before its files: the marker is written first.
    (tmp_path / "run" / "recipe.yaml").unlink()
    _folder(tmp_path / "run").open({"fingerprint": "b"}, files={"recipe.yaml": "b\n"}).close()
    assert (tmp_path / "run" / "recipe.yaml").read_text() == "b\n"


def test_a_journal_line_cut_short_by_a_kill_is_skipped(tmp_path):
    folder = _folder(tmp_path / "run").open({})
    folder.append("points.jsonl", {"n": 1})
    with open(tmp_path / "run" / "points.jsonl", "a") as handle:
        handle.write('{"n": 2')
    assert folder.journal("points.jsonl") == [{"n": 1}]
    folder.append("points.jsonl", {"n": 3})  # on a line of its own, not glued to the cut one
    assert folder.journal("points.jsonl") == [{"n": 1}, {"n": 3}]
    assert folder.journal("missing.jsonl") == []
    # Lines edited since: not an object, without a key asked for, not UTF-8.
    with open(tmp_path / "run" / "points.jsonl", "ab") as handle:
        handle.write(b'\n[1]\n{"m": 3}\n{"n": "\xff"}\n{"n": 4, "m": 5}\n')
    assert folder.journal("points.jsonl", keys=("n",)) == [{"n": 1}, {"n": 3}, {"n": 4, "m": 5}]


def test_values_of_another_kind_are_named():
    kinds = {"iter": COUNT, "file": optional(NAME), "share": FRACTION, "test": table(optional(COUNT), keys=("a", "b"))}
    assert wrong_value({"iter": 3, "file": None, "share": 1, "test": {"a": 2, "b": None}}, kinds) is None
    assert wrong_value({}, kinds) is None  # which keys must be there is read_json's and journal's keys
    for record, expect in [({"iter": True}, "its iter true is not a count"),
                           ({"iter": -1}, "its iter -1 is not a count"),
                           ({"iter": 2.0}, "its iter 2.0 is not a count"),
                           ({"file": ""}, 'its file "" is not a name or null'),
                           ({"share": 1.5}, "its share 1.5 is not a fraction"),
                           ({"share": float("nan")}, "its share NaN is not a fraction"),
                           ({"test": {"c": 1}}, 'its test {"c": 1} is not a table of count or null values'),
                           ({"test": [1]}, "its test [1] is not a table of count or null values"),
                           ({"iter": "x" * 50}, 'its iter "' + "x" * 36 + '... is not a count')]:
        assert wrong_value(record, kinds) == expect
    assert SHA256("0" * 64) and not SHA256("0" * 63) and not SHA256("A" * 64)


def test_a_record_or_journal_line_of_another_kind(tmp_path):
    (tmp_path / "r.json").write_text('{"iter": "5"}')
    with pytest.raises(InputError, match=r'r.json: damaged, its iter "5" is not a count; remove it to redo its work$'):
        read_json(tmp_path / "r.json", kinds={"iter": COUNT})
    folder = _folder(tmp_path / "run").open({})
    for record in ({"n": 1}, {"n": "2"}, {"m": 3}, {"n": 4}):
        folder.append("points.jsonl", record)
    assert folder.journal("points.jsonl", keys=("n",), kinds={"n": COUNT, "m": COUNT}) == [{"n": 1}, {"n": 4}]


def test_abandon_undoes_only_what_open_started(tmp_path):
    # A folder open() made goes entirely, so the corrected rerun starts afresh.
    folder = _folder(tmp_path / "run").open({"fingerprint": "a"}, files={"recipe.yaml": "seed: 0\n"})
    (tmp_path / "run" / "01-dense").mkdir()
    folder.abandon()
    assert not (tmp_path / "run").exists()
    _folder(tmp_path / "run").open({"fingerprint": "b"})  # not refused as made by "a"
    # An empty folder given with -o stays, emptied.
    (tmp_path / "given").mkdir()
    folder = _folder(tmp_path / "given").open({"fingerprint": "a"})
    (tmp_path / "given" / "01-dense").mkdir()
    folder.abandon()
    assert (tmp_path / "given").is_dir() and not any((tmp_path / "given").iterdir())
    # A folder continued from an earlier run is never touched.
    with _folder(tmp_path / "kept").open({"fingerprint": "a"}) as kept:
        kept.append("points.jsonl", {"n": 1})
    again = _folder(tmp_path / "kept").open({"fingerprint": "a"})
    again.abandon()
    assert again.journal("points.jsonl") == [{"n": 1}]


def test_a_continued_folder_loses_the_temporary_files_of_a_killed_write(tmp_path):
    folder = _folder(tmp_path / "run").open({"fingerprint": "a"})
    (tmp_path / "run" / "stage").mkdir()
    kill_while_writing(tmp_path / "run" / "stage" / "checkpoint.json")
    (tmp_path / "run" / ".notes.tmp").write_text("the user's")  # not a name atomic_path makes
    folder.append("points.jsonl", {"n": 1})
    folder.close()
    _folder(tmp_path / "run").open({"fingerprint": "a"})
    assert list((tmp_path / "run" / "stage").iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        ".caffedsd.lock", ".notes.tmp", "points.jsonl", "run.json", "stage"]


def test_one_process_at_a_time(tmp_path):
    """A second caffedsd on a folder in use is refused, naming the holder;
    the folder is free again once the first closes it, or its process ends."""
    first = _folder(tmp_path / "run").open({"fingerprint": "a"})
    for record in ({"fingerprint": "a"}, {"fingerprint": "b"}):
        with pytest.raises(InputError, match=f"run: in use by caffedsd \\(process {os.getpid()} on .+\\); wait"):
            _folder(tmp_path / "run").open(record)
    assert first.journal("points.jsonl") == []  # the refused ones took nothing away
    first.close()
    with _folder(tmp_path / "run").open({"fingerprint": "a"}):
        pass
    # A new folder is held from its making on, before its marker is written.
    second = _folder(tmp_path / "new").open({"fingerprint": "a"})
    with pytest.raises(InputError, match="new: in use by caffedsd"):
        _folder(tmp_path / "new").open({"fingerprint": "a"})
    second.close()
    # Only the lock file of a run that died before its marker: not a foreign folder.
    (tmp_path / "died").mkdir()
    (tmp_path / "died" / ".caffedsd.lock").write_text("process 1 on elsewhere\n")
    with _folder(tmp_path / "died").open({"fingerprint": "a"}):
        assert (tmp_path / "died" / "run.json").is_file()


def test_a_killed_holder_frees_the_folder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from caffedsd.runfolder import RunFolder
held = RunFolder({str(tmp_path / "run")!r}, "run.json", "run", "x").open({{"fingerprint": "a"}})
print("held", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"in use by caffedsd \\(process {holder.pid} on "):
            _folder(tmp_path / "run").open({"fingerprint": "a"})
    finally:
        holder.kill()
        holder.wait()
    with _folder(tmp_path / "run").open({"fingerprint": "a"}):  # the kernel dropped the dead process's lock
        pass


def test_a_folder_killed_while_its_marker_was_written_is_still_ours(tmp_path):
    """A kill in the first write of run.json leaves the lock and the marker's
    temporary: a rerun, even with --force, must not call it foreign."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".caffedsd.lock").write_text("process 1 on elsewhere\n")
    kill_while_writing(tmp_path / "run" / "run.json")
    with _folder(tmp_path / "run").open({"fingerprint": "a"}):
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".caffedsd.lock", "run.json"]


def test_a_marker_temporary_of_a_process_id_in_use_again_is_still_ours(tmp_path):
    """The same kill, where the process id in the temporary's name is another
    live process's by now (containers reuse ids soon): it was refused as
    foreign, then left in the folder."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / ".caffedsd.lock").write_text(f"process {live.pid} on elsewhere\n")
        (tmp_path / "run" / f".run.json.{live.pid}.abcdefgh.tmp").write_text('{"fingerp')
        with _folder(tmp_path / "run").open({"fingerprint": "a"}):
            assert json.loads((tmp_path / "run" / "run.json").read_text())["fingerprint"] == "a"
            assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".caffedsd.lock", "run.json"]
    finally:
        live.kill()
        live.wait()


def test_an_existing_folder_that_takes_no_file_is_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    (tmp_path / "run").mkdir(mode=0o500)
    with pytest.raises(InputError, match="run: cannot write to the run folder"):
        _folder(tmp_path / "run").open({"fingerprint": "a"})


def test_a_folder_with_a_live_writers_temporary_is_not_taken_for_ours(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / f".notes.txt.{live.pid}.abcdefgh.tmp").write_text("being written")
        with pytest.raises(InputError, match="run: exists and is not a caffedsd run folder"):
            _folder(tmp_path / "run").open({"fingerprint": "a"})
    finally:
        live.kill()
        live.wait()


def test_a_pipe_in_place_of_a_file_of_its_own_is_named_not_waited_on(tmp_path):
    """A FIFO at run.json, a stage's CSV or the journal made the rerun wait
    forever on the read; one at the lock file said "(None)"."""
    import signal

    from caffedsd.dsd import read_stage_csv

    folder = _folder(tmp_path / "run").open({})
    folder.close()
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("waited on the pipe"))
    signal.alarm(10)
    try:
        for name in ("record.json", "points.jsonl", "curve.csv"):
            os.mkfifo(tmp_path / "run" / name)
        with pytest.raises(InputError, match=r"record.json: cannot be read \(a pipe or device, not a regular file\); "
                                             "remove it"):
            read_json(tmp_path / "run" / "record.json")
        with pytest.raises(InputError, match=r"points.jsonl: cannot be read \(a pipe or device"):
            folder.journal("points.jsonl")
        with pytest.raises(InputError, match=r"curve.csv: cannot be read \(a pipe or device, not a regular file\); "
                                             "again$"):
            read_stage_csv(tmp_path / "run" / "curve.csv", json.loads, "again")
        (tmp_path / "run" / ".caffedsd.lock").unlink()
        os.mkfifo(tmp_path / "run" / ".caffedsd.lock")
        with pytest.raises(InputError, match=r"run/.caffedsd.lock: not a regular file \(a folder, device or pipe\); "
                                             "remove it$"):
            _folder(tmp_path / "run").open({})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
