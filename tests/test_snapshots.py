"""The solver's own snapshots in train-* commands: Caffe's files, under
Caffe's names, each pair appearing whole or not at all."""
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from caffedsd.caffemodel import read_caffemodel
from caffedsd.snapshots import SolverSnapshots, snapshot_bytes
from caffedsd.solver_spec import read_solver
from caffedsd.solverstate import learned_net, set_learned_net
from caffedsd.training import open_solver
from caffedsd.values import next_multiple
from conftest import write_solver

pytestmark = pytest.mark.caffe


def _files(folder):
    return sorted(p.name for p in folder.iterdir() if "_iter_" in p.name)


def _hdf5_contents(path):
    """Every dataset's dtype, shape and bytes, by name. Not the file's bytes:
    Caffe's HDF5 writer stamps each dataset with the second it was written."""
    contents = {}

    def record(name, item):
        if isinstance(item, h5py.Dataset):
            contents[name] = (item.dtype.str, item.shape, np.asarray(item[()]).tobytes())

    with h5py.File(path, "r") as f:
        f.visititems(record)
    return contents


@pytest.mark.parametrize("snapshot_format", ["BINARYPROTO", "HDF5"])
def test_a_snapshot_is_the_pair_caffe_writes(caffe, tmp_path, snapshot_format):
    spec = read_solver(write_solver(tmp_path, snapshot=2, extra=f"momentum: 0.9\nsnapshot_format: {snapshot_format}"))
    (tmp_path / "b").mkdir()
    # The solver file as `caffe train` reads it, less the test pass at 0 that
    # run_phase does not make (it draws from the RNG DummyData fills with).
    native_file = tmp_path / "native.prototxt"
    native_file.write_text(spec.path.read_text() + "test_initialization: false\n")
    native = caffe.get_solver(str(native_file))
    native.step(2)  # Caffe snapshots by itself, at iteration 2
    names = _files(tmp_path)
    suffix = ".h5" if snapshot_format == "HDF5" else ""
    assert names == [f"snap_iter_2.caffemodel{suffix}", f"snap_iter_2.solverstate{suffix}"]
    caffes = {name: (tmp_path / name).read_bytes() for name in names}
    for name in names:
        (tmp_path / name).unlink()

    with SolverSnapshots(spec) as snapshots:
        solver, param = open_solver(spec, tmp_path / "b", snapshot_prefix=snapshots.solver_prefix)
        assert param.snapshot == 0 and not param.snapshot_after_train
        solver.step(2)
        assert _files(tmp_path) == []  # Caffe wrote none by itself
        snapshots.write(solver, snapshot_bytes(spec, solver.net))
    assert _files(tmp_path) == names
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the scratch folder is gone
    model, state = (tmp_path / name for name in names)
    if snapshot_format == "BINARYPROTO":
        assert {name: (tmp_path / name).read_bytes() for name in names} == caffes
    else:
        for name in names:
            (tmp_path / f"caffes-{name}").write_bytes(caffes[name])
            assert _hdf5_contents(tmp_path / name) == _hdf5_contents(tmp_path / f"caffes-{name}")
        with h5py.File(state, "r") as ours, h5py.File(tmp_path / f"caffes-{state.name}", "r") as theirs:
            assert ours["learned_net"][()] == theirs["learned_net"][()] == os.fsencode(str(model))
            assert ours["learned_net"].dtype == theirs["learned_net"].dtype  # a C string, its NUL counted
    # Caffe's restore reads the model the state names.
    again, _ = open_solver(spec, tmp_path / "b")
    again.net.params["conv1"][0].data[...] = 7.0
    again.restore(str(state))
    assert again.iter == 2
    np.testing.assert_array_equal(again.net.params["conv1"][0].data, solver.net.params["conv1"][0].data)


def test_a_snapshot_takes_away_the_masks_of_the_model_it_replaces(caffe, tmp_path):
    spec = read_solver(write_solver(tmp_path, snapshot=1))
    (tmp_path / "snap_iter_1.caffemodel").write_bytes(b"a pruned model")
    masks = tmp_path / "snap_iter_1.masks.h5"
    masks.write_bytes(b"its masks")
    (tmp_path / "work").mkdir()
    with SolverSnapshots(spec) as snapshots:
        solver, _ = open_solver(spec, tmp_path / "work", snapshot_prefix=snapshots.solver_prefix)
        solver.step(1)
        snapshots.write(solver, snapshot_bytes(spec, solver.net))
    assert not masks.exists()  # else prune, verify and compress would take them for the snapshot's
    assert read_caffemodel(tmp_path / "snap_iter_1.caffemodel").layer("conv1").blobs[0].data.size == 72


# One InnerProduct of 4096 x 4096: a snapshot writes 2 x 64 MiB, long enough
# to be caught in the middle.
BIG_NET = """
layer { name: "data" type: "DummyData" top: "data" top: "target"
        dummy_data_param { shape { dim: 1 dim: 4096 } shape { dim: 1 dim: 4096 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 4096 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "target" top: "loss" }
"""


def _train(tmp_path, iterations):
    return subprocess.Popen(
        [sys.executable, "-m", "caffedsd", "train-dense",
         "--solver", str(tmp_path / "solver.prototxt"), "-w", str(tmp_path / "start.caffemodel"),
         "-n", str(iterations), "-o", str(tmp_path / "out.caffemodel"), "--test-interval", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _killed_in_a_snapshot(caffe, tmp_path, sig):
    """A train-dense of BIG_NET sent ``sig`` once its first snapshot has
    begun; returns (the process, ended, and the size of a whole model)."""
    (tmp_path / "net.prototxt").write_text(BIG_NET)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0.001\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 100\n'
        f'snapshot: 1\nsnapshot_prefix: "{tmp_path / "snap"}"\nrandom_seed: 1\n')
    caffe.Net(str(tmp_path / "net.prototxt"), caffe.TRAIN).save(str(tmp_path / "start.caffemodel"))
    proc = _train(tmp_path, 50)
    deadline = time.time() + 120
    seen = None
    while seen is None and time.time() < deadline and proc.poll() is None:
        # The first file of a snapshot, wherever it is written.
        seen = next((p for p in tmp_path.rglob("snap_iter_*.caffemodel")), None)
    assert seen is not None, f"no snapshot began: {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return proc, (tmp_path / "start.caffemodel").stat().st_size


def test_sigterm_ends_a_run_as_ctrl_c_does(caffe, tmp_path):
    """Left to its default, SIGTERM (kill, timeout, a batch scheduler) ended
    the process where it stood: a snapshot's temporary file stayed, and
    nothing was said."""
    proc, expected = _killed_in_a_snapshot(caffe, tmp_path, signal.SIGTERM)
    assert proc.returncode == 143
    lines = proc.stderr.read().strip().splitlines()
    assert lines[-1].startswith("caffedsd: terminated (SIGTERM); outputs that had finished are kept"), lines[-1]
    assert "Traceback" not in "\n".join(lines)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not (tmp_path / "out.caffemodel").exists()
    for model in tmp_path.glob("snap_iter_*.caffemodel"):
        assert model.stat().st_size == expected and model.with_suffix(".solverstate").is_file()


def test_a_snapshot_killed_midway_leaves_no_file_under_its_name(caffe, tmp_path):
    _, expected = _killed_in_a_snapshot(caffe, tmp_path, signal.SIGKILL)
    for model in tmp_path.glob("snap_iter_*.caffemodel"):  # whatever bears a snapshot's name is whole
        assert model.stat().st_size == expected, f"{model.name}: {model.stat().st_size} of {expected} bytes"
        read_caffemodel(model)
        assert model.with_suffix(".solverstate").is_file()
    # The next run removes what the killed one left.
    rerun = _train(tmp_path, 1)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()[-2000:]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert (tmp_path / "snap_iter_1.caffemodel").stat().st_size == expected


def test_the_next_periodic_iteration_is_strictly_after_the_one_given():
    assert [next_multiple(i, 5) for i in (0, 4, 5, 9, 10)] == [5, 5, 10, 10, 15]
    assert next_multiple(7, 0) is None  # every 0: never


def test_a_moved_state_is_pointed_at_its_model_in_a_copy_leaving_it_as_hashed(caffe, tmp_path):
    """dsd's checkpoint state names its caffemodel by the path it was written
    at; moved, a copy naming the model beside it is restored, and the state a
    record hashed stays as it was (rewritten in place, a kill in between left
    a state its record refused)."""
    spec = read_solver(write_solver(tmp_path))
    solver, _ = open_solver(spec, tmp_path)
    solver.step(2)
    solver.snapshot()
    (tmp_path / "moved").mkdir()
    (tmp_path / "work").mkdir()
    for name in ("snap_iter_2.caffemodel", "snap_iter_2.solverstate"):
        (tmp_path / name).rename(tmp_path / "moved" / name)
    state, model = tmp_path / "moved" / "snap_iter_2.solverstate", tmp_path / "moved" / "snap_iter_2.caffemodel"
    before = state.read_bytes()
    assert learned_net(state) == os.fsencode(tmp_path / "snap_iter_2.caffemodel")
    copy = tmp_path / "work" / state.name
    set_learned_net(state, os.fsencode(model), copy)
    assert state.read_bytes() == before and learned_net(copy) == os.fsencode(model)
    assert len(copy.read_bytes()) == len(before) + len("/moved")
    again, _ = open_solver(spec, tmp_path / "work")
    again.restore(str(copy))  # Caffe aborts the process on a learned_net it does not find
    assert again.iter == 2
    np.testing.assert_array_equal(again.net.params["conv1"][0].data, solver.net.params["conv1"][0].data)


@pytest.mark.parametrize("snapshot_format", ["BINARYPROTO", "HDF5"])
def test_a_snapshot_holds_the_layers_of_phase_test_only(caffe, tmp_path, cli, snapshot_format):
    """Caffe snapshots the train net: a layer of phase TEST only with
    weights was left out, and train-sparse refused to go on from its own
    snapshot (the masks were made for a model with it; without them, the
    layer would have been left random)."""
    from caffedsd.caffe_env import caffe_binary
    from caffedsd.caffe_proto import read_net_prototxt
    from caffedsd.hdf5_weights import hdf5_layers

    solver = write_solver(tmp_path, snapshot=2, extra=f"momentum: 0.9\nsnapshot_format: {snapshot_format}")
    net = tmp_path / "net.prototxt"
    net.write_text(net.read_text() + 'layer { name: "probe" type: "InnerProduct" bottom: "fc1" top: "probe" '
                   'include { phase: TEST } inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }\n')
    caffe.Net(str(net), caffe.TEST).save(str(tmp_path / "start.caffemodel"))
    assert cli("prune", "-w", "start.caffemodel", "-s", 0.5, "-o", "pruned.caffemodel").exit_code == 0
    result = cli("train-sparse", "--solver", solver, "-w", "pruned.caffemodel", "-n", 2, "-o", "a.caffemodel")
    assert result.exit_code == 0, result.output
    suffix = ".h5" if snapshot_format == "HDF5" else ""
    model, state = tmp_path / f"snap_iter_2.caffemodel{suffix}", tmp_path / f"snap_iter_2.solverstate{suffix}"
    # Caffe's log, which would name them, is quiet.
    assert result.output.splitlines()[-1] == f"wrote the solver's snapshot {model} and {state}"
    start = read_caffemodel(tmp_path / "pruned.caffemodel").layer("probe").blobs
    if suffix:
        held = dict((param.name, arrays) for param, arrays in hdf5_layers(model, read_net_prototxt(net), net))["probe"]
    else:
        held = [blob.data for blob in read_caffemodel(model).layer("probe").blobs]
    assert len(held) == len(start)  # (zip's strict=True: Python 3.10)
    for kept, given in zip(held, start):
        np.testing.assert_array_equal(kept, given.data)
    proc = subprocess.run([str(caffe_binary()), "test", f"--model={net}", f"--weights={model}", "--iterations=1"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "Ignoring source layer" not in proc.stderr, proc.stderr[-2000:]
    if suffix:  # (converting it refused it too: Caffe would leave probe random)
        assert cli("convert", "-p", net, "-w", model, "-o", "snap.caffemodel").exit_code == 0
        model = tmp_path / "snap.caffemodel"
    result = cli("train-sparse", "--solver", solver, "-w", model, "-m", "pruned.masks.h5", "--solverstate", state,
                 "-n", 2, "-o", "b.caffemodel")
    assert result.exit_code == 0, result.output
    again = read_caffemodel(tmp_path / "b.caffemodel").layer("probe").blobs
    assert len(again) == len(start)
    for kept, given in zip(again, start):
        np.testing.assert_array_equal(kept.data, given.data)


def test_an_hdf5_snapshot_leaves_out_a_test_only_layer_caffe_could_not_find_and_says_so(caffe, tmp_path, cli):
    """Caffe's HDF5 loader finds a layer by a group right under ``data``: a
    TEST-only layer named with '/' written there would be a nested group
    that no loader reads. It is left out, with one warning naming it."""
    from caffedsd.hdf5_weights import hdf5_layers
    from caffedsd.caffe_proto import read_net_prototxt

    solver = write_solver(tmp_path, snapshot=2, extra="momentum: 0.9\nsnapshot_format: HDF5")
    net = tmp_path / "net.prototxt"
    net.write_text(net.read_text() + "".join(
        f'layer {{ name: "{name}" type: "InnerProduct" bottom: "fc1" top: "{name}" include {{ phase: TEST }} '
        'inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }\n' for name in ("probe", "aux/probe")))
    caffe.Net(str(net), caffe.TEST).save(str(tmp_path / "start.caffemodel"))
    assert cli("prune", "-w", "start.caffemodel", "-s", 0.5, "-o", "pruned.caffemodel").exit_code == 0
    result = cli("train-sparse", "--solver", solver, "-w", "pruned.caffemodel", "-n", 2, "-o", "a.caffemodel")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "warning" in line and "leave out" in line]
    assert len(warned) == 1 and "aux/probe" in warned[0], result.output
    held = {param.name for param, _ in hdf5_layers(tmp_path / "snap_iter_2.caffemodel.h5", read_net_prototxt(net), net)}
    assert "probe" in held and "aux/probe" not in held


def test_a_snapshot_that_cannot_go_into_place_is_refused_before_training(caffe, tmp_path, cli):
    """A folder at the last snapshot's path, or a snapshot name too long for
    the temporary it goes into place from (stock caffe train writes it),
    was found when that snapshot was due: after the training it ended."""
    from conftest import REGRESSION_NET, assert_one_line_error, save_net

    solver = write_solver(tmp_path, snapshot=5)  # 5, 10, and 12, the end (snapshot_after_train)
    _, weights = save_net(caffe, tmp_path, REGRESSION_NET)
    (tmp_path / "snap_iter_12.solverstate").mkdir()
    before = _files(tmp_path)
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", weights, "-o", "out.caffemodel"),
                          f"snapshot_prefix '{tmp_path / 'snap'}': its snapshot of iteration 12: "
                          f"{tmp_path / 'snap_iter_12.solverstate'}: is a folder, not a regular file")
    assert _files(tmp_path) == before
    (tmp_path / "snap_iter_12.solverstate").rmdir()
    # Iteration 5's files and their temporaries (.NAME.PID.xxxxxxxx.tmp) fit
    # in 255 bytes, and iteration 12's model; its state's temporary is 256.
    long = "s" * (255 - len(f"._iter_5.solverstate.{os.getpid()}.xxxxxxxx.tmp"))
    solver.write_text(solver.read_text().replace(f'"{tmp_path / "snap"}"', f'"{tmp_path / long}"'))
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", weights, "-o", "out.caffemodel"),
                          f"its snapshot of iteration 12: {tmp_path / long}_iter_12.solverstate: the name is too long "
                          "for the temporary caffedsd writes it under first")
    assert _files(tmp_path) == []
