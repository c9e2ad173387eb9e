"""Force regularization and low-rank decomposition."""
import re
import shutil

import numpy as np
import pytest

from caffedsd.caffemodel import read_caffemodel
from caffedsd.errors import InputError
from caffedsd.force import ForceRegularizer, ForceSpec, energy, force_gradient
from caffedsd.lowrank import blocks, factor, rank_for_energy, singular_values, split_weights
from caffedsd.maskfile import load_masks, masks_for
from conftest import assert_one_line_error, save_net, write_solver

RNG = np.random.default_rng(0)


# Column blocks: one for the whole array, one column each, and uneven ones
# (a last block narrower than the others).
BLOCKS = [pytest.param(1 << 22, id="one-block"), pytest.param(1, id="column-blocks"),
          pytest.param(13, id="uneven-blocks")]


@pytest.mark.parametrize("block_elements", BLOCKS)
@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 3, 3)])
def test_degradation_force_is_minus_the_energy_gradient(shape, block_elements):
    w = RNG.normal(size=shape)
    grad = force_gradient(w, "degradation", block_elements=block_elements)
    numeric = np.zeros_like(w)
    h = 1e-6
    for index in np.ndindex(w.shape):
        up, down = w.copy(), w.copy()
        up[index] += h
        down[index] -= h
        numeric[index] = (energy(up, "degradation") - energy(down, "degradation")) / (2 * h)
    assert np.allclose(grad, numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("block_elements", BLOCKS)
def test_constant_force_matches_a_per_pair_computation(block_elements):
    # Filters 0 and 2 of these have n . n = 1 - 2.2e-16 and 1 - 1.1e-16 in
    # float64: no pull of a filter on itself may follow from that.
    w = np.random.default_rng(1).normal(size=(6, 4))
    w[4] = 0  # a dead filter: no pull on it, and none from it
    norms = np.linalg.norm(w, axis=1)
    n = w / np.where(norms > 0, norms, 1)[:, None]
    expected = np.zeros_like(w)
    for i in range(6):
        pull = np.zeros(4)
        for j in range(6):
            if i != j and 4 not in (i, j):
                pull += (n[i] - n[j]) / np.linalg.norm(n[i] - n[j])  # unit strength at any distance
        tangent = pull - np.dot(pull, n[i]) * n[i]
        expected[i] = tangent / norms[i] if i != 4 else 0
    np.testing.assert_allclose(force_gradient(w, "constant", block_elements=block_elements), expected,
                               rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("block_elements", BLOCKS)
def test_force_moves_along_the_sphere_and_skips_zero_filters(block_elements):
    w = RNG.normal(size=(4, 3))
    w[2] = 0
    grad = force_gradient(w, "degradation", block_elements=block_elements)
    assert np.all(grad[2] == 0)
    # Tangent: no component along each filter, so it does not change the norms to first order.
    assert np.allclose(np.sum(grad * w, axis=1), 0)
    # Moving against the gradient lowers the energy.
    assert energy(w - 1e-3 * grad, "degradation") < energy(w, "degradation")


@pytest.mark.parametrize("block_elements", BLOCKS)
@pytest.mark.parametrize("force_type", ["degradation", "constant"])
def test_force_added_in_place_equals_the_force_added(force_type, block_elements):
    w = RNG.normal(size=(5, 2, 3))
    w[1] = 0
    start = RNG.normal(size=w.size).astype(np.float32)  # a flat float32 gradient, as Caffe's
    into = start.copy()
    assert force_gradient(w, force_type, block_elements=block_elements, add_to=into, alpha=-0.5) is into
    expected = start - 0.5 * force_gradient(w, force_type).reshape(-1)
    np.testing.assert_allclose(into, expected, rtol=1e-6, atol=1e-6)


def test_energy_rank_and_truncation_error():
    w = RNG.normal(size=(8, 3, 3, 3))
    values = singular_values(w)
    assert rank_for_energy(values, 1.0) == 8
    share = np.cumsum(values ** 2) / np.sum(values ** 2)
    assert rank_for_energy(values, float(share[2])) == 3
    assert np.allclose(values, np.linalg.svd(w.reshape(8, -1), compute_uv=False))
    for rank in (1, 4, 8):
        first, second, discarded = factor(w, rank)
        approx = (second.astype(np.float64) @ first.reshape(rank, -1)).reshape(w.shape)
        error = np.sum((w - approx) ** 2)
        assert error == pytest.approx(np.sum(values[rank:] ** 2), rel=1e-4, abs=1e-8)
        assert discarded == pytest.approx(np.sum(values[rank:] ** 2), rel=1e-6, abs=1e-8)


def test_singular_values_of_wide_tall_and_rank_deficient_matrices():
    for shape in ((3, 5000), (5000, 3), (6, 6)):
        m = RNG.normal(size=shape)
        assert np.allclose(singular_values(m), np.linalg.svd(m, compute_uv=False))
    low = RNG.normal(size=(40, 2)) @ RNG.normal(size=(2, 30))
    values = singular_values(low)
    assert values.shape == (30,) and np.all(values[2:] < 1e-6 * values[0])
    assert rank_for_energy(values, 0.999999) == 2


def test_groups_are_factored_block_by_block():
    w = RNG.normal(size=(6, 2, 3, 3))  # N=6, group 3: three 2 x 18 blocks
    first, second, _ = factor(w, 2, groups=3)
    assert first.shape == (6, 2, 3, 3) and second.shape == (6, 2)
    for g in range(3):
        block = second[2 * g:2 * g + 2].astype(np.float64) @ first[2 * g:2 * g + 2].reshape(2, -1)
        assert np.allclose(block, w[2 * g:2 * g + 2].reshape(2, -1), atol=1e-5)


def test_a_group_count_below_one_is_refused_not_divided_by():
    for groups in (0, -1, 1.5, True, np.int64(0)):
        with pytest.raises(InputError, match="must be a whole number >= 1"):
            blocks(np.zeros((4, 2)), groups)
    assert len(blocks(np.zeros((4, 2)), np.int64(2))) == 2


def test_never_bigger_unless_forced():
    # 8 filters of 2x1x1: a split at any rank r costs r * (2 + 8) >= 16 weights.
    assert split_weights(np.zeros((8, 2, 1, 1)), 1) == (16, 10)
    assert split_weights(np.zeros((8, 2, 1, 1)), 2) == (16, 20)
    # Depthwise: 4 filters of 1x3x3, group 4: r*4*9 + 4*r >= 36 at every r.
    assert split_weights(np.zeros((4, 1, 3, 3)), 1, groups=4) == (36, 40)


def test_regularizer_adds_the_force_to_gradients(caffe, tmp_path):
    solver = caffe.get_solver(str(write_solver(tmp_path)))
    seen = {}
    solver.add_callback(lambda: None, lambda: seen.__setitem__("before", solver.net.params["conv1"][0].diff.copy()))
    spec = ForceSpec(0.5, "degradation", mults=(("fc1", 0.0),))
    regularizer = ForceRegularizer(spec).attach(solver)
    solver.add_callback(lambda: None, lambda: seen.__setitem__("after", solver.net.params["conv1"][0].diff.copy()))
    w = solver.net.params["conv1"][0].data.copy()
    solver.step(1)
    assert np.allclose(seen["after"] - seen["before"], 0.5 * force_gradient(w, "degradation"), atol=1e-6)
    regularizer.detach()


SCALED = """
layer { name: "data" type: "DummyData" top: "data" top: "target"
        dummy_data_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } shape { dim: 2 dim: 4 dim: 4 dim: 4 }
                           data_filler { type: "gaussian" } data_filler { type: "gaussian" } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "sc" type: "Scale" bottom: "conv1" top: "sc"
        scale_param { axis: 1 num_axes: 2 filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "sc" bottom: "target" top: "loss" }
"""


def test_only_convolutions_and_inner_products_are_forced(caffe, tmp_path):
    """A Scale's 4 x 4 gamma has two axes, but no filters decompose would
    split: it is left alone, and naming it in --force-mult is an error."""
    (tmp_path / "net.prototxt").write_text(SCALED)
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0\nlr_policy: "fixed"\n')
    solver = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    assert solver.net.params["sc"][0].data.shape == (4, 4)
    seen = {}

    def grads(key):
        return lambda: seen.__setitem__(key, {n: solver.net.params[n][0].diff.copy() for n in ("conv1", "sc")})

    solver.add_callback(lambda: None, grads("before"))
    with pytest.raises(InputError, match="--force-mult 'sc' matches no Convolution or InnerProduct layer"):
        ForceRegularizer(ForceSpec(1.0, mults=(("sc", 1.0),))).attach(solver)
    regularizer = ForceRegularizer(ForceSpec(1.0)).attach(solver)
    solver.add_callback(lambda: None, grads("after"))
    solver.step(1)
    np.testing.assert_array_equal(seen["after"]["sc"], seen["before"]["sc"])
    assert not np.allclose(seen["after"]["conv1"], seen["before"]["conv1"])
    regularizer.detach()


# Zero data: every loss gradient is 0, so one step at lr 1 moves each weight
# by the force alone.
LAYOUTS = """
layer { name: "data" type: "DummyData" top: "data" top: "target"
        dummy_data_param { shape { dim: 1 dim: 4 dim: 3 dim: 3 } shape { dim: 1 dim: 3 } } }
layer { name: "grouped" type: "Convolution" bottom: "data" top: "grouped"
        convolution_param { num_output: 6 group: 2 kernel_size: 1 bias_term: false
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "depthwise" type: "Convolution" bottom: "grouped" top: "depthwise"
        convolution_param { num_output: 6 group: 6 kernel_size: 3 pad: 1 bias_term: false
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "transposed" type: "InnerProduct" bottom: "depthwise" top: "transposed"
        inner_product_param { num_output: 3 transpose: true bias_term: false
                              weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "transposed" bottom: "target" top: "loss" }
"""


def test_filters_are_forced_within_their_groups_and_by_columns_when_transposed(caffe, tmp_path, cli):
    """As decompose splits them: a grouped convolution within each group, a
    depthwise one (one filter a group) not at all, a transposed
    InnerProduct's C x N blob by its N columns."""
    (tmp_path / "net.prototxt").write_text(LAYOUTS)
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 1\nlr_policy: "fixed"\n'
                                              'momentum: 0\nweight_decay: 0\nmax_iter: 1\nsnapshot_prefix: "s"\n')
    caffe.get_solver(str(tmp_path / "solver.prototxt")).net.save(str(tmp_path / "start.caffemodel"))
    result = cli("train-lowrank", "--solver", "solver.prototxt", "-w", "start.caffemodel", "--force-decay", 0.5,
                 "-n", 1, "-o", "out.caffemodel")
    assert result.exit_code == 0, result.output
    start, out = (read_caffemodel(tmp_path / name) for name in ("start.caffemodel", "out.caffemodel"))

    def moved(name):
        return out.layer(name).blobs[0].data.astype(np.float64) - start.layer(name).blobs[0].data

    w = start.layer("grouped").blobs[0].data
    assert w.shape == (6, 2, 1, 1)
    expected = -0.5 * np.concatenate([force_gradient(w[:3]), force_gradient(w[3:])])
    np.testing.assert_allclose(moved("grouped"), expected, rtol=1e-4, atol=1e-7)
    assert not np.allclose(expected, -0.5 * force_gradient(w), atol=1e-3)  # across the groups: not this
    np.testing.assert_array_equal(moved("depthwise"), 0)
    w = start.layer("transposed").blobs[0].data
    assert w.shape == (54, 3)
    np.testing.assert_allclose(moved("transposed"), -0.5 * force_gradient(w.T).T, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("block_elements", BLOCKS)
def test_force_added_into_a_transposed_view_reaches_the_array(block_elements):
    w = RNG.normal(size=(7, 4))
    into = np.zeros((7, 4))
    force_gradient(w.T, "constant", block_elements=block_elements, add_to=into.T, alpha=2.0)
    np.testing.assert_allclose(into, 2.0 * force_gradient(w.T, "constant").T)


def test_train_lowrank_pulls_filters_together(caffe, tmp_path, cli):
    solver = write_solver(tmp_path, base_lr=0.05, weight_decay=0)

    def mean_cosine(path):
        w = read_caffemodel(path).layer("conv1").blobs[0].data.reshape(4, -1)
        n = w / np.linalg.norm(w, axis=1, keepdims=True)
        gram = n @ n.T
        return gram[np.triu_indices(4, 1)].mean()

    start = caffe.get_solver(str(solver))  # both runs start from these weights
    start.net.save(str(tmp_path / "start.caffemodel"))
    plain = cli("train-dense", "--solver", solver, "-w", "start.caffemodel", "--lr-scale", 1, "-n", 30,
                "-o", "plain.caffemodel")
    assert plain.exit_code == 0, plain.output
    forced = cli("train-lowrank", "--solver", solver, "-w", "start.caffemodel", "--force-decay", 0.5,
                 "--force-mult", "fc1=0", "-n", 30, "-o", "forced.caffemodel")
    assert forced.exit_code == 0, forced.output
    assert mean_cosine(tmp_path / "forced.caffemodel") > mean_cosine(tmp_path / "plain.caffemodel") + 0.05


@pytest.mark.parametrize("decay_type", ["fixed", "adaptive"])
def test_iter_size_does_not_change_the_force(caffe, tmp_path, cli, decay_type):
    """The same batch twice (constant DummyData) with iter_size 2 is the
    batch once: the same update, force included."""
    net = tmp_path / "net.prototxt"
    write_solver(tmp_path)
    net.write_text(net.read_text().replace('data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 }',
                                           'data_filler { type: "constant" value: 0.3 } '
                                           'data_filler { type: "constant" value: 0.5 }'))
    start = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    start.net.save(str(tmp_path / "start.caffemodel"))
    out = {}
    for iter_size in (1, 2):
        (tmp_path / str(iter_size)).mkdir()
        solver = write_solver(tmp_path / str(iter_size), iter_size=iter_size, weight_decay=0)
        (tmp_path / str(iter_size) / "net.prototxt").write_text(net.read_text())
        result = cli("train-lowrank", "--solver", solver, "-w", "start.caffemodel", "--force-decay", 0.5,
                     "--decay-type", decay_type, "-n", 1, "-o", f"{iter_size}.caffemodel")
        assert result.exit_code == 0, result.output
        out[iter_size] = read_caffemodel(tmp_path / f"{iter_size}.caffemodel").layer("conv1").blobs[0].data
    assert not np.array_equal(out[1], read_caffemodel(tmp_path / "start.caffemodel").layer("conv1").blobs[0].data)
    np.testing.assert_allclose(out[2], out[1], rtol=1e-5, atol=1e-6)


def test_full_rank_decomposition_is_exact_and_loads_in_stock_caffe(caffe, lenet, tmp_path, cli):
    _, proto, weights = lenet
    # Full rank makes every layer bigger: --energy leaves them all alone, --rank forces them.
    result = cli("decompose", "-p", proto, "-w", weights, "--energy", 1.0, "--fc", "-o", "none")
    assert result.exit_code == 0, result.output
    assert "no layer decomposed" in result.output and "left as is: conv2 (Convolution): rank 50 of 50" in result.output
    assert "## Left as they are" in (tmp_path / "none" / "report.md").read_text()
    result = cli("decompose", "-p", proto, "-w", weights, "--fc", "--rank", "conv1=20", "--rank", "conv2=50",
                 "--rank", "ip1=500", "--rank", "ip2=10", "-o", "full")
    assert result.exit_code == 0, result.output
    original = caffe.Net(str(proto), caffe.TEST, weights=str(weights))
    decomposed = caffe.Net(str(tmp_path / "full" / proto.name), caffe.TEST,
                           weights=str(tmp_path / "full" / "model.caffemodel"))
    assert "conv2/lowrank" in decomposed.params and decomposed.params["conv2"][0].data.shape == (50, 50, 1, 1)
    original.forward(end="mnist")  # one TEST batch, fed to both nets
    batch = {k: original.blobs[k].data.copy() for k in ("data", "label")}
    original.forward(start="conv1")
    expected = original.blobs["ip2"].data.copy()
    for k, v in batch.items():
        decomposed.blobs[k].data[...] = v
    decomposed.forward(start="conv1/lowrank")
    logits = decomposed.blobs["ip2"].data
    assert np.linalg.norm(logits - expected) / np.linalg.norm(expected) < 1e-4
    from caffedsd.verify import run_caffe_test

    code, log = run_caffe_test(tmp_path / "full" / proto.name, tmp_path / "full" / "model.caffemodel")
    assert code == 0 and "Ignoring source layer" not in log.replace("Ignoring source layer mnist", "")
    report = (tmp_path / "full" / "report.md").read_text()
    assert "| conv2 | Convolution | 50/50 | 25050 | 27550 |" in report


def test_the_masks_of_layers_left_as_they_are_go_beside_the_output(caffe, lenet, tmp_path, cli):
    """A pruned model's masks were dropped: train-lowrank then made its
    pruned ip1 (90% zeros) dense again without a word."""
    _, proto, weights = lenet
    assert cli("prune", "-w", weights, "-s", 0.5, "-o", "p.caffemodel").exit_code == 0
    before = load_masks(tmp_path / "p.masks.h5")
    result = cli("decompose", "-p", proto, "-w", "p.caffemodel", "--rank", "conv2=20", "-o", "d")
    assert result.exit_code == 0, result.output
    assert "model.caffemodel, model.masks.h5, report.md" in result.output
    model = read_caffemodel(tmp_path / "d" / "model.caffemodel")
    kept = masks_for(model)  # fits the decomposed model
    assert kept.model_sha256 == model.sha256()
    assert set(kept.masks) == {"conv1", "ip1", "ip2"}  # conv2's two new blobs are dense
    for name in kept.masks:
        assert np.array_equal(kept.masks[name], before.masks[name]), name
        assert np.array_equal(model.layer(name).blobs[0].data == 0, ~kept.masks[name]), name
    assert cli("verify", "-p", tmp_path / "d" / proto.name, "-w", tmp_path / "d" / "model.caffemodel").exit_code == 0
    # Every masked layer split: no masks, and none left from the run before.
    result = cli("decompose", "-p", proto, "-w", "p.caffemodel", "--fc", "--rank", "conv1=20", "--rank", "conv2=20",
                 "--rank", "ip1=20", "--rank", "ip2=5", "-o", "d", "--force")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "d" / "model.masks.h5").exists() and "model.masks.h5" not in result.output


def test_bad_inputs(lenet, tmp_path, cli):
    _, proto, weights = lenet
    base = ("decompose", "-p", proto, "-w", weights, "-o", "out")
    assert_one_line_error(cli(*base, "--rank", "conv2=51"), "--rank conv2=51: must be between 1 and 50")
    assert_one_line_error(cli(*base, "--rank", "conv2=0"), "a rank must be at least 1")
    assert_one_line_error(cli(*base, "--energy", 0.9, "--layers", "conv9*"), "'conv9*' matches no decomposable layer")
    # Comma-separated, as sensitivity takes them: "conv1,conv9*" was one glob, matching nothing.
    assert_one_line_error(cli(*base, "--energy", 0.9, "--layers", "conv1,conv9*"),
                          "'conv9*' matches no decomposable layer")
    assert_one_line_error(cli(*base, "--energy", 0.9, "--layers", " , "), "--layers ' , ': names no layer glob")
    assert_one_line_error(cli(*base, "--energy", 1.5), "--energy 1.5: must be in (0, 1]")
    assert_one_line_error(cli(*base, "--energy", "1.0000001"), "--energy 1.0000001: must be in (0, 1]")
    assert_one_line_error(cli(*base, "--rank", "ip1=3"), "(InnerProduct layers need --fc)")
    # Left out by --layers, not for its type: --fc was blamed.
    for args in (("-l", "conv1", "--rank", "conv2=3"), ("--fc", "-l", "conv1", "--rank", "ip1=3")):
        layer = args[-1].split("=")[0]
        assert_one_line_error(cli(*base, *args), f"no decomposable layer '{layer}' among those --layers conv1 chooses")
    assert_one_line_error(cli(*base, "--rank", "conv2=3", "--rank", "conv2=5"),
                          "--rank 'conv2=5': conv2 has --rank conv2=3 already")
    assert_one_line_error(cli("rank", "-w", weights, "--energy", "0"), "--energy 0: must be in (0, 1]")
    # Levels %g rounds are headed in full: 0.9999995 was headed 1, beside 1.
    result = cli("rank", "-w", weights, "--energy", "0.9999995,1")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split()[-2:] == ["0.9999995", "1"]
    (tmp_path / "nodata.prototxt").write_text(re.sub(r'source: "[^"]*"', 'source: "gone.txt"', proto.read_text()))
    assert_one_line_error(cli("decompose", "-p", "nodata.prototxt", "-w", weights, "--rank", "conv2=5", "-o", "out"),
                          "reads 'gone.txt', which does not exist")  # Caffe aborted building the net
    narrow = proto.read_text().replace("num_output: 50\n", "num_output: 50 group: 2\n")
    (tmp_path / "narrow.prototxt").write_text(narrow)
    assert_one_line_error(cli("decompose", "-p", "narrow.prototxt", "-w", weights, "--rank", "conv2=5", "-o", "out"),
                          "layer 'conv2' blob 0 is [50, 20, 5, 5], but narrow.prototxt makes it [50, 10, 5, 5]")
    # -o the inputs' own folder: the rewrite, named as given, would replace the prototxt, and
    # model.caffemodel weights of that name. Refused unless --force, before any work.
    shutil.copy(proto, tmp_path / "lenet.prototxt")
    shutil.copy(weights, tmp_path / "model.caffemodel")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert_one_line_error(cli("decompose", "-p", "lenet.prototxt", "-w", weights, "--rank", "conv2=5", "-o", "."),
                          "lenet.prototxt: output would overwrite the input lenet.prototxt; pass --force")
    assert_one_line_error(cli("decompose", "-p", proto, "-w", "model.caffemodel", "--rank", "conv2=5", "-o", "."),
                          "model.caffemodel: output would overwrite the input model.caffemodel; pass --force")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert cli("decompose", "-p", "lenet.prototxt", "-w", "model.caffemodel", "--rank", "conv2=5", "-o", ".",
               "--force").exit_code == 0
    assert "conv2/lowrank" in (tmp_path / "lenet.prototxt").read_text()
    solver = write_solver(tmp_path)
    assert_one_line_error(cli("train-lowrank", "--solver", solver, "--force-decay", -1, "-o", "x.caffemodel"),
                    "--force-decay -1.0: must be a finite number >= 0")
    assert_one_line_error(cli("train-lowrank", "--solver", solver, "--force-decay", 1, "--force-type", "L3",
                        "-o", "x.caffemodel"), "--force-type 'L3': must be one of degradation, constant")
    assert_one_line_error(cli("train-lowrank", "--solver", solver, "--force-decay", 1, "--force-mult", "nope*=1",
                        "-n", 1, "-o", "x.caffemodel"), "'nope*' matches no Convolution or InnerProduct layer")
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.caffemodel").exists()


STRIDED = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 13 dim: 13 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 dilation: 2 } }
layer { name: "relu" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip" inner_product_param { num_output: 4 } }
"""


def _same_outputs(caffe, proto, weights, out_proto, out_weights, shape, tops=("ip",)):
    """(the split pycaffe Net, the largest relative difference of ``tops``) on one random input."""
    original = caffe.Net(str(proto), caffe.TEST, weights=str(weights))
    split = caffe.Net(str(out_proto), caffe.TEST, weights=str(out_weights))
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    original.blobs["data"].data[...] = x
    split.blobs["data"].data[...] = x
    a, b = original.forward(), split.forward()
    return split, max(np.linalg.norm(a[t] - b[t]) / np.linalg.norm(a[t]) for t in tops)


def _caffe_ignores(proto, weights):
    """The layers of ``weights`` that stock `caffe test` ignores, loading and running ``proto``
    with them (run before pycaffe loads the pair: Caffe aborts the process on a bad pair)."""
    from caffedsd.verify import run_caffe_test

    code, log = run_caffe_test(proto, weights)
    assert code == 0, log[-2000:]
    return re.findall(r"Ignoring source layer (\S+)", log)


def test_stride_pad_dilation_kept(caffe, tmp_path, cli):
    proto, weights = save_net(caffe, tmp_path, STRIDED)
    result = cli("decompose", "-p", proto, "--deploy", proto, "-w", weights, "--rank", "conv1=6", "--fc",
                 "--rank", "ip=4", "-o", "out")
    assert result.exit_code == 0, result.output
    split, error = _same_outputs(caffe, proto, weights, tmp_path / "out" / proto.name,
                                 tmp_path / "out" / "model.caffemodel", (2, 3, 13, 13))
    assert split.blobs["conv1"].data.shape == (2, 6, 6, 6)  # (13 + 2 - 5) // 2 + 1, dilation 2
    assert error < 1e-4
    # Into the folder again, where an earlier prune left model.masks.h5 beside
    # model.caffemodel: the new model takes them away.
    assert cli("prune", "-w", weights, "-s", 0.5, "-o", tmp_path / "out" / "model.caffemodel", "--force").exit_code == 0
    assert cli("decompose", "-p", proto, "-w", weights, "--rank", "conv1=6", "-o", "out").exit_code == 0
    assert not (tmp_path / "out" / "model.masks.h5").exists()
    assert cli("verify", "-w", tmp_path / "out" / "model.caffemodel").exit_code == 0


GROUPED = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 dim: 11 dim: 11 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 12 kernel_size: 3 stride: 2 pad: 1 group: 3 } }
layer { name: "dw" type: "Convolution" bottom: "conv1" top: "dw"
        convolution_param { num_output: 12 kernel_size: 3 group: 12 } }
layer { name: "dw2" type: "Convolution" bottom: "dw" top: "dw2"
        convolution_param { num_output: 24 kernel_size: 3 pad: 1 group: 12 } }
layer { name: "ip" type: "InnerProduct" bottom: "dw2" top: "ip" inner_product_param { num_output: 4 } }
"""


def test_grouped_convolutions_split_per_group_and_depthwise_left_alone(caffe, tmp_path, cli):
    proto, weights = save_net(caffe, tmp_path, GROUPED)
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(proto.read_text())
    # conv1: 3 blocks of 4 x 18 (full rank 4): 4*(6*9+12) = 264 weights > 12*2*9 = 216, so only forced.
    result = cli("decompose", "-p", proto, "--deploy", deploy, "-w", weights, "--rank", "conv1=4", "-o", "full")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == [
        "deploy.prototxt", "model.caffemodel", "net.prototxt", "report.md"]
    split, error = _same_outputs(caffe, proto, weights, tmp_path / "full" / "deploy.prototxt",
                                 tmp_path / "full" / "model.caffemodel", (2, 6, 11, 11))
    assert error < 1e-4
    assert split.params["conv1/lowrank"][0].data.shape == (12, 2, 3, 3)
    assert split.params["conv1"][0].data.shape == (12, 4, 1, 1)
    assert "4/4 x3 groups" in result.output
    result = cli("decompose", "-p", proto, "-w", weights, "--energy", 0.5, "-o", "energy")
    assert result.exit_code == 0, result.output
    assert "left as is: dw (Convolution): depthwise (group 12" in result.output
    report = (tmp_path / "energy" / "report.md").read_text()
    assert "dw (Convolution): depthwise" in report
    # Two filters per group: rank 1 (at least half of any 2 x 9 block's
    # energy) has 12*9 + 24 = 132 weights against 216, so it is split.
    assert "dw2 (" not in result.output.split("left as is:")[-1] and "| dw2 | Convolution | 1/2 x12 groups |" in report
    split, error = _same_outputs(caffe, proto, weights, tmp_path / "energy" / proto.name,
                                 tmp_path / "energy" / "model.caffemodel", (2, 6, 11, 11))
    assert split.params["dw2/lowrank"][0].data.shape == (12, 1, 3, 3)
    assert_one_line_error(cli("decompose", "-p", proto, "-w", weights, "--rank", "conv1=5", "-o", "x"),
                          "--rank conv1=5: must be between 1 and 4 per group")
    # Again into "full", without --deploy: the earlier deploy.prototxt, of
    # the conv1 split the new model lacks, went on lying beside it. A
    # prototxt decompose did not write stays.
    (tmp_path / "full" / "mine.prototxt").write_text("# the user's\n")
    result = cli("decompose", "-p", proto, "-w", weights, "--energy", 0.5, "-o", "full")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == [
        "mine.prototxt", "model.caffemodel", "net.prototxt", "report.md"]
    assert "Nets written: `net.prototxt` (with model.caffemodel" in (tmp_path / "full" / "report.md").read_text()


def test_an_earlier_decomposes_nets_are_only_names_in_its_folder_and_no_input(tmp_path):
    from caffedsd.lowrank import earlier_nets

    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("# Low-rank decomposition of w\n\nNets written: `a.prototxt`, `../b.prototxt`, "
                                   "`sub/c.prototxt`, `..`, `in.prototxt`, `d.prototxt`, `gone.prototxt` (with ...)\n")
    for name in ("a.prototxt", "in.prototxt", "sub/c.prototxt", "../b.prototxt"):
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text("")
    (out / "d.prototxt").mkdir()  # no file: left alone
    assert earlier_nets(out, [out / "in.prototxt", None]) == [out / "a.prototxt"]
    assert earlier_nets(tmp_path / "elsewhere", []) == []
    # Bytes that are not UTF-8 (a report an earlier caffedsd wrote in Latin-1,
    # or the user's own): they raised inside decompose's renames, after the
    # model was in place, leaving the earlier prototxt beside it.
    with open(out / "report.md", "ab") as report:
        report.write(b"Notes: caf\xe9\n")
    assert earlier_nets(out, [out / "in.prototxt"]) == [out / "a.prototxt"]


def test_a_train_val_with_a_deploy_needs_no_data(caffe, tmp_path, cli):
    """Caffe builds only the deploy net here, so the train_val's data may be
    elsewhere (the usual case on the machine that decomposes)."""
    deploy, weights = save_net(caffe, tmp_path, GROUPED, name="deploy")
    data = ('layer { name: "data" type: "Data" top: "data" data_param { source: "absent_lmdb" batch_size: 2 '
            'backend: LMDB } }')
    train_val = tmp_path / "train_val.prototxt"
    train_val.write_text(re.sub(r'layer \{ name: "data" type: "Input".*\n', data + "\n", GROUPED))
    assert "absent_lmdb" in train_val.read_text()
    result = cli("decompose", "-p", train_val, "--deploy", deploy, "-w", weights, "--rank", "conv1=4", "-o", "low")
    assert result.exit_code == 0, result.output
    assert_one_line_error(cli("decompose", "-p", train_val, "-w", weights, "--rank", "conv1=4", "-o", "low2"),
                          "reads 'absent_lmdb', which does not exist")


# GoogLeNet-like: the train_val has an auxiliary classifier the deploy lacks.
AUX_DEPLOY = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 2 dim: 10 dim: 10 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 6 kernel_size: 3 } }
layer { name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip" inner_product_param { num_output: 4 } }
"""
AUX = """
layer { name: "aux/conv" type: "Convolution" bottom: "conv1" top: "aux/conv"
        convolution_param { num_output: 6 kernel_size: 3 stride: 2 } }
layer { name: "aux/fc" type: "InnerProduct" bottom: "aux/conv" top: "aux/fc" inner_product_param { num_output: 4 } }
"""


def test_layers_only_in_the_train_val_are_split_by_its_own_shapes(caffe, tmp_path, cli):
    train_val, weights = save_net(caffe, tmp_path, AUX_DEPLOY + AUX, name="train_val")
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(AUX_DEPLOY)
    result = cli("decompose", "-p", train_val, "--deploy", deploy, "-w", weights, "--rank", "conv1=6",
                 "--rank", "aux/conv=6", "-o", "out")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert _caffe_ignores(out / "train_val.prototxt", out / "model.caffemodel") == []
    # The deploy ignores the auxiliary classifier's weights, as it does the original's.
    assert _caffe_ignores(out / "deploy.prototxt", out / "model.caffemodel") == ["aux/conv/lowrank", "aux/conv",
                                                                                 "aux/fc"]
    _, error = _same_outputs(caffe, train_val, weights, out / "train_val.prototxt", out / "model.caffemodel",
                             (2, 2, 10, 10), tops=("ip", "aux/fc"))
    assert error < 1e-4
    # aux/conv's 3 x 3 outputs, which only the train_val has: 6*54 weights at 9 positions.
    assert "| aux/conv | Convolution | 6/6 | 330 | 366 | 2916 | 3240 |" in (out / "report.md").read_text()
    # The train_val is built only for such layers, so then its data must be there.
    absent = 'layer { name: "data" type: "Data" top: "data" data_param { source: "absent_lmdb" batch_size: 2 } }'
    (tmp_path / "nodata.prototxt").write_text(re.sub(r'layer \{ name: "data" type: "Input".*', absent,
                                                     AUX_DEPLOY + AUX))
    assert_one_line_error(cli("decompose", "-p", "nodata.prototxt", "--deploy", deploy.name, "-w", weights,
                              "--rank", "aux/conv=6", "-o", "out2"),
                          "aux/conv: not in deploy.prototxt, so nodata.prototxt is built for its output size:")
    # A deploy whose layer the weights do not fill (a fine-tuning rename) is
    # refused; the weights of layers it leaves out are not.
    (tmp_path / "renamed.prototxt").write_text(AUX_DEPLOY.replace('"ip"', '"ip_new"'))
    assert_one_line_error(cli("decompose", "-p", train_val, "--deploy", "renamed.prototxt", "-w", weights,
                              "--rank", "conv1=6", "-o", "out3"),
                          "renamed.prototxt does not match")
    assert not (tmp_path / "out3").exists()


SHARED = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 6 dim: 6 } } }
layer { name: "s1" type: "Convolution" bottom: "data" top: "s1" param { name: "sw" } param { name: "sb" }
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "s2" type: "Convolution" bottom: "s1" top: "s2" param { name: "sw" } param { name: "sb" }
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "s2" top: "ip" inner_product_param { num_output: 4 } }
"""


def test_layers_sharing_weights_are_split_alike_or_not_at_all(caffe, tmp_path, cli):
    proto, weights = save_net(caffe, tmp_path, SHARED)
    result = cli("decompose", "-p", proto, "-w", weights, "--rank", "s1=4", "--rank", "s2=4", "-o", "full")
    assert result.exit_code == 0, result.output
    out = tmp_path / "full"
    assert _caffe_ignores(out / proto.name, out / "model.caffemodel") == []
    split, error = _same_outputs(caffe, proto, weights, out / proto.name, out / "model.caffemodel", (2, 4, 6, 6))
    assert error < 1e-4
    report = (out / "report.md").read_text()
    assert "| s2 (weights of s1) | Convolution | 4/4 | 148 | 164 | 5184 | 5760 | 0 |" in report
    assert "| total |  |  | 148 | 164 | 10368 | 11520 |  |" in report  # the shared blobs once; both layers MACs
    # Weights shared, each its own bias: that bias counts.
    own = tmp_path / "own"
    own.mkdir()
    proto2, weights2 = save_net(caffe, own, SHARED.replace(' param { name: "sb" }', ""))
    result = cli("decompose", "-p", proto2, "-w", weights2, "--rank", "s1=4", "--rank", "s2=4", "-o", "own/out")
    assert result.exit_code == 0, result.output
    assert "| total |  |  | 152 | 168 |" in (own / "out" / "report.md").read_text()
    # Each half is still one blob between the two layers.
    for half in ("s1/lowrank", "s1"):
        twin = half.replace("s1", "s2")
        split.params[half][0].data[...] = 7
        assert np.all(split.params[twin][0].data == 7)
    # Split apart, the halves' shapes would not match: asked for, refused; chosen by --energy, left as is.
    assert_one_line_error(cli("decompose", "-p", proto, "-w", weights, "--rank", "s1=2", "-o", "x"),
                          "--rank s1=2: s1 shares its weights ('sw') with s2, which would be left as is")
    result = cli("decompose", "-p", proto, "-w", weights, "--energy", 0.5, "--layers", "s1", "-o", "part")
    assert result.exit_code == 0, result.output
    assert "left as is: s1 (Convolution): shares its weights ('sw') with s2, which would be left as is" in result.output
    assert _caffe_ignores(tmp_path / "part" / proto.name, tmp_path / "part" / "model.caffemodel") == []


def test_a_split_whose_new_names_the_net_has_is_refused(caffe, tmp_path, cli):
    """Splitting a decomposed net's 1 x 1 half again would add a second
    NAME/lowrank layer, and a shared name w/lowrank may be another's:
    Caffe refuses such outputs."""
    proto, weights = save_net(caffe, tmp_path, SHARED)
    assert cli("decompose", "-p", proto, "-w", weights, "--rank", "s1=4", "--rank", "s2=4", "-o", "once").exit_code == 0
    once = tmp_path / "once"
    assert_one_line_error(cli("decompose", "-p", once / proto.name, "-w", once / "model.caffemodel", "--rank", "s1=2",
                              "--rank", "s2=2", "-o", "twice"),
                          f"{once / proto.name}: layer 's1' would be split into 's1/lowrank', but the net has a layer "
                          "of that name already")
    assert not (tmp_path / "twice").exists()
    taken = SHARED.replace('top: "ip" inner_product_param', 'top: "ip" param { name: "sw/lowrank" } inner_product_param')
    (tmp_path / "taken").mkdir()
    proto, weights = save_net(caffe, tmp_path / "taken", taken)
    assert_one_line_error(cli("decompose", "-p", proto, "-w", weights, "--rank", "s1=4", "--rank", "s2=4", "-o", "x"),
                          f"{proto}: layer 's1' would be split into 'sw/lowrank', but the net has a shared weight "
                          "name of that name already")


IP_LAYOUTS = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 } } }
layer { name: "ipT" type: "InnerProduct" bottom: "data" top: "ipT" inner_product_param { num_output: 10 transpose: true } }
layer { name: "ipA" type: "InnerProduct" bottom: "data" top: "ipA" inner_product_param { num_output: 12 axis: 2 } }
"""


def test_transposed_and_axis_inner_products(caffe, tmp_path, cli):
    proto, weights = save_net(caffe, tmp_path, IP_LAYOUTS)
    result = cli("decompose", "-p", proto, "-w", weights, "--fc", "--rank", "ipT=10", "--rank", "ipA=8", "-o", "out")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert _caffe_ignores(out / proto.name, out / "model.caffemodel") == []
    split, error = _same_outputs(caffe, proto, weights, out / proto.name, out / "model.caffemodel", (2, 3, 8),
                                 tops=("ipT", "ipA"))
    assert error < 1e-4
    # transpose: true keeps its C x N layout in both halves.
    assert split.params["ipT/lowrank"][0].data.shape == (24, 10) and split.params["ipT"][0].data.shape == (10, 10)
    # axis: 2 applies the 8 x 12 weight at each of the 3 positions of axis 1: 96 * 3 multiply-adds.
    assert "| ipA | InnerProduct | 8/8 | 108 | 172 | 288 | 480 |" in (out / "report.md").read_text()


def test_factors_are_an_svds_on_wide_tall_and_rank_deficient_blocks():
    for shape in ((6, 40), (40, 6), (5, 5)):
        w = RNG.normal(size=shape).astype(np.float32)
        u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
        for rank in (1, 3, min(shape)):
            first, second, discarded = factor(w, rank)
            assert first.dtype == second.dtype == np.float32
            assert first.shape == (rank, shape[1]) and second.shape == (shape[0], rank)
            best = (u[:, :rank] * s[:rank]) @ vt[:rank]
            np.testing.assert_allclose(second.astype(np.float64) @ first, best, atol=1e-5)
            # Each factor carries sqrt(s): the rows of first have norms sqrt(s_i), as an SVD's.
            np.testing.assert_allclose(np.linalg.norm(first, axis=1), np.sqrt(s[:rank]), rtol=1e-5)
            assert discarded == pytest.approx(float(np.sum(s[rank:] ** 2)), rel=1e-6, abs=1e-9)
    low = (RNG.integers(-3, 4, size=(30, 2)) @ RNG.integers(-3, 4, size=(2, 50))).astype(np.float32)  # rank 2, exactly
    first, second, _ = factor(low, 5)  # three singular values of 0: their halves are 0, as sqrt(0) makes them
    assert np.all(np.isfinite(first)) and np.all(np.isfinite(second))
    assert not first[2:].any() and not second[:, 2:].any()
    np.testing.assert_allclose(second @ first, low, atol=1e-4)
    transposed_first, transposed_second, _ = factor(low.T, 2, transpose=True)
    np.testing.assert_allclose(transposed_first @ transposed_second, low.T, atol=1e-4)  # C x r, r x N


SHAPES = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }
layer { name: "vol" type: "Input" top: "vol" input_param { shape { dim: 2 dim: 2 dim: 5 dim: 5 dim: 5 } } }
layer { name: "two" type: "Convolution" bottom: "data" bottom: "data" top: "ca" top: "cb"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "c3" type: "Convolution" bottom: "vol" top: "c3" convolution_param { num_output: 8 kernel_size: 3 } }
layer { name: "ipm" type: "InnerProduct" bottom: "data" top: "ipm" inner_product_param { num_output: 6 axis: -2 } }
layer { name: "ipT" type: "InnerProduct" bottom: "data" top: "ipT"
        inner_product_param { num_output: 60 transpose: true } }
"""


def test_splits_of_several_bottoms_n_d_kernels_negative_axes_and_the_prototxts_layout(caffe, tmp_path, cli):
    """Each was written as a net stock Caffe refuses (two tops from one bottom,
    a 4-D 1 x 1 kernel for a 3-D convolution, axis -2 on the second half's
    shorter input), or, for a transpose the weights file no longer states,
    as one that computes something else, with exit status 0."""
    from caffedsd.caffe_proto import NetParameter

    proto, weights = save_net(caffe, tmp_path, SHAPES)
    stored = NetParameter()
    stored.ParseFromString(weights.read_bytes())
    for layer in stored.layer:
        layer.inner_product_param.ClearField("transpose")  # as a converter may leave it
    weights.write_bytes(stored.SerializeToString())
    ranks = ["--rank", "two=6", "--rank", "c3=8", "--rank", "ipm=6", "--rank", "ipT=60"]
    result = cli("decompose", "-p", proto, "-w", weights, "--fc", *ranks, "-o", "out")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert _caffe_ignores(out / proto.name, out / "model.caffemodel") == []
    original = caffe.Net(str(proto), caffe.TEST, weights=str(weights))
    split = caffe.Net(str(out / proto.name), caffe.TEST, weights=str(out / "model.caffemodel"))
    rng = np.random.default_rng(3)
    for name in ("data", "vol"):
        x = rng.normal(size=original.blobs[name].data.shape).astype(np.float32)
        original.blobs[name].data[...] = x
        split.blobs[name].data[...] = x
    a, b = original.forward(), split.forward()
    for top in ("ca", "cb", "c3", "ipm", "ipT"):  # full rank: the same outputs
        assert np.linalg.norm(a[top] - b[top]) / np.linalg.norm(a[top]) < 1e-4, top
    assert split.params["c3"][0].data.shape == (8, 8, 1, 1, 1)
    assert list(split.top_names["two/lowrank"]) == ["two/lowrank_0", "two/lowrank_1"]
    # Both bottoms' positions count: 2 x 4 x 5 each.
    assert "| two | Convolution | 6/6 |" in (out / "report.md").read_text()


def test_a_rewrite_caffe_cannot_fill_is_found_before_anything_is_written(caffe, tmp_path):
    """decompose builds its rewrite in a child Caffe with the new weights
    (build_in_child with weights), where a shape Caffe refuses aborts."""
    from caffedsd.caffe_env import build_in_child

    proto, weights = save_net(caffe, tmp_path, IP_LAYOUTS)
    build_in_child("net", proto, "as rewritten", weights=weights)
    proto.write_text(IP_LAYOUTS.replace("num_output: 12", "num_output: 11"))
    with pytest.raises(InputError, match="as rewritten: Caffe cannot build the net with these weights: .*Cannot copy param 0 weights "
                                         "from layer 'ipA'; shape mismatch"):
        build_in_child("net", proto, "as rewritten", weights=weights)


def test_a_force_that_makes_training_diverge_is_named(caffe, tmp_path, cli):
    """Diverged training was said to need a lower learning rate or
    clip_gradients alone, where --force-decay was what blew it up."""
    solver = write_solver(tmp_path)
    caffe.get_solver(str(solver)).net.save(str(tmp_path / "start.caffemodel"))
    result = cli("train-lowrank", "--solver", solver, "-w", "start.caffemodel", "--force-decay", 1e30,
                 "-n", 3, "-o", "out.caffemodel")
    assert result.exit_code == 1, result.output
    assert "training diverged" in result.output
    assert result.output.rstrip().endswith("Lower the learning rate or --force-decay, or set clip_gradients, "
                                           "then start again"), result.output
    assert not (tmp_path / "out.caffemodel").exists()
    assert_one_line_error(cli("train-lowrank", "--solver", solver, "-w", "start.caffemodel",
                              "--force-decay", "inf", "-o", "out.caffemodel"),
                          "--force-decay inf: must be a finite number >= 0")


def test_a_prototxt_named_like_a_decompose_output_is_refused(tmp_path):
    """A prototxt named model.masks.h5 was written over the model's masks
    (a traceback for pruned weights; for dense ones, masks that no command
    could read)."""
    from caffedsd.lowrank import output_names

    for name in ("model.caffemodel", "model.masks.h5", "report.md"):
        with pytest.raises(InputError, match=f"{name}: a prototxt cannot be named like decompose's other outputs"):
            output_names(tmp_path / name, None)
    assert output_names(tmp_path / "net.prototxt", None) == {tmp_path / "net.prototxt": "net.prototxt"}
