"""Where pycaffe and the stock ``caffe`` binary are, and what they are.

pycaffe is imported only by the few functions that need it (``import_caffe``),
so the rest of caffedsd works, and starts fast, without it.
"""
import functools
import gc
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

from .errors import CaffeDsdWarning, CaffeUnavailable, InputError
from .layers import PRUNABLE_TYPES

_INSTALL_HINT = "run `make setup`, or set CAFFE_ROOT to a built Caffe tree (see README)"


def pycaffe_dir():
    """The folder of the importable ``caffe`` package, or None."""
    spec = importlib.util.find_spec("caffe")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def python_path(pydir, binary=False):
    """PYTHONPATH for a process whose Caffe imports the caffe package of
    ``pydir`` (a Python layer's module subclasses caffe.Layer), and the
    user's PYTHONPATH (where those modules are found). For the caffe
    binary, whose embedded Python is the one it was linked with, not this
    interpreter, also this one's site-packages (numpy, and what the layers
    import)."""
    import site

    paths = [str(pydir.parent)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    if binary:
        paths += [path for path in site.getsitepackages() if path not in paths]
    return os.pathsep.join(paths)


def caffe_log(verbose=False):
    """Caffe's glog: everything when ``verbose``, else warnings and worse
    unless GLOG_minloglevel says otherwise. Read once, when pycaffe loads."""
    os.environ["GLOG_minloglevel"] = "0" if verbose else os.environ.get("GLOG_minloglevel", "2")


def caffe_logs_info():
    """Whether Caffe's glog writes its INFO lines (--verbose, or
    GLOG_minloglevel=0): to stderr, line after line."""
    # glog reads the variable as strtol does: its leading digits, none as 0.
    digits = re.match(r"\s*([-+]?\d+)", os.environ.get("GLOG_minloglevel", "2"))
    return (int(digits.group(1)) if digits else 0) <= 0


def import_pycaffe():
    """pycaffe, imported quietly (see caffe_log), with no mode set: for what
    only reads its registries. Setting a mode makes Caffe's per-thread
    singleton, which in a CUDA build opens a context on the current GPU (0)
    for its cuBLAS handle; Caffe::SetDevice's own comment asks for
    cudaSetDevice before that, so that `--gpu 1` leaves GPU 0 alone."""
    caffe_log()
    try:
        import caffe
    except ImportError as exc:
        raise CaffeUnavailable(f"cannot import pycaffe ({exc}); {_INSTALL_HINT}") from None
    return caffe


def import_caffe(gpu=None):
    """Import pycaffe quietly (see caffe_log) and set the mode: CPU, or GPU
    ``gpu``."""
    caffe = import_pycaffe()
    # A Solver's Timer made its CUDA events, or not, by the mode when it was
    # built, and destroys them by the mode when it goes: one made on the CPU
    # and collected (solvers sit in reference cycles with their hooks) after
    # the switch to the GPU aborts the process in cudaEventDestroy. So what
    # is already garbage goes under the mode it was made in.
    gc.collect()
    if gpu is None:
        caffe.set_mode_cpu()
    else:
        check_gpu(gpu)
        caffe.set_device(int(gpu))
        caffe.set_mode_gpu()
    return caffe


def check_gpu(gpu, given=None):
    """Raise CaffeUnavailable for ``--gpu`` that Caffe would abort the
    process on: a CPU-only build ("Cannot use GPU in CPU-only Caffe"), or a
    GPU it cannot use (an index past the GPUs CUDA sees, no driver, all of
    an exclusive-mode GPU taken by another process), which a child process
    tries first (a two-layer net, forward), once per process and GPU.
    ``given``: where the GPU was asked for, when not by --gpu."""
    given = given or f"--gpu {gpu}"
    _, flavour, _ = _build_info(pycaffe_dir())
    if flavour == "CPU-only":
        raise CaffeUnavailable(f"{given}: this Caffe is a CPU-only build (see `caffedsd info`); "
                               "`make setup CUDA=1` builds one with CUDA on a GPU machine")
    failure = _gpu_failure(int(gpu))
    if failure is not None:
        raise CaffeUnavailable(f"{given}: Caffe cannot open this GPU: {failure}")


@functools.lru_cache(maxsize=None)
def _gpu_failure(gpu):
    """Caffe's reason for failing to open GPU ``gpu`` (as the parent numbers
    it), or None when it opens."""
    proc = _caffe_child("gpu", str(gpu))
    return None if proc.returncode == 0 else failure_reason(proc.stderr)


def check_net_runs(net, net_path, gpu=None, forward=True, batches=0):
    """Raise InputError for what Caffe would abort the process on while
    building ``net`` (a NetParameter read from ``net_path``) in the TEST
    phase: a layer type this Caffe lacks, a data or mean file it cannot
    read, said plainly (and, when the caller runs it ``forward``, a
    MemoryData layer); then anything else, in Caffe's words, from building
    it in a child process (which sees only GPU ``gpu``, when given), and
    from its data layers reading ``batches`` batches there: an image of
    another size or a corrupt record past the first batch."""
    check_net_parts(net, net_path, forward)
    build_in_child("net", net_path, net_path, python_layers=has_python_layers(net), gpu=gpu, batches=batches)


def check_net_parts(net, net_path, forward=True):
    """Raise InputError, said plainly, for what Caffe would abort the
    process on in building ``net`` (read from ``net_path``) in the TEST
    phase, before it is built: a layer type this Caffe lacks, a data or
    mean file it cannot read (and, for a net run ``forward``, a MemoryData
    layer). A TRAIN layer's type and data do not matter there."""
    from .netcheck import built_state, check_data_sources, check_layer_types

    states = [built_state(net, "TEST")]
    check_layer_types(net, net_path, layer_types(import_pycaffe()), states)
    check_data_sources(net, net_path, caffe_has_leveldb(), states, forward)


def check_weights_fit(net, net_path, model, weights, named=None, tie_remedy="give them one set of weights"):
    """Raise InputError unless the net ``net`` (read from ``net_path``)
    fits the caffemodel ``model`` (read from the file ``weights``; ``named``:
    the file to name instead, one it was converted from): by its layers, in
    the states it is loaded in (netcheck.check_pair), then as Caffe loads
    them in the TEST phase, as `caffe test` does; and layers the net ties
    must hold one set of weights (netcheck.check_tied_weights). Caffe aborts on a blob of
    another shape than the net gives it, which the prototxt alone does not
    tell for an input axis (an InnerProduct's inputs after the input was
    resized). A net whose TEST data is not on this machine, that has a layer
    type this Caffe lacks, or a Python layer (whose module, or the data it
    reads, may be elsewhere) is not built: its shapes are unknown here.
    Returns why it was not built (for warn_unbuilt, once the caller's own
    checks pass: a warning before an error line breaks the one line), or
    None."""
    from .netcheck import built_layers, check_pair, check_tied_weights, loaded_states

    loaded = loaded_states(net)
    check_pair(net, net_path, model, weights_path=named, states=loaded, strict=True)
    for state in loaded:
        check_tied_weights(built_layers(net, [state]), model, net_path, named, tie_remedy)
    if has_python_layers(net):
        return None  # (asked for with --allow-python-layers: no news)
    try:
        check_net_parts(net, net_path, forward=False)
    except InputError as exc:  # the weights can still be read
        return str(exc)
    build_in_child("net", net_path, net_path, weights=weights)
    return None


def warn_unbuilt(reason):
    """Say what check_weights_fit left unchecked, and why (``reason``; None:
    nothing)."""
    if reason is not None:
        warnings.warn(CaffeDsdWarning(f"{reason}; so Caffe's own check of the weights' input sizes is skipped"))


def has_python_layers(net):
    return any(layer.type == "Python" for layer in net.layer)


# The child of build_in_child and check_gpu. It loads pycaffe's extension
# alone, which takes a tenth of `import caffe` (skimage, scipy); a net with
# Python layers needs the package, whose modules subclass caffe.Layer. It
# builds nets in CPU mode, so that it holds no GPU memory; "gpu" tries a GPU,
# "probe" the same net on the CPU.
_SHAPES_MARK = "caffedsd-shapes: "
_CHILD = """
import sys
SHAPES_MARK, PRUNABLE_TYPES = %r, %r
first_path, extension, kind, path, python_layers, weights, batches = sys.argv[1:]
sys.path[0] = first_path  # -c's current folder: a Python layer's module is found where the parent finds it
if python_layers == "yes":
    import caffe
else:
    import importlib.util
    spec = importlib.util.spec_from_file_location("_caffe", extension)
    caffe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(caffe)
if kind == "gpu":  # path: the GPU's index
    caffe.set_device(int(path))
    caffe.set_mode_gpu()
else:
    caffe.set_mode_cpu()
if kind in ("gpu", "probe"):  # a forward pass of a two-layer net allocates and launches
    import os, tempfile
    with tempfile.TemporaryDirectory(prefix="caffedsd-") as work:
        probe = os.path.join(work, "probe.prototxt")
        with open(probe, "w") as handle:
            handle.write('layer { name: "d" type: "DummyData" top: "d" dummy_data_param { shape { dim: 1 } } }\\n'
                         'layer { name: "r" type: "ReLU" bottom: "d" top: "r" }\\n')
        caffe.Net(probe, 1)._forward(0, 1)
elif kind == "solver":  # reports the weight shapes of its nets' prunable layers
    import json
    solver = caffe.get_solver(path)
    shapes = {}
    for net in [solver.net, *solver.test_nets]:
        for name, layer in zip(net._layer_names, net.layers):
            if layer.type in PRUNABLE_TYPES and len(layer.blobs):
                shapes.setdefault(name, list(layer.blobs[0].shape))
    print("\\n" + SHAPES_MARK + json.dumps(shapes))  # a line of its own, whatever a Python layer printed
else:
    net = caffe.Net(path, 1)  # caffe.TEST
    if weights:
        net.copy_from(weights)
    # The layers without inputs, wherever they come: the data layers.
    data_layers = [i for i in range(len(net.layers)) if not len(net._bottom_ids(i))]
    for _ in range(int(batches)):
        for i in data_layers:
            net._forward(i, i)
        net.reshape()  # a batch of another size that a layer cannot take (an InnerProduct's inputs)
""" % (_SHAPES_MARK, sorted(PRUNABLE_TYPES))


def _caffe_child(kind, path, python_layers=False, visible=None, weights=None, batches=0):
    """The finished child Python that ran _CHILD (seeing GPUs ``visible``,
    as CUDA_VISIBLE_DEVICES, when given; a "net" filled with ``weights``,
    when given, whose data layers then read ``batches`` batches)."""
    pydir = pycaffe_dir()
    extension = _extension(pydir) if pydir is not None else None
    if extension is None:
        raise CaffeUnavailable(f"no pycaffe extension (_caffe*.so) found; {_INSTALL_HINT}")
    env = dict(os.environ, PYTHONPATH=python_path(pydir), GLOG_minloglevel="2")
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    # The parent's own first sys.path entry: its script's folder (not the
    # current folder, which `caffedsd` does not search, nor does `caffe train`).
    first_path = sys.path[0] if sys.path else ""
    args = [first_path, str(extension), kind, str(path), "yes" if python_layers else "no", str(weights or ""),
            str(batches)]
    return subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, env=env)


def build_in_child(kind, path, where, python_layers=False, gpu=None, weights=None, batches=0):
    """Build a TEST-phase net (``kind`` "net", filled from the caffemodel
    ``weights`` when given) or a solver with all its nets ("solver") from
    the prototxt ``path`` in a child Python, and raise InputError naming
    ``where`` if that fails; a solver's returns the weight shapes of its
    nets' prunable layers (_child_shapes). With ``gpu`` (the run's
    --gpu), the child sees that GPU alone: in a CUDA build Caffe opens a
    context for its cuBLAS handle on the first visible GPU even in CPU mode,
    and `--gpu 3` should leave GPU 0 alone. (A child that sees no GPU would
    abort: Caffe's data layers start their threads with cudaGetDevice.)

    Caffe aborts the whole process (glog's FATAL) on a net it cannot build:
    a bottom no layer makes, shapes a Concat, Eltwise or Crop cannot take,
    an empty LMDB. No clean-up runs after that, so a run folder it was
    making stays behind, and its marker then refuses the corrected rerun.
    Building once in a child (well under a second for LeNet or VGG16)
    finds all of these before anything is written. A "net" then reads
    ``batches`` batches, as a Data layer aborts on a record that does not
    fit the first batch's shape, however far in."""
    proc = _caffe_child(kind, path, python_layers, visible_devices(gpu, os.environ.get("CUDA_VISIBLE_DEVICES")),
                        weights, batches)
    if proc.returncode != 0:
        reason = failure_reason(proc.stderr)
        if proc.returncode < 0 and proc.returncode != -signal.SIGABRT:  # not glog's abort: killed, out of memory
            reason = f"the process building it {exit_text(proc.returncode)} ({reason})"
        # Its data layers read ahead while it is built: which of the two failed is not known.
        what = f"build {'its nets' if kind == 'solver' else 'the net'}"
        if weights:
            what += " with these weights"
        if batches:
            what += f" and read its {batches} TEST batch{'es' if batches > 1 else ''}"
        raise InputError(f"{where}: Caffe cannot {what}: {reason}")
    if kind == "solver":
        return _child_shapes(proc.stdout)


def _child_shapes(output):
    """{layer name: blob 0 shape} of a "solver" child's prunable layers, the
    train net's first (a Python layer may print lines of its own)."""
    lines = [line for line in output.splitlines() if line.startswith(_SHAPES_MARK)]
    shapes = json.loads(lines[-1][len(_SHAPES_MARK):]) if lines else {}
    return {name: tuple(shape) for name, shape in shapes.items()}


def visible_devices(gpu, visible):
    """CUDA_VISIBLE_DEVICES for a child that is to see only GPU ``gpu``, as
    the parent numbers it under its own ``visible`` (None when unset), or
    None to leave the child's as the parent's: no ``gpu``, or an index the
    parent's list does not have (the parent's own --gpu check, check_gpu,
    reports it)."""
    if gpu is None:
        return None
    gpu = int(gpu)
    if visible is None:
        return str(gpu)
    entries = [entry.strip() for entry in visible.split(",")]
    return entries[gpu] if 0 <= gpu < len(entries) and entries[gpu] else None


# glog's FATAL lines: "F1122 04:40:22.123456  1234 net.cpp:774] Check failed: ..."
_TRACEBACK = "Traceback (most recent call last):"
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(: |$)")
_FATAL = re.compile(r"^F\d{4,8} [\d:.]+\s+\d+ (\S+:\d+)\] (.*)$")


def failure_reason(log):
    """Caffe's own reason for failing: its ``Check failed`` or FATAL line
    (with the source location); else the exception of the last Python
    traceback (a Python layer's: Boost.Python then raises a SystemError
    of its own that says nothing); else the last line before the
    backtrace."""
    lines = [line.rstrip() for line in log.splitlines() if line.strip()]
    for line in lines:
        match = _FATAL.match(line)
        if match:
            return f"{match.group(2)} ({match.group(1)})"
    for line in lines:
        if "Check failed" in line:
            return line.strip()
    if _TRACEBACK in lines:
        # The last traceback's: of a chain ("raise ... from"), the one raised.
        start = len(lines) - 1 - lines[::-1].index(_TRACEBACK)
        raised = next((line for line in lines[start + 1:] if not line.startswith(" ")), None)
        # Boost.Python prints the exception of a Python layer's import or
        # class look-up bare, then raises that SystemError of its own.
        printed = [line for line in lines[:start] if _EXCEPTION.match(line)]
        if raised is not None and raised.startswith("SystemError: <Boost.Python") and printed:
            return printed[-1]
        if raised is not None:
            return raised
    # Skipped: the backtrace glog prints after an uncaught exception or a
    # signal ("*** Aborted at ...", "PC: @ 0x0 (unknown)", "@ 0x7f...").
    before = [line for line in lines if not line.lstrip().startswith(("@", "***", "PC: @"))]
    return before[-1].strip() if before else "no output"


def exit_text(code):
    """How a child process ended, from subprocess's returncode: its exit
    status, or the signal (a negative code; -6 is also glog's abort)."""
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"ended by {signal.Signals(-code).name}"
    except ValueError:
        return f"ended by signal {-code}"


def layer_types(caffe):
    """The layer types the imported pycaffe module ``caffe`` registers, or
    None when it cannot list them."""
    lister = getattr(caffe, "layer_type_list", None)
    return frozenset(lister()) if lister is not None else None


def pycaffe_gpu_pointers():
    """Whether this pycaffe's Blob has ``_gpu_data_ptr`` / ``_gpu_diff_ptr``
    (a CUDA build of a Caffe with BVLC PR #5904), which device hooks need."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        import caffe
    except ImportError:
        return False
    blob = caffe._caffe.Blob
    return hasattr(blob, "_gpu_data_ptr") and hasattr(blob, "_gpu_diff_ptr")


def caffe_binary(required=True):
    """Path of the stock ``caffe`` tool.

    Looked for in: $CAFFEDSD_CAFFE_BIN, $CAFFE_ROOT/build/tools, beside this
    Python (the venv's bin, where `make setup` links it), next to pycaffe's
    tree, then PATH.
    """
    candidates = []
    if os.environ.get("CAFFEDSD_CAFFE_BIN"):
        given = Path(os.environ["CAFFEDSD_CAFFE_BIN"])
        # Set on purpose: another caffe found instead would be used without a word.
        if not (given.is_file() and os.access(given, os.X_OK)):
            raise CaffeUnavailable(f"CAFFEDSD_CAFFE_BIN={given}: not an executable file")
        return given
    if os.environ.get("CAFFE_ROOT"):
        root = Path(os.environ["CAFFE_ROOT"])
        candidates += [root / "build" / "tools" / "caffe", root / "bin" / "caffe"]
    candidates.append(Path(sys.prefix) / "bin" / "caffe")
    pydir = pycaffe_dir()
    if pydir is not None:
        tree = pydir.resolve().parent.parent
        candidates += [tree / "build" / "tools" / "caffe", tree / "bin" / "caffe"]
    found = shutil.which("caffe")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    if required:
        raise CaffeUnavailable(f"no stock `caffe` binary found; {_INSTALL_HINT}")
    return None


def _stamp(pydir):
    """(build folder, its .complete stamp's text) of a Caffe built by
    tools/build_caffe.sh, or None."""
    for parent in pydir.resolve().parents:
        stamp = parent / ".complete"
        if stamp.is_file():
            return parent, stamp.read_text()
    return None


def _extension(pydir):
    """pycaffe's compiled extension (_caffe.so, or _caffe.cpython-*.so), or None."""
    return next(iter(pydir.glob("_caffe*.so")), None)


def _linked_libs(pydir):
    """ldd's list of the libraries pycaffe's extension loads, or None."""
    so = _extension(pydir)
    if so is None or not shutil.which("ldd"):
        return None
    return subprocess.run(["ldd", str(so)], capture_output=True, text=True).stdout


def _build_info(pydir):
    """Source, CPU/GPU flavour, and for a CUDA build made by caffedsd its
    CUDA version and GPU arch, of the Caffe we run on."""
    if pydir is None:
        return None, None, {}
    stamped = _stamp(pydir)
    if stamped is not None:
        parent, text = stamped
        fields = dict(word.split("=", 1) for word in text.split()[1:] if "=" in word)
        cuda = {key: fields[key] for key in ("cuda", "arch") if key in fields}
        flavour = "CPU-only" if fields.get("cpu_only") == "ON" else "GPU"
        return f"built by caffedsd from {text.split()[0]} in {parent}", flavour, cuda
    libs = _linked_libs(pydir)
    flavour = None if libs is None else ("GPU" if "libcudart" in libs or "libcublas" in libs else "CPU-only")
    source = f"CAFFE_ROOT={os.environ['CAFFE_ROOT']}" if os.environ.get("CAFFE_ROOT") else "existing pycaffe"
    return source, flavour, {}


def cpu_only_build():
    """Whether the Caffe we run on is known to be a CPU-only build."""
    return _build_info(pycaffe_dir())[1] == "CPU-only"


def built_by_caffedsd():
    """Whether the Caffe we run on is caffedsd's own build of stock Caffe
    (tools/build_caffe.sh), whose features are known exactly."""
    pydir = pycaffe_dir()
    return pydir is not None and _stamp(pydir) is not None


def caffe_has_leveldb():
    """Whether the Caffe we run on reads LevelDB (data_param's default
    backend): caffedsd's own builds do not (USE_LEVELDB=OFF); another Caffe
    does when it links libleveldb. None when not known (a static link)."""
    if built_by_caffedsd():
        return False
    pydir = pycaffe_dir()
    libs = _linked_libs(pydir) if pydir is not None else None
    return True if libs is not None and "libleveldb" in libs else None


def info():
    """What caffedsd runs on, as plain data."""
    import numpy
    from google.protobuf.internal import api_implementation

    pydir = pycaffe_dir()
    binary = caffe_binary(required=False)
    version = None
    if pydir is not None:
        try:
            version = import_caffe().__version__
        except Exception as exc:  # a broken pycaffe is reported, not raised
            version = f"unimportable: {exc}"
    source, flavour, cuda = _build_info(pydir)
    from . import __version__
    from .hooks import device_hooks_available

    hooks_ok, hooks_why = device_hooks_available() if pydir is not None else (False, "no pycaffe")
    return {
        "caffedsd": __version__,
        "caffe_version": version,
        "caffe_source": source,
        "caffe_build": flavour,
        "cuda": cuda.get("cuda"),
        "cuda_arch": f"sm_{cuda['arch']}" if "arch" in cuda else None,
        "device_hooks": "yes" if hooks_ok else f"no: {hooks_why}",
        "pycaffe": str(pydir) if pydir else None,
        "caffe_binary": str(binary) if binary else None,
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "protobuf": importlib.metadata.version("protobuf"),
        "protobuf_backend": api_implementation.Type(),
    }
