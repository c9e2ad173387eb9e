"""NaN and Inf: in the weights a command is given, and in the loss while it trains."""
import numpy as np
import pytest

from caffedsd.caffe_proto import LayerParameter
from caffedsd.caffemodel import check_finite, new_caffemodel, nonfinite_counts, read_caffemodel, write_caffemodel
from caffedsd.errors import InputError
from conftest import assert_one_line_error, write_solver


def test_nonfinite_counts_by_hand(tmp_path):
    path = tmp_path / "w.caffemodel"
    new_caffemodel(path, [
        (LayerParameter(name="a", type="InnerProduct"),
         [np.array([[1, np.nan], [np.inf, -np.inf]], np.float32), np.zeros(2, np.float32)]),
        (LayerParameter(name="b", type="InnerProduct"), [np.ones((2, 2), np.float32), np.array([0, np.nan], np.float32)]),
        (LayerParameter(name="c", type="InnerProduct"), [np.ones((2, 2), np.float32)]),
    ])
    model = read_caffemodel(path)
    assert nonfinite_counts(model) == {("a", 0): 3, ("b", 1): 1}
    with pytest.raises(InputError, match=r"w.caffemodel: layer 'a' blob 0 holds 3 NaN/Inf values"):
        check_finite(model)


def test_doubles_count_as_caffe_holds_them(tmp_path, cli):
    """A blob's double_data past float32's range is Inf in Caffe's float
    blobs: compress wrote it as Inf, into a file decompress then refused."""
    from caffedsd.caffe_proto import NetParameter

    net = NetParameter(name="d")
    layer = net.layer.add(name="fc", type="InnerProduct")
    layer.inner_product_param.num_output = 2
    weights = layer.blobs.add()
    weights.shape.dim.extend([2, 3])
    weights.data.extend([0.5, -0.25, 0, 1, 2, 3])
    bias = layer.blobs.add()
    bias.shape.dim.extend([2])
    bias.double_data.extend([1e300, 0.5])
    (tmp_path / "dbl.caffemodel").write_bytes(net.SerializeToString())
    assert nonfinite_counts(read_caffemodel(tmp_path / "dbl.caffemodel")) == {("fc", 1): 1}
    assert_one_line_error(cli("compress", "-w", "dbl.caffemodel", "-o", "dbl.dcz"),
                          "dbl.caffemodel: layer 'fc' blob 1 holds 1 NaN/Inf values")
    assert not (tmp_path / "dbl.dcz").exists()


@pytest.fixture
def nan_model(tiny, tmp_path):
    """TINY_NET's weights with one NaN in fc1 (a diverged training's)."""
    proto, weights = tiny
    model = read_caffemodel(weights)
    w = np.array(model.layer("fc1").blobs[0].data)
    w.flat[7] = np.nan
    write_caffemodel(model, tmp_path / "nan.caffemodel", replace={("fc1", 0): w})
    return proto, tmp_path / "nan.caffemodel"


def test_commands_that_compute_on_weights_refuse_nan(nan_model, tmp_path, cli):
    proto, weights = nan_model
    expect = "nan.caffemodel: layer 'fc1' blob 0 holds 1 NaN/Inf values"
    # Before the check: compress clustered the layer around NaN centroids and
    # wrote a .dcz that decoded to other weights; rank raised LinAlgError.
    assert_one_line_error(cli("compress", "-w", weights, "-o", "n.dcz"), expect)
    assert_one_line_error(cli("rank", "-w", weights), expect)
    assert_one_line_error(cli("decompose", "-p", proto, "-w", weights, "--energy", 0.9, "--fc", "-o", "d"), expect)
    assert_one_line_error(cli("prune", "-w", weights, "-s", 0.5, "-o", "p.caffemodel"), expect)
    assert not any((tmp_path / name).exists() for name in ("n.dcz", "d", "p.caffemodel"))


def test_stats_and_verify_say_where_nan_is(nan_model, cli):
    _, weights = nan_model
    table = cli("stats", "-w", weights)
    assert table.exit_code == 0
    assert table.output.splitlines()[-1] == "warning: fc1 holds 1 NaN/Inf values"
    assert '"nonfinite": 1' in cli("stats", "-w", weights, "--json").output
    result = cli("verify", "-w", weights)
    assert result.exit_code == 1
    assert "FAIL  finite: 1 NaN/Inf values: fc1 blob 0 (1)" in result.output
    assert "ok    finite: no NaN or Inf in any blob" in cli("verify", "-w", "net.caffemodel").output


def test_training_refuses_nan_weights(caffe, tmp_path, cli):
    solver = write_solver(tmp_path)
    caffe.get_solver(str(solver)).net.save(str(tmp_path / "w.caffemodel"))
    model = read_caffemodel(tmp_path / "w.caffemodel")
    w = np.array(model.layer("conv1").blobs[0].data)
    w.flat[0] = np.inf
    write_caffemodel(model, tmp_path / "inf.caffemodel", replace={("conv1", 0): w})
    expect = "inf.caffemodel: layer 'conv1' blob 0 holds 1 NaN/Inf values"
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", "inf.caffemodel", "-n", 2,
                              "-o", "d.caffemodel"), expect)
    assert_one_line_error(cli("sensitivity", "-p", tmp_path / "net.prototxt", "-w", "inf.caffemodel",
                              "-o", "sens"), expect)
    assert not (tmp_path / "d.caffemodel").exists() and not (tmp_path / "sens").exists()


def test_a_diverging_training_stops_at_the_first_nan_loss(caffe, tmp_path, cli):
    # At this learning rate the weights overflow within a few steps; Caffe
    # alone would train the NaN weights for all 50 iterations and save them.
    solver = write_solver(tmp_path, base_lr=1e18, extra="momentum: 0")
    caffe.get_solver(str(solver)).net.save(str(tmp_path / "w.caffemodel"))
    result = cli("train-dense", "--solver", solver, "-w", "w.caffemodel", "-n", 50, "-o", "d.caffemodel")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    last = result.output.splitlines()[-1]  # after the progress lines
    assert last.startswith(f"caffedsd: {solver}: training diverged at iteration "), last
    assert "learning rate 1e+17); nothing was written for it" in last  # train-dense's tenth
    iteration = int(last.split("at iteration ")[1].split(" ")[0])
    assert 0 < iteration < 49  # Caffe's numbering: not the first step, not the last
    assert not (tmp_path / "d.caffemodel").exists()
    # The same solver at a sane rate trains.
    write_solver(tmp_path, base_lr=0.01, extra="momentum: 0")
    assert cli("train-dense", "--solver", solver, "-w", "w.caffemodel", "-n", 50, "-o", "d.caffemodel").exit_code == 0


def test_a_diverging_dsd_stage_is_named_and_keeps_the_stages_before(caffe, tmp_path, cli):
    solver = write_solver(tmp_path, base_lr=0.02)
    (tmp_path / "recipe.yaml").write_text(
        f"solver: {solver}\nseed: 3\nstages:\n  - dense: {{iterations: 10}}\n  - prune: {{sparsity: 0.5}}\n"
        "  - sparse: {iterations: 30, lr_scale: 1.0e+20}\n")
    result = cli("dsd", "--recipe", "recipe.yaml", "-o", "run")
    assert result.exit_code == 1, result.output
    last = result.output.splitlines()[-1]
    assert last.startswith(f"caffedsd: recipe.yaml: stage 3 (sparse): {solver}: training diverged at iteration "), last
    assert last.endswith("(with this stage edited, dsd --force keeps the stages before it)"), last
    assert (tmp_path / "run" / "02-prune" / "stage.json").is_file()
    assert not (tmp_path / "run" / "03-sparse" / "model.caffemodel").exists()
    # At a sane rate the same run folder goes on from the prune stage.
    (tmp_path / "recipe.yaml").write_text((tmp_path / "recipe.yaml").read_text().replace("1.0e+20", "1.0"))
    result = cli("dsd", "--recipe", "recipe.yaml", "--force", "-o", "run")
    assert result.exit_code == 0, result.output
    assert "run: kept stages 1-2 of the run an earlier recipe made; removed 03-sparse" in result.output
    assert (tmp_path / "run" / "03-sparse" / "model.caffemodel").is_file()


def test_the_program_exits_1_after_a_divergence_through_max_pooling(lenet, tmp_path):
    """Caffe's max pooling over NaNs (here from weights so large that conv2
    sums inf and -inf) leaves its argmax at -1, and its backward pass writes
    before its buffer: the `caffedsd` program printed its line, then aborted
    at exit (status 134, glibc's "double free or corruption") freeing the nets."""
    import subprocess
    import sys

    work, net, weights = lenet
    model = read_caffemodel(weights)
    huge = {(name, 0): np.asarray(model.layer(name).blobs[0].data) * 1e20 for name in ("conv1", "conv2")}
    write_caffemodel(model, tmp_path / "huge.caffemodel", replace=huge)
    (tmp_path / "solver.prototxt").write_text(f'net: "{net}"\nbase_lr: 0.001\nlr_policy: "fixed"\nmax_iter: 100\n'
                                              'snapshot_prefix: "boom"\n')
    (tmp_path / "recipe.yaml").write_text("solver: solver.prototxt\nweights: huge.caffemodel\n"
                                          "stages:\n  - dense: {iterations: 5}\n")
    program = [sys.executable, "-m", "caffedsd"]  # no console script needed
    for args, where in ((["train-dense", "--solver", "solver.prototxt", "-w", "huge.caffemodel", "-n", "5",
                          "-o", "d.caffemodel"], ""),
                        (["dsd", "--recipe", "recipe.yaml", "-o", "run"], "recipe.yaml: stage 1 (dense): ")):
        run = subprocess.run([*program, *args], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 1, run.stderr[-2000:]
        assert run.stderr.splitlines()[-1].startswith(f"caffedsd: {where}solver.prototxt: training diverged at "
                                                      "iteration 0 (loss nan"), run.stderr[-2000:]
        assert not (tmp_path / "d.caffemodel").exists() and not (tmp_path / "run").exists()
