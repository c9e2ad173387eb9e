"""`caffedsd dsd`, train-sparse and train-dense through the CLI, with real
Caffe: the whole flow on Fashion-MNIST, a killed run resuming, bad input."""
import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from caffedsd.caffemodel import read_caffemodel
from caffedsd.dsd import RUN_FILE
from caffedsd.maskfile import load_masks
from caffedsd.report import parse_tests_csv, pct
from caffedsd.runfolder import RunFolder
from caffedsd.verify import parse_test_outputs, run_caffe_test
from conftest import (Stop, assert_one_line_error, can_mount_a_disk, gpu_skip_reason, lenet_files, run_on_a_full_disk,
                      save_net, stopping_at, where_mode_bits_bind, write_solver)

@pytest.fixture(scope="module")
def lenet_solver(tmp_path_factory):
    return lenet_files(tmp_path_factory.mktemp("fashion"), 2000, 300, test_iter=3)


@pytest.mark.caffe
@pytest.mark.slow
def test_dsd_lenet_flow(lenet_solver, tmp_path, cli):
    solver, net = lenet_solver
    (tmp_path / "recipe.yaml").write_text(
        f"solver: {solver}\ncheckpoint_every: 30\ntest_interval: 20\nstages:\n"
        "  - dense: {iterations: 80}\n  - prune: {sparsity: 0.5, layers: {ip1: 0.9}}\n"
        "  - sparse: {iterations: 40}\n  - dense: {iterations: 40, lr_scale: 0.1}\n")
    result = cli("dsd", "--recipe", "recipe.yaml", "-o", "run")
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and "4 dense" in result.output
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert report["outputs"] == {"accuracy": "accuracy", "loss": "loss"}
    stages = report["stages"]
    assert [s["kind"] for s in stages] == ["dense", "prune", "sparse", "dense"]
    assert [s["iterations"] for s in stages] == [80, 0, 40, 40]
    assert stages[0]["lr"] == pytest.approx(0.01) and stages[3]["lr"] == pytest.approx(0.001)
    pruned = 250 + 12500 + 360000 + 2500
    assert stages[1]["sparsity"] == pytest.approx(pruned / 430500)
    assert stages[2]["sparsity"] == pytest.approx(pruned / 430500)  # held through the sparse stage
    assert stages[0]["sparsity"] < 0.01 and stages[3]["sparsity"] < 0.01
    assert stages[0]["test"]["accuracy"] > 0.4  # chance is 0.1
    assert "| 3 sparse | 40 |" in (run / "report.md").read_text()
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run.glob("*/checkpoint"))
    # The periodic test passes (every 20 iterations, and at 0: test_initialization),
    # then the stage's end; training stopped at them and at checkpoints (30) without
    # losing or repeating a step.
    for s in (stages[0], stages[2], stages[3]):
        passes = parse_tests_csv((run / s["folder"] / s["tests"]).read_text())
        assert [p["iter"] for p in passes] == list(range(0, s["iterations"] + 1, 20))
        assert passes[-1]["test"] == pytest.approx(s["test"], rel=1e-5)
        curve = (run / s["folder"] / "curve.csv").read_text().splitlines()[1:]
        assert [int(line.split(",")[0]) for line in curve] == list(range(s["iterations"]))  # Caffe's numbering
    # A stage's first pass measures the weights it starts from: the previous stage's.
    first_sparse = parse_tests_csv((run / "03-sparse" / "tests.csv").read_text())[0]["test"]
    assert first_sparse == pytest.approx(stages[1]["test"], rel=1e-5)
    masks = load_masks(run / "03-sparse" / "model.masks.h5")
    model = read_caffemodel(run / "03-sparse" / "model.caffemodel")
    assert masks.model_sha256 == model.sha256()
    for layer, mask in masks.per_layer().items():
        assert np.count_nonzero(model.layer(layer).blobs[0].data[~mask]) == 0
    for s in stages:  # every stage's model loads in stock caffe test, no layer ignored
        code, log = run_caffe_test(net, run / s["model"], iterations=3)
        assert code == 0, log[-2000:]
        assert "Ignoring source layer conv" not in log and "Ignoring source layer ip" not in log
        assert parse_test_outputs(log)["accuracy"] == pytest.approx(s["test"]["accuracy"], abs=1e-4)


def _recipe(folder, sparse_iterations=3000, snapshot_format="BINARYPROTO"):
    solver = write_solver(folder, base_lr=0.02, extra=f"momentum: 0.9\nsnapshot_format: {snapshot_format}")
    text = (f"solver: {solver}\nseed: 3\ncheckpoint_every: 50\nstages:\n"
            "  - dense: {iterations: 30}\n  - prune: {sparsity: 0.6, criterion: random}\n"
            f"  - sparse: {{iterations: {sparse_iterations}}}\n  - dense: {{iterations: 20, lr_scale: 0.1}}\n")
    (folder / "recipe.yaml").write_text(text)
    return folder / "recipe.yaml"


def _dsd(recipe, run, cwd):
    # Through this Python rather than the console script, which a checkout
    # run from PYTHONPATH (tools/gpu_stage.sh) does not have. SIGINT as in a
    # terminal: under a shell's background job (`nohup ... &`) it starts
    # ignored, and Python then installs no KeyboardInterrupt of its own.
    code = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from caffedsd.cli import main; main()")
    cmd = [sys.executable, "-c", code, "dsd", "--recipe", str(recipe), "-o", str(run)]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.caffe
@pytest.mark.slow
# The user's solver may ask for HDF5 snapshots: the run's own checkpoints
# must still be found, and the old ones deleted.
@pytest.mark.parametrize("sig, snapshot_format", [(signal.SIGKILL, "BINARYPROTO"), (signal.SIGINT, "HDF5")])
def test_killed_run_resumes(tmp_path, sig, snapshot_format):
    recipe = _recipe(tmp_path, snapshot_format=snapshot_format)
    reference = _dsd(recipe, tmp_path / "reference", tmp_path)
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-2000:]

    proc = _dsd(recipe, tmp_path / "run", tmp_path)
    marker = tmp_path / "run" / "03-sparse" / "checkpoint" / "checkpoint.json"
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert marker.exists(), "the run ended or stalled before its first sparse checkpoint"
    time.sleep(0.1)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) != 0, f"exit 0 after {sig!r}: {proc.stderr.read()[-2000:]}"
    if sig == signal.SIGINT:  # one line and a shell's status for it, no traceback
        assert proc.returncode == 130
        last = proc.stderr.read().strip().splitlines()[-1]
        assert last.startswith("caffedsd: interrupted; outputs that had finished are kept"), last
    assert not (tmp_path / "run" / "report.json").exists()
    killed_at = json.loads(marker.read_text())["iter"]
    assert 0 < killed_at < 3000
    # At most two checkpoints' files; a kill inside a write may also leave
    # its temporary file, which the rerun removes.
    kept = sorted(p.name for p in marker.parent.iterdir()
                  if p.name != "checkpoint.json" and not p.name.endswith(".tmp"))
    assert len(kept) <= 8 and (marker.parent / json.loads(marker.read_text())["solverstate"]).is_file(), kept

    resumed = _dsd(recipe, tmp_path / "run", tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
    assert not list((tmp_path / "run").rglob("*.tmp"))
    for stage in ("01-dense", "02-prune"):  # finished stages kept as they were
        assert (tmp_path / "run" / stage / "model.caffemodel").read_bytes() == \
            (tmp_path / "reference" / stage / "model.caffemodel").read_bytes()
    ref_masks = load_masks(tmp_path / "reference" / "03-sparse" / "model.masks.h5")
    run_masks = load_masks(tmp_path / "run" / "03-sparse" / "model.masks.h5")
    for layer, mask in ref_masks.masks.items():
        assert np.array_equal(run_masks.masks[layer], mask)
    curve = (tmp_path / "run" / "03-sparse" / "curve.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in curve] == list(range(3000))
    # The test passes made before the kill come back from the checkpoint, and
    # none is lost or made twice.
    passes = parse_tests_csv((tmp_path / "run" / "03-sparse" / "tests.csv").read_text())
    reference_passes = parse_tests_csv((tmp_path / "reference" / "03-sparse" / "tests.csv").read_text())
    assert [p["iter"] for p in passes] == [p["iter"] for p in reference_passes] == [0, 1000, 2000, 3000]
    # The data layers (DummyData, drawing from Caffe's RNG) were replayed up to
    # the checkpoint: the resumed stage read what the uninterrupted one read,
    # so on the CPU it ends bit for bit where the reference did.
    assert passes == reference_passes
    for name in ("03-sparse/curve.csv", "03-sparse/model.caffemodel", "04-dense/model.caffemodel"):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
    assert json.loads((tmp_path / "run" / "report.json").read_text())["stages"][3]["kind"] == "dense"


@pytest.mark.caffe
def test_a_stopped_run_continues_from_another_folder_and_moved(tmp_path, cli):
    """A run started with a relative -o goes on from another working folder,
    and after its folder was moved: its checkpoint, and the caffemodel Caffe
    names in the checkpoint's solverstate, are found in the run folder, not
    from where the run was started."""
    from caffedsd.dsd import run_recipe
    from caffedsd.recipe import load_recipe

    recipe = _recipe(tmp_path, sparse_iterations=80)
    assert cli("dsd", "--recipe", recipe, "-o", "reference").exit_code == 0
    for run in ("run", "moved"):  # from tmp_path, the cli fixture's working folder
        with pytest.raises(Stop):
            run_recipe(load_recipe(recipe), Path(run), progress=stopping_at(60))
        assert json.loads((tmp_path / run / "03-sparse" / "checkpoint" / "checkpoint.json").read_text())["iter"] == 50
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "moved").rename(elsewhere / "moved")
    # The copy of the state that names the model where it now is, with no room for it (ulimit -f 1):
    # one line naming the checkpoint's state, not the scratch file.
    code = "from caffedsd.cli import main; main()"
    limited = subprocess.run(["bash", "-c", f"ulimit -f 1; exec {sys.executable} -c '{code}' dsd --recipe {recipe} "
                              f"-o moved"], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert limited.returncode == 1, limited.stderr
    assert limited.stderr.strip().splitlines()[-1].startswith(
        "caffedsd: moved/03-sparse/checkpoint/snapshot_iter_50.solverstate: its copy to restore from, naming the "
        "caffemodel beside it: could not be written (File too large: "), limited.stderr
    # A disk with no inode left for the copy's scratch folder (one for the
    # stage's solver file, written first, here anew): the same, not bad
    # input (exit status 2).
    (tmp_path / "full").mkdir()
    (elsewhere / "moved" / "03-sparse" / "solver.prototxt").unlink()
    if can_mount_a_disk(tmp_path / "full"):  # else the rest is still tested
        full = run_on_a_full_disk([sys.executable, "-c", code, "dsd", "--recipe", recipe, "-o", "moved"],
                                  content=elsewhere, mount=tmp_path / "full", spare_inodes=1)
        assert full.returncode == 1, full.stderr
        assert full.stderr.strip().splitlines()[-1] == (
            "caffedsd: moved/03-sparse/checkpoint/snapshot_iter_50.solverstate: its copy to restore from, naming "
            "the caffemodel beside it: could not be written (No space left on device); no part of it was left")
    # In child processes: Caffe aborts the process on a solverstate's missing caffemodel.
    for run, out, cwd in ((tmp_path / "run", tmp_path / "run", elsewhere),
                          (elsewhere / "moved", "elsewhere/moved", tmp_path)):
        proc = _dsd(recipe, out, cwd)
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
        for name in ("03-sparse/curve.csv", "03-sparse/tests.csv", "03-sparse/model.caffemodel",
                     "04-dense/model.caffemodel"):
            assert (run / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
        # The copy of the state restored, naming the model where it now is, is gone with its scratch folder.
        assert not [p.name for p in run.rglob("*") if ".solverstate" in p.name or p.name.endswith(".tmp")]


@pytest.mark.caffe
@pytest.mark.slow
def test_interrupted_lenet_stage_reads_what_an_uninterrupted_one_reads(tmp_path, cli, device):
    """HDF5Data shuffles with the C library's rand(), a TEST pass of 2 of the
    3 test batches leaves the test net part way through its images, and
    Dropout draws from Caffe's RNG: a continued stage replays the data
    layers of both nets and the Dropout layer up to its checkpoint, and ends
    where an uninterrupted one does, bit for bit."""
    from caffedsd.dsd import run_recipe
    from caffedsd.recipe import Recipe

    solver, net = lenet_files(tmp_path, 2000, 300, test_iter=2)
    solver.write_text(solver.read_text() + "iter_size: 2\n")
    text = net.read_text()
    net.write_text(text.replace('layer {\n  name: "ip2"', 'layer { name: "drop1" type: "Dropout" bottom: "ip1" '
                                'top: "ip1" dropout_param { dropout_ratio: 0.5 } }\nlayer {\n  name: "ip2"', 1))
    assert "drop1" in net.read_text()
    recipe = Recipe.from_dict({"solver": str(solver), "seed": 4, "checkpoint_every": 40, "test_interval": 20,
                               "stages": [{"dense": {"iterations": 100}}]})
    (tmp_path / "recipe.yaml").write_text(recipe.to_yaml())
    gpu = ["--gpu", device] if device is not None else []
    run_recipe(recipe, tmp_path / "reference", gpu=device)
    for run in ("run", "restarted"):
        with pytest.raises(Stop):
            run_recipe(recipe, tmp_path / run, gpu=device, progress=stopping_at(60))
    result = cli("dsd", "--recipe", "recipe.yaml", "-o", "run", *gpu)
    assert result.exit_code == 0, result.output
    assert "01-dense: replaying the data layers through 40 iteration(s) and 2 TEST pass(es)" in result.output
    for name in ("tests.csv", "curve.csv", "model.caffemodel"):
        assert (tmp_path / "run" / "01-dense" / name).read_bytes() == \
            (tmp_path / "reference" / "01-dense" / name).read_bytes(), name
    # --restart-data: the stage reads its first batches again, as `caffe train --snapshot` would.
    result = cli("dsd", "--recipe", "recipe.yaml", "-o", "restarted", "--restart-data", *gpu)
    assert result.exit_code == 0 and "replaying" not in result.output, result.output
    for name in ("tests.csv", "model.caffemodel"):
        assert (tmp_path / "restarted" / "01-dense" / name).read_bytes() != \
            (tmp_path / "reference" / "01-dense" / name).read_bytes(), name


@pytest.mark.caffe
def test_run_dir_of_another_recipe_is_refused(tmp_path, cli):
    recipe = _recipe(tmp_path, sparse_iterations=10)
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    again = cli("dsd", "--recipe", recipe, "-o", "run")  # finished: nothing to redo
    assert again.exit_code == 0
    solver = tmp_path / "solver.prototxt"
    solver.write_text(solver.read_text().replace("base_lr: 0.02", "base_lr: 0.03"))
    result = cli("dsd", "--recipe", recipe, "-o", "run")
    assert result.exit_code == 2 and "made by a different recipe, solver, net or weights" in result.output
    solver.write_text(solver.read_text().replace("base_lr: 0.03", "base_lr: 0.02"))
    recipe.write_text(recipe.read_text().replace("iterations: 10", "iterations: 11"))
    result = cli("dsd", "--recipe", recipe, "-o", "run")
    assert result.exit_code == 2
    assert result.output.strip() == ("caffedsd: run: made by a different recipe, solver, net or weights; give a "
                                     "new -o, or --force to keep its stages 1-2, which this recipe shares, and run "
                                     "the rest anew")


@pytest.mark.caffe
def test_the_masks_beside_the_recipes_weights_are_part_of_the_run(tmp_path, cli):
    """A prune stage keeps them pruned; deleted or changed, a rerun took the
    folder for the same run and reported what other masks had made."""
    recipe = _recipe(tmp_path, sparse_iterations=3)
    solver = tmp_path / "solver.prototxt"
    assert cli("dsd", "--recipe", recipe, "-o", "first").exit_code == 0
    assert cli("prune", "-w", tmp_path / "first" / "01-dense" / "model.caffemodel", "-s", 0.5,
               "-o", "p.caffemodel").exit_code == 0
    recipe.write_text(f"solver: {solver}\nweights: {tmp_path / 'p.caffemodel'}\nseed: 3\nstages:\n"
                      "  - prune: {sparsity: 0.3}\n  - sparse: {iterations: 3}\n")
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0  # the same run: finished
    (tmp_path / "p.masks.h5").unlink()
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                          "run: made by a different recipe, solver, net or weights")


def _files(run, *stages):
    """{path: (bytes, mtime)} of every file in these stage folders of ``run``."""
    return {p.relative_to(run): (p.read_bytes(), p.stat().st_mtime_ns)
            for stage in stages for p in (run / stage).rglob("*") if p.is_file()}


@pytest.mark.caffe
def test_pruning_a_layer_the_train_net_does_not_train_is_said(tmp_path, cli):
    """lr_mult 0 keeps a layer's pruned weights at 0.0 in the dense stage
    too, which the DSD flow means to bring them back: said, not refused."""
    recipe = _recipe(tmp_path, sparse_iterations=5)
    net = tmp_path / "net.prototxt"
    net.write_text(net.read_text().replace('top: "conv1"\n', 'top: "conv1" param { lr_mult: 0 } param { lr_mult: 0 }\n',
                                           1))
    result = cli("dsd", "--recipe", recipe, "-o", "run")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "warning" in line]
    assert warned == [f"caffedsd: warning: {recipe}: stage 2 (prune) pruned conv1, which the train net does not "
                      "train (lr_mult: 0, or a layer of phase TEST only): their pruned weights stay 0.0 through the "
                      "dense stage after it; a rule 'conv1: 0' leaves one unpruned"], result.output
    pruned = read_caffemodel(tmp_path / "run" / "02-prune" / "model.caffemodel").layer("conv1").blobs[0].data
    dense = read_caffemodel(tmp_path / "run" / "04-dense" / "model.caffemodel").layer("conv1").blobs[0].data
    assert np.array_equal(pruned, dense) and np.count_nonzero(dense == 0) > 0
    # Left unpruned, or with no dense stage after it to bring weights back, it is not worth a word.
    recipe.write_text(recipe.read_text().replace("criterion: random}", "criterion: random, layers: {conv1: 0}}"))
    result = cli("dsd", "--recipe", recipe, "--force", "-o", "run")
    assert result.exit_code == 0 and "caffedsd: warning" not in result.output, result.output
    # Nor said before a bad input's one line.
    recipe.write_text(recipe.read_text().replace(", layers: {conv1: 0}", "") + "weights: missing.caffemodel\n")
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run2"), "weights missing.caffemodel do not exist")


def test_frozen_weights_are_those_caffe_does_not_train():
    from caffedsd.caffe_proto import NetParameter
    from caffedsd.dsd import _frozen_weights

    net = NetParameter()
    for name, params in (("own", [{"lr_mult": 0}]), ("bias_frozen", [{}, {"lr_mult": 0}]), ("plain", []),
                         ("owner", [{"name": "w"}]), ("sharer", [{"name": "w", "lr_mult": 0}]),
                         ("trained", [{"name": "v", "lr_mult": 1}]), ("also", [{"name": "v"}])):
        layer = net.layer.add(name=name, type="InnerProduct")
        for param in params:
            layer.param.add(**param)
    # An owner without lr_mult takes its sharer's (Net::AppendParam), as the sharer is its blob.
    assert _frozen_weights(net.layer) == ["own", "owner", "sharer"]
    # Layers of phase TEST only do not train, but for one sharing a trained blob.
    test_only = NetParameter()
    test_only.layer.add(name="probe", type="InnerProduct")
    test_only.layer.add(name="tied", type="InnerProduct").param.add(name="v")
    prunable = {layer.name: layer for layer in [*net.layer, *test_only.layer]}
    assert _frozen_weights(net.layer, prunable) == ["own", "owner", "sharer", "probe"]


def test_force_keeps_the_stages_an_edited_recipe_shares(tmp_path, cli):
    recipe = _recipe(tmp_path, sparse_iterations=10)
    run = tmp_path / "run"
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    kept = _files(run, "01-dense", "02-prune")
    recipe.write_text(recipe.read_text().replace("iterations: 10", "iterations: 12"))
    result = cli("dsd", "--recipe", recipe, "--force", "-o", "run")
    assert result.exit_code == 0, result.output
    assert "caffedsd: run: kept stages 1-2 of the run an earlier recipe made; removed 03-sparse, 04-dense" \
        in result.output
    assert _files(run, "01-dense", "02-prune") == kept  # not trained again
    # Each stage said as it ended: nothing was said between the bar of one and the table at the end.
    report = json.loads((run / "report.json").read_text())["stages"]
    # (Not those found finished: a rerun's bad input is one line, and the table names them.)
    said = [line for line in result.output.splitlines() if line.startswith("caffedsd: 0")]
    assert len(said) == 2, result.output
    for line, stage in zip(said, report[2:]):
        assert line == (f"caffedsd: {stage['folder']}: done in {stage['seconds']:.1f} s; test: loss = "
                        f"{stage['test']['loss']:.4f}; sparsity {pct(stage['sparsity'])}; "
                        f"{Path('run') / stage['model']}"), line
    report = json.loads((run / "report.json").read_text())
    assert [s["iterations"] for s in report["stages"]] == [30, 0, 12, 20]
    assert "iterations: 12" in (run / "recipe.yaml").read_text()
    # The same stages as a run of the edited recipe from nothing, bit for bit.
    assert cli("dsd", "--recipe", recipe, "-o", "fresh").exit_code == 0
    for stage in ("03-sparse", "04-dense"):
        assert (run / stage / "model.caffemodel").read_bytes() == \
            (tmp_path / "fresh" / stage / "model.caffemodel").read_bytes()
    # The folder is now the edited recipe's: a plain rerun continues it.
    again = cli("dsd", "--recipe", recipe, "-o", "run")
    assert again.exit_code == 0 and "kept" not in again.output

    # A shorter recipe keeps what it shares and drops the stage it lost.
    recipe.write_text("".join(recipe.read_text().splitlines(keepends=True)[:-1]))
    result = cli("dsd", "--recipe", recipe, "--force", "-o", "run")
    assert result.exit_code == 0
    assert "kept stages 1-3 of the run an earlier recipe made; removed 04-dense" in result.output
    assert sorted(p.name for p in run.glob("0*")) == ["01-dense", "02-prune", "03-sparse"]

    # Another solver file: no stage is the same, and --force starts over.
    solver = tmp_path / "solver.prototxt"
    solver.write_text(solver.read_text().replace("base_lr: 0.02", "base_lr: 0.03"))
    refused = cli("dsd", "--recipe", recipe, "-o", "run")
    assert refused.exit_code == 2
    assert refused.output.strip().endswith("--force to start it over (no stage of it is the same in this recipe)")
    result = cli("dsd", "--recipe", recipe, "--force", "-o", "run")
    assert result.exit_code == 0
    assert "kept no stage of the run an earlier recipe made; removed 01-dense, 02-prune, 03-sparse" in result.output
    retrained = _files(run, "01-dense")
    assert retrained[Path("01-dense/model.caffemodel")][1] != kept[Path("01-dense/model.caffemodel")][1]


@pytest.mark.caffe
def test_weights_retrained_in_place_are_another_start(tmp_path, cli):
    """The recipe's weights file is part of what made a run folder: the same
    path with other contents does not continue the run."""
    import shutil

    from caffedsd.dsd import run_fingerprint
    from caffedsd.recipe import load_recipe
    from caffedsd.solver_spec import read_solver

    recipe = _recipe(tmp_path, sparse_iterations=10)
    assert cli("dsd", "--recipe", recipe, "-o", "first").exit_code == 0
    shutil.copy(tmp_path / "first" / "01-dense" / "model.caffemodel", tmp_path / "start.caffemodel")
    recipe.write_text("weights: start.caffemodel\n" + recipe.read_text())
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    run = tmp_path / "run"

    # A folder from before the weights counted: --force keeps its stages.
    shutil.copytree(run, tmp_path / "older")
    parsed = load_recipe(recipe)
    legacy = run_fingerprint(parsed, read_solver(parsed.solver), with_weights=False)
    (tmp_path / "older" / "run.json").write_text(json.dumps({"recipe_fingerprint": legacy}))
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "older"),
                          "older: made by an earlier caffedsd, which did not record the weights this recipe started "
                          "from; give a new -o, or --force to keep its stages 1-4 if they were these")
    kept = _files(tmp_path / "older", "01-dense", "02-prune", "03-sparse", "04-dense")
    result = cli("dsd", "--recipe", recipe, "--force", "-o", "older")
    assert result.exit_code == 0 and "kept stages 1-4 of the run an earlier recipe made" in result.output
    assert _files(tmp_path / "older", "01-dense", "02-prune", "03-sparse", "04-dense") == kept

    shutil.copy(tmp_path / "first" / "04-dense" / "model.caffemodel", tmp_path / "start.caffemodel")
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                          "run: made by a different recipe, solver, net or weights; give a new -o, or --force to "
                          "start it over (no stage of it is the same in this recipe)")


@pytest.mark.caffe
def test_a_run_from_before_rule_order_counted_goes_on(tmp_path, cli):
    """Its fingerprint lost the order of plan rules: the same recipe goes on
    with it, as its recipe.yaml (in order) says; reordered, it is another."""
    from caffedsd.dsd import run_fingerprint
    from caffedsd.recipe import load_recipe
    from caffedsd.solver_spec import read_solver

    recipe = _recipe(tmp_path, sparse_iterations=3)
    recipe.write_text(recipe.read_text().replace("{sparsity: 0.6, criterion: random}",
                                                 "{layers: {'*': 0.6, conv1: 0.1}}"))
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    parsed = load_recipe(recipe)
    legacy = run_fingerprint(parsed, read_solver(parsed.solver), rule_order=False)
    assert legacy != run_fingerprint(parsed, read_solver(parsed.solver))
    (tmp_path / "run" / "run.json").write_text(json.dumps({"recipe_fingerprint": legacy}))
    kept = _files(tmp_path / "run", "01-dense", "02-prune", "03-sparse", "04-dense")
    result = cli("dsd", "--recipe", recipe, "-o", "run")
    assert result.exit_code == 0 and "kept" not in result.output, result.output
    assert _files(tmp_path / "run", "01-dense", "02-prune", "03-sparse", "04-dense") == kept
    assert json.loads((tmp_path / "run" / "run.json").read_text())["recipe_fingerprint"] != legacy
    (tmp_path / "run" / "run.json").write_text(json.dumps({"recipe_fingerprint": legacy}))
    recipe.write_text(recipe.read_text().replace("{layers: {'*': 0.6, conv1: 0.1}}",
                                                 "{layers: {conv1: 0.1, '*': 0.6}}"))
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"), "--force to keep its stages 1, which")


@pytest.mark.caffe
def test_a_stage_made_from_another_start_is_not_kept(tmp_path, cli):
    """A stage run again (its folder deleted alone; on a GPU, or with
    --restart-data, not bit for bit) gives the next stage another start:
    that stage's model, or its checkpoint, is of a start that is gone."""
    from caffedsd.dsd import run_recipe
    from caffedsd.recipe import load_recipe

    recipe = _recipe(tmp_path, sparse_iterations=80)
    run = tmp_path / "run"
    with pytest.raises(Stop):
        run_recipe(load_recipe(recipe), run, progress=stopping_at(60))
    checkpoint = run / "03-sparse" / "checkpoint" / "checkpoint.json"
    record = json.loads(checkpoint.read_text())
    pruned = json.loads((run / "02-prune" / "stage.json").read_text())["model_sha256"]
    assert record["start_sha256"] == pruned
    checkpoint.write_text(json.dumps(record | {"start_sha256": "0" * 64}))
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"), "checkpoint.json: the stage went this far "
                          "from another model than it starts from now (the stage before it was run again since); "
                          "delete")
    checkpoint.write_text(json.dumps(record))
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    done = run / "04-dense" / "stage.json"
    summary = json.loads(done.read_text())
    assert summary["input_sha256"] == json.loads((run / "03-sparse" / "stage.json").read_text())["model_sha256"]
    done.write_text(json.dumps(summary | {"input_sha256": "0" * 64}))
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"), "04-dense/stage.json: stage 4 started from "
                          "another model than the one stage 3 finished with now (run again or rewritten since); "
                          "delete")


@pytest.mark.caffe
def test_a_stages_curve_and_test_passes_are_checked_when_read_again(tmp_path, cli):
    """A finished stage's curve.csv or tests.csv gone or damaged, or a
    checkpoint's, gave a traceback (the report's plot, or the resume, read
    them). A checkpoint's curve from before Caffe's numbering is
    renumbered, and its seconds count in the stage's."""
    from caffedsd.dsd import run_recipe
    from caffedsd.recipe import load_recipe

    recipe = _recipe(tmp_path, sparse_iterations=80)
    run = tmp_path / "run"
    with pytest.raises(Stop):
        run_recipe(load_recipe(recipe), run, progress=stopping_at(60))
    checkpoint = run / "03-sparse" / "checkpoint"
    record = json.loads((checkpoint / "checkpoint.json").read_text())
    assert record["iter"] == 50 and record["seconds"] > 0
    curve = checkpoint / record["curve"]
    good = curve.read_text()
    assert [row.split(",")[0] for row in good.splitlines()[1:]] == [str(n) for n in range(50)]
    where = Path("run/03-sparse/checkpoint") / record["curve"]  # as the command names it, from its folder
    restart = "delete run/03-sparse/checkpoint to restart the stage"
    for text, expect in (("iter,loss,lr\n1,2\n", "damaged, not the CSV caffedsd wrote (line 2 has 2 cell(s), not 3)"),
                         ("iter,loss\n", "damaged, not the CSV caffedsd wrote (its first line is not iter,loss,lr)"),
                         ("iter,loss,lr\nx,1,2\n", "damaged, not the CSV caffedsd wrote (invalid literal"),
                         (None, "missing")):
        curve.unlink()
        if text is not None:
            curve.write_text(text)
        result = cli("dsd", "--recipe", recipe, "-o", "run")
        assert_one_line_error(result, f"{where}: {expect}")
        assert result.output.rstrip().endswith(restart), result.output
    # A file cut or replaced since the record named it: an empty snapshot
    # caffemodel went on from the stage's first weights, a tests CSV short
    # of a row replayed other batches; values of other types, or a folder
    # in the record's place, gave tracebacks.
    curve.write_text(good)
    snapshot = (checkpoint / record["solverstate"]).with_suffix(".caffemodel")
    tests = checkpoint / record["tests"]
    marker = checkpoint / "checkpoint.json"
    for path, text, expect in ((snapshot, b"", f"its caffemodel {snapshot.relative_to(tmp_path)} is not the file"),
                               (tests, tests.read_bytes().rsplit(b"\n", 2)[0] + b"\n",
                                f"its tests {tests.relative_to(tmp_path)} is not the file"),
                               (marker, json.dumps(record | {"iter": "50"}).encode(),
                                'damaged, its iter "50" is not a count'),
                               (marker, json.dumps(record | {"sha256": {"model": "0" * 64}}).encode(),
                                "damaged, its sha256 {\"model\": \"0000"),
                               (marker, None, "cannot be read (Is a directory)")):
        kept = path.read_bytes()
        path.unlink()
        if text is None:
            path.mkdir()
        else:
            path.write_bytes(text)
        result = cli("dsd", "--recipe", recipe, "-o", "run")
        assert_one_line_error(result, expect)
        assert result.output.rstrip().endswith(restart), result.output
        if text is None:
            path.rmdir()
        path.write_bytes(kept)
    # As an earlier version wrote it: numbered from 1, up to the checkpoint's iteration.
    curve.write_text("iter,loss,lr\n" + "".join(f"{int(row.split(',')[0]) + 1},{row.split(',', 1)[1]}\n"
                                                 for row in good.splitlines()[1:]))
    legacy = {key: value for key, value in record.items() if key != "sha256"}  # earlier versions hashed nothing
    (checkpoint / "checkpoint.json").write_text(json.dumps(legacy | {"seconds": 1000.0}))
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    sparse = run / "03-sparse"
    assert (sparse / "curve.csv").read_text().startswith(good)
    assert [row.split(",")[0] for row in (sparse / "curve.csv").read_text().splitlines()[1:]] == \
        [str(n) for n in range(80)]
    assert json.loads((sparse / "stage.json").read_text())["seconds"] >= 1000  # it took under a second itself
    # A finished stage's.
    again = "delete run/03-sparse and the stages after it to run it again"
    whole = (sparse / "curve.csv").read_text()
    (sparse / "curve.csv").write_text(whole[:whole.rindex("\n", 0, -1) + 1])  # cut at a row: it read
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                          "run/03-sparse/curve.csv: cut short, not the 80 rows run/03-sparse/stage.json records")
    (sparse / "curve.csv").write_text(whole)
    passes = (sparse / "tests.csv").read_text()
    (sparse / "tests.csv").write_text(passes.splitlines()[0] + "\n")
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"), "run/03-sparse/tests.csv: cut short, without "
                          "the stage's end (iteration 80)")
    (sparse / "tests.csv").write_text(passes)
    # Whole and well formed, but not as the stage wrote them: the report would plot other numbers.
    for name, text in (("curve.csv", whole), ("tests.csv", passes)):
        header, first, rest = text.split("\n", 2)
        (sparse / name).write_text(f"{header}\n{first.split(',')[0]},{','.join('7' for _ in first.split(',')[1:])}\n{rest}")
        assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                              f"run/03-sparse/{name}: not the file stage 3 finished with (its sha256 differs from the "
                              f"one run/03-sparse/stage.json records); {again}")
        (sparse / name).write_text(text)
    for name, bad in (("curve.csv", "iter,loss,lr\n0,1,0.1,5\n"), ("tests.csv", "iter,loss\n0,1,2\n"),
                      ("tests.csv", b"\xff\xfe")):
        original = (sparse / name).read_bytes()
        (sparse / name).write_bytes(bad if isinstance(bad, bytes) else bad.encode())
        result = cli("dsd", "--recipe", recipe, "-o", "run")
        assert_one_line_error(result, f"run/03-sparse/{name}: damaged, not the CSV caffedsd wrote")
        assert result.output.rstrip().endswith(again), result.output
        (sparse / name).unlink()
        assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"), f"run/03-sparse/{name}: missing; delete")
        (sparse / name).write_bytes(original)
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0


@pytest.mark.caffe
def test_a_solver_without_a_test_net_has_no_test_rows(tmp_path, cli):
    """Each stage's tests.csv had a row at its end with no values, and
    report.md spoke of the solver's TEST net."""
    solver = write_solver(tmp_path)
    text = solver.read_text()
    assert "test_iter: 2\n" in text
    solver.write_text(text.replace("test_iter: 2\n", ""))
    (tmp_path / "recipe.yaml").write_text(f"solver: {solver}\nstages:\n  - dense: {{iterations: 3}}\n"
                                          "  - prune: {sparsity: 0.5}\n  - sparse: {iterations: 2}\n")
    result = cli("dsd", "--recipe", "recipe.yaml", "-o", "run")
    assert result.exit_code == 0, result.output
    for stage, iterations in (("01-dense", 3), ("03-sparse", 2)):
        assert (tmp_path / "run" / stage / "tests.csv").read_text() == "iter\n"
        assert len((tmp_path / "run" / stage / "curve.csv").read_text().splitlines()) == 1 + iterations
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "The solver has no test net (test_iter)." in markdown and "TEST net" not in markdown
    assert all(stage["test"] == {} for stage in json.loads((tmp_path / "run" / "report.json").read_text())["stages"])


@pytest.mark.caffe
def test_force_does_not_remove_the_weights_the_recipe_reads(tmp_path, cli):
    """Weights to continue from, in a stage folder the takeover removes:
    gone before the run read them, and its failure then emptied the folder."""
    recipe = _recipe(tmp_path, sparse_iterations=3)
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    solver = tmp_path / "solver.prototxt"
    kept = _files(tmp_path / "run", "01-dense", "02-prune", "03-sparse", "04-dense")
    recipe.write_text(f"solver: {solver}\nweights: run/04-dense/model.caffemodel\nstages:\n"
                      "  - prune: {sparsity: 0.7}\n  - sparse: {iterations: 3}\n")
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run", "--force"),
                          "recipe.yaml reads it, and --force would remove it with run/04-dense; copy it out of run "
                          "first, or give a new -o")
    assert _files(tmp_path / "run", "01-dense", "02-prune", "03-sparse", "04-dense") == kept
    # A plan file there, and the recipe itself: the takeover ran, and the
    # next run of the recipe found them gone.
    _recipe(tmp_path, sparse_iterations=3)
    edited = recipe.read_text().replace("iterations: 20", "iterations: 21")
    (tmp_path / "run" / "04-dense" / "plan.yaml").write_text("sparsity: 0.6\n")
    (tmp_path / "run" / "04-dense" / "r.yaml").write_text(edited)
    kept = _files(tmp_path / "run", "01-dense", "02-prune", "03-sparse", "04-dense")
    recipe.write_text(edited + "  - prune: {plan: run/04-dense/plan.yaml}\n")
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run", "--force"),
                          "run/04-dense/plan.yaml: " f"{recipe} reads it, and --force would remove it with run/04-dense")
    assert_one_line_error(cli("dsd", "--recipe", "run/04-dense/r.yaml", "-o", "run", "--force"),
                          "run/04-dense/r.yaml: run/04-dense/r.yaml reads it, and --force would remove it with "
                          "run/04-dense")
    assert _files(tmp_path / "run", "01-dense", "02-prune", "03-sparse", "04-dense") == kept


@pytest.mark.caffe
def test_a_verified_plan_is_required_of_the_weights_it_was_verified_on(tmp_path, cli):
    from caffedsd.caffemodel import read_caffemodel
    from caffedsd.plan import SparsityPlan

    solver = write_solver(tmp_path, base_lr=0.02)
    (tmp_path / "dense.yaml").write_text(f"solver: {solver}\nstages:\n  - dense: {{iterations: 3}}\n")
    assert cli("dsd", "--recipe", "dense.yaml", "-o", "dense").exit_code == 0
    weights = tmp_path / "dense" / "01-dense" / "model.caffemodel"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"solver: {solver}\nweights: {weights}\nstages:\n"
                      "  - prune: {plan: plan.yaml, require_verified: true}\n  - sparse: {iterations: 3}\n")
    for sha256 in ("0" * 64, read_caffemodel(weights).sha256()):
        (tmp_path / "plan.yaml").write_text(f"sparsity: 0.5\nverified: {{measured_drop: 0.1, weights_sha256: "
                                            f"'{sha256}', plan_sha256: {SparsityPlan(sparsity=0.5).digest()}}}\n")
        result = cli("dsd", "--recipe", recipe, "-o", "run")
        if sha256 == "0" * 64:
            assert_one_line_error(result, f"stage 1 (prune) has require_verified, but weights {weights} are not "
                                  "those its plan was verified on")
            assert not (tmp_path / "run").exists()
        else:
            assert result.exit_code == 0, result.output


@pytest.mark.caffe
def test_checkpoint_without_its_solverstate(tmp_path, cli):
    recipe = _recipe(tmp_path, sparse_iterations=10)
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    stage = tmp_path / "run" / "03-sparse"
    for name in ("stage.json", "model.caffemodel"):  # as if killed mid-stage
        (stage / name).unlink()
    (stage / "checkpoint").mkdir()
    (stage / "checkpoint" / "checkpoint.json").write_text(json.dumps(
        {"iter": 5, "solverstate": str(stage / "checkpoint" / "gone.solverstate"), "curve": "c.csv"}))
    result = cli("dsd", "--recipe", recipe, "-o", "run")
    assert_one_line_error(result, "checkpoint.json: its solverstate")
    assert "gone.solverstate is missing; delete" in result.output
    # Caffe's restore loads the caffemodel beside it, and aborts on a damaged solverstate.
    (stage / "checkpoint" / "gone.solverstate").write_bytes(b"\x08")
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"), "checkpoint.json: its caffemodel")
    (stage / "checkpoint" / "gone.caffemodel").write_bytes(b"")
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"), "c.csv: missing; delete")
    (stage / "checkpoint" / "c.csv").write_text("iter,loss,lr\n" + "".join(f"{n},1.0,0.02\n" for n in range(5)))
    # A record of an earlier caffedsd (no sha256): its pair is checked as a -w and a --solverstate are.
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                          "gone.caffemodel: empty file, not a caffemodel; delete")


@pytest.mark.caffe
def test_a_checkpoint_of_an_earlier_caffedsd_is_checked_before_caffe_restores_it(tmp_path, cli):
    """Checkpoints made before they recorded the sha256 of their files (and
    before their snapshots were synced, so those most likely cut by a
    crash) were given to Caffe's restore unchecked: it aborted the process
    on a cut file, and took an emptied caffemodel for no weights, going on
    from the stage's start without a word."""
    from caffedsd.dsd import run_recipe
    from caffedsd.recipe import load_recipe

    recipe = _recipe(tmp_path, sparse_iterations=80)
    assert cli("dsd", "--recipe", recipe, "-o", "reference").exit_code == 0
    run = tmp_path / "run"
    with pytest.raises(Stop):
        run_recipe(load_recipe(recipe), run, progress=stopping_at(60))
    checkpoint = run / "03-sparse" / "checkpoint"
    record = json.loads((checkpoint / "checkpoint.json").read_text())
    (checkpoint / "checkpoint.json").write_text(json.dumps({k: v for k, v in record.items() if k != "sha256"}))
    model, state = checkpoint / "snapshot_iter_50.caffemodel", checkpoint / "snapshot_iter_50.solverstate"
    whole = {path: path.read_bytes() for path in (model, state)}
    restart = "; delete run/03-sparse/checkpoint to restart the stage"
    for path, cut, expect in ((model, 0, "empty file, not a caffemodel"),
                              (model, len(whole[model]) - 9, "not a caffemodel, or truncated"),
                              (state, len(whole[state]) - 9, "not a solverstate, or truncated")):
        path.write_bytes(whole[path][:cut])
        result = cli("dsd", "--recipe", recipe, "-o", "run")
        assert_one_line_error(result, f"{path.relative_to(tmp_path)}: {expect}")
        assert result.output.strip().endswith(restart), result.output
        path.write_bytes(whole[path])
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    for name in ("03-sparse/curve.csv", "03-sparse/model.caffemodel", "04-dense/model.caffemodel"):
        assert (run / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name


@pytest.mark.caffe
def test_a_checkpoint_of_an_earlier_caffedsd_with_no_room_for_its_copy_names_its_state(tmp_path, cli):
    """The cleaned copy of an earlier caffedsd's checkpoint state (its
    record hashes nothing) with no room: one line naming the checkpoint's
    state, as a hashed checkpoint's copy does, not the scratch file; and no
    advice to delete the checkpoint, which is whole (exit status 1, not 2)."""
    from caffedsd.dsd import run_recipe
    from caffedsd.recipe import load_recipe

    recipe = _recipe(tmp_path, sparse_iterations=80)
    assert cli("dsd", "--recipe", recipe, "-o", "reference").exit_code == 0
    with pytest.raises(Stop):
        run_recipe(load_recipe(recipe), tmp_path / "run", progress=stopping_at(60))
    checkpoint = tmp_path / "run" / "03-sparse" / "checkpoint"
    record = json.loads((checkpoint / "checkpoint.json").read_text())
    (checkpoint / "checkpoint.json").write_text(json.dumps({k: v for k, v in record.items() if k != "sha256"}))
    state = checkpoint / "snapshot_iter_50.solverstate"
    assert state.stat().st_size > 1024  # more than ulimit -f 1 lets a file hold
    code = "from caffedsd.cli import main; main()"
    limited = subprocess.run(["bash", "-c", f"ulimit -f 1; exec {sys.executable} -c '{code}' dsd --recipe {recipe} "
                              "-o run"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert limited.returncode == 1, limited.stderr
    last = limited.stderr.strip().splitlines()[-1]
    assert last.startswith("caffedsd: run/03-sparse/checkpoint/snapshot_iter_50.solverstate: its copy to restore "
                           "from: could not be written (File too large: "), limited.stderr
    assert "to restart the stage" not in last
    assert not [p.name for p in checkpoint.rglob("*") if p.name.endswith(".tmp") or p.is_dir()]
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    for name in ("03-sparse/curve.csv", "03-sparse/model.caffemodel", "04-dense/model.caffemodel"):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name


@pytest.mark.caffe
def test_damaged_run_records_are_one_line(tmp_path, cli):
    """A run folder's JSON records are caffedsd's own, written whole; one
    edited or cut by something else is named, not a traceback."""
    recipe = _recipe(tmp_path, sparse_iterations=10)
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    run = tmp_path / "run"
    # The same command again while another caffedsd holds the folder.
    with RunFolder(run, RUN_FILE, "run", "recipe, solver or net").open(json.loads((run / RUN_FILE).read_text())):
        result = cli("dsd", "--recipe", recipe, "-o", "run")
        assert_one_line_error(result, f"run: in use by caffedsd (process {os.getpid()} on ")
    done = run / "03-sparse" / "stage.json"
    whole = done.read_text()
    for text, expect in [(whole[:len(whole) // 2], "damaged, not the JSON caffedsd wrote"),
                         ("[1, 2]", "damaged, not a JSON object"),
                         (whole.replace('"seconds"', '"secs"'), "damaged, lacks seconds; has unknown secs")]:
        done.write_text(text)
        result = cli("dsd", "--recipe", recipe, "-o", "run")
        assert_one_line_error(result, f"03-sparse/stage.json: {expect}")
        assert result.output.rstrip().endswith("; remove it to redo its work")
    # Values edited in: a traceback, a misleading "cut short", or a report
    # of another stage's model and kind.
    summary, redo = json.loads(whole), "; delete run/03-sparse and the stages after it to run it again"
    for key, value, expect in [("curve", 5, "its curve 5 is not a name or null"),
                               ("iterations", "10", 'its iterations "10" is not a count'),
                               ("test", [1], "its test [1] is not a table of number or null values"),
                               ("sparsity", 2, "its sparsity 2 is not a fraction"),
                               ("model_sha256", "x", 'its model_sha256 "x" is not a sha256 or null'),
                               ("kind", "dense", f"its kind is 'dense' where this stage's is 'sparse'{redo}"),
                               ("model", "01-dense/model.caffemodel", "its model is '01-dense/model.caffemodel' "
                                f"where this stage's is '03-sparse/model.caffemodel'{redo}"),
                               ("iterations", 11, f"its iterations is 11 where this stage's is 10{redo}"),
                               ("curve", "../01-dense/curve.csv",
                                f"its curve is '../01-dense/curve.csv', not 'curve.csv'{redo}")]:
        done.write_text(json.dumps({**summary, key: value}))
        result = cli("dsd", "--recipe", recipe, "-o", "run")
        assert_one_line_error(result, f"03-sparse/stage.json: damaged, {expect}")
        assert redo in expect or result.output.rstrip().endswith("; remove it to redo its work")
    # Timed by the wall clock, earlier versions wrote negative seconds when it was stepped back.
    done.write_text(json.dumps({**summary, "seconds": -3600.0}))
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    assert json.loads((run / "report.json").read_text())["stages"][2]["seconds"] == 0.0
    done.unlink()  # as the message says: the stage runs again, and the run ends
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    assert json.loads(done.read_text()) == json.loads(whole) | {"seconds": json.loads(done.read_text())["seconds"]}
    checkpoint = run / "03-sparse" / "checkpoint" / "checkpoint.json"
    done.unlink()
    checkpoint.parent.mkdir(exist_ok=True)
    checkpoint.write_text('{"iter": 5, "solverstate": "s"}')
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"), "checkpoint.json: damaged, lacks curve")
    marker = run / RUN_FILE
    marker.write_bytes(b"\xff\xfe")
    result = cli("dsd", "--recipe", recipe, "-o", "run")
    assert_one_line_error(result, f"{RUN_FILE}: damaged, not the JSON caffedsd wrote")
    assert result.output.rstrip().endswith("; remove run to start over")


def test_bad_recipes(tmp_path, cli):
    recipe = _recipe(tmp_path)
    text = recipe.read_text()
    for bad, expect in [(text + "learning_rate: 1\n", "unknown key(s) learning_rate"),
                        (text.replace("iterations: 30", "iterations: -30"), "iterations -30 must be"),
                        (text.replace("sparsity: 0.6", "sparsity: 1.2"), "1.2: must be in [0, 1)")]:
        recipe.write_text(bad)
        assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"), expect)
        assert not (tmp_path / "run").exists()


@pytest.mark.caffe
def test_weights_that_do_not_fit_the_net_are_named_before_a_first_prune_stage(caffe, tmp_path, cli):
    """Found by the first training stage, after the prune stage had pruned
    them whole: the message named the prune stage's model, a file the
    abandoned run folder no longer held."""
    from conftest import REGRESSION_NET

    solver = write_solver(tmp_path)
    _, weights = save_net(caffe, tmp_path, REGRESSION_NET.replace("num_output: 4", "num_output: 3"), name="other")
    (tmp_path / "recipe.yaml").write_text(f"solver: {solver}\nweights: {weights}\nstages:\n"
                                          "  - prune: {sparsity: 0.5}\n  - sparse: {iterations: 2}\n")
    assert_one_line_error(cli("dsd", "--recipe", "recipe.yaml", "-o", "run"),
                          f"{tmp_path / 'net.prototxt'} does not match {weights}: ")
    assert not (tmp_path / "run").exists()


@pytest.mark.caffe
def test_a_prune_rule_naming_no_layer_is_refused_before_training(tmp_path, cli):
    # Found only by the prune stage, it cost the training before it, and left
    # the run folder to a recipe the corrected one could take over only with --force.
    recipe = _recipe(tmp_path, sparse_iterations=10)
    good = recipe.read_text()
    recipe.write_text(good.replace("criterion: random}", "criterion: random, layers: {fc9: 0.9}}"))
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                          f"caffedsd: {recipe}: stage 2 (prune): rule 'fc9' matches no prunable layer of "
                          f"{tmp_path / 'net.prototxt'} (prunable: conv1, fc1)")
    assert not (tmp_path / "run").exists()
    # A plan file's rule: the recipe and stage, then the file it is in.
    (tmp_path / "plan.yaml").write_text("sparsity: 0.6\nlayers: {fc9: 0.9}\n")
    recipe.write_text(good.replace("{sparsity: 0.6, criterion: random}", "{plan: plan.yaml}"))
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                          f"caffedsd: {recipe}: stage 2 (prune): plan.yaml: rule 'fc9' matches no prunable layer of "
                          f"{tmp_path / 'net.prototxt'} (prunable: conv1, fc1)")
    assert not (tmp_path / "run").exists()
    # A layer of phase TEST only is in every stage's model, which the prune
    # stage prunes: a rule may name it (it was refused, and pruned anyway).
    net = tmp_path / "net.prototxt"
    train_only = net.read_text()
    net.write_text(train_only + 'layer { name: "fc9" type: "InnerProduct" bottom: "fc1" top: "fc9" '
                   'include { phase: TEST } inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }\n')
    recipe.write_text(good.replace("criterion: random}", "criterion: random, layers: {fc9: 0}}"))
    result = cli("dsd", "--recipe", recipe, "-o", "test_only")
    assert result.exit_code == 0, result.output
    pruned = read_caffemodel(tmp_path / "test_only" / "02-prune" / "model.caffemodel")
    assert np.count_nonzero(pruned.layer("fc9").blobs[0].data) == 2 * 5  # kept whole, as the rule says
    assert np.count_nonzero(pruned.layer("fc1").blobs[0].data) < 5 * 64  # the rest at 0.6
    net.write_text(train_only)
    recipe.write_text(good.replace("criterion: random}", "criterion: random, layers: {fc1: 0.9}}"))
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0


@pytest.mark.caffe
def test_a_stage_past_max_iter_under_poly_is_refused_before_training(tmp_path, cli):
    """Each stage starts its solver at iteration 0; under "poly" the rate is
    0 at max_iter (12 here) and negative after."""
    recipe = _recipe(tmp_path, sparse_iterations=10)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(solver.read_text().replace('lr_policy: "fixed"', 'lr_policy: "poly"\npower: 1.0'))
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                          f'{recipe}: stage 1 (dense): {solver}: lr_policy "poly" brings the learning rate to 0 at '
                          "max_iter 12, and this run would train from iteration 0 to 30")
    assert not (tmp_path / "run").exists()
    recipe.write_text(recipe.read_text().replace("iterations: 30", "iterations: 12").replace("iterations: 20", "iterations: 5"))
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0


@pytest.mark.caffe
def test_a_stage_whose_rate_caffe_cannot_hold_is_refused_before_training(tmp_path, cli):
    """1e-30 x 1e-9 is 0 in Caffe's float: the last stage would train at 0."""
    recipe = _recipe(tmp_path, sparse_iterations=5)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(solver.read_text().replace("base_lr: 0.02", "base_lr: 1e-30"))
    recipe.write_text(recipe.read_text().replace("lr_scale: 0.1", "lr_scale: 1e-9"))
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                          f"{recipe}: stage 4 (dense): lr_scale 1e-09: {solver}'s base_lr 1e-30 times it is 1e-39, "
                          "below the least float Caffe computes with")
    assert not (tmp_path / "run").exists()
    # And past the greatest: it was found in that stage's first step, after three stages had trained.
    solver.write_text(solver.read_text().replace("base_lr: 1e-30", "base_lr: 0.02"))
    recipe.write_text(recipe.read_text().replace("lr_scale: 1e-9", "lr_scale: 1e41"))
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                          f"{recipe}: stage 4 (dense): lr_scale 1e+41: {solver}'s base_lr 0.02 times it is 2e+39, "
                          "beyond")
    assert not (tmp_path / "run").exists()


@pytest.mark.caffe
def test_test_passes_without_a_test_net_are_refused_before_training(tmp_path, cli):
    """They measured nothing: every stage reported no TEST outputs, exit 0."""
    recipe = _recipe(tmp_path, sparse_iterations=5)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(solver.read_text().replace("test_iter: 2\n", "").replace("test_interval: 1000\n", ""))
    text = recipe.read_text()
    for key in ("test_iterations", "test_interval"):
        recipe.write_text(f"{key}: 4\n{text}")
        assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                              f"{recipe}: {key} 4: {solver} has no test net (no test_iter) to test with")
        assert not (tmp_path / "run").exists()


@pytest.mark.caffe
def test_a_rerun_finds_a_finished_stages_files_gone(tmp_path, cli):
    """A rerun exited 0 and reported a last stage whose model was deleted."""
    recipe = _recipe(tmp_path, sparse_iterations=5)
    recipe.write_text(recipe.read_text().replace("iterations: 30", "iterations: 5").replace("iterations: 20", "iterations: 5"))
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    run = Path("run")  # as given
    (run / "04-dense" / "model.caffemodel").unlink()
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                          f"{run / '04-dense' / 'model.caffemodel'}: missing, though {run / '04-dense' / 'stage.json'} "
                          f"says stage 4 finished; delete {run / '04-dense'} to run it again")
    # Another model put in place of a finished stage's. A dense stage's was
    # taken as finished: the report named figures another model had made.
    (run / "04-dense" / "model.caffemodel").write_bytes((run / "01-dense" / "model.caffemodel").read_bytes())
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                          f"{run / '04-dense' / 'model.caffemodel'}: not the model stage 4 finished with (its sha256 "
                          f"differs from the one {run / '04-dense' / 'stage.json'} records); delete {run / '04-dense'} "
                          "to run it again")
    shutil.rmtree(run / "04-dense")
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    pruned = (run / "02-prune" / "model.caffemodel").read_bytes()
    (run / "02-prune" / "model.caffemodel").write_bytes((run / "03-sparse" / "model.caffemodel").read_bytes())
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                          f"{run / '02-prune' / 'model.caffemodel'}: not the model stage 2 finished with")
    # The stage.json of an earlier caffedsd records no sha256: its masks are
    # not the model's.
    done = run / "02-prune" / "stage.json"
    done.write_text(json.dumps({k: v for k, v in json.loads(done.read_text()).items() if k != "model_sha256"}))
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                          f"{run / '02-prune' / 'model.masks.h5'}: written beside another model.caffemodel than the "
                          f"one there now (writing the pair was cut short, or the model was replaced since), though "
                          f"{run / '02-prune' / 'stage.json'} says stage 2 finished; delete {run / '02-prune'} and the "
                          "stages after it to run it again")
    # A damaged one: the stage and the remedy are named, as for the others.
    (run / "02-prune" / "model.caffemodel").write_bytes(pruned[:len(pruned) // 2])
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                          f"though {run / '02-prune' / 'stage.json'} says stage 2 finished; delete "
                          f"{run / '02-prune'} and the stages after it to run it again")
    (run / "02-prune" / "model.caffemodel").write_bytes(pruned)
    (run / "03-sparse" / "model.masks.h5").unlink()
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                          f"delete {run / '03-sparse'} and the stages after it to run it again")


@pytest.mark.caffe
@pytest.mark.parametrize("at", [5, 55])  # before stage 3's first checkpoint (at 50), and after it
def test_a_run_folder_removed_while_the_run_goes_on_is_not_made_again(tmp_path, at):
    """It exited 0, or with a traceback, and left a folder without run.json
    that no rerun could go on from."""
    from caffedsd.dsd import run_recipe
    from caffedsd.errors import InputError
    from caffedsd.recipe import load_recipe

    recipe = _recipe(tmp_path, sparse_iterations=80)

    def progress(label, total, done):
        def callback(row, _):
            if label == "03-sparse" and row.get("iter") == at and "loss" in row:
                shutil.rmtree(tmp_path / "run")
        callback.close = lambda: None
        return callback

    with pytest.raises(InputError, match="removed while the run went on|cannot write to the output folder"):
        run_recipe(load_recipe(recipe), tmp_path / "run", progress=progress)
    assert not (tmp_path / "run").exists()


def test_bad_solvers(tmp_path, cli, caffe):
    recipe = _recipe(tmp_path)
    solver = tmp_path / "solver.prototxt"
    good = solver.read_text()
    solver.write_text(good.replace("net.prototxt", "missing_net.prototxt"))
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"), "missing_net.prototxt' does not exist")
    data_net = (tmp_path / "net.prototxt").read_text().replace(
        'type: "DummyData" top: "data" top: "target" include { phase: TRAIN }',
        'type: "HDF5Data" top: "data" top: "target" include { phase: TRAIN } '
        'hdf5_data_param { source: "nowhere/train.txt" batch_size: 8 }')
    (tmp_path / "data_net.prototxt").write_text(data_net)
    solver.write_text(good.replace("net.prototxt", "data_net.prototxt"))
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"), "reads 'nowhere/train.txt', which does not exist")
    (tmp_path / "plain.prototxt").write_text(
        'layer { name: "data" type: "DummyData" top: "data" dummy_data_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "loss" type: "EuclideanLoss" bottom: "data" bottom: "data" top: "loss" }\n')
    solver.write_text(good.replace("net.prototxt", "plain.prototxt"))
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"), "no prunable layer")
    # A layer type of a Caffe fork: Caffe would abort the process on it.
    (tmp_path / "fork.prototxt").write_text((tmp_path / "net.prototxt").read_text().replace(
        'type: "Convolution"', 'type: "DepthwiseConvolution"'))
    solver.write_text(good.replace("net.prototxt", "fork.prototxt"))
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                          "layer 'conv1' has type 'DepthwiseConvolution', which this Caffe does not have")
    assert not (tmp_path / "run").exists()  # found after the run folder was made: it goes again
    # A 2014-era solver: train_net and test_net files; the test net's data is checked too.
    train_net = f'train_net: "{tmp_path / "net.prototxt"}"'
    solver.write_text(good.replace(f'net: "{tmp_path / "net.prototxt"}"', f'{train_net}\ntest_net: "gone.prototxt"'))
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"), "test_net 'gone.prototxt' does not exist")
    (tmp_path / "test_data_net.prototxt").write_text(data_net.replace("phase: TRAIN", "phase: TEST"))
    solver.write_text(good.replace(f'net: "{tmp_path / "net.prototxt"}"',
                                   f'{train_net}\ntest_net: "test_data_net.prototxt"'))
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"), "reads 'nowhere/train.txt', which does not exist")
    # Caffe aborts on a MemoryData layer nobody fed (set_input_arrays).
    (tmp_path / "memory.prototxt").write_text((tmp_path / "net.prototxt").read_text().replace(
        'type: "DummyData" top: "data" top: "target" include { phase: TRAIN }\n'
        '        dummy_data_param { shape { dim: 8 dim: 2 dim: 6 dim: 6 } shape { dim: 8 dim: 5 }\n'
        '                           data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } }',
        'type: "MemoryData" top: "data" top: "target" include { phase: TRAIN }\n'
        '        memory_data_param { batch_size: 8 channels: 2 height: 6 width: 6 }', 1))
    assert "MemoryData" in (tmp_path / "memory.prototxt").read_text()
    solver.write_text(good.replace("net.prototxt", "memory.prototxt"))
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                          "memory.prototxt: layer 'data' is a MemoryData layer, which only Python")
    assert not (tmp_path / "run").exists()


def test_masks_that_do_not_fit_the_solver_net(caffe, tmp_path, cli):

    solver = write_solver(tmp_path)
    # A model with the right layer names but other shapes: 3 input channels,
    # which only the whole net's shapes (Caffe's) tell.
    other = (tmp_path / "net.prototxt").read_text().replace("dim: 2 dim: 6 dim: 6", "dim: 3 dim: 6 dim: 6")
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    _, weights = save_net(caffe, other_dir, other)
    assert cli("prune", "-w", weights, "-s", 0.5, "-o", "other/p.caffemodel").exit_code == 0
    result = cli("train-sparse", "--solver", solver, "-w", "other/p.caffemodel", "-n", 2, "-o", "s.caffemodel")
    assert_one_line_error(result, "layer 'conv1' blob 0 is [4, 3, 3, 3], but")
    assert not (tmp_path / "s.caffemodel").exists()
    result = cli("train-sparse", "--solver", solver, "-w", weights, "-n", 2, "-o", "s.caffemodel")
    assert_one_line_error(result, "no masks beside")


def test_train_sparse_and_dense_cli(caffe, tmp_path, cli):
    solver = write_solver(tmp_path)
    net = caffe.get_solver(str(solver))
    net.net.save(str(tmp_path / "dense.caffemodel"))
    assert cli("prune", "-w", "dense.caffemodel", "-s", 0.5, "-o", "p.caffemodel").exit_code == 0
    result = cli("train-sparse", "--solver", solver, "-w", "p.caffemodel", "-n", 5, "-o", "s.caffemodel")
    assert result.exit_code == 0, result.output
    assert "test: loss = " in result.output and (tmp_path / "s.masks.h5").exists()
    result = cli("train-dense", "--solver", solver, "-w", "s.caffemodel", "-n", 5, "--lr-scale", 0.5,
                 "-o", "d.caffemodel")
    assert result.exit_code == 0, result.output
    assert "at base_lr 0.025" in result.output
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", "s.caffemodel", "-n", -1, "-o", "x.caffemodel"),
                    "--iterations -1: must be 0 or more")
    # Caffe's iteration counter is a C int; pycaffe stepped on past it into negative iterations.
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", "s.caffemodel", "-n", 2 ** 31,
                              "-o", "x.caffemodel"),
                          "would train from iteration 0 to 2147483648, past 2147483647, the last iteration")
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", "s.caffemodel", "-o", "s.caffemodel"),
                    "would overwrite the input")
    # The masks read from beside the weights are an input too, and so is
    # OUT.masks.h5 when the command writes masks.
    before = (tmp_path / "p.masks.h5").read_bytes()
    for command in ("train-sparse", "train-quantized"):
        assert_one_line_error(cli(command, "--solver", solver, "-w", "p.caffemodel", "-n", 1, "-o", "p.masks.h5"),
                              "p.masks.h5: output would overwrite the input p.masks.h5")
    assert_one_line_error(cli("train-lowrank", "--solver", solver, "-w", "p.caffemodel", "--force-decay", 0.001,
                              "-n", 1, "-o", "p"), "p: its masks file would be p.masks.h5, which is that of "
                                                   "p.caffemodel beside it")
    assert (tmp_path / "p.masks.h5").read_bytes() == before and not (tmp_path / "p").exists()
    for command in ("train-sparse", "train-quantized"):  # with --force, still not: the model's masks would be lost
        assert_one_line_error(cli(command, "--solver", solver, "-w", "p.caffemodel", "-n", 1, "-o", "p.masks.h5",
                                  "--force"), "p.masks.h5: is the masks file of p.caffemodel beside it")
    assert (tmp_path / "p.masks.h5").read_bytes() == before
    os.mkfifo(tmp_path / "pipe.prototxt")
    (tmp_path / "piped.prototxt").write_text(solver.read_text().replace(str(tmp_path / "net.prototxt"),
                                                                        str(tmp_path / "pipe.prototxt")))
    assert_one_line_error(cli("train-dense", "--solver", "piped.prototxt", "-w", "s.caffemodel", "-o", "x.caffemodel"),
                          "pipe.prototxt: not a regular file (a folder, device or pipe)")
    for name in ("solver.prototxt", "net.prototxt"):  # the solver, and the net it names
        assert_one_line_error(cli("train-dense", "--solver", solver, "-w", "s.caffemodel", "-n", 1, "-o", name),
                              f"{name}: output would overwrite the input")


def test_a_solver_with_its_net_inline(caffe, tmp_path, cli):
    # Caffe takes the net from net_param inside the solver as from a net file.
    solver = write_solver(tmp_path)
    net_line = f'net: "{tmp_path / "net.prototxt"}"'
    inline = solver.read_text().replace(net_line, "net_param {" + (tmp_path / "net.prototxt").read_text() + "}")
    solver.write_text(inline)
    (tmp_path / "net.prototxt").unlink()  # nothing reads a file
    caffe.get_solver(str(solver)).net.save(str(tmp_path / "dense.caffemodel"))
    assert cli("prune", "-w", "dense.caffemodel", "-s", 0.5, "-o", "p.caffemodel").exit_code == 0
    result = cli("train-sparse", "--solver", solver, "-w", "p.caffemodel", "-n", 3, "-o", "s.caffemodel")
    assert result.exit_code == 0, result.output
    assert "test: loss = " in result.output
    kept = load_masks(tmp_path / "s.masks.h5").masks["conv1"]
    assert not read_caffemodel(tmp_path / "s.caffemodel").layer("conv1").blobs[0].data[~kept].any()

    # Its errors name the solver, which holds the net: a data source, then the layout.
    solver.write_text(inline.replace('type: "DummyData"', 'type: "HDF5Data" hdf5_data_param { source: "gone.txt" '
                                     'batch_size: 1 }', 1))
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", "p.caffemodel", "-n", 1, "-o", "d.caffemodel"),
                          f"{solver}: layer 'data' reads 'gone.txt', which does not exist")
    # Caffe does not upgrade V1 'layers' given inline (it would build none of them), nor take two train nets.
    solver.write_text(inline.replace("net_param {", 'net_param { layers { name: "old" type: RELU bottom: "data" '
                                     'top: "data" }', 1))
    assert "old" not in caffe.get_solver(str(solver)).net._layer_names
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", "p.caffemodel", "-n", 1, "-o", "d.caffemodel"),
                          f"{solver}: net_param: V1 'layers' entries, which Caffe does not upgrade in a solver")
    solver.write_text(inline + 'train_net: "net.prototxt"\n')
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", "p.caffemodel", "-n", 1, "-o", "d.caffemodel"),
                          f"{solver}: gives the train net 2 times (train_net, net_param); Caffe takes exactly one")
    assert not (tmp_path / "d.caffemodel").exists()


def _printed_tests(output):
    """{label: {output: value}} of train-*'s "test ...: name = value, ..." lines."""
    printed = {}
    for line in output.splitlines():
        if line.startswith("test"):
            label, values = line.split(": ", 1)
            printed[label] = dict((k, float(v)) for k, v in (item.split(" = ") for item in values.split(", ")))
    return printed


@pytest.mark.caffe
@pytest.mark.slow
def test_periodic_test_passes_measure_their_iterations_weights(lenet_solver, caffe, tmp_path, cli):
    # Caffe's own snapshots every 2 iterations give the weights each pass
    # should have measured; stock `caffe test` scores them. The 3 test
    # batches cover the 300 test images exactly, so every pass sees them all.
    solver, net = lenet_solver
    lines = [line for line in solver.read_text().splitlines() if not line.startswith(("snapshot", "test_interval"))]
    lines += ["snapshot: 2", f'snapshot_prefix: "{tmp_path / "snap"}"', "test_interval: 500"]
    (tmp_path / "solver.prototxt").write_text("\n".join(lines) + "\n")
    caffe.Net(str(net), caffe.TEST).save(str(tmp_path / "init.caffemodel"))
    result = cli("train-dense", "--solver", "solver.prototxt", "-w", "init.caffemodel", "--lr-scale", 1,
                 "-n", 4, "--test-interval", 2, "-o", "d.caffemodel")
    assert result.exit_code == 0, result.output
    printed = _printed_tests(result.output)
    assert list(printed) == ["test at iteration 0", "test at iteration 2", "test"]
    for label, weights in (("test at iteration 0", "init.caffemodel"),
                           ("test at iteration 2", "snap_iter_2.caffemodel"), ("test", "d.caffemodel")):
        code, log = run_caffe_test(net, tmp_path / weights, iterations=3)
        assert code == 0, log[-2000:]
        assert printed[label] == pytest.approx(parse_test_outputs(log), abs=1e-4), label
    assert printed["test at iteration 0"]["loss"] != printed["test at iteration 2"]["loss"]  # it trained between
    # stderr is no terminal here (as under nohup): no bar is drawn, so each pass
    # is a line as it happens, and so is training, at the start and every minute.
    assert "dense: test at iteration 2: " in result.stderr
    assert result.stderr.splitlines()[2].startswith("dense: 1/4 loss ")
    # The solver's interval (500) when --test-interval is not given: only iteration 0.
    result = cli("train-dense", "--solver", "solver.prototxt", "-w", "init.caffemodel", "-n", 2, "-o", "e.caffemodel")
    assert [line.split(":")[0] for line in result.output.splitlines() if line.startswith("test")] == \
        ["test at iteration 0", "test"]


@pytest.mark.caffe
@pytest.mark.slow
def test_every_test_net_is_measured(lenet_solver, caffe, tmp_path, cli):
    # Caffe's consolidated LeNet example tests on the test set and, as a second
    # test net (test_state stage), on the training set. Each net's passes must
    # be what stock `caffe test` gives; 20 batches of 100 cover the 2,000
    # training images exactly, so every pass of net #1 sees them all.
    solver, net = lenet_solver
    text = net.read_text()
    test_layer = text[text.index("layer {", text.index("phase: TRAIN")):text.index("layer {", text.index("phase: TEST"))]
    assert test_layer.count("phase: TEST") == 1 and "test.txt" in test_layer
    on_train = test_layer.replace("test.txt", "train.txt")
    (tmp_path / "on_train.prototxt").write_text(text.replace(test_layer, on_train))
    staged = (test_layer.replace("phase: TEST", 'phase: TEST\n    not_stage: "on-train"')
              + on_train.replace("phase: TEST", 'phase: TEST\n    stage: "on-train"'))
    (tmp_path / "net.prototxt").write_text(text.replace(test_layer, staged))
    lines = [line for line in solver.read_text().splitlines() if not line.startswith(("net:", "test_interval"))]
    lines += [f'net: "{tmp_path / "net.prototxt"}"', "test_iter: 20", "test_state { }",
              'test_state { stage: "on-train" }', "test_interval: 500"]
    (tmp_path / "solver.prototxt").write_text("\n".join(lines) + "\n")
    caffe.Net(str(net), caffe.TEST).save(str(tmp_path / "init.caffemodel"))
    result = cli("train-dense", "--solver", "solver.prototxt", "-w", "init.caffemodel", "--lr-scale", 1,
                 "-n", 4, "-o", "d.caffemodel")
    assert result.exit_code == 0, result.output
    printed = _printed_tests(result.output)
    assert list(printed) == ["test at iteration 0", "test"]
    for label, weights in (("test at iteration 0", "init.caffemodel"), ("test", "d.caffemodel")):
        assert list(printed[label]) == ["accuracy", "loss", "#1/accuracy", "#1/loss"]
        for prefix, proto, batches in (("", net, 3), ("#1/", tmp_path / "on_train.prototxt", 20)):
            code, log = run_caffe_test(proto, tmp_path / weights, iterations=batches)
            assert code == 0, log[-2000:]
            expected = {prefix + name: value for name, value in parse_test_outputs(log).items()}
            assert {k: v for k, v in printed[label].items() if k in expected} == pytest.approx(expected, abs=1e-4)
    assert printed["test"]["#1/loss"] != printed["test"]["loss"]  # two data sets, not one net twice


@pytest.mark.caffe
def test_nets_caffe_cannot_build(tmp_path, cli):
    # Caffe aborts the process on a bottom no layer makes; dsd used to leave
    # its run folder behind, whose marker then refused the corrected rerun.
    recipe = _recipe(tmp_path, sparse_iterations=10)
    net = tmp_path / "net.prototxt"
    good = net.read_text()
    net.write_text(good.replace('bottom: "fc1" bottom: "target"', 'bottom: "fc9" bottom: "target"'))
    expect = "solver.prototxt: Caffe cannot build its nets: Unknown bottom blob 'fc9' (layer 'loss', bottom index 0)"
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"), expect)
    assert not (tmp_path / "run").exists()
    net.write_text(good)
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    net.write_text(good.replace('bottom: "fc1" bottom: "target"', 'bottom: "fc9" bottom: "target"'))
    model = tmp_path / "run" / "04-dense" / "model.caffemodel"
    assert_one_line_error(cli("train-dense", "--solver", "solver.prototxt", "-w", model, "-o", "d.caffemodel"), expect)
    assert not (tmp_path / "d.caffemodel").exists()


def _python_layer_solver(folder):
    """A solver (and its net) whose net has a Python layer, an identity of
    the module identity_layer.py written into ``folder``."""
    (folder / "identity_layer.py").write_text(
        "import caffe\n\n\nclass Identity(caffe.Layer):\n"
        "    def setup(self, bottom, top):\n        pass\n\n"
        "    def reshape(self, bottom, top):\n        top[0].reshape(*bottom[0].data.shape)\n\n"
        "    def forward(self, bottom, top):\n        top[0].data[...] = bottom[0].data\n\n"
        "    def backward(self, top, propagate_down, bottom):\n        bottom[0].diff[...] = top[0].diff\n")
    solver = write_solver(folder)
    net = folder / "net.prototxt"
    net.write_text(net.read_text().replace(
        'layer { name: "loss" type: "EuclideanLoss" bottom: "fc1"',
        'layer { name: "same" type: "Python" bottom: "fc1" top: "same" '
        'python_param { module: "identity_layer" layer: "Identity" } }\n'
        'layer { name: "loss" type: "EuclideanLoss" bottom: "same"'))
    return solver, net


@pytest.mark.caffe
def test_a_solver_with_python_layers_builds(tmp_path, cli, monkeypatch):
    # The child that builds the nets first must import the caffe package
    # for them: their module subclasses caffe.Layer. As for `caffe train`,
    # the module is found through PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", str(tmp_path), prepend=os.pathsep)
    monkeypatch.syspath_prepend(str(tmp_path))
    solver, net = _python_layer_solver(tmp_path)
    import caffe
    caffe.get_solver(str(solver)).net.save(str(tmp_path / "w.caffemodel"))
    result = cli("train-dense", "--solver", solver, "-w", "w.caffemodel", "-n", 2, "--allow-python-layers",
                 "-o", "d.caffemodel")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d.caffemodel").exists()
    # dsd said to pass --allow-python-layers, and had no such option.
    recipe = tmp_path / "python.yaml"
    recipe.write_text(f"solver: {solver}\nweights: w.caffemodel\nstages:\n  - prune: {{sparsity: 0.5}}\n"
                      "  - sparse: {iterations: 2}\n")
    assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"),
                          "Python layer(s) same would run arbitrary code; pass --allow-python-layers")
    assert not (tmp_path / "run").exists()
    result = cli("dsd", "--recipe", recipe, "--allow-python-layers", "-o", "run")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "02-sparse" / "model.caffemodel").exists()
    # verify's stock `caffe test`: the binary's own Python lacked pycaffe and numpy, and always failed.
    result = cli("verify", "-w", "d.caffemodel", "-p", net, "--allow-python-layers")
    assert result.exit_code == 0 and "ok    caffe test forward" in result.output, result.output


@pytest.mark.caffe
def test_a_python_layer_module_only_in_the_current_folder_is_not_found(caffe, tmp_path, cli):
    """The child that builds the nets first ran `python -c`, which searches
    the current folder, and passed; this process does not search it (nor
    does `caffe train`), and pycaffe then raised Boost.Python's SystemError
    as a traceback. The line names the module Python could not import."""
    weights = tmp_path / "w.caffemodel"
    caffe.get_solver(str(write_solver(tmp_path))).net.save(str(weights))  # the same net, less the Python layer
    solver, net = _python_layer_solver(tmp_path)
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", weights, "-n", 2, "--allow-python-layers",
                              "-o", "d.caffemodel"),
                          "Caffe cannot build its nets: ModuleNotFoundError: No module named 'identity_layer'")
    assert not (tmp_path / "d.caffemodel").exists()
    # verify: the stock binary aborts on it with Boost's error_already_set, which names nothing.
    result = cli("verify", "-w", weights, "-p", net, "--allow-python-layers")
    assert result.exit_code == 1
    assert (f"FAIL  caffe test: {net}: Caffe cannot build the net: ModuleNotFoundError: No module named "
            "'identity_layer'") in result.output
    # `python -m`, which searches the current folder first, alike: the binary's abort was back.
    # (PYTHONPATH as it is: a checkout's tests run with it naming caffedsd, as tools/gpu_stage.sh runs them.)
    done = subprocess.run([sys.executable, "-m", "caffedsd", "verify", "-w", str(weights), "-p", str(net),
                           "--allow-python-layers"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1 and "Caffe cannot build the net: ModuleNotFoundError" in done.stdout, done.stdout


@pytest.mark.caffe
def test_gpu_with_a_cpu_only_caffe(tmp_path, cli):
    from caffedsd.caffe_env import info

    if info()["caffe_build"] != "CPU-only":
        pytest.skip("this Caffe is built with CUDA")
    recipe = _recipe(tmp_path, sparse_iterations=10)
    expect = "--gpu 0: this Caffe is a CPU-only build"
    assert_one_line_error(cli("dsd", "--recipe", recipe, "--gpu", 0, "-o", "run"), expect)  # Caffe aborted
    assert not (tmp_path / "run").exists()
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    model = tmp_path / "run" / "03-sparse" / "model.caffemodel"
    assert_one_line_error(cli("train-dense", "--solver", tmp_path / "solver.prototxt", "-w", model, "--gpu", 0,
                              "-o", "dense.caffemodel"), expect)
    assert_one_line_error(cli("verify", "-w", model, "-p", tmp_path / "net.prototxt", "--gpu", 0), expect)


@pytest.mark.caffe
def test_the_gpu_probe_reports_caffes_own_reason():
    """check_gpu tries a GPU in a child process, where Caffe's abort costs
    nothing: it runs a two-layer net there (here on the CPU, the same net);
    on a CPU-only build the child meets Caffe's own refusal."""
    from caffedsd.caffe_env import _caffe_child, _gpu_failure, info

    probe = _caffe_child("probe", "")
    assert probe.returncode == 0, probe.stderr[-2000:]
    if info()["caffe_build"] != "CPU-only":
        pytest.skip("this Caffe is built with CUDA")
    assert _gpu_failure(0).startswith("Cannot use GPU in CPU-only Caffe: check mode. (common.cpp:")


@pytest.mark.caffe
@pytest.mark.gpu
def test_a_gpu_caffe_cannot_open(tmp_path, cli):
    """--gpu past the GPUs CUDA sees: Caffe would abort the whole process in
    cudaSetDevice; caffedsd says so in one line, before any output."""
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    absent = len(visible.split(",")) if visible else len([line for line in listed.splitlines() if line.strip()])
    recipe = _recipe(tmp_path, sparse_iterations=10)
    expect = f"--gpu {absent}: Caffe cannot open this GPU: "
    assert_one_line_error(cli("dsd", "--recipe", recipe, "--gpu", absent, "-o", "run"), expect)
    assert not (tmp_path / "run").exists()
    import caffe

    caffe.get_solver(str(tmp_path / "solver.prototxt")).net.save(str(tmp_path / "w.caffemodel"))
    assert_one_line_error(cli("train-dense", "--solver", tmp_path / "solver.prototxt", "-w", "w.caffemodel",
                              "--gpu", absent, "-o", "dense.caffemodel"), expect)
    assert not (tmp_path / "dense.caffemodel").exists()
    assert_one_line_error(cli("sensitivity", "-p", tmp_path / "net.prototxt", "-w", "w.caffemodel",
                              "--gpu", absent, "-o", "sens"), expect)
    assert not (tmp_path / "sens").exists()


@pytest.mark.caffe
def test_solver_settings_caffe_would_abort_on(tmp_path, cli):
    from caffedsd.caffe_env import built_by_caffedsd

    recipe = _recipe(tmp_path, sparse_iterations=10)
    solver = tmp_path / "solver.prototxt"
    good = solver.read_text()
    stock = [('type: "SGD"', 'type: "Sgd"', "solver type 'Sgd' is not one of Caffe's (SGD, "),
             ('lr_policy: "fixed"', 'lr_policy: "cosine"', "lr_policy 'cosine' is not one of"),
             ('lr_policy: "fixed"', 'lr_policy: "step"', '"step" needs a stepsize'),
             # Caffe aborted the process at the first update, after a TEST pass.
             ('lr_policy: "fixed"', 'lr_policy: "sigmoid"', '"sigmoid" needs a stepsize above 0'),
             ('lr_policy: "fixed"\ngamma: 0.5', 'lr_policy: "exp"\ngamma: -0.5',
              '"exp" needs a gamma of 0 or more, not -0.5'),
             ('lr_policy: "fixed"\ngamma: 0.5', 'lr_policy: "multistep"\ngamma: nan',
              '"multistep" needs a gamma of 0 or more, not nan')]
    if not built_by_caffedsd():  # another Caffe (a fork) may know more: Caffe decides there
        stock = []
    for old, new, expect in stock:
        solver.write_text(good.replace(old, new).replace("stepsize: 3", "stepsize: 0"))
        assert_one_line_error(cli("dsd", "--recipe", recipe, "-o", "run"), expect)
    # dsd snapshots into its run folder; train-* keeps the solver's own snapshots.
    solver.write_text(good.replace("snapshot: 0", "snapshot: 5").replace(f'"{tmp_path / "snap"}"', '"gone/snap"'))
    assert cli("dsd", "--recipe", recipe, "-o", "run").exit_code == 0
    model = tmp_path / "run" / "01-dense" / "model.caffemodel"
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", model, "-o", "d.caffemodel"),
                          "snapshot_prefix 'gone/snap': folder 'gone' does not exist or cannot be written")
    (tmp_path / "gone").mkdir()
    assert cli("train-dense", "--solver", solver, "-w", model, "--iterations", 6, "-o", "d.caffemodel").exit_code == 0
    assert (tmp_path / "gone" / "snap_iter_5.caffemodel").is_file()


@pytest.mark.caffe
def test_a_net_edited_while_the_run_goes_on_stops_it_before_the_next_stage(tmp_path, cli):
    """Caffe reads the net again for every stage: an edit mid-run would train
    the later stages on another net than run.json records."""
    from caffedsd.errors import InputError
    from caffedsd.recipe import load_recipe
    from caffedsd.dsd import run_recipe

    recipe = _recipe(tmp_path, sparse_iterations=10)
    net = tmp_path / "net.prototxt"
    original = net.read_text()

    def progress(label, total, done):
        def callback(row, _):
            if row.get("iter") == 29 and "loss" in row:  # the first stage's last step
                net.write_text(original.replace("std: 1", "std: 0.5"))
        callback.close = lambda: None
        return callback

    with pytest.raises(InputError, match="recipe.yaml: the solver or net files changed while this run went "
                                         "on; stage 3 would train another net"):
        run_recipe(load_recipe(recipe), tmp_path / "run", progress=progress)
    assert (tmp_path / "run" / "02-prune" / "stage.json").is_file() and not (tmp_path / "run" / "03-sparse").exists()
    net.write_text(original)  # put back: the run goes on
    result = cli("dsd", "--recipe", recipe, "-o", "run")
    assert result.exit_code == 0, result.output


@pytest.mark.caffe
def test_a_cut_checkpoint_gives_back_its_room_before_the_next_is_checked_for_room(tmp_path):
    """A run killed while Caffe wrote a checkpoint left .writing/ holding the
    room the next checkpoint needs: on a disk it filled, every rerun was
    refused for want of room (the room check came before its removal), and
    a moved run's restore copy was too."""
    from caffedsd.dsd import run_recipe
    from caffedsd.recipe import load_recipe

    recipe = _recipe(tmp_path, sparse_iterations=120)
    disk = tmp_path / "disk"
    with pytest.raises(Stop):  # where the disk is mounted: the run is not moved there
        run_recipe(load_recipe(recipe), disk / "run", progress=stopping_at(60))
    (disk / "run" / "03-sparse" / "checkpoint" / ".writing").mkdir()
    disk.rename(tmp_path / "content")
    code = "from caffedsd.cli import main; main()"
    for mount in (disk, tmp_path / "moved"):  # moved: its restore copy needs room too
        mount.mkdir()
        full = run_on_a_full_disk([sys.executable, "-c", code, "dsd", "--recipe", recipe, "-o", "run"],
                                  content=tmp_path / "content", mount=mount, spare_inodes=40,
                                  fill="run/03-sparse/checkpoint/.writing/snapshot_iter_100.caffemodel")
        assert full.returncode == 0, (mount.name, full.stderr)
        assert "4 dense           20" in full.stdout, full.stdout


@pytest.mark.caffe
def test_a_checkpoint_or_snapshot_with_no_room_is_refused_before_the_training_it_would_keep(caffe, tmp_path):
    """Room for a checkpoint (the pair and its state's rewrite: about three
    models) was checked only when it was due: on a disk with room for the
    output, the iterations before it were trained, then lost, and a rerun,
    with no checkpoint to go on from, lost them again. So were a train-*
    run's before the solver's own snapshot."""
    solver = write_solver(tmp_path, base_lr=0.001, snapshot=5)
    solver.write_text(solver.read_text().replace(f'"{tmp_path / "snap"}"', '"snap"'))  # on the small disk
    net = tmp_path / "net.prototxt"  # fc1: 5 x 4 x 62 x 62, 300 KB of weights
    net.write_text(net.read_text().replace("dim: 2 dim: 6 dim: 6", "dim: 2 dim: 64 dim: 64"))
    save_net(caffe, tmp_path, net.read_text(), name="start")
    content = tmp_path / "content"
    content.mkdir()
    code = "from caffedsd.cli import main; main()"
    for every, expect in ((5, "run/01-dense/checkpoint: could not be written (No space left on device: it needs at "
                              "least "), (100, None)):
        (tmp_path / "recipe.yaml").write_text(f"solver: {tmp_path / 'plain.prototxt'}\ncheckpoint_every: {every}\n"
                                              "stages:\n  - dense: {iterations: 8}\n")
        (tmp_path / "plain.prototxt").write_text(solver.read_text().replace("snapshot: 5", "snapshot: 0"))
        runs = [["dsd", "--recipe", tmp_path / "recipe.yaml", "-o", "run"]]
        if every == 5:
            runs.append(["train-dense", "--solver", solver, "-w", tmp_path / "start.caffemodel", "--iterations", "8",
                         "-o", "out.caffemodel"])
        for args in runs:
            mount = tmp_path / f"disk{len(list(tmp_path.glob('disk*')))}"
            mount.mkdir()
            # Room for the output (300 KB), not for a checkpoint or snapshot (900 KB).
            full = run_on_a_full_disk([sys.executable, "-c", code, *args], content=content, mount=mount,
                                      spare_inodes=40, fill="fill", leave=600_000)
            if expect is None:
                assert full.returncode == 0, full.stderr
                continue
            last = full.stderr.strip().splitlines()[-1]
            if args[0] == "train-dense":
                expect = "snap_iter_5.caffemodel: could not be written (No space left on device: it"
            assert full.returncode == 1 and last.startswith(f"caffedsd: {expect}"), full.stderr[-2000:]
            assert "loss" not in full.stdout + full.stderr  # no step was taken


@pytest.mark.caffe
def test_a_checkpoint_pair_is_renamed_into_place_once_caffe_wrote_it_whole(tmp_path):
    """Caffe writes its snapshot in place, unsynced: a run killed while it
    wrote left a cut snapshot_iter_N.caffemodel beside checkpoint.json. It
    writes into .writing/ now, and the pair, its state naming the model
    beside it, is renamed into the checkpoint; a cut pair left there is
    removed by the next checkpoint."""
    from caffedsd.dsd import _Checkpoints
    from caffedsd.solver_spec import read_solver
    from caffedsd.solverstate import learned_net
    from caffedsd.training import open_solver

    checkpoints = _Checkpoints(tmp_path / "checkpoint", every=2)
    solver, _ = open_solver(read_solver(write_solver(tmp_path)), tmp_path, snapshot_prefix=checkpoints.prefix)
    (tmp_path / "checkpoint" / ".writing").mkdir(parents=True)
    (tmp_path / "checkpoint" / ".writing" / "snapshot_iter_9.caffemodel").write_bytes(b"cut")  # a killed write
    solver.step(2)
    checkpoints.save(solver, [{"iter": n, "loss": 1.0, "lr": 0.05} for n in range(2)], [])
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == [
        "checkpoint.json", "curve_2.csv", "snapshot_iter_2.caffemodel", "snapshot_iter_2.solverstate", "tests_2.csv"]
    record = _Checkpoints(tmp_path / "checkpoint").latest()
    state = Path(record["solverstate"])
    assert learned_net(state) == os.fsencode(state.with_suffix(".caffemodel").resolve())  # no copy needed
    again, _ = open_solver(read_solver(tmp_path / "solver.prototxt"), tmp_path)
    again.restore(str(state))
    assert again.iter == 2
    np.testing.assert_array_equal(again.net.params["conv1"][0].data, solver.net.params["conv1"][0].data)


def test_a_later_stage_force_cannot_remove_is_one_line(tmp_path):
    """dsd --force removes the stages after those two recipes share: one
    made read-only was a PermissionError traceback."""
    for stage in ("01-dense", "02-prune", "03-sparse"):
        (tmp_path / "run" / stage).mkdir(parents=True)
        (tmp_path / "run" / stage / "model.caffemodel").write_bytes(b"")
    (tmp_path / "run" / "02-prune").chmod(0o500)
    try:
        done = where_mode_bits_bind("from caffedsd.dsd import _remove_stages_after\n"
                                    "from caffedsd.errors import InputError\n"
                                    "from pathlib import Path\ntry:\n    _remove_stages_after(Path('run'), 1)\n"
                                    "except InputError as exc:\n    print(exc)\n", tmp_path)
    finally:
        (tmp_path / "run" / "02-prune").chmod(0o700)
    assert done.stdout == "run/02-prune: cannot remove it to run the recipe's later stages anew (Permission denied)\n", \
        done.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["01-dense", "02-prune"]  # 03 went first
