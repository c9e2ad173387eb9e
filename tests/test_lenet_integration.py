"""End to end on real data: train LeNet on a slice of Fashion-MNIST with the
stock caffe binary, prune it with caffedsd, and have stock `caffe test` load
and score the result."""
from pathlib import Path

import pytest

from caffedsd.caffe_env import caffe_binary
from caffedsd.datasets import convert_fashion_mnist
from caffedsd.maskfile import load_masks
from caffedsd.verify import parse_test_outputs, run_caffe_test

ROOT = Path(__file__).resolve().parent.parent
TRAIN_ITERS = 300


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    import subprocess

    work = tmp_path_factory.mktemp("lenet")
    data = convert_fashion_mnist(work / "data", train_limit=4000, test_limit=500)
    net = (ROOT / "prototxt" / "lenet_train_test.prototxt").read_text()
    net = net.replace("data/fashion-mnist/train.txt", data["train"]["list"])
    net = net.replace("data/fashion-mnist/test.txt", data["test"]["list"])
    (work / "lenet.prototxt").write_text(net)
    solver = (ROOT / "solvers" / "lenet_solver.prototxt").read_text()
    solver = solver.replace('"prototxt/lenet_train_test.prototxt"', f'"{work / "lenet.prototxt"}"')
    solver = solver.replace('"work/lenet"', f'"{work / "lenet"}"')
    solver = solver.replace("max_iter: 500", f"max_iter: {TRAIN_ITERS}").replace("test_interval: 500",
                                                                                 "test_interval: 100000")
    (work / "solver.prototxt").write_text(solver)
    proc = subprocess.run([str(caffe_binary()), "train", f"--solver={work / 'solver.prototxt'}"],
                          capture_output=True, text=True, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = work / f"lenet_iter_{TRAIN_ITERS}.caffemodel"
    assert weights.is_file()
    return work, work / "lenet.prototxt", weights


def _accuracy(proto, weights):
    code, log = run_caffe_test(proto, weights, iterations=5)
    assert code == 0, log[-3000:]
    assert "Ignoring source layer conv" not in log and "Ignoring source layer ip" not in log
    return parse_test_outputs(log)


def test_pruned_lenet_loads_and_scores_in_stock_caffe(lenet, cli):
    work, proto, weights = lenet
    dense = _accuracy(proto, weights)
    assert dense["accuracy"] > 0.65, dense  # a few hundred iterations: about 0.75

    out = work / "pruned.caffemodel"
    result = cli("prune", "-w", weights, "-p", proto, "-s", 0.5, "-r", "ip1=0.9", "-o", out)
    assert result.exit_code == 0, result.output
    masks = load_masks(work / "pruned.masks.h5")
    assert int((~masks.masks["ip1"]).sum()) == round(0.9 * 500 * 800)

    pruned = _accuracy(proto, out)
    assert pruned["accuracy"] > 0.5, pruned
    assert abs(pruned["accuracy"] - dense["accuracy"]) < 0.2

    result = cli("verify", "-w", out, "-p", proto)
    assert result.exit_code == 0, result.output
