"""Layers a train net and its test nets do not hold alike: layers tied by a
param name, whose weights file must hold one set for them, and layers of
phase TEST only, which the train-* commands load, test with and write
although the solver never trains them (`caffe train -weights` loads them,
and its snapshots leave them out)."""
import json
import re

import numpy as np
import pytest

from caffedsd.caffemodel import read_caffemodel, write_caffemodel
from caffedsd.errors import InputError
from caffedsd.mask_enforcer import MaskEnforcer
from conftest import assert_one_line_error, save_net

ONES = ('layer { name: "data" type: "DummyData" top: "data" top: "target" dummy_data_param {\n'
        '  shape { dim: 2 dim: 4 } shape { dim: 2 dim: 3 }\n'
        '  data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 0 } } }\n')


def _ip(name, bottom, tied=False, phase=None):
    param = ' param { name: "w" } param { name: "b" }' if tied else ""
    include = f" include {{ phase: {phase} }}" if phase else ""
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}"{param}{include}\n'
            f'  inner_product_param {{ num_output: {3 if name != "a" else 4} '
            'weight_filler { type: "gaussian" std: 0.3 } } }\n')


def _loss(name, bottom, phase=None):
    include = f" include {{ phase: {phase} }}" if phase else ""
    return f'layer {{ name: "{name}" type: "EuclideanLoss" bottom: "{bottom}" bottom: "target" top: "{name}"{include} }}\n'


def test_a_parameter_layer_the_weights_lack_is_refused_as_left_random(caffe, tmp_path, cli):
    """A stock Parameter layer learns its one blob, its top: weights without
    it passed verify --model, and train-sparse trained from them with that
    blob left at 0, where a Scale layer's was refused."""
    bias = ('layer { name: "pb" type: "Parameter" top: "pb" parameter_param { shape { dim: 2 dim: 3 } } }\n'
            'layer { name: "sum" type: "Eltwise" bottom: "fc" bottom: "pb" top: "sum" }\n')
    base = ONES + _ip("fc", "data")
    _, bare = save_net(caffe, tmp_path, base + _loss("loss", "fc"), name="bare")
    model, full = save_net(caffe, tmp_path, base + bias + _loss("loss", "sum"), name="full")
    assert [layer.name for layer in read_caffemodel(full).layers if layer.blobs] == ["fc", "pb"]
    expected = f"layers with no weights in {bare.name} (Caffe would leave them at their initial values): pb"
    checked = cli("verify", "-w", bare, "--model", model)
    assert checked.exit_code == 1 and f"FAIL  prototxt fits weights: {model} does not match" in checked.output \
        and checked.output.splitlines()[2].endswith(expected), checked.output
    solver = _solver(tmp_path, f'net: "{model}"')
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", bare, "-n", 1, "-o", "a.caffemodel"), expected)
    result = cli("train-dense", "--solver", solver, "-w", full, "-n", 1, "-o", "b.caffemodel")
    assert result.exit_code == 0, result.output
    checked = cli("verify", "-w", "b.caffemodel", "--model", model)
    assert checked.exit_code == 0 and "ok    prototxt fits weights" in checked.output, checked.output


def _solver(folder, nets, extra=""):
    path = folder / "solver.prototxt"
    path.write_text(f'{nets}\ntest_iter: 1\ntest_interval: 1000\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 3\n'
                    f'random_seed: 1\nsnapshot_prefix: "{folder / "snap"}"\n{extra}')
    return path


def test_tied_layers_whose_weights_differ_are_refused(caffe, tmp_path, cli):
    """Caffe copied each layer's weights into the one blob they share and
    kept the last; masks made of the file, one per layer, then differed on
    it, and the one caffedsd held was the first: train-sparse wrote a model
    with non-zeros where the other's masks said 0.0."""
    square = ('layer { name: "data" type: "DummyData" top: "data" top: "target" dummy_data_param {\n'
              '  shape { dim: 2 dim: 4 } shape { dim: 2 dim: 4 } } }\n')
    body = (square + _ip("a", "data").replace("num_output: 3", "num_output: 4")
            + _ip("b", "a").replace("num_output: 3", "num_output: 4") + _loss("loss", "b"))
    _, untied = save_net(caffe, tmp_path, body, name="untied")
    tied_text = re.sub(r'(name: "[ab]" type: "InnerProduct" bottom: "\w+" top: "[ab]")',
                       r'\1 param { name: "w" } param { name: "b" }', body)
    (tmp_path / "tied.prototxt").write_text(tied_text)
    solver = _solver(tmp_path, f'net: "{tmp_path / "tied.prototxt"}"')
    assert cli("prune", "-w", untied, "-s", 0.5, "-o", "p.caffemodel").exit_code == 0
    for command, weights in (("train-sparse", "p.caffemodel"), ("train-dense", untied)):
        assert_one_line_error(cli(command, "--solver", solver, "-w", weights, "-n", 2, "-o", "out.caffemodel"),
                              f"{weights}: layers a and b hold different weights, but {tmp_path / 'tied.prototxt'} "
                              "ties them (param 'w')")
        assert not (tmp_path / "out.caffemodel").exists()
    for command in (("prune", "-s", 0.5, "-o", "p2.caffemodel"), ("sensitivity", "-o", "scan")):
        assert_one_line_error(cli(command[0], "-w", untied, "--model", "tied.prototxt", *command[1:]),
                              "layers a and b hold different weights")
    # verify said the pair fit, and that Caffe loaded every weight.
    result = cli("verify", "-w", untied, "--model", "tied.prototxt")
    assert result.exit_code == 1 and "FAIL  prototxt fits weights" in result.output, result.output
    assert "layers a and b hold different weights" in result.output
    # Masks that differ on one shared blob, whatever made them, are refused too.
    solver_net = caffe.get_solver(str(solver))
    keep = np.ones((4, 4), dtype=bool)
    with pytest.raises(InputError, match="layers a and b share their weights there, but their masks differ"):
        MaskEnforcer({"a": keep, "b": ~keep}).attach(solver_net)
    MaskEnforcer({"a": keep, "b": keep.copy()}).attach(solver_net)  # the same masks are one


def test_a_layer_of_phase_test_only_is_loaded_tested_and_written(caffe, tmp_path, cli):
    """Its weights were not loaded: the TEST outputs printed were made with
    its filler's random values, and the model written lacked it, so that
    verify failed it and train-* refused it as input."""
    text = ONES + _ip("fc", "data") + _loss("loss", "fc") + _ip("aux", "data", phase="TEST") + _loss(
        "aux_loss", "aux", phase="TEST")
    net, weights = save_net(caffe, tmp_path, text)
    solver = _solver(tmp_path, f'net: "{net}"')
    aux = read_caffemodel(weights).layer("aux").blobs
    # EuclideanLoss of aux(ones) against 0: sum((W.1 + b)^2) / 2 per image.
    expected = float(np.sum((aux[0].data.sum(axis=1) + aux[1].data) ** 2) / 2)
    result = cli("train-dense", "--solver", solver, "-w", weights, "-n", 2, "--lr-scale", 1, "-o", "out.caffemodel")
    assert result.exit_code == 0, result.output
    printed = float(re.search(r"^test: aux_loss = ([0-9.]+)", result.output, re.M).group(1))
    assert printed == pytest.approx(expected, rel=1e-3)
    out = read_caffemodel(tmp_path / "out.caffemodel")
    for index in (0, 1):
        assert np.array_equal(out.layer("aux").blobs[index].data, aux[index].data)
    verified = cli("verify", "-w", "out.caffemodel", "--model", net)
    assert verified.exit_code == 0, verified.output
    # Pruned, it trains sparse, its zeros kept.
    assert cli("prune", "-w", "out.caffemodel", "-s", 0.5, "-o", "p.caffemodel").exit_code == 0
    result = cli("train-sparse", "--solver", solver, "-w", "p.caffemodel", "-n", 2, "-o", "s.caffemodel")
    assert result.exit_code == 0, result.output
    pruned, sparse = read_caffemodel(tmp_path / "p.caffemodel"), read_caffemodel(tmp_path / "s.caffemodel")
    assert np.array_equal(sparse.layer("aux").blobs[0].data, pruned.layer("aux").blobs[0].data)
    assert cli("verify", "-w", "s.caffemodel", "--model", net).exit_code == 0


def test_train_quantized_shares_the_weights_of_a_layer_of_phase_test_only(caffe, tmp_path, cli):
    """It refused such a layer, which it would have left unquantized: now its
    kept weights take their centroids once (it does not train), tested and
    written with them."""
    text = ONES + _ip("fc", "data") + _loss("loss", "fc") + _ip("aux", "data", phase="TEST") + _loss(
        "aux_loss", "aux", phase="TEST")
    net, weights = save_net(caffe, tmp_path, text)
    solver = _solver(tmp_path, f'net: "{net}"')
    assert cli("prune", "-w", weights, "-s", 0.5, "-o", "p.caffemodel").exit_code == 0
    result = cli("train-quantized", "--solver", solver, "-w", "p.caffemodel", "--bits", "conv=8,fc=1", "-n", 2,
                 "-o", "q.caffemodel")
    assert result.exit_code == 0, result.output
    pruned, quantized = read_caffemodel(tmp_path / "p.caffemodel"), read_caffemodel(tmp_path / "q.caffemodel")
    before, after = pruned.layer("aux").blobs[0].data, quantized.layer("aux").blobs[0].data
    kept = before != 0
    assert np.array_equal(after != 0, kept)  # 6 of 12 kept, none of them at 0.0
    values = np.unique(after[kept])
    assert len(values) == 2  # 1 bit
    # k-means: each shared value is the mean of the weights it stands for.
    for value in values:
        assert value == pytest.approx(before[kept][after[kept] == value].mean(), rel=1e-6)
    assert np.array_equal(quantized.layer("aux").blobs[1].data, pruned.layer("aux").blobs[1].data)
    # Tested with them: EuclideanLoss of aux(ones) against 0, as before.
    expected = float(np.sum((after.sum(axis=1) + quantized.layer("aux").blobs[1].data) ** 2) / 2)
    for label in ("test after quantization", "test"):
        printed = float(re.search(rf"^{label}: aux_loss = ([0-9.]+)", result.output, re.M).group(1))
        assert printed == pytest.approx(expected, rel=1e-3)
    checked = cli("verify", "-w", "q.caffemodel", "--model", net)
    assert checked.exit_code == 0 and "no layer with weights ignored" in checked.output, checked.output
    # Tied to a trained layer after it in the file, they train as one, under
    # the trained layer's name.
    text = (ONES + _ip("aux", "data", tied=True, phase="TEST") + _loss("aux_loss", "aux", phase="TEST")
            + _ip("fc", "data", tied=True) + _loss("loss", "fc"))
    net, weights = save_net(caffe, tmp_path, text, name="tied")
    solver = _solver(tmp_path, f'net: "{net}"')
    result = cli("train-quantized", "--solver", solver, "-w", weights, "--bits", "conv=8,fc=1", "-n", 2,
                 "-o", "t.caffemodel")
    assert result.exit_code == 0, result.output
    start, tied = read_caffemodel(weights), read_caffemodel(tmp_path / "t.caffemodel")
    assert len(np.unique(tied.layer("fc").blobs[0].data)) == 2
    assert not np.array_equal(tied.layer("fc").blobs[1].data, start.layer("fc").blobs[1].data)  # it trained
    for index in (0, 1):
        assert np.array_equal(tied.layer("aux").blobs[index].data, tied.layer("fc").blobs[index].data)
    checked = cli("verify", "-w", "t.caffemodel", "--model", net)
    assert checked.exit_code == 0, checked.output
    printed = re.search(r"^test: aux_loss = ([0-9.]+), loss = ([0-9.]+)", result.output, re.M)
    tested = re.search(r"caffe test forward: aux_loss = ([0-9.e+-]+), loss = ([0-9.e+-]+)", checked.output)
    assert float(printed.group(1)) == float(printed.group(2)) == pytest.approx(float(tested.group(1)), rel=1e-3)


def test_a_layer_only_a_test_net_file_has_takes_its_weights(caffe, tmp_path, cli):
    """`caffe train -weights` copies weights into the test nets too; caffedsd
    refused those of a layer only the solver's test_net file has, as weights
    Caffe would ignore."""
    train = ONES + _ip("fc", "data") + _loss("loss", "fc")
    test = train + _ip("aux", "data") + _loss("aux_loss", "aux")
    (tmp_path / "train.prototxt").write_text(train)
    test_net, weights = save_net(caffe, tmp_path, test, name="test")
    solver = _solver(tmp_path, f'train_net: "{tmp_path / "train.prototxt"}"\ntest_net: "{test_net}"')
    result = cli("train-dense", "--solver", solver, "-w", weights, "-n", 2, "-o", "out.caffemodel")
    assert result.exit_code == 0, result.output
    out, given = read_caffemodel(tmp_path / "out.caffemodel"), read_caffemodel(weights)
    assert np.array_equal(out.layer("aux").blobs[0].data, given.layer("aux").blobs[0].data)
    # Weights no net has are still refused.
    (tmp_path / "bare.prototxt").write_text(ONES + _ip("fc", "data") + _loss("loss", "fc"))
    solver.write_text(solver.read_text().replace(str(test_net), str(tmp_path / "bare.prototxt")))
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", weights, "-n", 2, "-o", "o2.caffemodel"),
                          "(Caffe would ignore them): aux")


def test_a_test_only_layer_of_the_train_val_net_after_a_test_net_file(caffe, tmp_path, cli):
    """Caffe builds the test_net files' test nets first, then the train/val
    net's for the test_iter left: its layers of phase TEST only are loaded
    and written from that net, the second."""
    train = ONES + _ip("fc", "data") + _loss("loss", "fc")
    aux = _ip("aux", "data", phase="TEST") + _loss("aux_loss", "aux", phase="TEST")
    (tmp_path / "test.prototxt").write_text(train)
    trainval, weights = save_net(caffe, tmp_path, (train + aux).replace(" include { phase: TEST }", ""))
    (tmp_path / "trainval.prototxt").write_text(train + aux)
    solver = _solver(tmp_path, f'net: "{tmp_path / "trainval.prototxt"}"\ntest_net: "{tmp_path / "test.prototxt"}"'
                     '\ntest_iter: 1')
    result = cli("train-dense", "--solver", solver, "-w", weights, "-n", 2, "-o", "out.caffemodel")
    assert result.exit_code == 0, result.output
    assert "#1/aux_loss" in result.output
    out, given = read_caffemodel(tmp_path / "out.caffemodel"), read_caffemodel(weights)
    for index in (0, 1):
        assert np.array_equal(out.layer("aux").blobs[index].data, given.layer("aux").blobs[index].data)
    assert [layer.name for layer in out.layers if layer.blobs] == ["fc", "aux"]
    verified = cli("verify", "-w", "out.caffemodel", "--model", "trainval.prototxt")
    assert verified.exit_code == 0 and "no layer with weights ignored" in verified.output, verified.output


def test_a_test_only_layer_tied_to_a_trained_one_is_written_with_the_trained_weights(caffe, tmp_path, cli):
    """Its own blob in the test net is the loaded one, never shared with the
    train net: written after the trained layer, it put the starting weights
    back into the one tied blob when `caffe test` loaded the file."""
    text = (ONES + _ip("fc", "data", tied=True) + _loss("loss", "fc")
            + _ip("aux", "data", tied=True, phase="TEST") + _loss("aux_loss", "aux", phase="TEST"))
    net, weights = save_net(caffe, tmp_path, text)
    solver = _solver(tmp_path, f'net: "{net}"')
    result = cli("train-dense", "--solver", solver, "-w", weights, "-n", 3, "--lr-scale", 1, "-o", "out.caffemodel")
    assert result.exit_code == 0, result.output
    start, out = read_caffemodel(weights), read_caffemodel(tmp_path / "out.caffemodel")
    assert not np.array_equal(out.layer("fc").blobs[0].data, start.layer("fc").blobs[0].data)  # it trained
    for index in (0, 1):
        assert np.array_equal(out.layer("aux").blobs[index].data, out.layer("fc").blobs[index].data)
    # caffe test on the file gives the trained net's loss, which both layers now compute; so did
    # the TEST pass printed (it measured aux with the weights loaded, as Caffe's own passes do).
    printed = re.search(r"^test: aux_loss = ([0-9.]+), loss = ([0-9.]+)", result.output, re.M)
    trained = float(printed.group(2))
    assert float(printed.group(1)) == pytest.approx(trained, rel=1e-5)
    checked = cli("verify", "-w", "out.caffemodel", "--model", net)
    assert checked.exit_code == 0, checked.output
    tested = re.search(r"caffe test forward: aux_loss = ([0-9.e+-]+), loss = ([0-9.e+-]+)", checked.output)
    assert float(tested.group(1)) == float(tested.group(2)) == pytest.approx(trained, rel=1e-3)
    # A file whose tied layers differ is refused, the test net's as the train net's.
    write_caffemodel(start, tmp_path / "untied.caffemodel", replace={("aux", 0): start.layer("aux").blobs[0].data + 1})
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", "untied.caffemodel", "-n", 1,
                              "-o", "again.caffemodel"), "layers fc and aux hold different weights")


def test_weights_are_checked_against_the_layers_the_solvers_states_build(caffe, tmp_path, cli):
    """A layer of a stage no state of the solver builds: its weights were
    taken as the net's and silently left out of the output (Caffe ignores
    them), while weights without it were refused as leaving it random; a
    dsd prune stage pruned it, and the sparse stage then refused its own
    masks."""
    aux = ('layer { name: "aux" type: "InnerProduct" bottom: "data" top: "aux" include { phase: TRAIN stage: "aux" }\n'
           '  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }\n'
           'layer { name: "aux_loss" type: "EuclideanLoss" bottom: "aux" bottom: "target" top: "aux_loss" '
           'include { phase: TRAIN stage: "aux" } }\n')
    base = ONES + _ip("fc", "data") + _loss("loss", "fc")
    _, full = save_net(caffe, tmp_path, base + aux.replace(' include { phase: TRAIN stage: "aux" }', ""),
                       name="full")  # fc and aux
    _, bare = save_net(caffe, tmp_path, base, name="bare")  # fc alone
    (tmp_path / "net.prototxt").write_text(base + aux)
    plain = _solver(tmp_path, f'net: "{tmp_path / "net.prototxt"}"')
    staged = tmp_path / "staged.prototxt"
    staged.write_text(plain.read_text() + 'train_state { stage: "aux" }\n')
    assert_one_line_error(cli("train-dense", "--solver", plain, "-w", full, "-n", 1, "-o", "a.caffemodel"),
                          f"weights of layers {tmp_path / 'net.prototxt'} does not build in the solver's states, "
                          "nor its test nets (Caffe would ignore them): aux")
    result = cli("train-dense", "--solver", plain, "-w", bare, "-n", 1, "-o", "b.caffemodel")
    assert result.exit_code == 0, result.output
    result = cli("train-dense", "--solver", staged, "-w", full, "-n", 1, "-o", "c.caffemodel")
    assert result.exit_code == 0, result.output
    assert [layer.name for layer in read_caffemodel(tmp_path / "c.caffemodel").layers if layer.blobs] == ["fc", "aux"]
    assert_one_line_error(cli("train-dense", "--solver", staged, "-w", bare, "-n", 1, "-o", "d.caffemodel"),
                          "(Caffe would leave them at their initial values): aux")
    # caffe test builds the TEST net: aux needs no weights there; and neither
    # caffe train nor caffe test builds it from the file by itself.
    checked = cli("verify", "-w", bare, "--model", "net.prototxt")
    assert checked.exit_code == 0 and "ok    prototxt fits weights" in checked.output, checked.output
    result = cli("prune", "-w", "b.caffemodel", "-s", 0.5, "--model", "net.prototxt", "-o", "p.caffemodel")
    assert result.exit_code == 0, result.output
    (tmp_path / "recipe.yaml").write_text(f"solver: {plain}\nweights: {full}\nstages:\n"
                                          "  - prune: {sparsity: 0.5}\n  - sparse: {iterations: 1}\n")
    assert_one_line_error(cli("dsd", "--recipe", "recipe.yaml", "-o", "run"), "(Caffe would ignore them): aux")
    assert not (tmp_path / "run").exists()


def test_test_outputs_that_would_be_recorded_under_one_name_are_refused(caffe, tmp_path, cli):
    """Net #0's top "#1/loss" was replaced by net #1's loss in what was
    printed and recorded, and a top "iter" made tests.csv's first column
    twice."""
    text = ONES + _ip("fc", "data") + _loss("loss", "fc")
    net, weights = save_net(caffe, tmp_path, text)
    (tmp_path / "other.prototxt").write_text(text.replace('top: "loss"', 'top: "#1/loss"'))
    solver = _solver(tmp_path, f'train_net: "{net}"\ntest_net: "{tmp_path / "other.prototxt"}"\ntest_net: "{net}"\n'
                               'test_iter: 1')
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", weights, "-n", 1, "-o", "o.caffemodel"),
                          f"{net}: test net #1's output 'loss' would be recorded as '#1/loss', the name of an output "
                          "of test net #0; rename the top")
    (tmp_path / "other.prototxt").write_text(text.replace('top: "loss"', 'top: "iter"'))
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", weights, "-n", 1, "-o", "o.caffemodel"),
                          "test net #0's output 'iter' would be recorded as 'iter', the name of tests.csv's")
    assert not (tmp_path / "o.caffemodel").exists()
    # A test net given no batches records nothing: no clash.
    (tmp_path / "other.prototxt").write_text(text.replace('top: "loss"', 'top: "#1/loss"'))
    solver.write_text(solver.read_text().replace("test_iter: 1\ntest_iter: 1", "test_iter: 1\ntest_iter: 0"))
    assert "test_iter: 0" in solver.read_text()
    result = cli("train-dense", "--solver", solver, "-w", weights, "-n", 1, "-o", "o.caffemodel")
    assert result.exit_code == 0, result.output


def test_a_prune_rule_splitting_a_tied_group_is_refused_before_training(caffe, tmp_path, cli):
    """A rule keeping a layer of phase TEST only whole, whose weights a
    param name ties to a trained one, passed the check before training: the
    dense stage trained, then the prune stage refused it."""
    text = (ONES + _ip("fc", "data", tied=True) + _loss("loss", "fc")
            + _ip("aux", "data", tied=True, phase="TEST") + _loss("aux_loss", "aux", phase="TEST"))
    net, _ = save_net(caffe, tmp_path, text)
    solver = _solver(tmp_path, f'net: "{net}"')
    (tmp_path / "recipe.yaml").write_text(f"solver: {solver}\nstages:\n  - dense: {{iterations: 2}}\n"
                                          "  - prune: {sparsity: 0.5, layers: {aux: 0}}\n  - sparse: {iterations: 1}\n")
    assert_one_line_error(cli("dsd", "--recipe", "recipe.yaml", "-o", "run"),
                          f"recipe.yaml: stage 2 (prune), net {net}: layers fc, aux share param 'w' but the plan "
                          "gives them different amounts [0.0, 0.5]")
    assert not (tmp_path / "run").exists()


def test_a_test_net_files_param_name_ties_nothing_in_the_train_net(caffe, tmp_path, cli):
    """Caffe ties param names within one net: a test_net file's layer named
    'w' was taken as tied to the train net's 'w', tested and written with
    its weights (its own lost), or a traceback where the shapes differed."""
    train = ONES + _ip("fc", "data", tied=True) + _loss("loss", "fc")
    test = ONES + _ip("ipt", "data", tied=True) + _loss("tloss", "ipt")
    (tmp_path / "train.prototxt").write_text(train)
    _, weights = save_net(caffe, tmp_path, train + _ip("ipt", "data"), name="both")  # fc and ipt, untied
    (tmp_path / "test.prototxt").write_text(test)
    solver = _solver(tmp_path, f'train_net: "{tmp_path / "train.prototxt"}"\ntest_net: "{tmp_path / "test.prototxt"}"')
    solver.write_text(solver.read_text().replace("base_lr: 0.01", "base_lr: 0"))
    given = read_caffemodel(weights)
    result = cli("train-dense", "--solver", solver, "-w", weights, "-n", 1, "-o", "o.caffemodel")
    assert result.exit_code == 0, result.output
    out = read_caffemodel(tmp_path / "o.caffemodel")
    assert np.array_equal(out.layer("ipt").blobs[0].data, given.layer("ipt").blobs[0].data)
    ipt = given.layer("ipt").blobs
    expected = float(np.sum((ipt[0].data.sum(axis=1) + ipt[1].data) ** 2) / 2)  # EuclideanLoss of ipt(ones) vs 0
    printed = float(re.search(r"^test: tloss = ([0-9.]+)", result.output, re.M).group(1))
    assert printed == pytest.approx(expected, rel=1e-3)


def test_what_caffe_loads_is_what_the_weights_are_checked_against(caffe, tmp_path, cli):
    """A TEST-only layer whose blobs a param name ties to a layer with
    weights was said to be left random (Caffe fills it through the tie); a
    TRAIN and a TEST layer of one name were checked by the first alone
    (caffe test aborted on the second's shape); include with exclude
    (Caffe aborts) was taken; prune --model took weights of a layer that
    neither caffe train nor caffe test builds."""
    tied = (ONES + _ip("fc", "data", tied=True) + _loss("loss", "fc")
            + _ip("aux", "data", tied=True, phase="TEST") + _loss("aux_loss", "aux", phase="TEST"))
    _, train_only = save_net(caffe, tmp_path, ONES + _ip("fc", "data", tied=True) + _loss("loss", "fc"), name="t")
    (tmp_path / "tied.prototxt").write_text(tied)
    result = cli("prune", "-w", train_only, "-s", 0.5, "--model", "tied.prototxt", "-o", "p.caffemodel")
    assert result.exit_code == 0, result.output
    assert cli("verify", "-w", "p.caffemodel", "--model", "tied.prototxt").exit_code == 0
    two = (ONES + _ip("fc", "data", phase="TRAIN") + _ip("fc", "data", phase="TEST").replace("num_output: 3",
                                                                                             "num_output: 2")
           + _loss("loss", "fc"))
    (tmp_path / "two.prototxt").write_text(two)
    assert_one_line_error(cli("prune", "-w", train_only, "-s", 0.5, "--model", "two.prototxt", "-o", "q.caffemodel"),
                          "blob shapes differ: fc")
    (tmp_path / "both.prototxt").write_text(tied.replace('include { phase: TEST }',
                                                         'include { phase: TEST } exclude { stage: "x" }', 1))
    assert_one_line_error(cli("prune", "-w", train_only, "-s", 0.5, "--model", "both.prototxt", "-o", "r.caffemodel"),
                          "layer(s) 'aux' give both include and exclude rules")
    staged = tied.replace('include { phase: TEST }', 'include { stage: "x" }')
    (tmp_path / "staged.prototxt").write_text(staged)
    _, full = save_net(caffe, tmp_path, ONES + _ip("fc", "data") + _loss("loss", "fc") + _ip("aux", "data"), name="f")
    assert_one_line_error(cli("prune", "-w", full, "-s", 0.5, "--model", "staged.prototxt", "-o", "s.caffemodel"),
                          "staged.prototxt does not build in the states `caffe train` and `caffe test` build it in "
                          "(Caffe would ignore them): aux")


@pytest.mark.caffe
def test_weights_tied_in_two_shapes_train_and_refuse_pruning_before_training(tmp_path, cli):
    """share_mode PERMISSIVE ties weights of equal counts in two shapes.
    dsd trained the first stage, then refused counting its sparsity, and
    abandoned the folder: a dense stage now runs, and a recipe that prunes
    them is refused before anything trains."""
    def ip(name, bottom, outputs, tied):
        param = ' param { name: "w" share_mode: PERMISSIVE }' if tied else ""
        return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}"{param}\n'
                f'  inner_product_param {{ num_output: {outputs} weight_filler {{ type: "gaussian" std: 0.3 }} }} }}\n')

    net = tmp_path / "net.prototxt"
    net.write_text(ONES + ip("fc1", "data", 3, True) + ip("fc2", "fc1", 4, True) + ip("fc3", "fc2", 3, False)
                   + _loss("loss", "fc3"))
    solver = _solver(tmp_path, f'net: "{net}"')
    # The second stage takes the first's model: one blob's values in two shapes.
    (tmp_path / "dense.yaml").write_text(f"solver: {solver}\nstages:\n  - dense: {{iterations: 2}}\n"
                                         "  - dense: {iterations: 1}\n")
    result = cli("dsd", "--recipe", "dense.yaml", "-o", "dense")
    assert result.exit_code == 0, result.output
    stage = json.loads((tmp_path / "dense" / "02-dense" / "stage.json").read_text())
    assert stage["sparsity"] == 0.0
    model = read_caffemodel(tmp_path / "dense" / "02-dense" / "model.caffemodel")
    assert np.array_equal(model.layer("fc1").blobs[0].data.reshape(-1), model.layer("fc2").blobs[0].data.reshape(-1))
    (tmp_path / "dsd.yaml").write_text(f"solver: {solver}\nstages:\n  - dense: {{iterations: 2}}\n"
                                       "  - prune: {sparsity: 0.5}\n  - sparse: {iterations: 1}\n")
    assert_one_line_error(cli("dsd", "--recipe", "dsd.yaml", "-o", "run"),
                          f"dsd.yaml: stage 2 (prune), net {net}: layers 'fc1' and 'fc2' share param 'w' but their "
                          "weights have shapes [3, 4] and [4, 3] (share_mode PERMISSIVE: caffedsd prunes shared "
                          "weights of one shape only)")
    assert not (tmp_path / "run").exists()


def test_a_test_net_files_param_name_ties_nothing_in_the_written_model(caffe, tmp_path, cli):
    """A test_net file's layer of phase TEST only was written with its
    param name 'w', which the train net's 'fc' also carries: prune then
    took the two as one blob, and refused the model when their shapes
    differed; dsd refused its recipe. It is written as 'w@test0'."""
    train = ONES + _ip("fc", "data", tied=True) + _loss("loss", "fc")
    test = (ONES.replace("dim: 2 dim: 4", "dim: 2 dim: 5") + _ip("ipt", "data", tied=True)
            + _loss("tloss", "ipt"))
    (tmp_path / "train.prototxt").write_text(train)
    five = 'layer { name: "d5" type: "DummyData" top: "d5" dummy_data_param { shape { dim: 2 dim: 5 } } }\n'
    _, weights = save_net(caffe, tmp_path, train + five + _ip("ipt", "d5"), name="both")  # fc and ipt, untied
    (tmp_path / "test.prototxt").write_text(test)
    solver = _solver(tmp_path, f'train_net: "{tmp_path / "train.prototxt"}"\ntest_net: "{tmp_path / "test.prototxt"}"')
    result = cli("train-dense", "--solver", solver, "-w", weights, "-n", 1, "-o", "o.caffemodel")
    assert result.exit_code == 0, result.output
    out = read_caffemodel(tmp_path / "o.caffemodel")
    assert [(layer.name, layer.param_names) for layer in out.layers if layer.blobs] == \
        [("fc", ("w", "b")), ("ipt", ("w@test0", "b@test0"))]
    result = cli("prune", "-w", "o.caffemodel", "-s", 0.5, "-o", "p.caffemodel")
    assert result.exit_code == 0, result.output
    (tmp_path / "recipe.yaml").write_text(f"solver: {solver}\nweights: o.caffemodel\nstages:\n"
                                          "  - prune: {sparsity: 0.5, layers: {ipt: 0}}\n"
                                          "  - sparse: {iterations: 1}\n")
    result = cli("dsd", "--recipe", "recipe.yaml", "-o", "run")
    assert result.exit_code == 0, result.output
    model = read_caffemodel(tmp_path / "run" / "01-prune" / "model.caffemodel")
    assert np.count_nonzero(model.layer("ipt").blobs[0].data) == 15
    assert np.count_nonzero(model.layer("fc").blobs[0].data) == 6


@pytest.mark.caffe
def test_a_test_only_layer_tied_in_another_shape_takes_the_trained_values(tmp_path, cli):
    """A layer of phase TEST only tied (share_mode PERMISSIVE) to a trained
    layer of another shape: the trained values were copied in by shape, a
    traceback at the first TEST pass."""
    net = tmp_path / "net.prototxt"
    net.write_text(
        ONES + 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" param { name: "w" share_mode: '
        'PERMISSIVE }\n  inner_product_param { num_output: 3 bias_term: false weight_filler { type: "gaussian" '
        'std: 0.3 } } }\n' + _loss("loss", "fc")
        + 'layer { name: "d3" type: "DummyData" top: "d3" include { phase: TEST } dummy_data_param {\n'
        '  shape { dim: 2 dim: 3 } data_filler { type: "constant" value: 1 } } }\n'
        'layer { name: "t" type: "InnerProduct" bottom: "d3" top: "t" param { name: "w" share_mode: PERMISSIVE }\n'
        '  include { phase: TEST } inner_product_param { num_output: 4 bias_term: false '
        'weight_filler { type: "gaussian" std: 0.3 } } }\n'
        'layer { name: "tsum" type: "Reduction" bottom: "t" top: "tsum" include { phase: TEST } }\n')
    solver = _solver(tmp_path, f'net: "{net}"')
    (tmp_path / "r.yaml").write_text(f"solver: {solver}\ntest_interval: 1\nstages:\n  - dense: {{iterations: 2}}\n")
    result = cli("dsd", "--recipe", "r.yaml", "-o", "run")
    assert result.exit_code == 0, result.output
    model = read_caffemodel(tmp_path / "run" / "01-dense" / "model.caffemodel")
    trained = model.layer("fc").blobs[0].data
    assert np.array_equal(model.layer("t").blobs[0].data, trained.reshape(4, 3))
    tests = (tmp_path / "run" / "01-dense" / "tests.csv").read_text().splitlines()
    assert float(tests[-1].split(",")[-1]) == pytest.approx(float(trained.sum()) * 2, rel=1e-5)


# One file, two test nets in stages s1 and s2: the trained fc is built in
# s2 alone, where t is tied to it; in s1, t is a layer of its own.
STAGED = (ONES + 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" param { name: "w" } '
          'param { name: "b" }\n  exclude { stage: "s1" }\n'
          '  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }\n'
          'layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "target" top: "loss" exclude { stage: "s1" } }\n'
          'layer { name: "t" type: "InnerProduct" bottom: "data" top: "t" param { name: "w" } param { name: "b" }\n'
          '  include { phase: TEST }\n'
          '  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }\n'
          'layer { name: "losst" type: "EuclideanLoss" bottom: "t" bottom: "target" top: "losst" '
          'include { phase: TEST } }\n')


def test_a_test_only_layer_is_written_from_the_test_net_that_ties_it(caffe, tmp_path, cli):
    """A layer of phase TEST only in two test nets, tied to the trained fc
    in the second only, was written from the first: untrained, and as
    'w@test0', so the next stage refused the model, and `caffe test -stage
    s2` copied the stale values into fc's blob after the trained ones."""
    net = tmp_path / "tv.prototxt"
    net.write_text(STAGED)
    solver = _solver(tmp_path, f'net: "{net}"\ntest_iter: 1\ntest_state {{ stage: "s1" }}\n'
                               'test_state { stage: "s2" }')
    (tmp_path / "r.yaml").write_text(f"solver: {solver}\nstages:\n  - dense: {{iterations: 2}}\n"
                                     "  - dense: {iterations: 1}\n")
    result = cli("dsd", "--recipe", "r.yaml", "-o", "run")
    assert result.exit_code == 0, result.output
    weights = tmp_path / "run" / "02-dense" / "model.caffemodel"
    model = read_caffemodel(weights)
    assert model.layer("t").param_names == ("w", "b")
    for index in range(2):
        assert np.array_equal(model.layer("t").blobs[index].data, model.layer("fc").blobs[index].data)
    # What `caffe test -stage s2` builds holds the trained weights.
    built = caffe.Net(str(net), caffe.TEST, stages=["s2"], weights=str(weights))
    assert np.array_equal(built.params["fc"][0].data, model.layer("fc").blobs[0].data)


def test_what_ties_fill_is_read_per_state(caffe, tmp_path, cli):
    """Weights a param name ties were taken as filled across states: t2,
    built in stage s2 only, with fc (which fills 'w') excluded there, was
    accepted without weights (Caffe leaves it random); sensitivity refused
    fc and t2 as tied, which Caffe never builds in one net."""
    five = ('layer { name: "d5" type: "DummyData" top: "d5" include { phase: TEST stage: "s2" } '
            'dummy_data_param {\n  shape { dim: 2 dim: 5 } data_filler { type: "constant" value: 1 } } }\n')
    fc = ('layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" param { name: "w" } param { name: "b" }\n'
          '  exclude { stage: "s2" }\n'
          '  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }\n'
          'layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "target" top: "loss" exclude { stage: "s2" } }\n')
    t2 = ('layer { name: "t2" type: "InnerProduct" bottom: "d5" top: "t2" param { name: "w" } param { name: "b" }\n'
          '  include { phase: TEST stage: "s2" }\n'
          '  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }\n')
    net = tmp_path / "tv.prototxt"
    net.write_text(ONES + five + fc + t2)
    _, fc_only = save_net(caffe, tmp_path, ONES + fc, name="fconly")
    solver = _solver(tmp_path, f'net: "{net}"\ntest_iter: 1\ntest_state {{ stage: "s1" }}\n'
                               'test_state { stage: "s2" }')
    assert_one_line_error(cli("train-dense", "--solver", solver, "-w", fc_only, "-n", 1, "-o", "o.caffemodel"),
                          "layers with no weights in fconly.caffemodel (Caffe would leave them at their initial values): t2")
    # Both, of two shapes: no net ties them.
    _, both = save_net(caffe, tmp_path, ONES + fc + five.replace(' stage: "s2"', "")
                       + t2.replace(' stage: "s2"', "").replace(' param { name: "w" } param { name: "b" }', ""),
                       name="both")
    result = cli("sensitivity", "-p", net, "-w", both, "-n", 1, "--sparsities", "0.5", "-o", "sens")
    assert result.exit_code == 0, result.output
