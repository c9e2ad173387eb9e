"""Training and scanning through a Data layer on LMDB, as model-zoo
train_val files read their data (the other tests use HDF5Data)."""
import json

import numpy as np
import pytest

from caffedsd.verify import parse_test_outputs, run_caffe_test
from conftest import Stop, assert_one_line_error, stopping_at

lmdb = pytest.importorskip("lmdb")

NET = """name: "lmdbnet"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { crop_size: 10 mirror: true mean_value: 100 mean_value: 110 mean_value: 120 scale: 0.02 }
        data_param { source: "train_lmdb" batch_size: 8 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { crop_size: 10 mean_value: 100 mean_value: 110 mean_value: 120 scale: 0.02 }
        data_param { source: "test_lmdb" batch_size: 10 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy" include { phase: TEST } }
"""

SOLVER = """net: "net.prototxt"
test_iter: 2
test_interval: 1000
base_lr: 0.02
momentum: 0.9
lr_policy: "fixed"
max_iter: 40
snapshot_prefix: "snap"
random_seed: 3
"""


def write_lmdb(path, count, seed, sizes=None):
    """``count`` 3x12x12 images (or of sides ``sizes``, one each) whose label
    (0..2) is the channel made brighter (noisily) (pycaffe's Datum: call
    after the caffe fixture has made it importable)."""
    from caffe.proto.caffe_pb2 import Datum

    rng = np.random.default_rng(seed)
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(count):
            label, side = i % 3, sizes[i] if sizes else 12
            image = rng.integers(60, 140, (3, side, side), dtype=np.uint8)
            image[label] += 25
            datum = Datum(channels=3, height=side, width=side, data=image.tobytes(), label=label)
            txn.put(f"{i:08d}".encode(), datum.SerializeToString())
    env.close()


@pytest.fixture
def lmdb_solver(caffe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the net's sources are relative, as in model-zoo files
    write_lmdb(tmp_path / "train_lmdb", 96, 0)
    write_lmdb(tmp_path / "test_lmdb", 20, 1)
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    return tmp_path


def test_dsd_and_sensitivity_on_lmdb(lmdb_solver, cli):
    (lmdb_solver / "recipe.yaml").write_text(
        "solver: solver.prototxt\ncheckpoint_every: 10\nstages:\n  - dense: {iterations: 40}\n"
        "  - prune: {sparsity: 0.5}\n  - sparse: {iterations: 20}\n  - dense: {iterations: 20, lr_scale: 0.1}\n")
    result = cli("dsd", "--recipe", "recipe.yaml", "-o", "run")
    assert result.exit_code == 0, result.output
    stages = json.loads((lmdb_solver / "run" / "report.json").read_text())["stages"]
    assert stages[0]["test"]["accuracy"] > 0.6  # chance is 1/3: it learned from the LMDB
    assert stages[2]["sparsity"] == pytest.approx(0.5, abs=0.01)
    for stage in stages:  # the test set is 2 batches of 10: caffe test sees the same 20 images
        code, log = run_caffe_test("net.prototxt", lmdb_solver / "run" / stage["model"], iterations=2)
        assert code == 0, log[-2000:]
        assert parse_test_outputs(log)["accuracy"] == pytest.approx(stage["test"]["accuracy"], abs=1e-4)

    scan = cli("sensitivity", "-p", "net.prototxt", "-w", "run/01-dense/model.caffemodel",
               "--sparsities", "0.5,0.9", "-n", 2, "-o", "sens")
    assert scan.exit_code == 0, scan.output
    data = json.loads((lmdb_solver / "sens" / "sensitivity.json").read_text())
    assert data["data"] == "cached"
    assert data["baseline"]["accuracy"] == pytest.approx(stages[0]["test"]["accuracy"], abs=1e-6)


def test_an_lmdb_with_the_default_backend(lmdb_solver, cli):
    net = lmdb_solver / "net.prototxt"
    net.write_text(NET.replace(" backend: LMDB", ""))  # LEVELDB, data_param's default: Caffe aborts
    result = cli("train-dense", "--solver", "solver.prototxt", "--iterations", 1, "-o", "x.caffemodel",
                 "-w", "missing.caffemodel")
    assert_one_line_error(result, "layer 'data' reads 'train_lmdb', an LMDB, with backend LEVELDB")


POOLED = """name: "pooled"
layer { name: "data" type: "Data" top: "data" top: "label"
        transform_param { scale: 0.02 } data_param { source: "sized_lmdb" batch_size: 10 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "pool" type: "Pooling" bottom: "conv1" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool" top: "ip1" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""


def test_a_scan_of_images_whose_size_changes_between_batches(caffe, tmp_path, monkeypatch, cli):
    """A Data layer shapes each batch as its first image, and a net ending in
    a global pool takes any size: the cached batches fed the net in the
    shape of the last one read (a traceback). An image of another size
    inside a batch aborts Caffe, however far in: one line, nothing written."""
    from conftest import save_net

    monkeypatch.chdir(tmp_path)
    write_lmdb(tmp_path / "sized_lmdb", 20, 2, sizes=[12] * 10 + [9] * 10)
    proto, weights = save_net(caffe, tmp_path, POOLED)
    result = cli("sensitivity", "-p", proto, "-w", weights, "--sparsities", "0.5", "-n", 2, "-o", "scan")
    assert result.exit_code == 0, result.output
    code, log = run_caffe_test(proto, weights, iterations=2)
    assert code == 0, log[-2000:]
    baseline = json.loads((tmp_path / "scan" / "sensitivity.json").read_text())["baseline"]
    assert baseline["loss"] == pytest.approx(parse_test_outputs(log)["loss"], abs=1e-4)

    write_lmdb(tmp_path / "mixed_lmdb", 20, 2, sizes=[12] * 15 + [9] * 5)
    proto.write_text(POOLED.replace("sized_lmdb", "mixed_lmdb"))
    result = cli("sensitivity", "-p", proto, "-w", weights, "--sparsities", "0.5", "-n", 2, "-o", "mixed")
    assert_one_line_error(result, "net.prototxt: Caffe cannot build the net and read its 2 TEST batches: Check failed: "
                          "height <= datum_height (12 vs. 9)")
    assert not (tmp_path / "mixed").exists()
    # Whole batches of another size, which the net's InnerProduct cannot take.
    proto.write_text(POOLED.replace('bottom: "pool" top: "ip1"', 'bottom: "conv1" top: "ip1"'))
    result = cli("sensitivity", "-p", proto, "-w", weights, "--sparsities", "0.5", "-n", 2, "-o", "flat")
    assert_one_line_error(result, "Caffe cannot build the net and read its 2 TEST batches: Check failed: K_ == new_K")
    assert not (tmp_path / "flat").exists()


def test_an_empty_lmdb_is_named(caffe, lmdb_solver, cli):
    """Caffe's cursor throws std::bad_alloc on it: pycaffe said MemoryError."""
    from conftest import save_net

    save_net(caffe, lmdb_solver, NET, name="start")
    (lmdb_solver / "test_lmdb" / "data.mdb").unlink()
    (lmdb_solver / "test_lmdb" / "lock.mdb").unlink()
    write_lmdb(lmdb_solver / "test_lmdb", 0, 0)
    message = "net.prototxt: layer 'data' reads 'test_lmdb', an LMDB that holds no records"
    assert_one_line_error(cli("sensitivity", "-p", "net.prototxt", "-w", "start.caffemodel", "-o", "scan"),
                          message)
    assert_one_line_error(cli("train-dense", "--solver", "solver.prototxt", "-w", "start.caffemodel",
                              "--iterations", 1, "-o", "x.caffemodel"), message)
    assert not (lmdb_solver / "scan").exists() and not (lmdb_solver / "x.caffemodel").exists()
    result = cli("verify", "-w", "start.caffemodel", "--model", "net.prototxt")
    assert result.exit_code == 1 and f"FAIL  caffe test: {message}" in result.output, result.output


def test_lmdb_entries_reads_the_latest_meta_page(tmp_path):
    from caffedsd.netcheck import lmdb_entries

    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 20)
    assert lmdb_entries(tmp_path / "db") == 0  # no transaction yet
    for count in (3, 5):  # each commit writes the other meta page
        with env.begin(write=True) as txn:
            for i in range(count):
                txn.put(f"{count}-{i}".encode(), b"x")
        assert lmdb_entries(tmp_path / "db") == env.stat()["entries"] == 3 + (count == 5) * 5
    env.close()
    assert lmdb_entries(tmp_path) is None  # no data.mdb


def test_train_dense_test_iterations(lmdb_solver, cli):
    """--test-iterations N measures N TEST batches (the solver says 2)."""
    (lmdb_solver / "recipe.yaml").write_text("solver: solver.prototxt\nstages:\n  - dense: {iterations: 20}\n")
    assert cli("dsd", "--recipe", "recipe.yaml", "-o", "run").exit_code == 0
    result = cli("train-dense", "--solver", "solver.prototxt", "-w", "run/01-dense/model.caffemodel", "-n", 5,
                 "--test-iterations", 1, "-o", "dense.caffemodel")
    assert result.exit_code == 0, result.output
    measured = float(result.output.split("loss = ")[1].split(",")[0].split()[0])
    losses = {}
    for batches in (1, 2):
        code, log = run_caffe_test("net.prototxt", lmdb_solver / "dense.caffemodel", iterations=batches)
        assert code == 0, log[-2000:]
        losses[batches] = parse_test_outputs(log)["loss"]
    assert measured == pytest.approx(losses[1], abs=5e-5)  # printed to 4 decimals
    assert abs(losses[1] - losses[2]) > 1e-3, losses  # so the count did matter
    assert cli("train-dense", "--solver", "solver.prototxt", "-w", "run/01-dense/model.caffemodel",
               "--test-iterations", 0, "-o", "x.caffemodel").exit_code == 2


def test_an_interrupted_stage_on_lmdb_reads_what_an_uninterrupted_one_reads(lmdb_solver, device):
    """A Data layer fills its batches in a prefetch thread, with random crops
    and mirrors from its own RNG (and, on a GPU, copies them on its own
    stream); Dropout draws from Caffe's: replayed up to the checkpoint, the
    continued stage ends where an uninterrupted one does, bit for bit, and
    without the replay it does not."""
    from caffedsd.dsd import run_recipe
    from caffedsd.recipe import Recipe

    (lmdb_solver / "net.prototxt").write_text(NET.replace(
        'layer { name: "ip1"', 'layer { name: "drop1" type: "Dropout" bottom: "conv1" top: "conv1" }\n'
        'layer { name: "ip1"', 1))
    recipe = Recipe.from_dict({"solver": "solver.prototxt", "checkpoint_every": 10, "test_interval": 10,
                               "test_iterations": 1, "stages": [{"dense": {"iterations": 30}}]})
    run_recipe(recipe, lmdb_solver / "reference", gpu=device)
    for run, replay in (("run", True), ("restarted", False)):
        with pytest.raises(Stop):
            run_recipe(recipe, lmdb_solver / run, gpu=device, progress=stopping_at(15))
        run_recipe(recipe, lmdb_solver / run, gpu=device, replay=replay)
    stage = "01-dense"
    for name in ("tests.csv", "curve.csv", "model.caffemodel"):
        reference = (lmdb_solver / "reference" / stage / name).read_bytes()
        assert (lmdb_solver / "run" / stage / name).read_bytes() == reference, name
    assert (lmdb_solver / "restarted" / stage / "model.caffemodel").read_bytes() != \
        (lmdb_solver / "reference" / stage / "model.caffemodel").read_bytes()
