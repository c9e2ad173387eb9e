"""Sparse and dense phases on real pycaffe solvers: the exact-zero invariant
for every solver type, iter_size, Caffe's own snapshots and resumed history."""
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from caffedsd.caffemodel import read_caffemodel
from caffedsd.maskfile import load_masks
from caffedsd.errors import InputError
from caffedsd import report
from caffedsd.solver_spec import read_solver
from caffedsd.testnets import PeriodicTests
from caffedsd.training import load_weights, open_solver, train_dense, train_sparse
from conftest import assert_one_line_error, write_solver

SOLVERS = {
    "SGD": "momentum: 0.9",
    "Nesterov": "momentum: 0.9",
    "AdaGrad": "delta: 1e-8",
    "RMSProp": "rms_decay: 0.98",
    "AdaDelta": "momentum: 0.95 delta: 1e-6",
    "Adam": "momentum: 0.9 momentum2: 0.999",
}


@pytest.fixture
def pruned(caffe, tmp_path, cli):
    """A dense model of REGRESSION_NET (briefly trained), pruned 60% with keepmax."""
    solver_path = write_solver(tmp_path)
    solver = caffe.get_solver(str(solver_path))
    solver.step(5)
    solver.net.save(str(tmp_path / "dense.caffemodel"))
    result = cli("prune", "-w", tmp_path / "dense.caffemodel", "-s", 0.6, "-o", tmp_path / "pruned.caffemodel")
    assert result.exit_code == 0, result.output
    return tmp_path / "pruned.caffemodel"


def assert_zeros_at_masks(weights, masks):
    model = read_caffemodel(weights)
    for layer, mask in masks.per_layer().items():
        w = model.layer(layer).blobs[0].data
        assert np.count_nonzero(w[~mask]) == 0, f"{weights.name}: {layer} has non-zeros at pruned positions"
        assert np.count_nonzero(w[mask]) > 0.9 * mask.sum()  # survivors trained, not wiped


@pytest.mark.parametrize("solver_type", list(SOLVERS))
@pytest.mark.parametrize("iter_size", [1, 2])
def test_exact_zeros_for_every_solver(caffe, pruned, tmp_path, solver_type, iter_size, device):
    folder = tmp_path / f"{solver_type}{iter_size}"
    folder.mkdir()
    base_lr = 1.0 if solver_type == "AdaDelta" else 0.05
    solver_path = write_solver(folder, solver_type, SOLVERS[solver_type], iter_size=iter_size, snapshot=3,
                               base_lr=base_lr, regularization="L1" if solver_type == "Nesterov" else "L2")
    out = folder / "sparse.caffemodel"
    result = train_sparse(solver_path, pruned, out, iterations=7, gpu=device)
    masks = load_masks(out.with_name("sparse.masks.h5"))
    assert masks.masks.keys() == load_masks(pruned.with_name("pruned.masks.h5")).masks.keys()
    assert masks.model_sha256 == read_caffemodel(out).sha256()
    assert_zeros_at_masks(out, masks)
    # The solver's own snapshots (written after the step, by caffedsd),
    # and the one `caffe train` ends with (snapshot_after_train).
    snaps = sorted(folder.glob("snap_iter_*.caffemodel"))
    assert [p.name for p in snaps] == ["snap_iter_3.caffemodel", "snap_iter_6.caffemodel", "snap_iter_7.caffemodel"]
    assert (folder / "snap_iter_7.solverstate").is_file()
    for snap in snaps:
        assert_zeros_at_masks(snap, masks)
    assert result.curve[-1]["iter"] == 6 and "loss" in result.test  # the step from 6 to 7, Caffe's "Iteration 6"
    # Survivors moved: training happened.
    before = read_caffemodel(pruned).layer("fc1").blobs[0].data
    after = read_caffemodel(out).layer("fc1").blobs[0].data
    assert not np.array_equal(before, after)


def _dense_solverstate(caffe, folder, pruned_dir):
    """A solverstate of dense SGD training: momentum non-zero everywhere."""
    solver = caffe.get_solver(str(write_solver(folder, snapshot=4, prefix="dense")))
    solver.net.copy_from(str(pruned_dir / "dense.caffemodel"))
    solver.step(4)
    return write_solver(folder, snapshot=4), folder / "dense_iter_4.solverstate"


def test_a_solverstates_copy_with_no_room_in_tmpdir_names_the_state_and_tmpdir(caffe, tmp_path):
    """The copy with the pruned history zeroed goes to a scratch folder in
    TMPDIR: a full one named that scratch file, which the user never named."""
    from conftest import run_on_a_full_disk

    solver = write_solver(tmp_path, snapshot=2)
    net = tmp_path / "net.prototxt"  # fc1: 5 x 4 x 62 x 62, a 300 KB state
    net.write_text(net.read_text().replace("dim: 2 dim: 6 dim: 6", "dim: 2 dim: 64 dim: 64"))
    caffe.Net(str(net), caffe.TEST).save(str(tmp_path / "start.caffemodel"))
    code = "from caffedsd.cli import main; main()"
    args = ["--solver", solver, "-n", "2"]
    assert subprocess.run([sys.executable, "-c", code, "train-dense", *args, "-w", tmp_path / "start.caffemodel",
                           "-o", tmp_path / "a.caffemodel"], capture_output=True).returncode == 0
    (tmp_path / "empty").mkdir()
    (tmp_path / "tmp").mkdir()
    full = run_on_a_full_disk(["env", f"TMPDIR={tmp_path / 'tmp'}", sys.executable, "-c", code, "train-dense",
                               *args, "--solverstate", tmp_path / "snap_iter_2.solverstate", "-w",
                               tmp_path / "snap_iter_2.caffemodel", "-o", tmp_path / "b.caffemodel"],
                              content=tmp_path / "empty", mount=tmp_path / "tmp", spare_inodes=10, fill="fill",
                              leave=100_000)
    assert full.returncode == 1, full.stderr[-2000:]
    assert full.stderr.strip().splitlines()[-1].startswith(
        f"caffedsd: {tmp_path / 'snap_iter_2.solverstate'}: its copy to restore from, in the temporary folder "
        f"{tmp_path / 'tmp'} (TMPDIR sets it): could not be written (No space left on device"), full.stderr[-2000:]


@pytest.mark.parametrize("command", [["train-dense", "--lr-scale", 0.5], ["train-lowrank", "--force-decay", 0.01]])
def test_a_dense_or_lowrank_run_goes_on_from_its_snapshot(caffe, tmp_path, cli, command):
    """They had no --solverstate: a killed run could only start over, or go
    on in stock `caffe train --snapshot` at the unscaled rate, without the
    force. On data that is the same every pass (constant DummyData), going
    on from the snapshot at 2 ends where 4 iterations at once do: momentum's
    history and the step schedule (the rate halves at 3) come back."""
    solver = write_solver(tmp_path, snapshot=2, lr_policy='"step"')
    net = tmp_path / "net.prototxt"
    net.write_text(net.read_text().replace('type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 }',
                                           'type: "constant" value: 0.5 } data_filler { type: "constant" value: 0.2 }'))
    caffe.Net(str(net), caffe.TEST).save(str(tmp_path / "start.caffemodel"))
    result = cli(*command, "--solver", solver, "-w", "start.caffemodel", "-n", 4, "-o", "whole.caffemodel")
    assert result.exit_code == 0, result.output
    result = cli(*command, "--solver", solver, "-w", "snap_iter_2.caffemodel", "--solverstate",
                 "snap_iter_2.solverstate", "-n", 2, "-o", "resumed.caffemodel")
    assert result.exit_code == 0, result.output
    whole, resumed = (read_caffemodel(tmp_path / name) for name in ("whole.caffemodel", "resumed.caffemodel"))
    for layer in ("conv1", "fc1"):
        assert len(whole.layer(layer).blobs) == len(resumed.layer(layer).blobs)  # (strict=: 3.10)
        for ours, theirs in zip(whole.layer(layer).blobs, resumed.layer(layer).blobs):
            np.testing.assert_array_equal(ours.data, theirs.data)
    assert "caffedsd: warning" not in result.output
    # The first command again with --solverstate added: the start's weights at the snapshot's iteration.
    result = cli(*command, "--solver", solver, "-w", "start.caffemodel", "--solverstate", "snap_iter_2.solverstate",
                 "-n", 2, "-o", "restarted.caffemodel")
    assert result.exit_code == 0, result.output
    assert ("caffedsd: warning: --solverstate snap_iter_2.solverstate was saved with snap_iter_2.caffemodel, and -w "
            "is start.caffemodel: the run goes on from those weights with the state's history, at its iteration 2"
            in result.output), result.output
    # A copy of the snapshot's caffemodel under another name is the pair.
    (tmp_path / "copy.caffemodel").write_bytes((tmp_path / "snap_iter_2.caffemodel").read_bytes())
    result = cli(*command, "--solver", solver, "-w", "copy.caffemodel", "--solverstate", "snap_iter_2.solverstate",
                 "-n", 2, "-o", "copied.caffemodel")
    assert result.exit_code == 0 and "caffedsd: warning" not in result.output, result.output
    if command[0] == "train-lowrank":  # whose -w is optional: the state's own model is not what is loaded
        result = cli(*command, "--solver", solver, "--solverstate", "snap_iter_2.solverstate", "-o", "x.caffemodel")
        assert_one_line_error(result, "--solverstate snap_iter_2.solverstate: give -w the caffemodel of its snapshot")


def test_the_solverstate_warning_finds_the_snapshots_model_where_caffe_would(caffe, tmp_path, cli):
    """The -w/--solverstate check looked for the state's model beside it,
    by name only: a state moved alone, or an HDF5 snapshot's model
    converted, warned for the right pair; another run's model of the same
    name did not warn; and a -w that does not exist gave a traceback."""
    def resume(folder, weights, state, out):
        return cli("train-dense", "--solver", folder / "solver.prototxt", "-w", weights, "--solverstate", state,
                   "-n", 1, "-o", out)

    runs = {}
    for name, extra in (("a", ""), ("b", ""), ("h", "\nsnapshot_format: HDF5")):
        folder = tmp_path / name
        folder.mkdir()
        solver = write_solver(folder, snapshot=2, extra="momentum: 0.9" + extra)
        net = caffe.Net(str(folder / "net.prototxt"), caffe.TEST)
        if name == "b":  # another start, so another snapshot of the same name
            net.params["fc1"][0].data[...] += 1
        net.save(str(folder / "start.caffemodel"))
        result = cli("train-dense", "--solver", solver, "-w", folder / "start.caffemodel", "-n", 2,
                     "-o", folder / "whole.caffemodel")
        assert result.exit_code == 0, result.output
        runs[name] = folder
    a, b, h = runs["a"], runs["b"], runs["h"]
    assert (a / "snap_iter_2.caffemodel").read_bytes() != (b / "snap_iter_2.caffemodel").read_bytes()
    result = resume(a, b / "snap_iter_2.caffemodel", a / "snap_iter_2.solverstate", "o1.caffemodel")
    assert result.exit_code == 0 and f"was saved with snap_iter_2.caffemodel, and -w is {b}" in result.output, \
        result.output
    # The state moved alone, and its model copied under another name: Caffe finds the model where it was.
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "state.solverstate").write_bytes((a / "snap_iter_2.solverstate").read_bytes())
    (moved / "mine.caffemodel").write_bytes((a / "snap_iter_2.caffemodel").read_bytes())
    result = resume(a, moved / "mine.caffemodel", moved / "state.solverstate", "o2.caffemodel")
    assert result.exit_code == 0 and "caffedsd: warning" not in result.output, result.output
    # An HDF5 snapshot's model is given as the binary caffemodel `convert` makes of it.
    assert cli("convert", "-p", h / "net.prototxt", "-w", h / "snap_iter_2.caffemodel.h5",
               "-o", h / "snap.caffemodel").exit_code == 0
    result = resume(h, h / "snap.caffemodel", h / "snap_iter_2.solverstate.h5", "o3.caffemodel")
    assert result.exit_code == 0 and "caffedsd: warning" not in result.output, result.output
    result = resume(h, h / "start.caffemodel", h / "snap_iter_2.solverstate.h5", "o4.caffemodel")
    assert result.exit_code == 0 and "was saved with snap_iter_2.caffemodel.h5" in result.output, result.output
    assert_one_line_error(resume(a, "missing.caffemodel", a / "snap_iter_2.solverstate", "o5.caffemodel"),
                          "missing.caffemodel: no such file")
    # A state of another solver type, with the wrong -w: the error alone, no warning before it.
    adagrad = tmp_path / "g"
    adagrad.mkdir()
    write_solver(adagrad, solver_type="AdaGrad", extra="")
    assert_one_line_error(resume(adagrad, a / "start.caffemodel", a / "snap_iter_2.solverstate", "o6.caffemodel"),
                          "a solverstate of another solver type")
    # A symlink loop where the state's model would be beside it is no file there (Path.resolve raised).
    (moved / "snap_iter_2.caffemodel").symlink_to("snap_iter_2.caffemodel")
    (moved / "snap_iter_2.solverstate").write_bytes((a / "snap_iter_2.solverstate").read_bytes())
    result = resume(a, a / "snap_iter_2.caffemodel", moved / "snap_iter_2.solverstate", "o7.caffemodel")
    assert result.exit_code == 0 and "caffedsd: warning" not in result.output, result.output


@pytest.mark.parametrize("command", [["train-sparse"], ["train-lowrank", "--force-decay", 0.01]])
def test_a_masked_runs_snapshot_has_its_masks_beside_it(caffe, tmp_path, cli, command):
    """Snapshots had no masks: train-lowrank, whose masks are optional, went
    on from one without them and let its pruned weights grow back, saying
    nothing; train-sparse asked for --masks."""
    solver = write_solver(tmp_path, snapshot=2, lr_policy='"step"')
    net = tmp_path / "net.prototxt"
    net.write_text(net.read_text().replace('type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 }',
                                           'type: "constant" value: 0.5 } data_filler { type: "constant" value: 0.2 }'))
    caffe.Net(str(net), caffe.TEST).save(str(tmp_path / "start.caffemodel"))
    assert cli("prune", "-w", "start.caffemodel", "-s", 0.5, "-o", "pruned.caffemodel").exit_code == 0
    result = cli(*command, "--solver", solver, "-w", "pruned.caffemodel", "-n", 4, "-o", "whole.caffemodel")
    assert result.exit_code == 0, result.output
    for iteration in (2, 4):
        result = cli("verify", "-w", f"snap_iter_{iteration}.caffemodel")
        assert result.exit_code == 0 and "masks" in result.output, result.output
    result = cli(*command, "--solver", solver, "-w", "snap_iter_2.caffemodel", "--solverstate",
                 "snap_iter_2.solverstate", "-n", 2, "-o", "resumed.caffemodel")
    assert result.exit_code == 0, result.output
    assert "resumed.masks.h5" in result.output and "caffedsd: warning" not in result.output
    # The pruned start again with the masked snapshot's state: the sparse run's progress would be lost.
    result = cli(*command, "--solver", solver, "-w", "pruned.caffemodel", "--solverstate", "snap_iter_2.solverstate",
                 "-n", 2, "-o", "restarted.caffemodel")
    assert result.exit_code == 0 and "caffedsd: warning: --solverstate snap_iter_2.solverstate was saved with " \
        "snap_iter_2.caffemodel, and -w is pruned.caffemodel" in result.output, result.output
    whole, resumed = (read_caffemodel(tmp_path / name) for name in ("whole.caffemodel", "resumed.caffemodel"))
    for layer in ("conv1", "fc1"):
        assert len(whole.layer(layer).blobs) == len(resumed.layer(layer).blobs)  # (strict=: 3.10)
        for ours, theirs in zip(whole.layer(layer).blobs, resumed.layer(layer).blobs):
            np.testing.assert_array_equal(ours.data, theirs.data)


def test_a_masked_runs_hdf5_snapshots_say_once_that_they_hold_no_masks(caffe, tmp_path, cli):
    """HDF5 snapshots have no masks beside them: train-lowrank went on from
    one without any, saying nothing, and its pruned weights grew back."""
    solver = write_solver(tmp_path, snapshot=2, extra="snapshot_format: HDF5")
    caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST).save(str(tmp_path / "start.caffemodel"))
    assert cli("prune", "-w", "start.caffemodel", "-s", 0.5, "-o", "pruned.caffemodel").exit_code == 0
    result = cli("train-lowrank", "--force-decay", 0.01, "--solver", solver, "-w", "pruned.caffemodel", "-n", 4,
                 "-o", "out.caffemodel")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "hold no masks" in line]
    assert len(warned) == 1 and "--masks" in warned[0], result.output
    assert (tmp_path / "snap_iter_4.caffemodel.h5").exists()


def test_resumed_solverstate_history_is_cleaned(caffe, pruned, tmp_path, device):
    folder = tmp_path / "resume"
    folder.mkdir()
    solver_path, state = _dense_solverstate(caffe, folder, tmp_path)
    out = folder / "sparse.caffemodel"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a dense run's state for the pruned weights: what it is for
        train_sparse(solver_path, pruned, out, iterations=4, solverstate=state, gpu=device)
    masks = load_masks(out.with_name("sparse.masks.h5"))
    assert_zeros_at_masks(folder / "snap_iter_8.caffemodel", masks)  # Caffe's snapshot after resuming
    assert_zeros_at_masks(out, masks)


@pytest.mark.parametrize("snapshot_format", ["BINARYPROTO", "HDF5"])
def test_cleaned_solverstate_keeps_the_weights_given(caffe, tmp_path, snapshot_format):
    """Caffe's restore loads the solverstate's learned_net over the weights:
    the cleaned copy names none, so the (pruned) weights given stay."""
    from caffedsd.solverstate import clean_solverstate, learned_net

    suffix = ".h5" if snapshot_format == "HDF5" else ""
    solver_path = write_solver(tmp_path, snapshot=4, prefix="dense",
                               extra=f"momentum: 0.9\nsnapshot_format: {snapshot_format}")
    caffe.get_solver(str(solver_path)).step(4)
    state = tmp_path / f"dense_iter_4.solverstate{suffix}"
    for path, kept in ((state, False), (tmp_path / f"clean.solverstate{suffix}", True)):
        solver = caffe.get_solver(str(solver_path))
        if kept:
            clean_solverstate(state, path, solver.net, {})
        solver.net.params["conv1"][0].data[...] = 7.0  # the weights given
        solver.restore(str(path))
        assert solver.iter == 4
        assert np.all(solver.net.params["conv1"][0].data == 7.0) == kept, path.name
    assert learned_net(state) == os.fsencode(tmp_path / f"dense_iter_4.caffemodel{suffix}")
    assert learned_net(tmp_path / f"clean.solverstate{suffix}") is None


def test_damaged_solverstates_are_one_line(caffe, tmp_path):
    from caffedsd.solverstate import clean_solverstate

    net = caffe.get_solver(str(write_solver(tmp_path))).net
    # history (field 3) holding a BlobProto whose shape (field 7) is a truncated varint
    for name, data, expect in (("empty", b"", "empty file, not a solverstate"),
                               ("shape", b"\x1a\x03\x3a\x01\x08", "truncated \\(blob 0's shape: ")):
        path = tmp_path / f"{name}.solverstate"
        path.write_bytes(data)
        with pytest.raises(InputError, match=f"{name}.solverstate: .*{expect}") as info:
            clean_solverstate(path, tmp_path / "out.solverstate", net, {})
        assert "\n" not in str(info.value)
        assert not (tmp_path / "out.solverstate").exists()
    # HDF5 states (snapshot_format: HDF5) whose history is not Caffe's: AttributeError, ValueError tracebacks.
    import h5py

    for name, history in (("dataset", np.zeros(3)), ("group", {"a": np.zeros(3)}), ("nested", {"0": {"x": 1}})):
        path = tmp_path / f"{name}.solverstate.h5"
        with h5py.File(path, "w") as h5:
            h5["iter"] = 2
            if isinstance(history, dict):
                group = h5.create_group("history")
                for key, value in history.items():
                    if isinstance(value, dict):
                        group.create_group(key)
                    else:
                        group[key] = value
            else:
                h5["history"] = history
        with pytest.raises(InputError, match=f"{name}.solverstate.h5: (HDF5 file without a 'history' group of "
                           "datasets|not a solverstate, or damaged)") as info:
            clean_solverstate(path, tmp_path / "out.solverstate.h5", net, {})
        assert "\n" not in str(info.value)
        assert not (tmp_path / "out.solverstate.h5").exists()


def test_uncleaned_history_would_break_the_invariant(caffe, pruned, tmp_path):
    """The control for the test above: restoring the raw solverstate moves
    pruned weights in the very first update, so that test can fail."""
    from caffedsd.mask_enforcer import MaskEnforcer

    folder = tmp_path / "raw"
    folder.mkdir()
    solver_path, state = _dense_solverstate(caffe, folder, tmp_path)
    masks = load_masks(pruned.with_name("pruned.masks.h5"))
    solver = caffe.get_solver(str(solver_path))
    solver.restore(str(state))
    enforcer = MaskEnforcer(masks.per_layer()).attach(solver)
    solver.step(1)  # gradients masked, but momentum history is not
    w = solver.net.params["conv1"][0].data
    assert np.count_nonzero(w[~masks.masks["conv1"]]) > 0
    enforcer.detach()


def test_dense_phase_starts_at_zero_and_scales_lr(caffe, pruned, tmp_path):
    solver_path = write_solver(tmp_path, extra="momentum: 0", weight_decay=0, base_lr=0.2)
    spec = read_solver(solver_path)
    solver, param = open_solver(spec, tmp_path, lr_scale=0.1)
    load_weights(solver, spec, pruned)
    masks = load_masks(pruned.with_name("pruned.masks.h5"))
    w0 = solver.net.params["conv1"][0].data.copy()
    assert np.count_nonzero(w0[~masks.masks["conv1"]]) == 0  # pruned weights start at 0.0
    source = read_caffemodel(pruned).layer("conv1").blobs[0].data
    assert np.array_equal(w0, source)  # survivors keep their values
    grads = []
    solver.add_callback(lambda: None, lambda: grads.append(solver.net.params["conv1"][0].diff.copy()))
    solver.step(1)
    w1 = solver.net.params["conv1"][0].data
    # Plain SGD, no momentum or decay: w1 = w0 - lr * grad, to float32 rounding
    # of w, at the scaled lr and not at the solver's.
    ulp = 2 * np.spacing(np.abs(w0).max())
    assert np.allclose(w1, w0 - np.float32(0.02) * grads[0], rtol=0, atol=ulp)
    assert not np.allclose(w1, w0 - np.float32(0.2) * grads[0], rtol=0, atol=ulp)
    assert param.base_lr == pytest.approx(0.02)
    # Pruned positions are free again: some of them moved.
    assert np.count_nonzero(w1[~masks.masks["conv1"]]) > 0


def test_train_dense_library_call(pruned, tmp_path):
    solver_path = write_solver(tmp_path, base_lr=0.1)
    result = train_dense(solver_path, pruned, tmp_path / "dense2.caffemodel", lr_scale=0.1, iterations=3)
    assert [round(r["lr"], 6) for r in result.curve] == [0.01] * 3
    assert not Path(str(tmp_path / "dense2.masks.h5")).exists()
    w = read_caffemodel(tmp_path / "dense2.caffemodel").layer("conv1").blobs[0].data
    mask = load_masks(pruned.with_name("pruned.masks.h5")).masks["conv1"]
    assert np.count_nonzero(w[~mask]) > 0


def test_the_curve_numbers_its_iterations_as_caffes_log(caffe, tmp_path):
    """Its rows were numbered one above Caffe's "Iteration N, loss = ...", and
    one above the TEST passes of the same weights; a divergence was put at
    the next iteration, beside the learning rate of its own."""
    from caffedsd.caffe_env import caffe_binary

    solver = write_solver(tmp_path, lr_policy='"step"', extra="momentum: 0.9\ndisplay: 1\ntest_initialization: false")
    weights = tmp_path / "start.caffemodel"
    caffe.get_solver(str(solver)).net.save(str(weights))
    result = train_dense(solver, weights, tmp_path / "out.caffemodel", lr_scale=1.0, iterations=7)
    logging = {**os.environ, "GLOG_minloglevel": "0"}
    log = subprocess.run([str(caffe_binary()), "train", f"--solver={solver}", f"--weights={weights}"],
                         capture_output=True, text=True, cwd=tmp_path, env=logging).stderr
    losses = {int(n): float(v) for n, v in re.findall(r"Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)", log)}
    rates = {int(n): float(v) for n, v in re.findall(r"Iteration (\d+), lr = (\S+)", log)}
    assert [row["iter"] for row in result.curve] == list(range(7))
    for row in result.curve:  # step lr: 0.05 for iterations 0-2, 0.025 for 3-5, then 0.0125
        assert row["loss"] == pytest.approx(losses[row["iter"]], rel=1e-4), row
        assert row["lr"] == pytest.approx(rates[row["iter"]], rel=1e-6) == 0.05 * 0.5 ** (row["iter"] // 3)
    # A rate that makes it diverge at Caffe's iteration N says N, with N's rate.
    huge = write_solver(tmp_path, base_lr=1e30, extra="momentum: 0.9\ndisplay: 1\ntest_initialization: false")
    log = subprocess.run([str(caffe_binary()), "train", f"--solver={huge}", f"--weights={weights}"],
                         capture_output=True, text=True, cwd=tmp_path, env=logging).stderr
    first = min(int(n) for n, v in re.findall(r"Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)", log)
                if v.lstrip("-") in ("nan", "inf"))
    with pytest.raises(Exception, match=rf"training diverged at iteration {first} \(loss [-a-z]+, learning rate 1e\+30\)"):
        train_dense(huge, weights, tmp_path / "nan.caffemodel", lr_scale=1.0, iterations=7)


def test_the_curve_loss_is_the_loss_caffe_logs(caffe, tmp_path):
    """The curve read the loss outputs at their declared weights. Caffe
    counts every blob with a loss weight, outputs or not (a Silence reads
    one), as data . diff, and a layer that reads a loss top rewrites that
    diff in its backward pass: from the second step on, Caffe counted (and
    trained with) other weights than the curve did. Here: 0.3 x a loss and
    1 x another, an output with no loss weight, a loss a Silence reads, one
    with a loss_weight a Silence reads (Caffe puts a Split between them),
    and one a Power layer with a loss weight of its own reads."""
    from caffedsd.caffe_env import caffe_binary
    from caffedsd.training import StepLoss, train

    net = tmp_path / "losses.prototxt"
    net.write_text(
        'layer { name: "data" type: "DummyData" top: "x" top: "y"\n'
        '  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }\n'
        '    data_filler { type: "constant" value: 0.5 } data_filler { type: "constant" value: -0.2 } } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc"\n'
        '  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }\n'
        'layer { name: "a" type: "EuclideanLoss" bottom: "fc" bottom: "y" top: "a" loss_weight: 0.3 }\n'
        'layer { name: "b" type: "EuclideanLoss" bottom: "fc" bottom: "y" top: "b" }\n'
        'layer { name: "c" type: "Power" bottom: "fc" top: "c" power_param { shift: 100 } }\n'
        'layer { name: "d" type: "EuclideanLoss" bottom: "fc" bottom: "y" top: "d" }\n'
        'layer { name: "quiet_d" type: "Silence" bottom: "d" }\n'
        'layer { name: "e" type: "EuclideanLoss" bottom: "fc" bottom: "y" top: "e" loss_weight: 0.5 }\n'
        'layer { name: "quiet_e" type: "Silence" bottom: "e" }\n'
        'layer { name: "f" type: "EuclideanLoss" bottom: "fc" bottom: "y" top: "f" }\n'
        'layer { name: "g" type: "Power" bottom: "f" top: "g" loss_weight: 2 power_param { power: 2 } }\n')
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text(f'net: "{net}"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 4\ndisplay: 1\n'
                           'snapshot_after_train: false\nsolver_mode: CPU\n')
    weights = tmp_path / "start.caffemodel"
    caffe.get_solver(str(solver_path)).net.save(str(weights))
    log = subprocess.run([str(caffe_binary()), "train", f"--solver={solver_path}", f"--weights={weights}"],
                         capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "GLOG_minloglevel": "0"}).stderr
    logged = {int(n): float(v) for n, v in re.findall(r"Iteration (\d+) \(.*?\), loss = (\S+)", log)}
    assert sorted(logged) == [0, 1, 2, 3], log[-2000:]
    solver = caffe.get_solver(str(solver_path))
    solver.net.copy_from(str(weights))
    solver.net.forward()
    blobs = solver.net.blobs
    # Before any backward pass, the declared weights (Caffe's own Split carries e's 0.5, and counts e at 1 too).
    by_hand = (0.3 * float(blobs["a"].data) + sum(float(blobs[name].data) for name in "bdef")
               + 0.5 * float(blobs["e"].data) + 2 * float(blobs["g"].data))
    assert StepLoss(solver.net)() == pytest.approx(by_hand, rel=1e-6)
    assert float(blobs["c"].data.sum()) > 100  # the output that must not add
    curve = train(solver, 4)
    assert [row["loss"] for row in curve] == pytest.approx([logged[n] for n in range(4)], rel=1e-5)
    assert len({round(row["loss"], 3) for row in curve}) > 1  # the rewritten weights count from the second step


def test_multistep_trains_at_caffes_rates_with_a_stepvalue_repeated(caffe, pruned, tmp_path):
    """pycaffe's lr, read before each step, advanced multistep's
    current_step too: a repeated stepvalue was passed twice in one
    iteration, so the solver trained at another rate than `caffe train`,
    and the curve showed one it did not train at."""
    from caffedsd.caffe_env import caffe_binary

    solver = write_solver(tmp_path, lr_policy='"multistep"\nstepvalue: 2\nstepvalue: 2\nstepvalue: 5',
                          extra="momentum: 0.9\ndisplay: 1\ntest_initialization: false")
    weights = tmp_path / "start.caffemodel"
    caffe.get_solver(str(solver)).net.save(str(weights))
    log = subprocess.run([str(caffe_binary()), "train", f"--solver={solver}", f"--weights={weights}"],
                         capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "GLOG_minloglevel": "0"}).stderr
    (tmp_path / "snap_iter_12.caffemodel").rename(tmp_path / "stock.caffemodel")
    (tmp_path / "snap_iter_12.solverstate").unlink()
    rates = {int(n): float(v) for n, v in re.findall(r"Iteration (\d+), lr = (\S+)", log)}
    # gamma 0.5: one stepvalue passed an iteration, at 2, 3 (the repeat) and 5.
    assert [rates[n] for n in range(7)] == [0.05, 0.05, 0.025, 0.0125, 0.0125, 0.00625, 0.00625]
    result = train_dense(solver, weights, tmp_path / "out.caffemodel", lr_scale=1.0)
    assert [row["lr"] for row in result.curve] == pytest.approx([rates[n] for n in range(12)], rel=1e-6)
    stock, out = read_caffemodel(tmp_path / "stock.caffemodel"), read_caffemodel(tmp_path / "out.caffemodel")
    for layer in ("conv1", "fc1"):
        for index in (0, 1):
            assert np.array_equal(out.layer(layer).blobs[index].data, stock.layer(layer).blobs[index].data)
    # Resumed from a state past the repeat, it goes on from the state's current_step.
    (tmp_path / "s").mkdir()
    state = write_solver(tmp_path / "s", lr_policy='"multistep"\nstepvalue: 2\nstepvalue: 2\nstepvalue: 5',
                         snapshot=4, extra="momentum: 0.9\ntest_initialization: false")
    caffe.get_solver(str(state)).step(4)
    resumed = train_sparse(state, pruned, tmp_path / "s" / "r.caffemodel", iterations=3,
                           solverstate=tmp_path / "s" / "snap_iter_4.solverstate")
    assert [row["lr"] for row in resumed.curve] == pytest.approx([0.0125, 0.00625, 0.00625], rel=1e-6)


def test_an_lr_scale_that_leaves_caffe_no_learning_rate_is_refused(pruned, tmp_path):
    # 0.1 x 1e-320 is 0 in Caffe's float: it would train at lr 0 and say nothing.
    with pytest.raises(InputError, match=r"--lr-scale 1e-320: .* below the least float Caffe computes with"):
        train_dense(write_solver(tmp_path, base_lr=0.1), pruned, tmp_path / "d.caffemodel", lr_scale=1e-320,
                    iterations=1)
    assert not (tmp_path / "d.caffemodel").exists()
    # 0.1 x 1e40 is inf there: the first step made every weight NaN.
    with pytest.raises(InputError, match=r"--lr-scale 1e\+40: .* 1e\+39, beyond the greatest float Caffe computes"):
        train_dense(write_solver(tmp_path, base_lr=0.1), pruned, tmp_path / "d.caffemodel", lr_scale=1e40,
                    iterations=1)
    assert not (tmp_path / "d.caffemodel").exists()


def test_test_passes_without_a_test_net_are_refused(pruned, tmp_path, cli):
    # They measured nothing: the run printed an empty test line and exited 0.
    solver = write_solver(tmp_path)
    solver.write_text(solver.read_text().replace("test_iter: 2\n", "").replace("test_interval: 1000\n", ""))
    for option, value in (("--test-iterations", "5"), ("--test-interval", "3")):
        assert_one_line_error(cli("train-dense", "--solver", solver, "-w", pruned, "-n", "2", option, value,
                                  "-o", tmp_path / "d.caffemodel"),
                              f"{option} {value}: {solver} has no test net (no test_iter) to test with")
        assert not (tmp_path / "d.caffemodel").exists()
    # Only at the end is what runs without a test net anyway.
    result = cli("train-dense", "--solver", solver, "-w", pruned, "-n", "2", "--test-interval", "0",
                 "-o", tmp_path / "d.caffemodel")
    assert result.exit_code == 0, result.output


def test_solver_values_caffe_finds_only_inside_an_update_are_refused(pruned, tmp_path, cli):
    """regularization_type "l2" aborted the process at the first update
    (exit 134); iter_size 0 divided the gradients by 0, reported as a
    divergence with advice about the learning rate."""
    for change, expected in ((('regularization_type: "L2"', 'regularization_type: "l2"'),
                              "regularization_type 'l2' is not one of Caffe's (L1, L2)"),
                             (("iter_size: 1", "iter_size: 0"), "iter_size 0 must be 1 or more")):
        solver = write_solver(tmp_path)
        solver.write_text(solver.read_text().replace(*change))
        assert_one_line_error(cli("train-dense", "--solver", solver, "-w", pruned, "-n", 2, "-o", "d.caffemodel"),
                              f"{solver}: {expected}")
        assert not (tmp_path / "d.caffemodel").exists()


def test_a_negative_snapshot_interval_is_refused(pruned, tmp_path, cli):
    """Caffe snapshots at multiples of any non-zero ``snapshot``: at -2 it
    wrote its own snapshots inside its step, unchecked, one over the -w
    input snap_iter_2 without --force, while caffedsd took the solver's
    snapshots for off."""
    solver = write_solver(tmp_path, snapshot=-2)
    solver.write_text(solver.read_text() + "snapshot_after_train: false\n")
    start = tmp_path / "snap_iter_2.caffemodel"
    start.write_bytes(pruned.read_bytes())
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", start, "-n", 4, "-o", "d.caffemodel"),
                          f"{solver}: snapshot -2 must be 0 (no periodic snapshots) or more")
    assert start.read_bytes() == pruned.read_bytes()
    assert not (tmp_path / "d.caffemodel").exists()


def test_the_solvers_own_weights_are_an_input(pruned, tmp_path, cli):
    """Caffe loads a solver's weights: field when it opens the solver; -o
    replaced that file without --force."""
    solver = write_solver(tmp_path)
    start = tmp_path / "start.caffemodel"
    start.write_bytes(pruned.read_bytes())
    solver.write_text(solver.read_text() + f'weights: "{start}"\n')
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", pruned, "-n", 2, "-o", start),
                          f"{start}")
    assert start.read_bytes() == pruned.read_bytes()


def test_snapshots_that_would_remove_masks_are_refused(pruned, tmp_path, cli):
    """A snapshot's model takes the masks beside it away: the output snap_iter_2
    (whose masks are snap_iter_2.masks.h5, as the final snapshot's model's
    are) lost its masks after they were reported written, and a masks file
    given with -m under that name was removed without --force."""
    solver = write_solver(tmp_path, snapshot=2)
    output = tmp_path / "snap_iter_2"
    assert_one_line_error(cli("train-sparse", "--solver", solver, "-w", pruned, "-n", 2, "-o", output),
                          "has the masks file snap_iter_2.masks.h5 of this output as its own")
    given = tmp_path / "snap_iter_2.masks.h5"
    given.write_bytes(pruned.with_name("pruned.masks.h5").read_bytes())
    assert_one_line_error(cli("train-sparse", "--solver", solver, "-w", pruned, "-m", given, "-n", 2,
                              "-o", "s.caffemodel"), "would overwrite this input")
    assert given.is_file()


def test_a_test_net_whose_layer_has_other_shapes_is_refused_before_training(caffe, tmp_path, cli):
    """Without weights nothing compared them: Caffe aborted the process at
    the first TEST pass (exit 134), after training."""
    solver = write_solver(tmp_path)
    net = (tmp_path / "net.prototxt").read_text()
    (tmp_path / "test.prototxt").write_text(net.replace("num_output: 5", "num_output: 6")
                                            .replace("dim: 4 dim: 5", "dim: 4 dim: 6"))
    solver.write_text(solver.read_text().replace(f'net: "{tmp_path / "net.prototxt"}"',
                                                 f'train_net: "{tmp_path / "net.prototxt"}"\n'
                                                 f'test_net: "{tmp_path / "test.prototxt"}"'))
    assert_one_line_error(cli("train-lowrank", "--solver", solver, "--force-decay", 0.001, "-n", 2,
                              "-o", "l.caffemodel"),
                          f"{tmp_path / 'test.prototxt'}: layer 'fc1' has weights [[6, 64], [6]] in the test net, "
                          f"but [[5, 64], [5]] in the train net of {solver}")
    assert not (tmp_path / "l.caffemodel").exists()
    # A layer of that name without weights in the train net: Caffe compares the counts too.
    (tmp_path / "test.prototxt").write_text(net + 'layer { name: "relu1" type: "InnerProduct" bottom: "fc1" '
                                            'top: "extra" inner_product_param { num_output: 2 } }\n')
    assert_one_line_error(cli("train-lowrank", "--solver", solver, "--force-decay", 0.001, "-n", 2,
                              "-o", "l.caffemodel"),
                          "layer 'relu1' has weights [[2, 5], [2]] in the test net, but [] in the train net")


def test_periodic_tests_are_caffes():
    # Caffe's Solver::Step tests before the step at iter % test_interval == 0,
    # and at iteration 0 only with test_initialization.
    every = PeriodicTests(500)
    assert [i for i in range(0, 1600, 250) if every.due(i)] == [0, 500, 1000, 1500]
    assert [i for i in range(0, 1600, 250) if PeriodicTests(500, initialization=False).due(i)] == [500, 1000, 1500]
    assert not any(PeriodicTests(0).due(i) for i in range(0, 1000, 100))
    assert (every.next_after(0), every.next_after(499), every.next_after(500)) == (500, 500, 1000)
    assert PeriodicTests(0).next_after(7) is None
    with pytest.raises(InputError, match="--test-interval -1"):
        PeriodicTests(-1)


def test_periodic_tests_of_a_solver():
    from caffedsd.caffe_proto import SolverParameter

    param = SolverParameter(test_interval=1000, test_initialization=False)
    assert PeriodicTests.of_solver(param) == PeriodicTests(1000, False)
    assert PeriodicTests.of_solver(param, 0) == PeriodicTests(0, False)
    assert PeriodicTests.of_solver(SolverParameter(), 30) == PeriodicTests(30, True)  # Caffe's default


def test_tests_csv_round_trip():
    passes = [{"iter": 0, "test": {"loss": 2.5, "acc,top1": 0.125}},
              {"iter": 500, "test": {"loss": 0.75, "acc,top1": 0.5, "extra": 1.0}}]
    text = report.tests_csv(passes)
    assert text.splitlines()[0] == 'iter,loss,"acc,top1",extra'
    assert text.splitlines()[1] == "0,2.5,0.125,"
    assert report.parse_tests_csv(text) == passes
    assert report.parse_tests_csv(report.tests_csv([])) == []


def test_train_sparse_makes_the_solvers_periodic_tests(caffe, pruned, tmp_path, device):
    solver_path = write_solver(tmp_path)  # test_interval 1000, test_initialization by default
    masks = pruned.with_name("pruned.masks.h5")
    text = solver_path.read_text().replace("test_interval: 1000", "test_interval: 4")
    solver_path.write_text(text)
    result = train_sparse(solver_path, pruned, tmp_path / "s.caffemodel", iterations=10, gpu=device)
    assert [row["iter"] for row in result.tests] == [0, 4, 8]
    assert [row["iter"] for row in result.curve] == list(range(10))  # no step lost or repeated at the stops
    assert all(set(row["test"]) == {"loss"} for row in result.tests) and set(result.test) == {"loss"}
    assert_zeros_at_masks(tmp_path / "s.caffemodel", load_masks(masks))
    rows = []
    again = train_sparse(solver_path, pruned, tmp_path / "t.caffemodel", iterations=10, test_interval=3, gpu=device,
                         on_iteration=lambda row, total: rows.append(row))
    assert [row["iter"] for row in again.tests] == [0, 3, 6, 9]
    assert [row["headline"] for row in rows if "test" in row] == ["loss"] * 4  # what the progress line shows
    # Said as each pass starts (a long one left the bar standing still), the last one's too.
    marks = [row.get("testing", row.get("iter")) for row in rows if "testing" in row or "test" in row]
    assert marks == [0, 0, 3, 3, 6, 6, 9, 9, 10]
    solver_path.write_text(text + "test_initialization: false\n")
    assert [row["iter"] for row in train_sparse(solver_path, pruned, tmp_path / "u.caffemodel", iterations=8,
                                                force=True, gpu=device).tests] == [4]
    assert train_sparse(solver_path, pruned, tmp_path / "u.caffemodel", iterations=8, force=True,
                        test_interval=0, gpu=device).tests == ()


@pytest.mark.slow
def test_no_room_for_caffes_own_writes_is_one_line(caffe, tmp_path):
    """Caffe aborts the process when it cannot write a model or a snapshot
    (a glog CHECK in io.cpp): caffedsd checks for room first. ulimit -f
    stands in for a full disk."""
    import subprocess
    import sys

    solver = write_solver(tmp_path, extra="momentum: 0.9\nsnapshot_after_train: false")
    caffe.get_solver(str(solver)).net.save(str(tmp_path / "w.caffemodel"))
    (tmp_path / "own").mkdir()
    snapshots = write_solver(tmp_path / "own", snapshot=3)  # the solver's own, written by Caffe inside a step
    (tmp_path / "recipe.yaml").write_text(f"solver: {solver}\nseed: 1\ncheckpoint_every: 2\n"
                                          "stages:\n  - dense: {iterations: 4}\n")
    # An HDF5 solverstate to resume from, whose copy with its history
    # cleaned is written through h5py: it failed closing the file, a traceback.
    (tmp_path / "h5").mkdir()
    hdf5 = write_solver(tmp_path / "h5", snapshot=2, extra="momentum: 0.9\nsnapshot_format: HDF5")
    caffe.get_solver(str(hdf5)).step(2)
    from caffedsd.pruning import prune_file
    from caffedsd.plan import SparsityPlan

    prune_file(tmp_path / "w.caffemodel", tmp_path / "p.caffemodel", SparsityPlan.from_dict({"sparsity": 0.5}))
    # The model is 76 + 325 floats (1,604 bytes; 2,205 with what frames them at most, and a solverstate
    # 2,876 with its learned_net); the temporary solver file and
    # the run's records are smaller than the limit.
    # 1,500 bytes: no room for the output, found before training (it was
    # found after: the whole training lost); 2,500: room for a model but
    # not for a solverstate.
    for limit, args, expect in [
            (1500, ["train-dense", "--solver", str(solver), "-w", "w.caffemodel", "-n", "2", "-o", "d.caffemodel"],
             "d.caffemodel: could not be written (File too large: at least 2,205 bytes, "),
            (2500, ["train-dense", "--solver", str(snapshots), "-w", "w.caffemodel", "-n", "5", "-o", "d.caffemodel"],
             f"{tmp_path}/own/snap_iter_3.caffemodel: could not be written (File too large: at least 2,876 bytes, "),
            # Due at the last iteration: written before the output.
            (2500, ["train-dense", "--solver", str(snapshots), "-w", "w.caffemodel", "-n", "3", "-o", "d.caffemodel"],
             f"{tmp_path}/own/snap_iter_3.caffemodel: could not be written (File too large: at least 2,876 bytes, "),
            (2500, ["dsd", "--recipe", "recipe.yaml", "-o", "run"],
             "run/01-dense/checkpoint: could not be written (File too large: at least 2,876 bytes, "),
            (1500, ["train-sparse", "--solver", str(solver), "-w", "p.caffemodel", "-n", "1", "--solverstate",
                    str(tmp_path / "h5" / "snap_iter_2.solverstate.h5"), "-o", "s.caffemodel"], "")]:
        limited = ("import resource, signal\n"
                   "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
                   f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
                   "from caffedsd.cli import main\n"
                   f"main({args!r}, prog_name='caffedsd')\n")
        result = subprocess.run([sys.executable, "-c", limited], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 1, result.stderr[-2000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"caffedsd: {expect}") and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert f"over the file-size limit (ulimit -f) of {limit:,}); no part of it was left" in last
        if args[0] != "train-sparse":  # the room for the output, a snapshot or a checkpoint: found before training
            assert "loss" not in result.stderr  # no step was taken
    assert not (tmp_path / "d.caffemodel").exists() and not (tmp_path / "s.caffemodel").exists()


@pytest.mark.parametrize("solver_type, moments", [("SGD", 1), ("Adam", 2)])
@pytest.mark.parametrize("snapshot_format", ["BINARYPROTO", "HDF5"])
@pytest.mark.parametrize("relus", [0, 60])
def test_snapshot_bytes_are_upper_bounds_of_caffes_files(caffe, tmp_path, solver_type, moments, snapshot_format,
                                                         relus):
    """The floats alone fell short of the files by their framing: a disk or
    ulimit -f between the two made Caffe abort (exit 134). Adam's (and
    AdaDelta's) state holds two history blobs per parameter blob; HDF5
    files hold headers of their own (a 1,604-byte model took 9,472), and a
    group for every layer, one with no weights too."""
    from caffedsd.snapshots import snapshot_bytes

    solver_path = write_solver(tmp_path, solver_type, extra=f"momentum: 0.9\nsnapshot_format: {snapshot_format}")
    net = tmp_path / "net.prototxt"
    net.write_text(net.read_text().replace('layer { name: "relu1"', "".join(
        f'layer {{ name: "r{n}" type: "ReLU" bottom: "conv1" top: "conv1" }}\n' for n in range(relus))
        + 'layer { name: "relu1"'))
    spec = read_solver(solver_path)
    solver, _ = open_solver(spec, tmp_path, snapshot_prefix=tmp_path / "s")
    floats = (4 * 2 * 3 * 3 + 4) + (5 * 4 * 4 * 4 + 5)  # conv1 and fc1, weights and biases
    model_bound, state_bound = snapshot_bytes(spec, solver.net)
    solver.step(1)
    solver.snapshot()
    suffix = "" if snapshot_format == "BINARYPROTO" else ".h5"
    model = (tmp_path / f"s_iter_1.caffemodel{suffix}").stat().st_size
    state = (tmp_path / f"s_iter_1.solverstate{suffix}").stat().st_size
    assert 4 * floats < model <= model_bound and moments * 4 * floats < state <= state_bound
    if suffix:  # 4 KB of headers a group or dataset, where a few hundred bytes were seen
        assert model_bound < 6 * model and state_bound < 8 * state
    else:
        assert model_bound < model + 1500 + 50 * relus and state_bound < state + 1500


# -- what `caffe train` does with the solver's own settings ------------------------------------------------------------

def test_a_resumed_run_goes_to_max_iter_and_poly_stops_there(caffe, pruned, tmp_path):
    """`caffe train --snapshot` trains on to max_iter; past it, "poly"
    gives a negative rate (gradient ascent), which pycaffe's step allows."""
    folder = tmp_path / "resume"
    folder.mkdir()
    solver_path, state = _dense_solverstate(caffe, folder, tmp_path)  # max_iter 12, state at 4
    result = train_sparse(solver_path, pruned, folder / "s.caffemodel", solverstate=state)
    assert [row["iter"] for row in result.curve] == list(range(4, 12))
    poly = write_solver(folder, snapshot=4, lr_policy='"poly"\npower: 1.0')
    with pytest.raises(InputError, match='lr_policy "poly" brings the learning rate to 0 at max_iter 12, and this '
                                         'run would train from iteration 4 to 14, where it turns negative: give at '
                                         'most 8 iterations'):
        train_sparse(poly, pruned, folder / "p.caffemodel", iterations=10, solverstate=state)
    with pytest.raises(InputError, match="would train from iteration 0 to 13"):
        train_dense(poly, pruned, folder / "p.caffemodel", iterations=13)
    assert not (folder / "p.caffemodel").exists()
    result = train_sparse(poly, pruned, folder / "p.caffemodel", solverstate=state, force=True)
    assert len(result.curve) == 8 and min(row["lr"] for row in result.curve) >= 0


def test_a_solverstate_of_another_solver_type_is_one_line(caffe, pruned, tmp_path):
    """Caffe aborts the process on a history count its solver type does
    not keep (Adam and AdaDelta keep two blobs per parameter)."""
    for kind in ("Adam", "SGD"):
        (tmp_path / kind).mkdir()
        solver = write_solver(tmp_path / kind, kind, SOLVERS[kind], snapshot=2, prefix="s")
        caffe.get_solver(str(solver)).step(2)
    # Of a count the type keeps, but signed where it keeps sums of squares:
    # restored, the first update took their square roots (NaN), reported as a
    # divergence with advice about the learning rate.
    (tmp_path / "RMSProp").mkdir()
    write_solver(tmp_path / "RMSProp", "RMSProp", SOLVERS["RMSProp"], snapshot=2, prefix="s")
    for state, other, expect in (("Adam", "SGD", "8 history blobs, but a SGD solver of this net keeps 4"),
                                 ("SGD", "Adam", "4 history blobs, but a Adam solver of this net keeps 8"),
                                 ("SGD", "RMSProp", r"history blob 0 holds negative values, which a RMSProp solver's "
                                                    r"\(sums of squares\) never does")):
        with pytest.raises(InputError, match=expect):
            train_sparse(tmp_path / other / "solver.prototxt", pruned, tmp_path / "x.caffemodel", iterations=1,
                         solverstate=tmp_path / state / "s_iter_2.solverstate")
    # An HDF5 state under a name without .h5: Caffe picks the format by the name.
    solver = write_solver(tmp_path, snapshot=2, prefix="h", extra="momentum: 0.9\nsnapshot_format: HDF5")
    caffe.get_solver(str(solver)).step(2)
    (tmp_path / "h_iter_2.solverstate.h5").rename(tmp_path / "state.bin")
    result = train_sparse(solver, pruned, tmp_path / "x.caffemodel", iterations=1, solverstate=tmp_path / "state.bin")
    assert [row["iter"] for row in result.curve] == [2]


def test_snapshot_prefix_as_caffe_reads_it(caffe, pruned, tmp_path):
    """A folder takes the solver file's stem, and no prefix the solver
    file's path without its extension (UpgradeSnapshotPrefixProperty)."""
    write_solver(tmp_path, snapshot=2, prefix="snaps")
    (tmp_path / "snaps").mkdir()
    text = (tmp_path / "solver.prototxt").read_text()
    (tmp_path / "lenet_solver.prototxt").write_text(text)
    train_sparse(tmp_path / "lenet_solver.prototxt", pruned, tmp_path / "a.caffemodel", iterations=2)
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == [
        "lenet_solver_iter_2.caffemodel", "lenet_solver_iter_2.masks.h5", "lenet_solver_iter_2.solverstate"]
    (tmp_path / "bare_solver.prototxt").write_text(
        "\n".join(line for line in text.splitlines() if not line.startswith("snapshot_prefix")))
    train_sparse(tmp_path / "bare_solver.prototxt", pruned, tmp_path / "b.caffemodel", iterations=2)
    assert (tmp_path / "bare_solver_iter_2.caffemodel").is_file()


def test_the_solvers_own_snapshots_do_not_overwrite_an_input(pruned, tmp_path):
    import shutil

    solver = write_solver(tmp_path, snapshot=2, prefix="snap")
    shutil.copy(pruned, tmp_path / "snap_iter_4.caffemodel")
    shutil.copy(pruned.with_name("pruned.masks.h5"), tmp_path / "snap_iter_4.masks.h5")
    before = (tmp_path / "snap_iter_4.caffemodel").read_bytes()
    with pytest.raises(InputError, match="snap_iter_4.caffemodel: the solver's own snapshots .* would overwrite "
                                         "this input; pass --force"):
        train_sparse(solver, tmp_path / "snap_iter_4.caffemodel", tmp_path / "o.caffemodel", iterations=4)
    assert (tmp_path / "snap_iter_4.caffemodel").read_bytes() == before
    # The same file by other names: through a linked folder, a symlink, a hard link.
    (tmp_path / "linked").symlink_to(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "sym.caffemodel").symlink_to(tmp_path / "snap_iter_4.caffemodel")
    os.link(tmp_path / "snap_iter_4.caffemodel", tmp_path / "other" / "hard.caffemodel")
    for name in ("linked/snap_iter_4.caffemodel", "other/sym.caffemodel", "other/hard.caffemodel"):
        with pytest.raises(InputError, match="the solver's own snapshots .* would overwrite this input"):
            train_sparse(solver, tmp_path / name, tmp_path / "o.caffemodel", masks=pruned.with_name("pruned.masks.h5"),
                         iterations=4)
    (tmp_path / "other" / "hard.caffemodel").unlink()
    assert (tmp_path / "snap_iter_4.caffemodel").read_bytes() == before
    train_sparse(solver, tmp_path / "snap_iter_4.caffemodel", tmp_path / "o.caffemodel", iterations=3)  # 2 and 3
    train_sparse(solver, tmp_path / "snap_iter_4.caffemodel", tmp_path / "o.caffemodel", iterations=4, force=True)
    assert (tmp_path / "snap_iter_4.caffemodel").read_bytes() != before


def test_an_output_named_as_one_of_the_solvers_own_snapshots_is_refused(pruned, tmp_path):
    """The last snapshot, written after the output, replaced it and took
    away its masks; a periodic one's state would name the output."""
    solver = write_solver(tmp_path, snapshot=2, prefix="snap")
    (tmp_path / "linked").symlink_to(tmp_path)
    for name in ("snap_iter_4.caffemodel", "snap_iter_2.caffemodel", "linked/snap_iter_4.caffemodel",
                 "snap_iter_4.solverstate"):
        with pytest.raises(InputError, match=f"{re.escape(name)}: the solver's own snapshots .* write a file of "
                                             "this name in this run; give the output another name"):
            train_sparse(solver, pruned, tmp_path / name, iterations=4, force=True)
    assert not list(tmp_path.glob("snap_iter_*"))
    train_sparse(solver, pruned, tmp_path / "snap_iter_6.caffemodel", iterations=4)  # none at 6 in this run
    assert (tmp_path / "snap_iter_6.masks.h5").is_file()


def test_quantized_training_keeps_the_zeros_of_a_model_without_masks(pruned, tmp_path):
    """A decompressed model, or a released sparse one, has no masks file: its
    zeros are what was pruned, and they stay 0.0."""
    import shutil

    from caffedsd.training import train_quantized

    shutil.copy(pruned, tmp_path / "bare.caffemodel")
    (tmp_path / "q").mkdir()
    solver = write_solver(tmp_path / "q")
    out = tmp_path / "q.caffemodel"
    train_quantized(solver, tmp_path / "bare.caffemodel", out, {"conv": 2, "fc": 2}, iterations=5)
    before, after = read_caffemodel(tmp_path / "bare.caffemodel"), read_caffemodel(out)
    for layer in ("conv1", "fc1"):
        zeros = before.layer(layer).blobs[0].data == 0
        assert zeros.mean() > 0.5
        assert np.array_equal(after.layer(layer).blobs[0].data == 0, zeros), layer
        assert len(np.unique(after.layer(layer).blobs[0].data[~zeros])) <= 4
    assert load_masks(out.with_name("q.masks.h5")).masks.keys() == {"conv1", "fc1"}


def test_quantized_training_keeps_zeros_the_masks_do_not_cover(pruned, tmp_path, cli):
    """Masks of some layers only (a decompressed model pruned again with one
    rule), or keeping a 0.0: such zeros joined no cluster and trained
    freely, off the codebook (thousands of values where 2 bits allow 4)."""
    from caffedsd.training import train_quantized

    model = read_caffemodel(pruned)
    assert cli("prune", "-w", pruned, "--masks", pruned.with_name("pruned.masks.h5"), "-r", "fc1=0.8",
               "-o", tmp_path / "fc.caffemodel").exit_code == 0
    (tmp_path / "fc.masks.h5").unlink()
    assert cli("prune", "-w", tmp_path / "fc.caffemodel", "-r", "fc1=0.8", "-s", 0,
               "-o", tmp_path / "part.caffemodel").exit_code == 0
    assert load_masks(tmp_path / "part.masks.h5").masks["conv1"].all()  # conv1's zeros left out
    (tmp_path / "q").mkdir()
    out = tmp_path / "q.caffemodel"
    train_quantized(write_solver(tmp_path / "q"), tmp_path / "part.caffemodel", out, {"conv": 2, "fc": 2},
                    iterations=5)
    after = read_caffemodel(out)
    for layer in ("conv1", "fc1"):
        zeros = read_caffemodel(tmp_path / "part.caffemodel").layer(layer).blobs[0].data == 0
        assert zeros.mean() > 0.5 and zeros.sum() >= (model.layer(layer).blobs[0].data == 0).sum()
        assert np.array_equal(after.layer(layer).blobs[0].data == 0, zeros), layer
        assert len(np.unique(after.layer(layer).blobs[0].data[~zeros])) <= 4


def test_lowrank_masks_need_their_weights(tmp_path):
    from caffedsd.training import train_lowrank

    with pytest.raises(InputError, match="--masks m.masks.h5: masks need the weights they were made for"):
        train_lowrank(write_solver(tmp_path), tmp_path / "o.caffemodel", 1e-4, masks="m.masks.h5")


def test_training_does_not_write_over_its_data(lenet, tmp_path, cli):
    from conftest import assert_one_line_error, lenet_files

    _, _, weights = lenet
    solver, net = lenet_files(tmp_path, 200, 100, max_iter=1)
    test_list = Path(net.read_text().split('source: "')[2].split('"', 1)[0])
    for target in (test_list, Path(test_list.read_text().split()[0])):
        before = target.read_bytes()
        for force in ((), ("--force",)):
            assert_one_line_error(cli("train-dense", "--solver", solver, "-w", weights, "-n", 1, "-o", target, *force),
                                  f"{target}: output would overwrite {target}, which the nets read as data")
        assert target.read_bytes() == before


def test_a_gpu_solver_on_a_cpu_only_build_trains_on_the_cpu_and_says_so(pruned, tmp_path, cli):
    from caffedsd.caffe_env import cpu_only_build

    if not cpu_only_build():
        pytest.skip("a CUDA build trains such a solver on its GPU, as `caffe train` does")
    solver = write_solver(tmp_path, extra="momentum: 0.9\nsolver_mode: GPU\ndevice_id: 0")
    result = cli("train-dense", "--solver", solver, "-w", pruned, "-n", 2, "-o", "d.caffemodel")
    assert result.exit_code == 0, result.output
    assert f"caffedsd: warning: {solver} asks for solver_mode GPU; this Caffe is a CPU-only build" in result.output
    assert result.output.count("caffedsd: warning:") == 1


def test_a_solver_naming_no_solver_mode_trains_on_the_cpu_without_a_note(pruned, tmp_path, cli):
    result = cli("train-dense", "--solver", write_solver(tmp_path), "-w", pruned, "-n", 1, "-o", "d.caffemodel")
    assert result.exit_code == 0 and "note" not in result.output, result.output


def test_the_final_snapshot_is_checked_before_training_and_written_after_the_output(pruned, tmp_path, cli):
    from conftest import assert_one_line_error

    solver = write_solver(tmp_path, prefix="gone/snap")  # snapshot 0: only the one the run ends with
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", pruned, "-n", 2, "-o", "d.caffemodel"),
                          "snapshot_prefix")
    # A folder gets the solver file's stem; were that a folder too, Caffe
    # would add its own solver file's stem again.
    (tmp_path / "snaps" / "solver").mkdir(parents=True)
    solver.write_text(solver.read_text().replace(str(tmp_path / "gone/snap"), str(tmp_path / "snaps")))
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", pruned, "-n", 2, "-o", "d.caffemodel"),
                          "snaps/solver' (as Caffe reads solver.prototxt) is a folder")
    assert not (tmp_path / "d.caffemodel").exists()
    (tmp_path / "snaps" / "solver").rmdir()
    assert cli("train-dense", "--solver", solver, "-w", pruned, "-n", 2, "-o", "d.caffemodel").exit_code == 0
    assert (tmp_path / "d.caffemodel").is_file() and (tmp_path / "snaps" / "solver_iter_2.solverstate").is_file()
    solver.write_text(solver.read_text().replace("max_iter: 12", "max_iter: 0"))
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", pruned, "-o", "d.caffemodel"),
                          f"{solver} stops at max_iter 0: nothing is left to train; give --iterations")


def test_a_model_trained_without_masks_takes_away_those_of_the_one_it_replaces(pruned, tmp_path, cli):
    import shutil

    shutil.copy(pruned.with_name("pruned.masks.h5"), tmp_path / "d.masks.h5")  # an earlier prune's, as d.caffemodel
    (tmp_path / "s").mkdir()
    solver = write_solver(tmp_path / "s")
    assert cli("train-dense", "--solver", solver, "-w", pruned, "-n", 2, "-o", "d.caffemodel").exit_code == 0
    assert not (tmp_path / "d.masks.h5").exists()
    result = cli("prune", "-w", "d.caffemodel", "-s", 0.3, "-o", "p.caffemodel")
    assert result.exit_code == 0 and "30.0%" in result.output, result.output


def test_hdf5_snapshots_of_layer_names_with_a_slash_are_refused_before_training(caffe, pruned, tmp_path, cli):
    """GoogLeNet's conv1/7x7_s2: Caffe's HDF5 writer makes a group per layer,
    and "conv1" is no group there; it aborts at the first snapshot. Where it
    is one, the snapshot is written, and stock Caffe cannot load it."""
    from conftest import assert_one_line_error

    solver = write_solver(tmp_path, snapshot=2, extra="momentum: 0.9\nsnapshot_format: HDF5")
    net = tmp_path / "net.prototxt"
    text = net.read_text()
    for name in ("conv1a/relu", "conv1/relu", "."):
        net.write_text(text.replace('name: "relu1"', f'name: "{name}"'))
        assert_one_line_error(cli("train-dense", "--solver", solver, "-w", pruned, "-n", 3, "-o", "d.caffemodel"),
                              f"snapshot_format HDF5 cannot hold layer '{name}'")
    # What Caffe does with conv1/relu: it writes the snapshot, and refuses to load it.
    net.write_text(text.replace('name: "relu1"', 'name: "conv1/relu"'))
    written = tmp_path / "written.h5"
    child = ("import caffe, sys; net = caffe.Net(sys.argv[1], caffe.TRAIN); "
             "getattr(net, sys.argv[2])(sys.argv[3]); print('done')")
    for method in ("save_hdf5", "load_hdf5"):
        done = subprocess.run([sys.executable, "-c", child, str(net), method, str(written)], cwd=tmp_path,
                              capture_output=True, text=True)
        assert ("done" in done.stdout) == (method == "save_hdf5"), done.stderr[-1000:]
    assert "Incompatible number of blobs for layer conv1" in done.stderr
    # A top used twice gets a Split layer named after it: out_fc1_0_split.
    net.write_text(text.replace('top: "fc1"', 'top: "out/fc"').replace('bottom: "fc1"', 'bottom: "out/fc"')
                   + 'layer { name: "quiet" type: "Silence" bottom: "out/fc" }\n')
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", pruned, "-n", 3, "-o", "d.caffemodel"),
                          "cannot hold layer 'out/fc_fc1_0_split'")
    net.write_text(text)
    result = cli("train-dense", "--solver", solver, "-w", pruned, "-n", 3, "-o", "d.caffemodel")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "snap_iter_2.caffemodel.h5").is_file() and (tmp_path / "snap_iter_3.solverstate.h5").is_file()


def test_a_last_update_that_blows_up_writes_nothing(pruned, tmp_path, cli):
    """The loss train() checks is of the forward pass before the update: a
    blow-up in the last update is found in the weights, before saving."""
    solver = write_solver(tmp_path)
    result = cli("train-lowrank", "--solver", solver, "-w", pruned, "--force-decay", 1e308, "-n", 1,
                 "-o", "big.caffemodel")
    assert result.exit_code == 1, result.output
    assert "training diverged in its last iteration (1): weights of conv1 hold NaN or Inf" in result.output
    assert not (tmp_path / "big.caffemodel").exists()
    # Huge but finite: a net whose TEST loss is Inf was written, exit 0.
    result = cli("train-lowrank", "--solver", solver, "-w", pruned, "--force-decay", 1e30, "-n", 1,
                 "-o", "big.caffemodel")
    assert result.exit_code == 1 and "training diverged by its last iteration (1): the TEST phase then gives " \
        "loss = inf; nothing was written for it" in result.output, result.output
    assert not (tmp_path / "big.caffemodel").exists()


def test_the_progress_headline_goes_by_layer_types(tmp_path):
    from caffedsd.report import headline
    from caffedsd.solver_spec import headline_output

    layers = "".join(
        f'layer {{ name: "{top}" type: "{kind}" bottom: "x" bottom: "y" top: "{top}" {extra}}}\n'
        for top, kind, extra in (("loss1/loss1", "SoftmaxWithLoss", "loss_weight: 0.3 "),
                                 ("loss3/top-1", "Accuracy", "include { phase: TEST stage: 'val' } "),
                                 ("loss3/top-5", "Accuracy", "accuracy_param { top_k: 5 } ")))
    (tmp_path / "g.prototxt").write_text('layer { name: "in" type: "Input" top: "x" top: "y" '
                                         'input_param { shape { dim: 1 dim: 2 } shape { dim: 1 } } }\n' + layers)
    solver = tmp_path / "s.prototxt"
    solver.write_text(f'net: "{tmp_path / "g.prototxt"}" base_lr: 0.01 lr_policy: "fixed" max_iter: 10 '
                      'test_iter: 1 test_interval: 5\n')
    # Without the stage the TEST net holds no top-1: the top-5 accuracy, not the first output (a loss).
    assert headline_output(read_solver(solver)) == "loss3/top-5"
    solver.write_text(solver.read_text() + 'test_state { stage: "val" }\n')
    assert headline_output(read_solver(solver)) == "loss3/top-1"
    test = {"loss1/loss1": 2.0, "loss3/top-1": 0.5, "loss3/top-5": 0.9}
    assert headline(test, "loss3/top-1") == ("loss3/top-1", 0.5)
    assert headline(test, None) == ("loss1/loss1", 2.0)  # a row from elsewhere: by names, as before


def test_no_output_replaces_the_data_the_nets_read_even_with_force(pruned, tmp_path):
    """train-dense -o data/train.h5 --force replaced the training set with a
    caffemodel: --force lets an output replace an input, not the data the
    run reads while it trains."""
    import h5py

    solver = write_solver(tmp_path, snapshot=2, prefix="snap")
    with h5py.File(tmp_path / "train.h5", "w") as h5:
        h5["data"] = np.zeros((8, 2, 6, 6), np.float32)
        h5["target"] = np.zeros((8, 5), np.float32)
    (tmp_path / "train.txt").write_text(f"{tmp_path / 'train.h5'}\n")
    net = tmp_path / "net.prototxt"
    net.write_text(net.read_text().replace(
        'type: "DummyData" top: "data" top: "target" include { phase: TRAIN }\n'
        '        dummy_data_param { shape { dim: 8 dim: 2 dim: 6 dim: 6 } shape { dim: 8 dim: 5 }\n'
        '                           data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } }',
        f'type: "HDF5Data" top: "data" top: "target" include {{ phase: TRAIN }}\n'
        f'        hdf5_data_param {{ source: "{tmp_path / "train.txt"}" batch_size: 8 }}'))
    assert "HDF5Data" in net.read_text()
    before = (tmp_path / "train.h5").read_bytes()
    for name in ("train.h5", "train.txt"):
        with pytest.raises(InputError, match=f"{name}: output would overwrite .*{name}, which the nets read as data"):
            train_dense(solver, pruned, tmp_path / name, iterations=2, force=True)
    # Nor may Caffe's own snapshots.
    os.rename(tmp_path / "train.h5", tmp_path / "snap_iter_2.caffemodel")
    (tmp_path / "train.txt").write_text(f"{tmp_path / 'snap_iter_2.caffemodel'}\n")
    with pytest.raises(InputError, match="snap_iter_2.caffemodel: the solver's own snapshots .* read as data"):
        train_dense(solver, pruned, tmp_path / "out.caffemodel", iterations=2, force=True)
    assert (tmp_path / "snap_iter_2.caffemodel").read_bytes() == before
    train_dense(solver, pruned, tmp_path / "out.caffemodel", iterations=1, force=True)  # snapshot 2 is not reached
