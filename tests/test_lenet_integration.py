"""End to end on real data: train LeNet on a slice of Fashion-MNIST with the
stock caffe binary, prune it with caffedsd, and have stock `caffe test` load
and score the result."""
from caffedsd.maskfile import load_masks
from caffedsd.verify import parse_test_outputs, run_caffe_test


def _accuracy(proto, weights):
    code, log = run_caffe_test(proto, weights, iterations=5)
    assert code == 0, log[-3000:]
    assert "Ignoring source layer conv" not in log and "Ignoring source layer ip" not in log
    return parse_test_outputs(log)


def test_pruned_lenet_loads_and_scores_in_stock_caffe(lenet, cli):
    work, proto, weights = lenet
    work = work / "integration"
    work.mkdir()
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
