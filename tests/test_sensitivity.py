"""`caffedsd sensitivity` and `caffedsd plan` on a briefly trained LeNet, real Caffe."""
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from caffedsd.errors import InputError
from caffedsd.plan_from_scan import curves, overall_sparsity
from caffedsd.sensitivity import Evaluator, examples_sha256, scan
from caffedsd.verify import parse_test_outputs, run_caffe_test
from caffedsd.plan import load_plan
from conftest import assert_one_line_error

SPARSITIES = (0.3, 0.6, 0.9)
# The `caffedsd` program, also where a checkout runs from PYTHONPATH without
# its console script (tools/gpu_stage.sh).
PROGRAM = [sys.executable, "-m", "caffedsd"]
ITERS = 5  # 5 x 100 = the 500 test images of the slice


def _table(folder):
    return (folder / "sensitivity.csv").read_text()


@pytest.fixture(scope="module")
def scanned(lenet, tmp_path_factory):
    work, proto, weights = lenet
    out = tmp_path_factory.mktemp("sens") / "scan"
    before = hashlib.sha256(weights.read_bytes()).hexdigest()
    data = scan(proto, weights, out, sparsities=SPARSITIES, iterations=ITERS)
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == before  # the weights file is untouched
    return out, data


def test_baseline_matches_caffe_test(lenet, scanned):
    _, proto, weights = lenet
    _, data = scanned
    code, log = run_caffe_test(proto, weights, iterations=ITERS)
    assert code == 0
    expected = parse_test_outputs(log)
    assert data["data"] == "cached"
    for metric in ("accuracy", "loss"):
        assert data["baseline"][metric] == pytest.approx(expected[metric], abs=1e-5)


def test_outputs_and_shape_of_the_curves(scanned):
    out, data = scanned
    assert [layer["layer"] for layer in data["layers"]] == ["conv1", "conv2", "ip1", "ip2"]
    assert all([p["sparsity"] for p in layer["points"]] == list(SPARSITIES) for layer in data["layers"])
    ip1 = data["layers"][2]
    assert [p["pruned"] for p in ip1["points"]] == [120000, 240000, 360000]
    conv1 = data["layers"][0]  # 500 weights: 90% pruned hurts more than 30%
    assert conv1["points"][2]["metrics"]["accuracy"] < conv1["points"][0]["metrics"]["accuracy"]
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert "| conv1 | 500 |" in (out / "sensitivity.md").read_text()
    assert _table(out).splitlines()[0] == "layer,sparsity,accuracy,loss"
    assert len(_table(out).splitlines()) == 1 + 1 + 4 * 3


def test_restored_weights_give_the_baseline_again(lenet, scanned, tmp_path):
    """Each point starts from the original weights: a second scan of one
    layer, after all the others ran in the same Net, measures the same."""
    _, proto, weights = lenet
    out, data = scanned
    timings = {}
    started = time.perf_counter()
    again = scan(proto, weights, tmp_path / "again", layers=("ip2",), sparsities=SPARSITIES, iterations=ITERS,
                 timings=timings)
    wall = time.perf_counter() - started
    assert again["baseline"] == data["baseline"]
    assert again["layers"][0]["points"] == data["layers"][3]["points"]
    # What tools/bench_sensitivity.py reports: the phases, within the call's time.
    assert set(timings) == {"checks", "evaluator", "measure", "append", "outputs"}  # cached: no digest pass
    assert timings["append"] <= timings["measure"]
    assert timings["measure"] >= again["eval_seconds"] - 0.001
    assert sum(timings[name] for name in ("checks", "evaluator", "measure", "outputs")) <= wall


@pytest.mark.slow
def test_interrupted_scan_resumes_to_the_same_table(lenet, scanned, tmp_path):
    _, proto, weights = lenet
    out, _ = scanned

    seen = []

    def counting(stop_at=None):
        class Count:  # the progress protocol: made with (label, total, done), called per point, closed
            def __init__(self, label, total, done):
                self.done = done

            def __call__(self, point, total):
                self.done += 1
                seen.append(self.done)
                if self.done == stop_at:
                    raise KeyboardInterrupt

            def close(self):
                pass
        return Count

    with pytest.raises(KeyboardInterrupt):
        scan(proto, weights, tmp_path / "resumed", sparsities=SPARSITIES, iterations=ITERS, progress=counting(5))
    assert len((tmp_path / "resumed" / "points.jsonl").read_text().splitlines()) == 5
    with open(tmp_path / "resumed" / "points.jsonl", "a") as handle:  # lines edited since: skipped
        handle.write('[1]\n{"layer": 5, "sparsity": 0.3, "metrics": {}}\n{"layer": "ip2", "sparsity": 0.3}\n')
    seen.clear()
    scan(proto, weights, tmp_path / "resumed", sparsities=SPARSITIES, iterations=ITERS, progress=counting())
    assert seen[0] == 6 and seen[-1] == 13  # the 5 finished points were not run again
    assert _table(tmp_path / "resumed") == _table(out)


def test_edited_points_are_not_taken(lenet, scanned, tmp_path):
    """A journal line of other values than a scan writes is skipped: the
    point's earlier record stands. Taken, the last was a traceback (a list
    for a sparsity, a point without its pruned count) or a table of
    numbers never measured (a point without an output, a broken baseline)."""
    import shutil

    _, proto, weights = lenet
    out, _ = scanned
    shutil.copytree(out, tmp_path / "scan")
    with open(tmp_path / "scan" / "points.jsonl", "a") as handle:
        handle.write('{"layer": "ip2", "sparsity": [0.3], "pruned": 1, "metrics": {}}\n'
                     '{"layer": "ip1", "sparsity": 0.6, "metrics": {"accuracy": 0.5, "loss": 1.0}}\n'
                     '{"layer": "conv1", "sparsity": 0.9, "pruned": 450, "metrics": {"accuracy": 0.99}}\n'
                     '{"layer": null, "sparsity": 0.0, "pruned": 0, "metrics": {"accuracy": null, "loss": 1.0}}\n'
                     '{"layer": "conv2", "sparsity": 1.5, "pruned": 0, "metrics": {"accuracy": 0.9, "loss": 1.0}}\n'
                     '{"layer": "conv2", "sparsity": 0.3, "pruned": 0, "metrics": {"accuracy": 1%s, "loss": 1.0}}\n'
                     % ("0" * 400))
    before = _points_file(tmp_path / "scan")
    scan(proto, weights, tmp_path / "scan", sparsities=SPARSITIES, iterations=ITERS)
    assert _points_file(tmp_path / "scan") == before  # nothing measured again
    assert _table(tmp_path / "scan") == _table(out)
    # Earlier versions wrote a broken output as NaN or Infinity: taken, not measured again.
    with open(tmp_path / "scan" / "points.jsonl", "a") as handle:
        handle.write('{"layer": "ip2", "sparsity": 0.9, "pruned": 4500, "metrics": {"accuracy": NaN, "loss": Infinity}}\n')
    before = _points_file(tmp_path / "scan")
    scan(proto, weights, tmp_path / "scan", sparsities=SPARSITIES, iterations=ITERS)
    assert _points_file(tmp_path / "scan") == before
    assert "ip2,0.9,," in _table(tmp_path / "scan")


def test_a_workers_own_fault_is_not_called_bad_input(lenet):
    """A worker's exception that is not a CaffeDsdError is a fault of
    caffedsd's: it was reported as bad input (exit status 2), without the
    traceback that shows where. Here the worker is given no config."""
    from caffedsd.errors import InputError
    from caffedsd.sensitivity import _run_workers

    _, proto, weights = lenet
    with pytest.raises(RuntimeError, match="(?s)a sensitivity worker failed:\nTraceback.*AttributeError") as info:
        _run_workers(None, proto, weights, [("ip2", 0.5)], 1, None, 0, lambda point: None)
    assert not isinstance(info.value, InputError)


@pytest.mark.slow
def test_two_jobs_give_the_same_table(lenet, scanned, tmp_path):
    import threading

    _, proto, weights = lenet
    out, _ = scanned
    found = {}  # from a thread, as a program calling the library may (signal handlers work in the main one only)
    thread = threading.Thread(target=lambda: found.update(data=scan(proto, weights, tmp_path / "jobs2",
                                                                    sparsities=SPARSITIES, iterations=ITERS, jobs=2)))
    thread.start()
    thread.join()
    data = found["data"]
    # The Markdown table is the same; float sums may differ in the last bits,
    # since each worker runs BLAS on fewer threads.
    assert (tmp_path / "jobs2" / "sensitivity.md").read_text() == (out / "sensitivity.md").read_text()
    reference = json.loads((out / "sensitivity.json").read_text())
    for ours, theirs in zip(data["layers"], reference["layers"]):
        for p, q in zip(ours["points"], theirs["points"]):
            assert p["metrics"]["accuracy"] == q["metrics"]["accuracy"]
            assert p["metrics"]["loss"] == pytest.approx(q["metrics"]["loss"], rel=1e-6)
    # More jobs than layers: a worker per layer (-j 2**31 made 2**31 lists, 12 GB and growing).
    data = scan(proto, weights, tmp_path / "many", layers=("conv1",), sparsities=SPARSITIES[:1], iterations=ITERS,
                jobs=2 ** 31)
    assert data["layers"][0]["points"][0]["metrics"]["accuracy"] == reference["layers"][0]["points"][0]["metrics"][
        "accuracy"]


def test_a_scan_on_the_device_gives_the_host_table(lenet, scanned, tmp_path, device):
    """The same examples (digest), and each point to float tolerance: GPU
    sums run in another order, which may move an image across the
    decision boundary, so an accuracy may differ by one image in 500."""
    _, proto, weights = lenet
    out, reference = scanned
    data = scan(proto, weights, tmp_path / "scan", layers=("conv2", "ip2"), sparsities=SPARSITIES,
                iterations=ITERS, gpu=device)
    assert data["data_sha256"] == reference["data_sha256"] is not None
    host = {layer["layer"]: layer["points"] for layer in reference["layers"]}
    pairs = [(data["baseline"], reference["baseline"])] + [
        (p["metrics"], q["metrics"]) for layer in data["layers"] for p, q in zip(layer["points"], host[layer["layer"]])]
    assert len(pairs) == 1 + 2 * len(SPARSITIES)
    for ours, theirs in pairs:
        assert ours["accuracy"] == pytest.approx(theirs["accuracy"], abs=1.01 / 500)
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-4)


def test_streamed_data_gives_the_same_table_over_whole_epochs(lenet, scanned, tmp_path):
    """TEST batches too big to keep are read anew for every point; 5 batches
    of 100 are the slice's 500 images, so every point still sees them all.
    The folder remembers how its points were read when a rerun reads none."""
    _, proto, weights = lenet
    out, _ = scanned
    kwargs = dict(layers=("ip2",), sparsities=SPARSITIES, iterations=ITERS, cache_limit=0)
    data = scan(proto, weights, tmp_path / "streamed", **kwargs)
    assert data["data"] == "streamed"
    assert _table(tmp_path / "streamed").splitlines() == [line for line in _table(out).splitlines()
                                                          if line.startswith(("layer,", "(baseline),", "ip2,"))]
    assert scan(proto, weights, tmp_path / "streamed", **kwargs)["data"] == "streamed"


def _points_file(folder):
    return (folder / "points.jsonl").read_text().splitlines()


def test_a_scan_folder_of_an_earlier_caffedsd_says_what_its_record_lacks(lenet, scanned, tmp_path, cli):
    """One made before scans recorded the net file and the TEST examples
    was refused as made by "a different model, weights or settings", which
    nothing was."""
    import shutil

    _, proto, weights = lenet
    out, _ = scanned
    folder = tmp_path / "scan"
    shutil.copytree(out, folder)
    marker = json.loads((folder / "scan.json").read_text())
    for key in ("net_sha256", "data_sha256"):
        del marker["config"][key]
    (folder / "scan.json").write_text(json.dumps(marker))
    assert_one_line_error(cli("sensitivity", "-p", proto, "-w", weights, "-n", ITERS, "-o", folder),
                          "scan: made by an earlier caffedsd, which did not record the net file or the TEST examples "
                          "it measured; give a new -o, or --force to start it over")
    marker["config"]["criterion"] = "random"  # and another scan
    (folder / "scan.json").write_text(json.dumps(marker))
    assert_one_line_error(cli("sensitivity", "-p", proto, "-w", weights, "-n", ITERS, "-o", folder),
                          "scan: made by a different model, weights or settings")


def test_force_reuses_the_points_a_scan_of_other_sparsities_measured(lenet, scanned, tmp_path, cli):
    """Adding a sparsity to a finished scan measures only the new points;
    a scan of an edited net file (its TEST batch size) keeps none."""
    import shutil

    _, proto, weights = lenet
    out, data = scanned
    folder = tmp_path / "scan"
    shutil.copytree(out, folder)
    base = ("sensitivity", "-p", proto, "-w", weights, "-n", ITERS, "-o", folder)
    wider = ("--sparsities", "0.3,0.6,0.75,0.9")
    assert_one_line_error(cli(*base, *wider), "scan: made by a scan of other layers or sparsities; give a new -o, "
                          "or --force to keep its 13 points (13 of them this scan's) and measure the rest")
    assert _points_file(folder) == _points_file(out)
    result = cli(*base, *wider, "--force")
    assert result.exit_code == 0, result.output
    assert "kept the 13 points of the earlier scan, 13 of them this scan's" in result.output
    assert _points_file(folder)[:13] == _points_file(out) and len(_points_file(folder)) == 13 + 4
    wide = json.loads((folder / "sensitivity.json").read_text())
    alone = scan(proto, weights, tmp_path / "alone", layers=("ip2",), sparsities=(0.75,), iterations=ITERS)
    assert wide["layers"][3]["points"][2] == alone["layers"][0]["points"][0]
    for ours, theirs in zip(wide["layers"], data["layers"]):
        assert [p for p in ours["points"] if p["sparsity"] != 0.75] == theirs["points"]

    edited = tmp_path / "batch50.prototxt"  # the same net and weights, other TEST batches
    edited.write_text(proto.read_text().replace("batch_size: 100", "batch_size: 50"))
    again = ("sensitivity", "-p", edited, "-w", weights, "-n", ITERS, "-l", "ip2", "--sparsities", "0.5")
    assert_one_line_error(cli(*again, "-o", folder), "scan: made by a different model, weights or settings; "
                          "give a new -o, or --force to start it over")
    result = cli(*again, "-o", folder, "--force")
    assert result.exit_code == 0, result.output
    assert "started over; removed the 17 points of the earlier scan" in result.output
    assert len(_points_file(folder)) == 2
    assert cli(*again, "-o", "fresh").exit_code == 0
    assert (folder / "sensitivity.csv").read_text() == (tmp_path / "fresh" / "sensitivity.csv").read_text()
    assert (folder / "sensitivity.csv").read_text() != _table(out)


def test_examples_digest_is_of_the_examples_not_their_order():
    images = np.arange(24, dtype=np.float32).reshape(4, 1, 2, 3)
    labels = np.array([0, 1, 2, 3], dtype=np.float32)

    def batches(order, size=2):
        return [{"data": images[order[i:i + size]], "label": labels[order[i:i + size]]}
                for i in range(0, len(order), size)]

    digest = examples_sha256(batches([0, 1, 2, 3]))
    assert examples_sha256(batches([3, 1, 0, 2])) == digest  # a shuffle, other batches
    assert examples_sha256(batches([0, 1, 2, 3], size=4)) == digest
    assert examples_sha256(batches([0, 1, 2, 2])) != digest  # an image twice, one never
    moved = batches([0, 1, 2, 3])
    moved[0]["label"] = labels[[1, 0]]  # the same labels, on each other's image
    assert examples_sha256(moved) != digest
    changed = batches([0, 1, 2, 3])
    changed[1]["data"] = changed[1]["data"] + np.float32(1e-6)
    assert examples_sha256(changed) != digest
    assert examples_sha256([{"data": images[:2], "label": labels}]) == \
        examples_sha256([{"data": images[:2], "label": labels}])  # first axes disagree: hashed whole
    assert examples_sha256([{"data": images[:2], "label": labels}]) != \
        examples_sha256([{"data": images[:2], "label": labels[::-1]}])


def test_a_scan_does_not_go_on_with_rewritten_test_data(lenet, tmp_path, cli):
    """The net file names its data, so a scan folder is continued only when
    the examples read are the same: the same bytes rewritten go on, one
    label changed in the HDF5 file starts over, with --force only."""
    import shutil

    import h5py

    _, proto, weights = lenet
    text = proto.read_text()
    test_list = Path(text.split('source: "')[2].split('"', 1)[0])
    h5 = tmp_path / "test.h5"
    shutil.copy(Path(test_list.read_text().strip()), h5)
    (tmp_path / "test.txt").write_text(f"{h5}\n")
    (tmp_path / "net.prototxt").write_text(text.replace(str(test_list), str(tmp_path / "test.txt")))
    base = ("sensitivity", "-p", "net.prototxt", "-w", weights, "-n", ITERS, "-l", "ip2", "--sparsities", "0.5")
    assert cli(*base, "-o", "scan").exit_code == 0
    before = _table(tmp_path / "scan")
    shutil.copy(h5, tmp_path / "copy.h5")
    os.replace(tmp_path / "copy.h5", h5)  # the same examples, another file
    (tmp_path / "scan" / "sensitivity.csv").unlink()  # written again when the scan goes on
    result = cli(*base, "-o", "scan")
    assert result.exit_code == 0, result.output
    assert _table(tmp_path / "scan") == before
    with h5py.File(h5, "r+") as data:
        label = data["label"]
        label[0] = (label[0] + 1) % 10
    assert_one_line_error(cli(*base, "-o", "scan"), "scan: its points were measured on other examples than the "
                          "TEST data of ")
    assert _table(tmp_path / "scan") == before
    result = cli(*base, "-o", "scan", "--force")
    assert result.exit_code == 0, result.output
    assert "started over; removed the 2 points of the earlier scan" in result.output
    assert cli(*base, "-o", "fresh").exit_code == 0
    assert _table(tmp_path / "scan") == _table(tmp_path / "fresh") != before


def test_plans_respect_their_budget(scanned, tmp_path, cli):
    # A budget as the plan counts it: float32 accuracies make a drop of 5 of
    # 500 images 1.0000002 points on one BLAS kernel (OPENBLAS_CORETYPE).
    from caffedsd.plan_from_scan import within

    out, data = scanned
    result = cli("plan", "--sensitivity", out / "sensitivity.json", "--max-drop", 1.0, "-o", "plan.yaml")
    assert result.exit_code == 0, result.output
    plan = load_plan(tmp_path / "plan.yaml")
    measured = dict((layer, dict(points)) for layer, (_, points) in curves(data, "accuracy").items())
    for rule in plan.rules:
        if rule.value:
            assert within(measured[rule.pattern][rule.value], 1.0)
        # nothing higher was within the budget
        assert not any(within(d, 1.0) for s, d in measured[rule.pattern].items() if s > rule.value)
    params = {layer["layer"]: layer["params"] for layer in data["layers"]}
    reachable = sum(params[layer] * max([s for s, d in points.items() if within(d, 3)], default=0)
                    for layer, points in measured.items()) / data["prunable_params"]
    target = round(0.8 * reachable, 3)
    assert target > 0.3
    result = cli("plan", "--sensitivity", out, "--target-sparsity", target, "--max-drop", 3, "-o", "target.yaml")
    assert result.exit_code == 0, result.output
    plan = load_plan(tmp_path / "target.yaml")
    from caffedsd.plan_from_scan import Choice

    choices = [Choice(r.pattern, params[r.pattern], r.value, 0) for r in plan.rules]
    assert overall_sparsity(choices, data["prunable_params"]) >= target
    for rule in plan.rules:
        if rule.value:
            assert within(measured[rule.pattern][rule.value], 3)
    # The plan file drives prune directly.
    result = cli("prune", "-w", data["weights"], "--plan", "target.yaml", "-o", "pruned.caffemodel")
    assert result.exit_code == 0, result.output


def _googlenet_named(text):
    """LeNet's TEST outputs named as GoogLeNet's train_val names its own: an
    auxiliary head's top-1 first, accuracies called loss3/top-k, and a loss
    whose name does not say so."""
    def accuracy(name, extra=""):
        return (f'layer {{ name: "{name}" type: "Accuracy" bottom: "ip2" bottom: "label" top: "{name}" {extra}'
                'include { phase: TEST } }\n')

    text = text.replace('top: "accuracy"', 'top: "loss3/top-1"').replace('top: "loss"', 'top: "xent"')
    main = text.index('layer {\n  name: "accuracy"')
    return (text[:main] + accuracy("loss1/top-1") + text[main:]
            + accuracy("loss3/top-5", "accuracy_param { top_k: 5 } "))


def test_outputs_are_accuracies_or_losses_by_their_layers_not_their_names(lenet, tmp_path, cli):
    _, proto, weights = lenet
    (tmp_path / "goog.prototxt").write_text(_googlenet_named(proto.read_text()))
    result = cli("sensitivity", "-p", "goog.prototxt", "-w", weights, "-n", 2, "-l", "ip1",
                 "--sparsities", "0.9,0.99", "-o", "scan")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "scan" / "sensitivity.json").read_text())
    assert data["kinds"] == {"loss1/top-1": "accuracy", "loss3/top-1": "accuracy", "xent": "loss",
                             "loss3/top-5": "accuracy"}
    assert data["primary"] == "loss3/top-1"  # the main classifier's, not the first accuracy
    assert "# Sensitivity: loss3/top-1 after pruning one layer" in result.output
    points = data["layers"][0]["points"]
    for metric, unit in (("loss3/top-5", "points"), ("loss3/top-1", "points"), ("xent", "loss")):
        base, worst = data["baseline"][metric], points[1]["metrics"][metric]
        by_hand = worst - base if unit == "loss" else 100 * (base - worst)
        assert by_hand > 0.25, (metric, base, worst)  # ip1 at 99% hurts every output
        result = cli("plan", "--sensitivity", "scan", "--metric", metric, "--max-drop", 0.25, "-o", "p.yaml",
                     "--force")
        if "a plan would prune nothing" in result.output:  # 0.9 over the budget too
            assert result.exit_code == 2 and f"({metric})" in result.output, result.output
            continue
        assert result.exit_code == 0, result.output
        assert load_plan(tmp_path / "p.yaml").rules[0].value < 0.99, (metric, result.output)
        assert f"{unit}\n" in (tmp_path / "p.yaml").read_text().split("\n", 2)[1] + "\n"
    result = cli("plan", "--sensitivity", "scan", "--max-drop", 100, "-o", "p.yaml", "--force")
    assert result.exit_code == 0 and "metric loss3/top-1" in (tmp_path / "p.yaml").read_text()


def test_a_data_layer_after_a_layer_with_inputs_is_cached_too(lenet, tmp_path, cli):
    """Images and labels read by two HDF5Data layers with a layer between
    them: every point read the next batches, measured against a baseline
    of others (unchecked: no digest was taken), and 2 batches of a
    5-batch epoch made conv1 at 50% look 2 points worse than caffe test."""
    _, proto, weights = lenet
    text = proto.read_text()
    test_layer = text.index("layer {", text.index("phase: TRAIN") + 1)
    source = re.search(r'source: "([^"]+test[^"]*)"', text).group(1)

    def reader(top):
        return (f'layer {{ name: "{top}" type: "HDF5Data" top: "{top}" include {{ phase: TEST }} '
                f'hdf5_data_param {{ source: "{source}" batch_size: 100 }} }}\n')

    text = (text[:test_layer] + reader("data") + 'layer { name: "pre" type: "Power" bottom: "data" top: "seen" '
            'include { phase: TEST } }\n' + reader("label") + text[text.index("layer {", test_layer + 1):])
    (tmp_path / "split.prototxt").write_text(text)
    result = cli("sensitivity", "-p", "split.prototxt", "-w", weights, "-n", 2, "-l", "conv1", "--sparsities",
                 "0.5,0.9", "-o", "scan")
    assert result.exit_code == 0 and "note:" not in result.output, result.output
    data = json.loads((tmp_path / "scan" / "sensitivity.json").read_text())
    assert data["data"] == "cached" and data["data_sha256"] is not None
    for point in data["layers"][0]["points"]:
        pruned = tmp_path / f"conv1-{point['sparsity']}.caffemodel"
        assert cli("prune", "-w", weights, "-r", f"conv1={point['sparsity']}", "-o", pruned).exit_code == 0
        code, log = run_caffe_test(tmp_path / "split.prototxt", pruned, iterations=2)
        assert code == 0, log[-2000:]
        assert point["metrics"]["accuracy"] == pytest.approx(parse_test_outputs(log)["accuracy"], abs=1e-6)


def test_a_layer_of_phase_train_only_is_not_scanned(caffe, tmp_path, cli):
    """A TRAIN-only auxiliary classifier: its pruning changes nothing the
    TEST phase measures, and the TEST net has no blob of it (a KeyError)."""
    text = RANDOM_TEST_NET.replace('layer { name: "loss"', 'layer { name: "aux" type: "InnerProduct" bottom: "data" '
                                   'top: "aux" include { phase: TRAIN } inner_product_param { num_output: 2 } }\n'
                                   'layer { name: "auxsil" type: "Silence" bottom: "aux" include { phase: TRAIN } }\n'
                                   'layer { name: "loss"').replace('"gaussian" std: 1', '"constant" value: 0.5')
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    net = caffe.Net(str(proto), caffe.TRAIN)
    net.save(str(tmp_path / "net.caffemodel"))
    for jobs in (1, 2):
        result = cli("sensitivity", "-p", proto, "-w", "net.caffemodel", "-n", 1, "--sparsities", "0.5",
                     "-j", jobs, "-o", f"scan{jobs}")
        assert result.exit_code == 0, result.output
        assert "not scanned: aux, which" in result.output
        data = json.loads((tmp_path / f"scan{jobs}" / "sensitivity.json").read_text())
        assert [layer["layer"] for layer in data["layers"]] == ["quiet", "fc"]
    assert_one_line_error(cli("sensitivity", "-p", proto, "-w", "net.caffemodel", "-l", "aux", "-o", "aux"),
                          "net.prototxt: its TEST phase does not build layer(s) aux: pruning them changes nothing")
    assert not (tmp_path / "aux").exists()
    # Tied by a param name to a layer the TEST phase builds, it is scanned, through that layer.
    proto.write_text("""name: "tied"
layer { name: "draw" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 }
                           data_filler { type: "constant" value: 0.5 } data_filler { type: "constant" value: 1 } } }
layer { name: "aux" type: "InnerProduct" bottom: "data" top: "aux" param { name: "w" } include { phase: TRAIN }
        inner_product_param { num_output: 3 } }
layer { name: "auxsil" type: "Silence" bottom: "aux" include { phase: TRAIN } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" param { name: "w" } inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
""")
    net = caffe.Net(str(proto), caffe.TRAIN)
    net.params["aux"][0].data[...] = np.arange(9).reshape(3, 3) - 4.0
    net.save(str(tmp_path / "tied.caffemodel"))
    result = cli("sensitivity", "-p", proto, "-w", "tied.caffemodel", "-n", 1, "--sparsities", "0.5", "-o", "tied")
    assert result.exit_code == 0 and "not scanned" not in result.output, result.output
    data = json.loads((tmp_path / "tied" / "sensitivity.json").read_text())
    assert [(layer["layer"], layer["shared_by"]) for layer in data["layers"]] == [("aux", ["aux", "fc"])]
    assert data["layers"][0]["points"][0]["metrics"]["loss"] != data["baseline"]["loss"]  # pruned through fc


def test_a_seed_only_a_random_scan_draws_with(caffe, tmp_path, cli):
    """keepmax draws nothing: a rerun with another --seed goes on with the
    folder's points (it was refused as other settings, and --force removed
    them all)."""
    from conftest import save_net

    proto, weights = save_net(caffe, tmp_path, RANDOM_TEST_NET.replace('"gaussian" std: 1', '"constant" value: 0.5'))
    base = ("sensitivity", "-p", proto, "-w", weights, "-n", 1, "--sparsities", "0.5", "-o", "scan")
    assert cli(*base).exit_code == 0
    before = (tmp_path / "scan" / "points.jsonl").read_text()
    result = cli(*base, "--seed", 3)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "scan" / "points.jsonl").read_text() == before  # nothing measured again
    assert json.loads((tmp_path / "scan" / "sensitivity.json").read_text())["seed"] == 0
    # A folder an earlier caffedsd made records the --seed given: the same scan still.
    marker = tmp_path / "scan" / "scan.json"
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps(record | {"config": record["config"] | {"seed": 3}}))
    result = cli(*base, "--seed", 3)
    assert result.exit_code == 0 and "kept" not in result.output, result.output
    assert (tmp_path / "scan" / "points.jsonl").read_text() == before
    assert cli(*base[:-1], "random", "-c", "random", "--seed", 3).exit_code == 0
    assert json.loads((tmp_path / "random" / "sensitivity.json").read_text())["seed"] == 3


def test_test_output_kinds_of_a_googlenet_train_val(tmp_path):
    from caffedsd.caffe_proto import read_net_prototxt
    from caffedsd.sensitivity import test_output_kinds

    layers = "".join(
        f'layer {{ name: "{top}" type: "{kind}" bottom: "x" bottom: "y" top: "{top}" {extra}}}\n'
        for top, kind, extra in (("loss1/loss1", "SoftmaxWithLoss", "loss_weight: 0.3 "),
                                 ("loss1/top-1", "Accuracy", "include { phase: TEST } "),
                                 ("loss1/top-5", "Accuracy", "accuracy_param { top_k: 5 } "),
                                 ("train/top-1", "Accuracy", "include { phase: TRAIN } "),
                                 ("loss3/loss3", "SoftmaxWithLoss", ""),
                                 ("loss3/top-1", "Accuracy", ""),
                                 ("loss3/top-5", "Accuracy", "accuracy_param { top_k: 5 } "),
                                 ("weighted", "Eltwise", "loss_weight: 1 ")))
    (tmp_path / "g.prototxt").write_text(layers)
    kinds, primary = test_output_kinds(read_net_prototxt(tmp_path / "g.prototxt"), "g.prototxt")
    assert kinds == {"loss1/loss1": "loss", "loss1/top-1": "accuracy", "loss1/top-5": "accuracy",
                     "loss3/loss3": "loss", "loss3/top-1": "accuracy", "loss3/top-5": "accuracy",
                     "weighted": "loss"}
    assert primary == "loss3/top-1"
    (tmp_path / "t5.prototxt").write_text(layers.replace('"loss3/top-1" type: "Accuracy"', '"loss3/top-1" type: "Eltwise"')
                                          .replace('"loss1/top-1" type: "Accuracy"', '"loss1/top-1" type: "Eltwise"'))
    assert test_output_kinds(read_net_prototxt(tmp_path / "t5.prototxt"), "t5")[1] == "loss1/top-5"


def test_sensitivity_csv_quotes_names_with_commas():
    import csv
    import io

    from caffedsd.report import sensitivity_csv

    data = {"metrics": ["acc,top1", "loss"], "baseline": {"acc,top1": 0.5, "loss": 2.0},
            "layers": [{"layer": "conv1,a", "points": [{"sparsity": 0.5, "metrics": {"acc,top1": 0.25, "loss": 3.0}}]}]}
    rows = list(csv.reader(io.StringIO(sensitivity_csv(data))))
    assert rows == [["layer", "sparsity", "acc,top1", "loss"], ["(baseline)", "0", "0.5", "2"],
                    ["conv1,a", "0.5", "0.25", "3"]]


def test_names_with_markup_keep_their_columns_and_plot(tmp_path):
    """Caffe takes any string for a name: "|" or a newline in one must not
    add a Markdown column or row, nor "$" make matplotlib parse mathtext."""
    from caffedsd.report import write_sensitivity

    metric, loss = "acc|$\\foo{$", "loss"
    layers = ["a|b", "x\ny", "_hidden", "a$\\bad$"]
    data = {"metrics": [metric, loss], "baseline": {metric: 0.5, loss: 2.0}, "sparsities": [0.5],
            "iterations": 1, "criterion": "keepmax",
            "layers": [{"layer": name, "params": 9, "points": [{"sparsity": 0.5, "metrics": {metric: 0.25, loss: 3.0}}]}
                       for name in layers]}
    write_sensitivity(tmp_path, data)
    assert (tmp_path / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    table = [line for line in (tmp_path / "sensitivity.md").read_text().splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(layers)
    # a cell's "|" is escaped: split at the others, every row has 3 cells
    assert all(len(re.split(r"(?<!\\)\|", line)) == 3 + 2 for line in table), table
    assert "| a\\|b | 9 |" in table[2] and "| x\\ny | 9 |" in table[3]


def test_a_plan_is_not_written_over_what_it_reads(lenet, tmp_path, cli):
    import shutil

    _, proto, weights = lenet
    shutil.copy(proto, tmp_path / "net.prototxt")
    shutil.copy(weights, tmp_path / "w.caffemodel")
    assert cli("sensitivity", "-p", "net.prototxt", "-w", "w.caffemodel", "-n", 1, "-l", "ip2",
               "--sparsities", "0.5", "-o", "scan").exit_code == 0
    before = {name: (tmp_path / name).read_bytes() for name in ("scan/sensitivity.json", "net.prototxt", "w.caffemodel")}
    for name in before:  # the folder's own file, and the scan's net and weights, which --verify reads
        assert_one_line_error(cli("plan", "--sensitivity", "scan", "--max-drop", 1, "-o", name),
                              "output would overwrite the input")
    assert before == {name: (tmp_path / name).read_bytes() for name in before}


def test_a_random_scans_plan_prunes_with_the_scans_seed(lenet, tmp_path, cli):
    """What `plan --verify` measured was the masks of the scan's seed; the
    plan carries it to prune, which draws those masks again."""
    import h5py

    _, proto, weights = lenet
    assert cli("sensitivity", "-p", proto, "-w", weights, "-n", 1, "-l", "ip1", "--criterion", "random",
               "--seed", 7, "--sparsities", "0.5", "-o", "scan").exit_code == 0
    result = cli("plan", "--sensitivity", "scan", "--max-drop", 50, "--verify", "-o", "plan.yaml")
    assert result.exit_code == 0, result.output
    plan = load_plan(tmp_path / "plan.yaml")
    assert plan.seed == 7 and plan.verified is not None and plan.rules[0].value == 0.5
    for args, out in ((("--plan", "plan.yaml"), "planned"), (("-r", "ip1=0.5", "-c", "random", "--seed", 7), "seven"),
                      (("-r", "ip1=0.5", "-c", "random"), "zero")):
        assert cli("prune", "-w", weights, *args, "-o", f"{out}.caffemodel").exit_code == 0

    def mask(out):
        with h5py.File(tmp_path / f"{out}.masks.h5", "r") as f:
            return np.asarray(f["masks/ip1"])

    assert np.array_equal(mask("planned"), mask("seven")) and not np.array_equal(mask("planned"), mask("zero"))


def test_bad_inputs(lenet, scanned, tmp_path, cli, other_model):
    _, proto, weights = lenet
    out, _ = scanned
    base = ("sensitivity", "-p", proto, "-w", weights, "-n", 1, "-o", "s")
    assert_one_line_error(cli(*base, "--sparsities", "0.2,1.0"), "1 is outside [0, 1)")
    assert_one_line_error(cli(*base, "--sparsities", "0.5,0.2"), "must be strictly increasing")
    assert_one_line_error(cli(*base, "--layers", "fc*"), "'fc*' matches no prunable layer")
    assert_one_line_error(cli(*base, "--layers", " , "), "--layers ' , ': names no layer glob")
    assert_one_line_error(cli(*base, "--seed", -1), "Invalid value for '--seed': -1 is not in the range x>=0")
    # `plan --verify` draws with the seed; a std scan's "sparsities" would be its multipliers.
    for change in ({"seed": -1}, {"criterion": "std"}):
        edited = json.loads((out / "sensitivity.json").read_text()) | change
        (tmp_path / "edited.json").write_text(json.dumps(edited))
        assert_one_line_error(cli("plan", "--sensitivity", "edited.json", "--max-drop", 1, "-o", "p.yaml"),
                              "edited.json: a sensitivity file with missing or malformed fields")
    with pytest.raises(InputError, match="^criterion 'std': a scan sweeps sparsities, which it does not take "
                                         "\\(known: keepmax, random\\)$"):
        scan(proto, weights, tmp_path / "s", criterion="std")
    assert not (tmp_path / "s").exists()
    text = proto.read_text()
    no_test = text.replace('type: "SoftmaxWithLoss"', 'type: "Softmax"')
    no_test = no_test.replace('type: "Accuracy"', 'type: "Softmax"')
    (tmp_path / "notest.prototxt").write_text(no_test)
    assert_one_line_error(cli("sensitivity", "-p", "notest.prototxt", "-w", weights, "-o", "s"),
                    "no Accuracy or loss output in the TEST phase")
    (tmp_path / "narrow.prototxt").write_text(text.replace("num_output: 50\n", "num_output: 50 group: 2\n"))
    for jobs in (1, 2):  # Caffe aborted; the refused scan leaves no folder
        assert_one_line_error(cli("sensitivity", "-p", "narrow.prototxt", "-w", weights, "-j", jobs, "-o", "s"),
                              "layer 'conv2' blob 0 is [50, 20, 5, 5], but narrow.prototxt makes it [50, 10, 5, 5]")
        assert not (tmp_path / "s").exists()
    # Shapes only Caffe's own Concat set-up rejects: it aborts the process,
    # so caffedsd builds the net in a child first.
    (tmp_path / "concat.prototxt").write_text(
        text + 'layer { name: "both" type: "Concat" bottom: "conv1" bottom: "ip2" top: "both" }\n')
    for jobs in (1, 2):
        assert_one_line_error(cli("sensitivity", "-p", "concat.prototxt", "-w", weights, "-j", jobs, "-o", "s"),
                              "concat.prototxt: Caffe cannot build the net and read its 50 TEST batches: Check failed: num_axes == ")
        assert not (tmp_path / "s").exists()
    assert_one_line_error(cli("plan", "--sensitivity", out, "--target-sparsity", 0.99, "-o", "p.yaml"),
                    "out of reach: the measured curves reach at most 0.9000 overall")
    assert_one_line_error(cli("plan", "--sensitivity", out, "--max-drop", 1, "--weights", other_model, "-o", "p.yaml"),
                    "a scan of another model")
    assert_one_line_error(cli("sensitivity", "-p", proto, "-w", weights, "-n", ITERS, "--sparsities", "0.3,0.6",
                        "-o", out), "made by a scan of other layers or sparsities; give a new -o, or --force")
    assert not (tmp_path / "s").exists() and not (tmp_path / "p.yaml").exists()
    json.loads((out / "sensitivity.json").read_text())  # the earlier scan is intact


@pytest.mark.caffe
def test_a_test_phase_run_needs_only_the_test_data(lenet, tmp_path, cli):
    """The TRAIN data of a train_val need not be there to scan or verify a
    model on its TEST data (an evaluation machine with the validation set
    only); a TEST layer's data must."""
    _, proto, weights = lenet
    text = proto.read_text()
    train_list = text.split('source: "', 1)[1].split('"', 1)[0]  # the TRAIN HDF5Data layer comes first
    (tmp_path / "val_only.prototxt").write_text(text.replace(train_list, "no/train.txt", 1))
    result = cli("sensitivity", "-p", "val_only.prototxt", "-w", weights, "-l", "ip2", "--sparsities", "0.5",
                 "-n", 1, "-o", "s")
    assert result.exit_code == 0, result.output
    test_list = text.split('source: "')[2].split('"', 1)[0]
    (tmp_path / "no_val.prototxt").write_text(text.replace(test_list, "no/test.txt"))
    assert_one_line_error(cli("sensitivity", "-p", "no_val.prototxt", "-w", weights, "-n", 1, "-o", "t"),
                          "layer 'mnist' reads 'no/test.txt', which does not exist")


def _children(pid):
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _workers(pid):
    """The sensitivity workers of process ``pid`` (not the children its
    checks build nets in)."""
    found = []
    for child in _children(pid):
        try:
            if b"caffedsd.sensitivity import _worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            continue
    return found


def _alive(pids):
    def state(pid):
        try:
            return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return "gone"
    return [pid for pid in pids if state(pid) not in ("Z", "gone")]


def test_a_worker_sent_no_arguments_exits_without_a_traceback():
    """A Ctrl-C can reach the scan between starting a worker and sending
    it its arguments; the parent then closes the pipe, and the worker reads
    end of file. It printed a traceback on the shared terminal."""
    import multiprocessing
    import subprocess
    from caffedsd.sensitivity import _WORKER

    arguments, to_worker = multiprocessing.Pipe(duplex=False)
    from_worker, results = multiprocessing.Pipe(duplex=False)
    given = [arguments.fileno(), results.fileno()]
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(sys.path), *map(str, given)],
                              pass_fds=given, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for end in (arguments, results, to_worker):
        end.close()
    _, err = worker.communicate(timeout=120)
    from_worker.close()
    assert worker.returncode == 1 and err == ""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers in /proc")
def test_the_workers_end_with_a_killed_scan(lenet, tmp_path):
    """A SIGKILL or a plain kill of `sensitivity --jobs 2` runs none of its
    clean-up: its workers must not go on measuring (on a GPU, holding its
    memory) for a folder a rerun has taken over."""
    import signal
    import subprocess
    import time

    _, proto, weights = lenet
    for how in (signal.SIGKILL, signal.SIGTERM):
        scan = subprocess.Popen([*PROGRAM, "sensitivity", "-p", str(proto),
                                 "-w", str(weights), "-j", "2", "-n", "200", "--sparsities", "0.1,0.2,0.3,0.4,0.5",
                                 "-o", str(tmp_path / f"s{how}")], stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while len(_workers(scan.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            workers = _workers(scan.pid)
            assert len(workers) == 2 and scan.poll() is None
            time.sleep(2)  # into their measurements
            scan.send_signal(how)
            scan.wait()
            deadline = time.monotonic() + 10
            while _alive(workers) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = _alive(workers)
            assert left == [], how
        finally:
            scan.kill()
            scan.wait()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers in /proc")
def test_ctrl_c_while_the_workers_start_is_one_line(lenet, tmp_path):
    """A terminal's Ctrl-C goes to the whole foreground process group: a
    worker that had not yet reached _worker (unpickling, importing) printed
    a traceback, and a later fix could lose the Ctrl-C, which the scan then
    ran to its end."""
    import signal
    import subprocess
    import time

    _, proto, weights = lenet
    for delay in (0.0, 0.1, 0.2, 0.3, 0.5):
        scan = subprocess.Popen([*PROGRAM, "sensitivity", "-p", str(proto), "-w", str(weights), "-j", "2", "-n", "20",
                                 "-o", str(tmp_path / f"s{delay}")], stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not _workers(scan.pid) and scan.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(delay)  # into their start-up: unpickling, importing
            workers = _workers(scan.pid)
            os.killpg(scan.pid, signal.SIGINT)
            _, err = scan.communicate(timeout=120)
            deadline = time.monotonic() + 10
            while _alive(workers) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _alive(workers) == [], delay
        finally:
            scan.kill()
            scan.wait()
        assert scan.returncode == 130 and "Traceback" not in err, (delay, err[-3000:])
        assert err.strip().splitlines()[-1].startswith("caffedsd: interrupted"), (delay, err)
        assert not (tmp_path / f"s{delay}" / "sensitivity.json").exists(), delay


@pytest.mark.slow
def test_workers_do_not_import_from_the_working_folder(lenet, tmp_path):
    """A worker started with `python -c` had the working folder first on
    sys.path: a random.py there (a user's script) broke every --jobs scan,
    which the console script itself ran past."""
    import subprocess

    _, proto, weights = lenet
    for name in ("random", "json"):
        (tmp_path / f"{name}.py").write_text("raise SystemExit('the working folder was imported from')\n")
    done = subprocess.run([str(Path(sys.executable).parent / "caffedsd"), "sensitivity", "-p", str(proto), "-w",
                           str(weights), "-j", "2", "-n", "2", "--sparsities", "0.5", "-o", "scan"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers in /proc")
def test_a_killed_worker_is_not_called_bad_input(lenet, tmp_path):
    import signal
    import subprocess
    import time

    _, proto, weights = lenet
    scan = subprocess.Popen([*PROGRAM, "sensitivity", "-p", str(proto),
                             "-w", str(weights), "-j", "2", "-n", "200", "--sparsities", "0.1,0.2,0.3,0.4,0.5",
                             "-o", str(tmp_path / "s")], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(_workers(scan.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        worker = _workers(scan.pid)[0]
        os.kill(worker, signal.SIGKILL)
        _, err = scan.communicate(timeout=60)
    finally:
        scan.kill()
        scan.wait()
    assert scan.returncode == 1, err
    assert "caffedsd: a sensitivity worker died (ended by SIGKILL; see Caffe's log with --verbose); run the " \
           "scan again to go on" in err
    assert "Traceback" not in err


def test_an_evaluator_refuses_weights_that_changed_since_the_digest(lenet, tmp_path, cli):
    from caffedsd.errors import InputError

    _, proto, weights = lenet
    with pytest.raises(InputError, match="changed while it was read"):
        Evaluator(proto, weights, 1, sha256="0" * 64)  # a --jobs worker loads the file again, by its path
    os.mkfifo(tmp_path / "fifo.json")
    assert_one_line_error(cli("plan", "--sensitivity", tmp_path / "fifo.json", "--max-drop", 1, "-o", "p.yaml"),
                          "fifo.json: not a regular file (a folder, device or pipe)")


# A TEST layer that draws new examples every read; "quiet" feeds only a
# Silence layer, so pruning it cannot change the loss.
RANDOM_TEST_NET = """
name: "random"
layer { name: "draw" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "quiet" type: "InnerProduct" bottom: "data" top: "quiet" inner_product_param { num_output: 2 } }
layer { name: "sil" type: "Silence" bottom: "quiet" }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def test_points_are_measured_on_the_baselines_batches_whatever_the_jobs(caffe, tmp_path, cli):
    """--jobs 1 keeps the batches it read and measures every point on them;
    --jobs 2 workers read their own, which a random TEST layer makes others
    than the baseline's (a fake drop of "quiet"): refused, no folder left.
    Batches read anew per point (streamed) are checked the same way."""
    from conftest import save_net

    from caffedsd.errors import InputError

    proto, weights = save_net(caffe, tmp_path, RANDOM_TEST_NET)
    base = ("sensitivity", "-p", proto, "-w", weights, "-n", 3, "--sparsities", "0.5")
    result = cli(*base, "-o", "one")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "one" / "sensitivity.json").read_text())
    assert data["data"] == "cached" and data["data_sha256"] is not None
    quiet = data["layers"][0]
    assert quiet["layer"] == "quiet" and quiet["points"][0]["metrics"] == data["baseline"]
    # Another read draws other examples: the folder is not continued with them.
    assert_one_line_error(cli(*base, "-o", "one"), "one: its points were measured on other examples than the "
                          "TEST data of ")
    assert_one_line_error(cli(*base, "-j", 2, "-o", "two"), "net.prototxt: TEST data layer 'draw' gave other "
                          "examples when a --jobs worker read its 3 batches again")
    assert not (tmp_path / "two").exists()
    with pytest.raises(InputError, match="do not fit in memory and are read anew for every pass, and TEST data "
                                         "layer 'draw' gave other examples than the read the scan's digest was "
                                         "taken of"):
        scan(proto, weights, tmp_path / "streamed", sparsities=(0.5,), iterations=3, cache_limit=0)
    assert not (tmp_path / "streamed").exists()
    # plan --verify's evaluator is held to the examples the scan recorded.
    evaluator = Evaluator(proto, weights, 3, cache_limit=0)
    evaluator.expect(data["data_sha256"], "the scan measured on")
    with pytest.raises(InputError, match="'draw' gave other examples than the scan measured on "):
        evaluator.run()


def test_a_scan_of_a_pruned_model_plans_with_its_zeros(lenet, tmp_path, cli):
    """conv2 and ip1 half zeros already: the plan predicted the overall
    sparsity as if the model had none, 0.9078 against 0.919 once pruned."""
    from caffedsd.caffemodel import read_caffemodel
    from caffedsd.layers import prunable_targets

    _, proto, weights = lenet
    assert cli("prune", "-w", weights, "-s", 0, "-r", "conv2=0.5", "-r", "ip1=0.5", "-o", "p.caffemodel").exit_code == 0
    data = scan(proto, tmp_path / "p.caffemodel", tmp_path / "scan", sparsities=SPARSITIES, iterations=ITERS)
    zeros = {layer["layer"]: layer["zeros"] for layer in data["layers"]}
    assert zeros == {"conv1": 0, "conv2": 12500, "ip1": 200000, "ip2": 0}
    assert data["prunable_zeros"] == sum(zeros.values())
    ip1 = data["layers"][2]["points"]
    assert [p["zeros"] for p in ip1] == [200000, 240000, 360000]  # 0.3 takes only zeros
    result = cli("plan", "--sensitivity", tmp_path / "scan", "--max-drop", 1, "-o", "plan.yaml")
    assert result.exit_code == 0, result.output
    predicted = float(re.search(r"predicted overall sparsity ([0-9.]+)", (tmp_path / "plan.yaml").read_text())[1])
    assert cli("prune", "-w", "p.caffemodel", "--plan", "plan.yaml", "-o", "q.caffemodel").exit_code == 0
    model = read_caffemodel(tmp_path / "q.caffemodel")
    blobs = [model.layer(t.owner).blobs[0].data for t in prunable_targets(model)]
    assert predicted == pytest.approx(sum(int((b == 0).sum()) for b in blobs) / sum(b.size for b in blobs), abs=1e-4)


def test_a_scan_needs_outputs_a_finite_baseline_and_for_random_no_masks(caffe, lenet, tmp_path, cli):
    """A Silence layer taking every TEST output: every point was measured
    with no metrics, then a traceback. Outputs that are NaN with the weights
    as they are: sensitivity.json held bare NaN tokens, and plan called it
    damaged. A random scan of a model with masks: its curves were drawn over
    positions that prune, keeping the masks, never draws."""
    _, proto, weights = lenet
    text = proto.read_text()
    (tmp_path / "silent.prototxt").write_text(
        text + 'layer { name: "quiet" type: "Silence" bottom: "accuracy" bottom: "loss" '
               'include { phase: TEST } }\n')
    assert_one_line_error(cli("sensitivity", "-p", "silent.prototxt", "-w", weights, "-n", 1, "-l", "ip2",
                              "-o", "s"), "silent.prototxt: its TEST phase has no output to measure")
    net = caffe.Net(str(proto), caffe.TEST, weights=str(weights))
    net.params["ip2"][0].data[...] *= 3e38
    net.save(str(tmp_path / "huge.caffemodel"))
    assert_one_line_error(cli("sensitivity", "-p", proto, "-w", "huge.caffemodel", "-n", 1, "-l", "ip2",
                              "-o", "s2"), "its TEST output 'loss' is nan with the weights as they are")
    assert cli("prune", "-w", weights, "-s", 0.5, "-o", "p.caffemodel").exit_code == 0
    assert_one_line_error(cli("sensitivity", "-p", proto, "-w", "p.caffemodel", "-n", 1, "-c", "random",
                              "-o", "s3"), "p.caffemodel: has masks beside it (p.masks.h5), which prune keeps")


BROKEN_BY_PRUNING = """
layer { name: "data" type: "DummyData" top: "x" top: "t" dummy_data_param {
        shape { dim: 1 dim: 3 } shape { dim: 1 dim: 1 }
        data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 0 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 1 bias_term: false } }
layer { name: "inv" type: "Power" bottom: "y" top: "z" power_param { power: -1 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "z" bottom: "t" top: "loss" }
"""


def test_a_point_whose_output_is_not_finite_is_recorded_as_such(caffe, tmp_path, cli):
    """Weights 1, 1, -1 sum to 1; a third pruned (the first, of the tied
    smallest) they sum to 0, and 1/0 is Inf: sensitivity.json held a bare
    Infinity token, which the planner then called damaged."""
    proto = tmp_path / "net.prototxt"
    proto.write_text(BROKEN_BY_PRUNING)
    net = caffe.Net(str(proto), caffe.TEST)
    net.params["ip"][0].data[...] = [[1, 1, -1]]
    net.save(str(tmp_path / "w.caffemodel"))
    result = cli("sensitivity", "-p", proto, "-w", "w.caffemodel", "-n", 1, "--sparsities", "0.3", "-o", "s")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "s" / "sensitivity.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    data = json.loads(text)
    assert data["baseline"]["loss"] == 0.5 and data["layers"][0]["points"][0]["metrics"]["loss"] is None
    assert (tmp_path / "s" / "sensitivity.csv").read_text().splitlines()[-1] == "ip,0.3,"
    assert "| ip | 3 | not finite |" in (tmp_path / "s" / "sensitivity.md").read_text()
    assert_one_line_error(cli("plan", "--sensitivity", "s", "--max-drop", 1000, "-o", "p.yaml"),
                          "no layer's measured drop is within --max-drop 1000")
