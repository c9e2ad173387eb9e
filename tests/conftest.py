import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from caffedsd.cli import main  # noqa: E402

# A small net with every kind of blob the pruner must tell apart: conv with
# bias, BatchNorm (3 blobs), Scale with bias, a bias-free InnerProduct and two
# InnerProducts sharing one weight blob through param { name }.
TINY_NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 1 }
                            bias_filler { type: "gaussian" std: 1 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "fc1" type: "InnerProduct" bottom: "conv1" top: "fc1"
        inner_product_param { num_output: 10 bias_term: false weight_filler { type: "gaussian" std: 1 } } }
layer { name: "fc2a" type: "InnerProduct" bottom: "fc1" top: "fc2a" param { name: "fc2_w" } param { name: "fc2_b" }
        inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "fc2b" type: "InnerProduct" bottom: "fc2a" top: "fc2b" param { name: "fc2_w" } param { name: "fc2_b" }
        inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 1 } } }
"""


# Fixtures that bring Caffe in (directly or through the fixtures built on them)
# and those that train a net: a test using one gets the marker.
_MARKING_FIXTURES = {"caffe": ("caffe",), "lenet": ("caffe", "slow")}


def pytest_collection_modifyitems(items):
    for item in items:
        used = getattr(item, "fixturenames", ())
        for marker in {m for fixture, markers in _MARKING_FIXTURES.items() if fixture in used for m in markers}:
            item.add_marker(marker)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # On the machine that is to show the GPU path works, a GPU test that
    # skips (no CUDA build, no CuPy, no GPU seen) shows nothing: a failure.
    report = (yield).get_result()
    if report.skipped and os.environ.get("CAFFEDSD_REQUIRE_GPU") == "1" and item.get_closest_marker("gpu"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"CAFFEDSD_REQUIRE_GPU=1 and this GPU test skipped: {reason}"


@pytest.fixture(scope="session")
def caffe():
    from caffedsd.caffe_env import import_caffe

    return import_caffe()


def save_net(caffe, folder, text, name="net", seed=0):
    """Write prototxt ``text``, build it in pycaffe with seeded random values in
    every blob (BatchNorm's scale factor 1), save; return (prototxt, weights)."""
    proto = folder / f"{name}.prototxt"
    proto.write_text(text)
    net = caffe.Net(str(proto), caffe.TEST)
    rng = np.random.default_rng(seed)
    for layer, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            blob.data[...] = rng.normal(size=blob.data.shape)
        if net.layers[list(net._layer_names).index(layer)].type == "BatchNorm":
            blobs[1].data[...] = np.abs(blobs[1].data) + 0.5
            blobs[2].data[...] = 1.0
    weights = folder / f"{name}.caffemodel"
    net.save(str(weights))
    return proto, weights


# A net unlike TINY_NET, for "masks/scans of another model" cases.
OTHER_NET = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }\n'
             'layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" '
             'inner_product_param { num_output: 2 } }\n')


@pytest.fixture
def other_model(caffe, tmp_path, cli):
    """Weights of OTHER_NET pruned by caffedsd: other/p.caffemodel, other/p.masks.h5."""
    folder = tmp_path / "other"
    folder.mkdir()
    _, weights = save_net(caffe, folder, OTHER_NET)
    assert cli("prune", "-w", weights, "-s", 0.5, "-o", folder / "p.caffemodel").exit_code == 0
    return weights


@pytest.fixture
def tiny(caffe, tmp_path):
    return save_net(caffe, tmp_path, TINY_NET)


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, [str(a) for a in args], prog_name="caffedsd", catch_exceptions=False)

    return run


# DummyData refills its gaussian blobs every forward: a tiny regression task
# that trains with no data files.
REGRESSION_NET = """
name: "reg"
layer { name: "data" type: "DummyData" top: "data" top: "target" include { phase: TRAIN }
        dummy_data_param { shape { dim: 8 dim: 2 dim: 6 dim: 6 } shape { dim: 8 dim: 5 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "data" type: "DummyData" top: "data" top: "target" include { phase: TEST }
        dummy_data_param { shape { dim: 4 dim: 2 dim: 6 dim: 6 } shape { dim: 4 dim: 5 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc1" type: "InnerProduct" bottom: "conv1" top: "fc1" param { name: "shared" }
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fc1" bottom: "target" top: "loss" }
"""


def write_solver(folder, solver_type="SGD", extra="momentum: 0.9", iter_size=1, snapshot=0, base_lr=0.05,
                 lr_policy='"fixed"', weight_decay=0.01, regularization="L2", prefix="snap"):
    """REGRESSION_NET and a solver for it in ``folder``; returns the solver path."""
    (folder / "net.prototxt").write_text(REGRESSION_NET)
    text = (f'net: "{folder / "net.prototxt"}"\ntype: "{solver_type}"\nbase_lr: {base_lr}\n{extra}\n'
            f'lr_policy: {lr_policy}\ngamma: 0.5\nstepsize: 3\nweight_decay: {weight_decay}\n'
            f'regularization_type: "{regularization}"\n'
            f'iter_size: {iter_size}\nmax_iter: 12\ntest_iter: 2\ntest_interval: 1000\n'
            f'snapshot: {snapshot}\nsnapshot_prefix: "{folder / prefix}"\nrandom_seed: 5\n')
    path = folder / "solver.prototxt"
    path.write_text(text)
    return path



ROOT = Path(__file__).resolve().parent.parent
LENET_ITERS = 300


def lenet_files(work, train_limit, test_limit, **solver_changes):
    """The repo's LeNet net and solver, rewritten to train on a slice of
    Fashion-MNIST converted into ``work``: (solver path, net path).
    ``solver_changes`` replace solver fields, e.g. max_iter=300."""
    from caffedsd.datasets import convert_fashion_mnist

    data = convert_fashion_mnist(work / "data", train_limit=train_limit, test_limit=test_limit)
    net = (ROOT / "prototxt" / "lenet_train_test.prototxt").read_text()
    net = net.replace("data/fashion-mnist/train.txt", data["train"]["list"])
    net = net.replace("data/fashion-mnist/test.txt", data["test"]["list"])
    (work / "lenet.prototxt").write_text(net)
    lines = []
    changes = dict(net=f'"{work / "lenet.prototxt"}"', snapshot_prefix=f'"{work / "lenet"}"',
                   **{k: str(v) for k, v in solver_changes.items()})
    for line in (ROOT / "solvers" / "lenet_solver.prototxt").read_text().splitlines():
        key = line.split(":")[0].strip()
        lines.append(f"{key}: {changes[key]}" if key in changes and not line.startswith("#") else line)
    (work / "solver.prototxt").write_text("\n".join(lines) + "\n")
    return work / "solver.prototxt", work / "lenet.prototxt"


@pytest.fixture(scope="session")
def lenet(tmp_path_factory):
    """LeNet trained briefly on a slice of Fashion-MNIST by the stock caffe
    binary: (folder, train_val prototxt, weights). Read-only for tests."""
    from caffedsd.caffe_env import caffe_binary

    work = tmp_path_factory.mktemp("lenet")
    solver, net = lenet_files(work, 4000, 500, max_iter=LENET_ITERS, test_interval=100000)
    proc = subprocess.run([str(caffe_binary()), "train", f"--solver={solver}"],
                          capture_output=True, text=True, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = work / f"lenet_iter_{LENET_ITERS}.caffemodel"
    assert weights.is_file()
    return work, net, weights


def can_mount_a_disk(mount):
    """Whether run_on_a_full_disk can mount its tmpfs on the folder ``mount``."""
    probe = ["unshare", "--mount", "mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(mount)]
    return shutil.which("unshare") is not None and subprocess.run(probe, capture_output=True).returncode == 0


def run_on_a_full_disk(argv, content, mount, cwd=".", spare_inodes=0, fill=None, leave=0, size="16m"):
    """Run ``argv`` in ``mount``/``cwd`` with a tmpfs on ``mount`` (an empty
    folder) holding a copy of ``content``'s files and ``spare_inodes`` more
    inodes, and, with ``fill`` (a path in it), that file written until no
    byte is free, less ``leave`` bytes; in a mount namespace of its own, so
    the file system and all written on it go when the process ends. Skips
    where no such namespace is allowed."""
    if not can_mount_a_disk(mount):
        pytest.skip("no tmpfs can be mounted here in a mount namespace (unshare --mount) for a small file system")
    inodes = 1 + len(list(Path(content).rglob("*"))) + spare_inodes + bool(fill)  # 1: the file system's root
    script = ('mount -t tmpfs -o "size=$1,nr_inodes=$2" tmpfs "$3" && cp -a "$4"/. "$3"/ && cd "$3" '
              '&& { [ -z "$5" ] || dd if=/dev/zero of="$5" bs=4096 2>/dev/null; [ -z "$5" ] || [ -s "$5" ]; } '
              '&& { [ -z "$5" ] || truncate -s "-$7" "$5"; } && cd "$6" && shift 7 && exec "$@"')
    return subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", size, str(inodes), str(mount),
                           str(content), str(fill or ""), str(cwd), str(leave), *map(str, argv)],
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, expect):
    """Bad input: exit status 2, one line naming what is wrong, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert expect in lines[0], lines[0]


def gpu_skip_reason():
    """Why GPU tests cannot run here, or None (CAFFEDSD_TEST_GPU picks the GPU)."""
    import shutil

    from caffedsd.caffe_env import pycaffe_gpu_pointers

    if not pycaffe_gpu_pointers():
        return "pycaffe is not a CUDA build (no Blob._gpu_data_ptr): run `make setup CUDA=1` on a GPU machine"
    smi = shutil.which("nvidia-smi")
    if smi is None or subprocess.run([smi, "-L"], capture_output=True).returncode != 0:
        return "no GPU (nvidia-smi sees none)"
    return None


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request):
    """None for the CPU, or the GPU id (the gpu case skips with the reason)."""
    if request.param == "cpu":
        yield None
        return
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    yield int(os.environ.get("CAFFEDSD_TEST_GPU", "0"))
    from caffedsd.caffe_env import import_caffe

    import_caffe()  # Caffe's mode is global: back to the CPU for the tests that follow


# os._exit inside atomic_open skips its clean-up, as a SIGKILL would.
KILLED_WRITE = ("import os, sys; from caffedsd.atomic import atomic_open\n"
                "with atomic_open(sys.argv[1], 'w') as handle:\n"
                "    handle.write('half'); handle.flush(); os._exit(9)\n")


def kill_while_writing(path):
    """Leave the temporary of a write of ``path`` killed midway; returns its name."""
    before = set(path.parent.iterdir())
    assert subprocess.run([sys.executable, "-c", KILLED_WRITE, str(path)]).returncode == 9
    (left,) = set(path.parent.iterdir()) - before
    assert left.name.startswith(f".{path.name}.") and left.name.endswith(".tmp") and left.read_text() == "half"
    return left.name


class Stop(Exception):
    pass


def stopping_at(iteration):
    """A progress protocol (run_recipe's ``progress``) that interrupts the
    run once ``iteration`` training iterations are done, as a kill would,
    once its checkpoints are written (a row's iter is the iteration a step
    started at, as Caffe's log numbers it)."""
    def progress(label, total, done):
        def callback(row, _):
            if row.get("iter") == iteration - 1 and "loss" in row:
                raise Stop
        callback.close = lambda: None
        return callback
    return progress


def where_mode_bits_bind(code, cwd):
    """Run python ``code`` in ``cwd`` where a file's mode bits are obeyed:
    as is for a user; for root, without the capabilities that override them."""
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root reads unreadable files, and setpriv is not here to stop that")
        # Root keeps what its inheritable and ambient sets hold across exec: those go too.
        command = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all",
                   "--bounding-set=-dac_override,-dac_read_search,-fowner", *command]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if os.geteuid() == 0 and "setpriv" in done.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {done.stderr.strip()}")
    return done
