"""The solver-hook model on real pycaffe solvers: one dispatcher per solver,
declared order (masks last), detach, the GPU fallback, and the device
backend against the host results (gpu-marked)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from caffedsd.force import ForceRegularizer, ForceSpec, force_gradient
from caffedsd.hooks import ORDER_FORCE, ORDER_MASK, ORDER_SHARING, Hook, HookDispatcher, device_hooks_available
from caffedsd.maskfile import load_masks
from caffedsd.mask_enforcer import MaskEnforcer
from caffedsd.weight_sharing import WeightSharing, cluster
from conftest import gpu_skip_reason, write_solver

PACKAGE = Path(__file__).resolve().parent.parent / "caffedsd"


class Recorder(Hook):
    def __init__(self, name, order, log):
        self.name, self.order, self.log = name, order, log

    def bind(self, net, backend):
        self.log.append(("bind", self.name, backend.name))

    def on_start(self):
        self.log.append(("start", self.name))

    def on_gradients_ready(self):
        self.log.append(("grad", self.name))


def test_hooks_run_in_declared_order_and_detach_disarms(caffe, tmp_path):
    solver = caffe.get_solver(str(write_solver(tmp_path)))
    log = []
    mask, share, force = (Recorder("mask", ORDER_MASK, log), Recorder("share", ORDER_SHARING, log),
                          Recorder("force", ORDER_FORCE, log))
    for hook in (mask, share, force):  # attached in the wrong order on purpose
        hook.attach(solver)
    dispatcher = HookDispatcher.for_solver(solver)
    assert dispatcher.hooks == (force, share, mask)
    assert [entry[2] for entry in log] == ["host"] * 3
    log.clear()
    solver.step(1)
    assert log == [("start", "force"), ("start", "share"), ("start", "mask"),
                   ("grad", "force"), ("grad", "share"), ("grad", "mask")]
    share.detach()
    log.clear()
    solver.step(1)
    assert log == [("start", "force"), ("start", "mask"), ("grad", "force"), ("grad", "mask")]
    dispatcher.detach()
    assert not mask.attached and dispatcher.hooks == ()
    log.clear()
    solver.step(2)
    assert log == []  # disarmed: still registered with Caffe, doing nothing


def test_the_dispatcher_holds_the_only_add_callback():
    calls = {path.name: path.read_text().count(".add_callback(") for path in PACKAGE.glob("*.py")}
    assert {name: n for name, n in calls.items() if n} == {"hooks.py": 1}


def test_masks_have_the_last_word_over_the_force(caffe, tmp_path, cli):
    """Masks attached first, the force after: the dispatcher still runs the
    force first, so pruned weights stay exactly 0.0 although the force pulls
    them (a force run after the masks would move them)."""
    solver_path = write_solver(tmp_path, weight_decay=0)
    solver = caffe.get_solver(str(solver_path))
    solver.net.save(str(tmp_path / "dense.caffemodel"))
    assert cli("prune", "-w", tmp_path / "dense.caffemodel", "-s", 0.6, "-o", tmp_path / "p.caffemodel").exit_code == 0
    masks = load_masks(tmp_path / "p.masks.h5").per_layer()
    solver.net.copy_from(str(tmp_path / "p.caffemodel"))
    MaskEnforcer(masks).attach(solver)
    ForceRegularizer(ForceSpec(5.0, "constant")).attach(solver)
    grads = []
    # Registered after the dispatcher, so it sees the gradient the update gets.
    solver.add_callback(lambda: None, lambda: grads.append(solver.net.params["conv1"][0].diff.copy()))
    solver.step(3)
    w = solver.net.params["conv1"][0].data
    assert np.count_nonzero(w[~masks["conv1"]]) == 0
    assert np.count_nonzero(w[masks["conv1"]]) == masks["conv1"].sum()
    assert all(np.count_nonzero(g[~masks["conv1"]]) == 0 for g in grads)
    # The control: the force alone does pull pruned positions.
    assert np.count_nonzero(force_gradient(w, "constant")[~masks["conv1"]]) > 0
    HookDispatcher.for_solver(solver).detach()


def test_gpu_mode_without_device_hooks_warns(caffe, tmp_path):
    """When a hook is added: a phase without hooks (train-dense, a prune
    stage's TEST pass) was warned of a PCIe cost it does not pay. The
    library warns (a CaffeDsdWarning), each time; a command shows the same
    warning once, as one line (cli._show_warning)."""
    ok, reason = device_hooks_available()
    if ok:
        pytest.skip("device hooks are available here: no fallback to test")
    solver = write_solver(tmp_path)
    code = ("import sys, warnings\n"
            "from caffedsd.caffe_env import import_pycaffe\n"
            "from caffedsd.errors import CaffeDsdWarning\n"
            "from caffedsd.hooks import HookDispatcher, select_backend\n"
            "from caffedsd.mask_enforcer import MaskEnforcer\n"
            "caffe = import_pycaffe()\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    warnings.simplefilter('always')\n"
            "    print(select_backend(0).name, select_backend(0).name, select_backend(None).name, len(seen))\n"
            f"    solver = caffe.get_solver({str(solver)!r})\n"
            "    for _ in range(2):\n"
            "        HookDispatcher(select_backend(0)).add(MaskEnforcer({}), solver)\n"
            "for each in seen:\n"
            "    print(each.category.__name__, each.message)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["host", "host", "host", "0"]  # choosing the backend is not yet a cost
    assert len(lines) == 3 and all(line.startswith("CaffeDsdWarning GPU mode without device hooks") for line in
                                   lines[1:]), proc.stdout
    assert reason in lines[1] and "16 bytes per hooked weight per step" in lines[1]


# ------------------------------------------------------------ device (GPU) --


def test_device_hooks_run_on_the_legacy_default_stream():
    """Caffe launches on cudaStreamLegacy; CuPy 14 deprecates ExternalStream,
    which named it, for the CUDA stream protocol (no GPU needed)."""
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (caffedsd[gpu])")
    import warnings

    from caffedsd.device import legacy_stream

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stream = legacy_stream(0)
    # CuPy 14's Stream.from_external gives a Stream; before it, an
    # ExternalStream, which is no Stream subclass there.
    kinds = (cupy.cuda.Stream,) + ((cupy.cuda.ExternalStream,) if hasattr(cupy.cuda, "ExternalStream") else ())
    assert isinstance(stream, kinds) and stream.ptr == 1  # cudaStreamLegacy


@pytest.fixture
def gpu_solver(caffe, tmp_path):
    """A solver in GPU mode whose net has run forward and backward once, so
    weights and gradients are filled (on the GPU), and the GPU id."""
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    ok, why = device_hooks_available()
    if not ok:
        pytest.skip(f"no device hooks: {why}")
    from caffedsd.caffe_env import import_caffe

    gpu = 0
    import_caffe(gpu)
    try:
        solver = caffe.get_solver(str(write_solver(tmp_path)))
        solver.net.forward()
        solver.net.backward()
        yield solver, gpu
    finally:
        import_caffe()


def layer_force(w, force_type, groups, transpose):
    """dE/dW of a layer whose filters are its rows in ``groups`` sets, or its columns."""
    if transpose:
        return force_gradient(w.T, force_type).T
    return np.concatenate([force_gradient(part, force_type) for part in np.split(w, groups)])


# conv1 declared as 2 groups of 2 filters, fc1's 5 x 64 blob as 64 filters of 5:
# the hook takes the layouts it is given, as it cannot read them from pycaffe.
LAYOUTS = [pytest.param({}, id="plain"), pytest.param({"conv1": (2, False), "fc1": (1, True)}, id="grouped-transposed")]


def check_force(solver, gpu, backend, force_type, decay_type, layouts):
    params = {name: solver.net.params[name][0] for name in ("conv1", "fc1")}
    w = {name: blob.data.copy() for name, blob in params.items()}
    d0 = {name: blob.diff.copy() for name, blob in params.items()}
    spec = ForceSpec(0.5, force_type, decay_type, mults=(("fc1", 0.25),))
    hook = ForceRegularizer(spec, iter_size=2, layouts=layouts).attach(solver, gpu, backend=backend)
    assert HookDispatcher.for_solver(solver).backend.name == backend
    HookDispatcher.for_solver(solver).on_gradients_ready()
    for name, mult in (("conv1", 0.5), ("fc1", 0.125)):
        grad = layer_force(w[name], force_type, *layouts.get(name, (1, False)))
        # iter_size 2: the fixed force is doubled against Caffe's division; the
        # adaptive one scales with the accumulated gradient d0 already.
        ratio = np.linalg.norm(d0[name]) / np.linalg.norm(grad) if decay_type == "adaptive" else 2.0
        np.testing.assert_allclose(params[name].diff, d0[name] + mult * ratio * grad, rtol=1e-5, atol=1e-6)
        assert np.array_equal(params[name].data, w[name])  # weights untouched
    hook.detach()


@pytest.mark.parametrize("layouts", LAYOUTS)
@pytest.mark.parametrize("force_type,decay_type", [("degradation", "fixed"), ("constant", "adaptive")])
def test_force_on_the_host_follows_the_layouts(caffe, tmp_path, force_type, decay_type, layouts):
    solver = caffe.get_solver(str(write_solver(tmp_path)))
    solver.net.forward()
    solver.net.backward()
    check_force(solver, None, "host", force_type, decay_type, layouts)


@pytest.mark.gpu
@pytest.mark.parametrize("layouts", LAYOUTS)
@pytest.mark.parametrize("force_type,decay_type", [("degradation", "fixed"), ("constant", "adaptive")])
def test_force_on_the_device_matches_the_host(gpu_solver, force_type, decay_type, layouts):
    solver, gpu = gpu_solver
    check_force(solver, gpu, "device", force_type, decay_type, layouts)


def check_sharing(solver, gpu, backend):
    blob = solver.net.params["conv1"][0]
    w, d0 = blob.data.copy(), blob.diff.copy()
    keep = np.abs(w) > np.median(np.abs(w))
    labels, codebook = cluster(w, keep, 2)
    hook = WeightSharing({"conv1": (labels, codebook)}).attach(solver, gpu, backend=backend)
    dispatcher = HookDispatcher.for_solver(solver)
    dispatcher.on_gradients_ready()
    kept = labels >= 0
    sums = np.bincount(labels[kept], weights=d0.reshape(-1)[kept], minlength=codebook.size)
    expected = d0.reshape(-1).copy()
    expected[kept] = sums[labels[kept]]
    np.testing.assert_allclose(blob.diff.reshape(-1), expected, rtol=1e-5, atol=1e-6)
    data = blob.data.reshape(-1)
    assert np.array_equal(data[kept], codebook[labels[kept]])  # weights start at their centroids
    assert np.array_equal(data[~kept], w.reshape(-1)[~kept])
    # An update that rounds members of cluster 0 apart (as BLAS's vector
    # lanes and tail do): each forward starts from the cluster's mean again,
    # and the other clusters, still equal, are left exactly as they are.
    drifted = data.copy()
    members = np.flatnonzero(labels == 0)
    drifted[members[::2]] = np.nextafter(drifted[members[::2]], np.float32(np.inf))
    blob.data[...] = drifted.reshape(blob.data.shape)
    dispatcher.on_start()
    data = blob.data.reshape(-1)
    assert np.unique(data[members]).size == 1
    assert data[members[0]] == np.float32(drifted[members].astype(np.float64).mean())
    others = kept & (labels != 0)
    assert np.array_equal(data[others], codebook[labels[others]]) and np.array_equal(data[~kept], w.reshape(-1)[~kept])
    blob.data[...] = drifted.reshape(blob.data.shape)
    dispatcher.settle()  # at the end of training too
    assert np.unique(blob.data.reshape(-1)[members]).size == 1
    hook.detach()


def test_weight_sharing_on_the_host_keeps_members_equal(caffe, tmp_path):
    solver = caffe.get_solver(str(write_solver(tmp_path)))
    solver.net.forward()
    solver.net.backward()
    check_sharing(solver, None, "host")


@pytest.mark.gpu
def test_weight_sharing_on_the_device_matches_the_host(gpu_solver):
    solver, gpu = gpu_solver
    check_sharing(solver, gpu, "device")


@pytest.mark.gpu
def test_masks_on_the_device_write_exact_zeros(gpu_solver):
    solver, gpu = gpu_solver
    blob = solver.net.params["fc1"][0]
    w, d0 = blob.data.copy(), blob.diff.copy()
    mask = np.abs(w) > np.median(np.abs(w))
    enforcer = MaskEnforcer({"fc1": mask}).attach(solver, gpu, backend="device")
    HookDispatcher.for_solver(solver).on_gradients_ready()
    data, diff = blob.data, blob.diff
    assert np.array_equal(data[mask], w[mask]) and np.array_equal(diff[mask], d0[mask])
    assert not np.signbit(data[~mask]).any() and np.count_nonzero(data[~mask]) == 0  # +0.0
    assert np.count_nonzero(diff[~mask]) == 0
    enforcer.detach()


def test_build_stamp_names_cuda_version_and_arch(tmp_path):
    from caffedsd.caffe_env import _build_info

    for stamp, expect in [("debian-source:1.0 cpu_only=OFF cuda=13.0 arch=90", ("GPU", {"cuda": "13.0", "arch": "90"})),
                          ("debian-source:1.0 cpu_only=ON", ("CPU-only", {}))]:
        prefix = tmp_path / expect[0]
        (prefix / "pycaffe" / "caffe").mkdir(parents=True)
        (prefix / ".complete").write_text(stamp + "\n")
        source, flavour, cuda = _build_info(prefix / "pycaffe" / "caffe")
        assert (flavour, cuda) == expect and source.startswith("built by caffedsd from debian-source:1.0")


@pytest.mark.gpu
def test_a_cpu_solver_collected_after_the_switch_to_the_gpu_does_not_abort(tmp_path):
    """Caffe's Solver keeps a Timer whose CUDA events exist only if it was
    built in GPU mode, and are destroyed if the mode is GPU when it goes: a
    CPU solver left in a reference cycle, collected after the switch,
    aborted the process in cudaEventDestroy (the first H100 run, in the
    tests that run a command on the CPU and then on the GPU)."""
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    code = ("import gc, sys\n"
            "from caffedsd.caffe_env import import_caffe\n"
            "caffe = import_caffe()\n"
            "gc.disable()  # the collection comes where the package makes it, not by chance\n"
            "cycle = [caffe.get_solver(sys.argv[1])]\n"
            "cycle.append(cycle)\n"
            "del cycle\n"
            "import_caffe(0)\n"
            "gc.collect()\n"
            "print('collected')\n")
    result = subprocess.run([sys.executable, "-c", code, str(write_solver(tmp_path))], capture_output=True, text=True)
    assert result.returncode == 0 and "collected" in result.stdout, result.stderr[-2000:]
