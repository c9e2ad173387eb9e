"""Pruning sensitivity: prune one layer at a time, measure the TEST phase.

For every prunable layer and sparsity, starting from the original weights
every time: prune that layer alone, run N TEST iterations, record every
output (Accuracy and loss tops), put the layer back. The Net is built once
and only the layer under test is touched.

The TEST batches are read once and replayed for every point when they fit
in memory (``cache_limit``), so every point, and the sparsity-0 baseline,
sees exactly the batches a fresh ``caffe test --iterations N`` sees. When
they do not fit, the data layers run for every point ("streamed" data), and
points see the same batches only if N batches cover whole epochs: every
streamed pass checks the digest of the examples it read, and one that read
others (a random TEST layer, N batches that are not whole epochs) is refused.

A scan folder keeps finished points in points.jsonl; an interrupted scan
resumes without running them again, provided its net file, weights and the
examples its TEST data layers read are the same (a digest of the examples,
taken by reading them once before the scan; not of the files, which a
prototxt names only). A scan of other layers or sparsities, measured the
same way (also the same criterion, seed and iterations), may take the
folder over with --force and reuse its points.
``--jobs K`` runs K worker processes, each with its own Net, over disjoint
sets of layers; each reads the TEST batches itself, and measures only if
their digest is the scan's (a TEST layer that draws at random is refused).
"""
import contextlib
import ctypes
import functools
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import report
from .atomic import read_input
from .caffe_env import check_gpu, check_net_runs, exit_text
from .caffe_proto import read_net_prototxt
from .caffemodel import check_finite, file_sha256, read_caffemodel
from .errors import CaffeDsdError, InputError, WorkerDied
from .globrules import GlobRules, number_list
from .layers import prunable_targets
from .maskfile import masks_path_for, structure_fingerprint
from .masks import SPARSITY_CRITERIA, apply_mask, compute_mask, get_criterion, layer_rng, zero_count
from .netcheck import (KINDS, built_layers, built_state, check_blob_shapes, check_pair, check_tied_weights, name_list,
                       output_feeds, output_kinds)
from .runfolder import COUNT, FRACTION, NAME, NUMBER, SECONDS, Kind, RunFolder, optional, table
from .replay import data_layers

FORMAT = "caffedsd-sensitivity"
DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CACHE_LIMIT = 1 << 30
POINTS = "points.jsonl"  # the scan folder's journal of finished points
_POINT_KEYS = ("layer", "sparsity", "metrics", "pruned")  # what _result reads of each
# A broken output: null, or NaN or Infinity as scans of earlier versions wrote it.
_OUTPUT = Kind("a number or null", lambda v: v is None or type(v) is float or NUMBER(v))
_POINT_KINDS = {"layer": optional(NAME), "sparsity": FRACTION, "metrics": table(_OUTPUT), "pruned": COUNT,
                "zeros": COUNT, "eval_seconds": SECONDS, "data": NAME}
SCAN_RECORD = "scan.json"  # the scan folder's model, weights and settings


def parse_sparsities(text):
    """'0.1,0.2,...' -> a tuple; each in [0, 1), strictly increasing."""
    values = tuple(value + 0.0 for value in number_list(text, "--sparsities"))  # -0 as 0
    for value in values:
        if not 0 <= value < 1:
            raise InputError(f"--sparsities {text!r}: {value:g} is outside [0, 1)")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise InputError(f"--sparsities {text!r}: must be strictly increasing")
    return values


@dataclass(frozen=True)
class ScanConfig:
    """What a scan measures; a scan folder is only continued with the same."""

    model: str
    weights: str
    weights_sha256: str
    fingerprint: str
    layers: tuple
    sparsities: tuple
    criterion: str
    iterations: int
    seed: int
    net_sha256: str  # the net file's bytes: its TEST data layers and batch size are the measurement
    data_sha256: str  # the examples its TEST data layers read (None: not known), which the file names only

    def key(self):
        data = asdict(self)
        data.pop("model")
        data.pop("weights")
        return data


def measured_alike(found, config, apart_from=()):
    """Whether a scan folder's marker record ``found`` measured its points as
    ``config`` measures them: then every point in it is one of config's,
    whatever layers and sparsities either scan asked for. ``apart_from``:
    other key fields to leave out of the comparison; both must have them."""
    # A seed the criterion does not draw with measures nothing else (scans
    # made before it was recorded as 0 for them hold the --seed given).
    unseeded = () if get_criterion(config.criterion).seeded else ("seed",)

    def how(key):
        return {name: value for name, value in json.loads(json.dumps(key)).items()
                if name not in ("layers", "sparsities", *unseeded, *apart_from)}

    old = found.get("config")
    return (found.get("format") == FORMAT and isinstance(old, dict) and all(name in old for name in apart_from)
            and how(old) == how(config.key()))


# Key fields that records of earlier scans lack, in words.
_UNRECORDED = {"net_sha256": "the net file", "data_sha256": "the TEST examples"}


def _unrecorded(found, config):
    """What of ``config`` the marker record ``found`` of an earlier
    caffedsd does not say, in words, where all it says is config's; else
    nothing."""
    old = found.get("config")
    if not isinstance(old, dict):
        return []
    missing, key = [name for name in _UNRECORDED if name not in old], config.key()
    filled = {**found, "config": {**old, **{name: key[name] for name in missing}}}
    return [_UNRECORDED[name] for name in missing] if missing and measured_alike(filled, config) else []


def test_output_kinds(net, net_path):
    """netcheck.output_kinds of ``net`` as caffe.Net builds it for TEST,
    which must have an accuracy or a loss to measure."""
    kinds, primary = output_kinds(net, built_state(net, "TEST"))
    if not kinds:
        raise InputError(f"{net_path}: no Accuracy or loss output in the TEST phase; give the train_val "
                         "prototxt with a TEST data layer")
    return kinds, primary


def examples_sha256(batches):
    """sha256 of the examples in ``batches`` (dicts {top: array}, the data
    layers' outputs of one forward pass each), taken as a set with repeats:
    the same examples read in another order give the same digest; a changed
    value, or a label moved to another image, does not. A batch whose tops
    disagree on their first axis is hashed whole, as one example."""
    return _combined([digest for batch in batches for digest in _example_digests(batch)])


def _example_digests(batch):
    """examples_sha256's digest of each example in one batch."""
    tops = sorted(batch)
    sizes = {batch[top].shape[0] if batch[top].ndim else None for top in tops}
    items = [{top: batch[top] for top in tops}]
    if len(sizes) == 1 and None not in sizes:
        items = [{top: batch[top][i] for top in tops} for i in range(sizes.pop())]
    digests = []
    for item in items:
        digest = hashlib.sha256()
        for top, value in item.items():
            digest.update(f"{top}{value.shape}{value.dtype.str}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        digests.append(digest.digest())
    return digests


def _combined(digests):
    return hashlib.sha256(b"".join(sorted(digests))).hexdigest()


def _runs(net):
    """A pycaffe Net's layers as runs (reads, first, last, tops) of
    consecutive layers: ``reads`` for layers without inputs, the data
    layers (and DummyData, Input), wherever they come; ``tops``: what
    those read."""
    runs = []
    reading = set(data_layers(net))
    for index, name in enumerate(net._layer_names):
        reads = index in reading
        tops = list(net.top_names[name]) if reads else []
        if runs and runs[-1][0] == reads:
            runs[-1][2] = index
            runs[-1][3] += tops
        else:
            runs.append([reads, index, index, tops])
    return [tuple(run) for run in runs]


def _read_batches(net, runs, iterations):
    """What the data layers of ``runs`` give in ``iterations`` forward passes,
    one dict {top: array} each (they need no other layer run)."""
    for _ in range(iterations):
        batch = {}
        for reads, first, last, tops in runs:
            if reads:
                net._forward(first, last)
                batch.update({top: net.blobs[top].data.copy() for top in tops})
        yield batch


def scan_data_sha256(model_path, iterations, gpu=None):
    """examples_sha256 of the ``iterations`` batches a fresh TEST net of
    ``model_path`` reads (what a scan measures on). No weights are loaded:
    only the data layers run. On GPU ``gpu`` when given, the scan's: in CUDA builds Caffe opens
    its cuBLAS handle even in CPU mode, on GPU 0 unless a device is set."""
    from .caffe_env import import_caffe

    caffe = import_caffe(gpu)
    net = caffe.Net(str(model_path), caffe.TEST)
    return examples_sha256(_read_batches(net, _runs(net), iterations))


class Evaluator:
    """A TEST-phase pycaffe Net with its N batches, and the one layer touched.

    ``data_sha256``: the examples_sha256 its batches must have (a --jobs
    worker's: the scan's); None: the batches it reads first. ``self.data_sha256``
    is then theirs (None when they are streamed, until the first pass);
    ``expect`` sets it later, with the read it was taken of."""

    def __init__(self, model_path, weights_path, iterations, gpu=None, cache_limit=CACHE_LIMIT, sha256=None,
                 data_sha256=None):
        from .caffe_env import import_caffe

        caffe = import_caffe(gpu)
        self.model_path = model_path
        self.iterations = iterations
        self.net = caffe.Net(str(model_path), caffe.TEST)
        model = read_caffemodel(weights_path)
        check_blob_shapes(self.net, model, model_path)
        # A group of layers tied by a param name is named by its first
        # layer, which may be one the TEST net lacks (phase TRAIN only): its
        # blob is then the one a tied layer the TEST net has holds.
        self._holders = {target.owner: next((name for name in target.layers if name in self.net.params),
                                            target.owner) for target in prunable_targets(model)}
        self.net.copy_from(str(weights_path))
        # Each evaluator (a --jobs worker, plan --verify's) loads the file
        # again, after its digest was taken: what it measures must be of the
        # weights that digest names.
        if sha256 is not None and file_sha256(weights_path) != sha256:
            raise InputError(f"{weights_path}: changed while it was read (no longer the sha256 taken at the "
                             "start); run again once the file stays as it is")
        self.outputs = list(self.net.outputs)
        if not self.outputs:
            raise InputError(f"{model_path}: its TEST phase has no output to measure (every top is another "
                             "layer's bottom: a Silence layer's, say)")
        self.runs = _runs(self.net)
        self.data_layer_names = [self.net._layer_names[index] for reads, first, last, _ in self.runs if reads
                                 for index in range(first, last + 1)]
        self.batches, self.data_sha256 = None, data_sha256
        self.digest_source = "the read the scan's digest was taken of"
        size = sum(self.net.blobs[top].data.nbytes for _, _, _, tops in self.runs for top in tops) * iterations
        if size <= cache_limit:
            self.batches = list(_read_batches(self.net, self.runs, iterations))
            digest = examples_sha256(self.batches)
            # A worker's Net reads the data anew: a layer that draws at
            # random (DummyData's fillers, mirror, shuffle) gives it other
            # batches than the baseline's, and every drop it measured
            # would be partly the data's.
            if data_sha256 is not None and digest != data_sha256:
                raise InputError(f"{model_path}: {self._data_layers_text()} gave other examples when a --jobs "
                                 f"worker read its {iterations} batches again (random fillers, mirror or "
                                 "shuffle, or data rewritten meanwhile), so its points would not be measured "
                                 "on the baseline's batches; use --jobs 1, or TEST data that reads the same "
                                 "every time")
            self.data_sha256 = digest
        self.data_mode = "cached" if self.batches is not None else "streamed"

    def expect(self, data_sha256, source):
        """Passes must read the examples of ``data_sha256``; ``source``
        names the read it was taken of, in the message when one does not."""
        self.data_sha256, self.digest_source = data_sha256, source

    def _data_layers_text(self):
        names = ", ".join(f"'{name}'" for name in self.data_layer_names)
        return f"TEST data layer{'s' if len(self.data_layer_names) > 1 else ''} {names}"

    def run(self):
        """{output: mean over the N batches}, as `caffe test` reports a
        one-valued output; a many-valued one (per-class accuracy) is the
        mean of its values, where `caffe test` prints each."""
        sums = {name: 0.0 for name in self.outputs}
        digests = []
        for i in range(self.iterations):
            read = {}
            for reads, first, last, tops in self.runs:
                if reads and self.batches is not None:
                    for top in tops:
                        # A Data layer shapes each batch as its first record
                        # (images of sizes that vary, for a net ending in a global pool).
                        self.net.blobs[top].reshape(*self.batches[i][top].shape)
                        self.net.blobs[top].data[...] = self.batches[i][top]
                    continue
                self.net._forward(first, last)
                if reads:  # streamed: taken before an in-place layer on them changes them
                    read.update({top: self.net.blobs[top].data.copy() for top in tops})
            if read:
                digests += _example_digests(read)
            for name in self.outputs:
                sums[name] += float(np.mean(self.net.blobs[name].data))
        if digests:
            self._check_streamed(_combined(digests))
        return {name: total / self.iterations for name, total in sums.items()}

    def _check_streamed(self, digest):
        """Streamed batches are read anew every pass: a pass that read other
        examples than the first (or than the scan's digest) measured
        something else, and is refused rather than returned."""
        if self.data_sha256 is None:
            self.expect(digest, "its first pass")
        elif digest != self.data_sha256:
            raise InputError(f"{self.model_path}: its {self.iterations} TEST batches do not fit in memory and are "
                             f"read anew for every pass, and {self._data_layers_text()} gave other examples than "
                             f"{self.digest_source} (random fillers, mirror or shuffle, or batches that are not whole "
                             "epochs); give -n covering whole epochs, or TEST data that reads the same every time")

    def weights(self, layer):
        """Blob 0 of the prunable group ``layer`` names (its first layer).
        Write through a view read anew each time (set_weights): pycaffe's
        ``data`` marks the host copy current only when it is read, so on a
        GPU a write through a view held across a forward pass stays on the
        host, and the device keeps what it had."""
        return self.net.params[self._holders.get(layer, layer)][0].data

    def set_weights(self, layer, values):
        self.weights(layer)[...] = values

    def run_pruned(self, sparsities, criterion, seed, originals=None):
        """run() with each layer of ``sparsities`` ({layer: sparsity})
        pruned at once by ``criterion`` (its mask drawn with layer_rng(seed,
        layer)), then put back, measured or not. Returns (outputs, seconds
        of the pass, {layer: (pruned, zeros)}: the weights the mask prunes,
        and those at 0 then, with those the model had already).
        ``originals``: {layer: weights as loaded}, kept between calls so
        that a layer's weights are copied once."""
        originals = {} if originals is None else originals
        counts, pruned_layers = {}, []
        try:
            for layer, sparsity in sparsities.items():
                if layer not in originals:
                    originals[layer] = self.weights(layer).copy()
                mask = compute_mask(originals[layer], criterion, sparsity, rng=layer_rng(seed, layer))
                pruned = apply_mask(originals[layer], mask)
                pruned_layers.append(layer)
                self.set_weights(layer, pruned)
                counts[layer] = (zero_count(mask), zero_count(pruned))
            started = time.perf_counter()
            outputs = self.run()
            seconds = round(time.perf_counter() - started, 6)
        finally:
            # On a GPU the pruned weights stayed on the device (written
            # through a view held across the pass): every later point was
            # measured with them pruned.
            for layer in pruned_layers:
                self.set_weights(layer, originals[layer])
        return outputs, seconds, counts


@contextlib.contextmanager
def _timed(timings, phase):
    """Add the seconds of the block to ``timings[phase]`` (None: time nothing)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - started


def _points(config, done):
    """(layer, sparsity) still to measure; (None, 0.0) is the baseline."""
    todo = [] if (None, 0.0) in done else [(None, 0.0)]
    todo += [(layer, s) for layer in config.layers for s in config.sparsities if (layer, s) not in done]
    return todo


def _measure(evaluator, config, points, emit):
    """Measure ``points`` on one Evaluator, restoring each layer after use."""
    originals = {}
    for layer, sparsity in points:
        if layer is None:
            metrics, seconds, _ = evaluator.run_pruned({}, config.criterion, config.seed)
            emit({"layer": None, "sparsity": 0.0, "pruned": 0, "metrics": metrics, "eval_seconds": seconds,
                  "data": evaluator.data_mode})
            continue
        metrics, seconds, counts = evaluator.run_pruned({layer: sparsity}, config.criterion, config.seed, originals)
        pruned, zeros = counts[layer]
        emit({"layer": layer, "sparsity": sparsity, "pruned": pruned, "zeros": zeros, "metrics": metrics,
              "eval_seconds": seconds, "data": evaluator.data_mode})


# A worker's program: its sys.path (the parent's) and arguments come as
# arguments and through a pipe, its results go back through another. The
# working folder leaves sys.path first: a user's random.py there stood in
# for the standard one the imports below load. No arguments (the parent was
# interrupted before it sent them, and ends) is an exit, not a traceback.
_WORKER = ("import sys\n"
           "if sys.path and sys.path[0] == '':\n    del sys.path[0]\n"
           "import json\nsys.path[:] = json.loads(sys.argv[1])\n"
           "from multiprocessing.connection import Connection\n"
           "from caffedsd.sensitivity import _worker\n"
           "try:\n    args = Connection(int(sys.argv[2])).recv()\n"
           "except EOFError:\n    sys.exit(1)\n"
           "_worker(*args, Connection(int(sys.argv[3])))\n")


def _worker(config, model_path, weights_path, points, gpu, cache_limit, threads, parent, results):
    # The parent alone handles Ctrl-C (ignored here since the start:
    # _start_worker), and ends the workers. A parent killed outright
    # (SIGKILL, a plain kill) runs no clean-up: the kernel then ends the
    # worker, which would otherwise measure its whole share for nobody, on
    # a freed folder.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _end_with_parent(parent)
    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    try:
        try:
            evaluator = Evaluator(model_path, weights_path, config.iterations, gpu, cache_limit,
                                  config.weights_sha256, config.data_sha256)
            _measure(evaluator, config, points, lambda record: results.send(("point", record)))
            results.send(("done", None))
        except CaffeDsdError as exc:  # the parent raises it with the same message
            results.send(("error", str(exc)))
        except BrokenPipeError:
            raise
        except Exception:  # a fault of caffedsd's, not the input's: the parent shows where, as its own would be
            results.send(("crash", traceback.format_exc()))
    except BrokenPipeError:  # the parent stopped listening: it is ending, and ends this worker
        pass


def _end_with_parent(parent):
    """Have the kernel kill this process when its parent ends (Linux's
    PR_SET_PDEATHSIG); elsewhere, or if the parent ended already, exit."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def _select_layers(model, globs, net, net_path, notify):
    """The targets to scan: those ``globs`` choose (all when none) of the
    layers the TEST phase builds; pruning the others (a TRAIN-only
    auxiliary classifier) changes nothing a scan measures."""
    targets = prunable_targets(model)
    if not targets:
        raise InputError(f"{model.path}: no prunable layer (Convolution, Deconvolution or InnerProduct)")
    if globs:
        names = [name for target in targets for name in target.layers]
        chosen = set(GlobRules([(g,) for g in globs], "--layers").select(names, "prunable layer", known="prunable"))
        targets = [t for t in targets if chosen & set(t.layers)]
    tested = {layer.name for layer in built_layers(net, [built_state(net, "TEST")])}
    untested = [target.owner for target in targets if not tested & set(target.layers)]
    if untested and len(untested) == len(targets):
        raise InputError(f"{net_path}: its TEST phase does not build layer(s) {name_list(untested)}: pruning them "
                         "changes nothing a scan measures")
    if untested and notify is not None:
        notify(f"not scanned: {name_list(untested)}, which {net_path}'s TEST phase does not build (pruning them "
               "changes nothing a scan measures)")
    return [target for target in targets if tested & set(target.layers)]


def scan(model_path, weights_path, out_dir, layers=(), sparsities=DEFAULT_SPARSITIES, criterion="keepmax",
         iterations=None, seed=0, jobs=1, gpu=None, allow_python_layers=False, cache_limit=CACHE_LIMIT,
         progress=None, force=False, notify=None, timings=None):
    """Run (or continue) a sensitivity scan into ``out_dir``; returns its data
    (as written to sensitivity.json). ``progress(label, total, done)`` may return
    a callback(point, total) with a close() method, called after each point.
    ``timings``: a dict given the seconds of its phases (checks, evaluator,
    data_digest, measure, append, outputs), for tools/bench_sensitivity.py.

    A folder another scan made is refused, or with ``force`` taken over:
    its points are kept if it measured them as this scan does, and removed
    otherwise (``notify(line)`` says which)."""
    with _timed(timings, "checks"):
        seeded = get_criterion(criterion).seeded  # an unknown name is refused first, naming the known ones
        if criterion not in SPARSITY_CRITERIA:
            raise InputError(f"criterion {criterion!r}: a scan sweeps sparsities, which it does not take "
                             f"(known: {', '.join(SPARSITY_CRITERIA)})")
        if gpu is not None:  # before the scan folder is made
            check_gpu(gpu)
        net = read_net_prototxt(model_path, allow_python_layers)
        model = read_caffemodel(weights_path)
        # The TEST net is what is measured: a layer of TRAIN only (or of a stage
        # it does not build) needs no weights.
        check_pair(net, model_path, model, states=[built_state(net, "TEST")])
        check_tied_weights(built_layers(net, [built_state(net, "TEST")]), model, model_path)
        check_finite(model)
        if seeded and masks_path_for(weights_path).exists():
            # A random mask is drawn over every position; prune draws it among
            # the positions the masks keep, so these curves would not be its.
            raise InputError(f"{weights_path}: has masks beside it ({masks_path_for(weights_path).name}), which prune "
                             "keeps, while a random scan draws over every position: its curves would not be what a "
                             "plan prunes; scan with keepmax, or scan the model before it was pruned")
        kinds, primary = test_output_kinds(net, model_path)
        targets = _select_layers(model, layers, net, model_path, notify)
        if iterations is None:
            iterations = 50
        if iterations < 1:
            raise InputError(f"--iterations {iterations}: must be 1 or more")
        if jobs < 1:
            raise InputError(f"--jobs {jobs}: must be 1 or more")
        # Before any Net is built: it builds the net, and reads the batches, in a child process.
        check_net_runs(net, model_path, gpu, batches=iterations)
    evaluator, data_sha256 = None, None
    if jobs == 1:
        # The scan's one Net measures every point on the batches it keeps:
        # they are the ones to take the digest of. A TEST layer that draws at
        # random reads other batches in another Net, a scan's digest read
        # included, and then the folder would name examples never measured.
        with _timed(timings, "evaluator"):
            evaluator = Evaluator(model_path, weights_path, iterations, gpu, cache_limit, model.sha256())
        data_sha256 = evaluator.data_sha256 if evaluator.batches is not None else None
    if data_sha256 is None:
        with _timed(timings, "data_digest"):
            data_sha256 = scan_data_sha256(model_path, iterations, gpu)
    # Absolute paths: `plan --verify` rebuilds this net from another folder.
    config = ScanConfig(str(Path(model_path).resolve()), str(Path(weights_path).resolve()), model.sha256(),
                        structure_fingerprint(model.structure()), tuple(t.owner for t in targets),
                        tuple(sparsities), criterion, iterations,
                        # A seed the criterion does not draw with measures nothing else.
                        seed if get_criterion(criterion).seeded else 0, file_sha256(model_path), data_sha256)
    if evaluator is not None:
        evaluator.data_sha256 = data_sha256  # a streamed pass must read what the digest read
    folder = RunFolder(out_dir, SCAN_RECORD, "sensitivity", "model, weights or settings")
    takeover = functools.partial(_take_over, config=config, force=force, notify=notify)
    with folder.open({"format": FORMAT, "config": config.key()}, takeover=takeover):  # held until written
        done = _journal(folder)
        todo = _points(config, done)
        total = len(_points(config, {}))
        callback = progress("points", total, total - len(todo)) if progress is not None else None

        def record(point):
            if point["layer"] is None:
                _check_baseline(model_path, point["metrics"])
            else:
                point = {**point, "metrics": _broken_as_null(point["metrics"])}
            with _timed(timings, "append"):
                folder.append(POINTS, point)
            done[(point["layer"], point["sparsity"])] = point
            if callback is not None:
                callback(point, total)

        try:
            with _timed(timings, "measure"):
                if todo and evaluator is not None:
                    _measure(evaluator, config, todo, record)
                elif todo:
                    _run_workers(config, model_path, weights_path, todo, jobs, gpu, cache_limit, record)
        except CaffeDsdError:  # bad input found once the folder existed (a worker's: the weights' shapes, data)
            if not done:
                folder.abandon()
            raise
        finally:
            if callback is not None:
                callback.close()
        feeds = output_feeds(net, built_state(net, "TEST"), {name for t in targets for name in t.layers})
        data = _result(config, model, targets, done, kinds, primary, feeds)
        with _timed(timings, "outputs"):
            report.write_sensitivity(Path(out_dir), data)
        return data


def _check_baseline(model_path, metrics):
    """The unpruned net's outputs are what every drop is measured from."""
    if bad := [name for name, value in metrics.items() if not math.isfinite(value)]:
        raise InputError(f"{model_path}: its TEST output {bad[0]!r} is {metrics[bad[0]]} with the weights as "
                         "they are; no drop can be measured from it")


def _broken_as_null(metrics):
    """JSON has no NaN: an output a pruning broke is recorded as null."""
    return {name: value if NUMBER(value) else None for name, value in metrics.items()}


def _journal(folder):
    """{(layer, sparsity): point} of the points finished in ``folder``, as
    _measure records them. An edited record is skipped, and the point
    measured again if no other record has it: taken, it was a traceback (a
    list for a sparsity, no pruned count), or a table and plan drawn from
    numbers never measured (a point without one of the baseline's outputs,
    a baseline with one broken or none)."""
    records = folder.journal(POINTS, keys=_POINT_KEYS, kinds=_POINT_KINDS)
    # _check_baseline refuses a broken baseline before it is recorded.
    baselines = [r["metrics"] for r in records if r["layer"] is None and r["sparsity"] == 0.0 and r["metrics"]
                 and all(NUMBER(value) for value in r["metrics"].values())]
    names = set(baselines[-1]) if baselines else None
    return {(r["layer"], r["sparsity"]): {**r, "metrics": _broken_as_null(r["metrics"])} for r in records
            if (r["layer"] is not None or r["metrics"] in baselines) and names in (None, set(r["metrics"]))}


def _take_over(folder, found, config, force, notify):
    """RunFolder's takeover of a scan folder that ``found`` (its marker's
    record) made: its points stay when they were measured as ``config``
    measures (other layers or sparsities only); otherwise they go."""
    points = _journal(folder)
    alike = measured_alike(found, config)
    if alike and all(found["config"].get(key) == json.loads(json.dumps(value)) for key, value in config.key().items()
                     if key in ("layers", "sparsities")):
        return  # the same scan, recorded with a seed its criterion does not draw with
    wanted = set(_points(config, {}))
    shared = len(wanted & set(points)) if alike else 0
    if not force:
        if alike:
            raise InputError(f"{folder.path}: made by a scan of other layers or sparsities; give a new -o, or "
                             f"--force to keep its {len(points)} points ({shared} of them this scan's) and "
                             "measure the rest")
        if measured_alike(found, config, apart_from=("data_sha256",)):
            raise InputError(f"{folder.path}: its points were measured on other examples than the TEST data "
                             f"of {config.model} gives now (rewritten data, or a TEST layer that shuffles or "
                             "draws at random); give a new -o, or --force to start it over")
        unknown = _unrecorded(found, config)
        if unknown:
            raise InputError(f"{folder.path}: made by an earlier caffedsd, which did not record "
                             f"{' or '.join(unknown)} it measured; give a new -o, or --force to start it over")
        raise InputError(f"{folder.path}: made by a different model, weights or settings; give a new -o, or "
                         "--force to start it over (none of its points is measured as this scan measures)")
    if not alike:
        (folder.path / POINTS).unlink(missing_ok=True)
    for name in report.SENSITIVITY_FILES:  # the earlier scan's; this one's are written at its end
        (folder.path / name).unlink(missing_ok=True)
    if notify is not None:
        notify(f"{folder.path}: kept the {len(points)} points of the earlier scan, {shared} of them this scan's"
               if alike else f"{folder.path}: started over; removed the {len(points)} points of the earlier scan")


def _run_workers(config, model_path, weights_path, todo, jobs, gpu, cache_limit, record):
    """Spread the points over ``jobs`` processes by layer; collect results."""
    by_layer = {}
    for point in todo:
        by_layer.setdefault(point[0], []).append(point)
    # A worker per layer at most: -j 2147483648 made that many lists.
    shares = [[] for _ in range(max(1, min(jobs, len(by_layer))))]
    for n, points in enumerate(by_layer.values()):
        shares[n % len(shares)].extend(points)
    shares = [s for s in shares if s]
    threads = max(1, (os.cpu_count() or 1) // len(shares))
    workers, sending = [], {}
    try:
        for share in shares:
            worker, receiver = _start_worker((config, str(model_path), str(weights_path), share, gpu, cache_limit,
                                              threads, os.getpid()))
            workers.append(worker)
            sending[receiver] = worker
        while sending:
            ready = multiprocessing.connection.wait(list(sending), timeout=5)
            if not ready:
                _check_workers(workers, quiet=True)
                continue
            _check_workers(workers)  # while the others still send points
            for receiver in ready:
                try:
                    kind, value = receiver.recv()
                except (EOFError, OSError):  # it ended without saying it was done
                    worker = sending.pop(receiver)
                    receiver.close()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        worker.wait(10)
                    _check_workers([worker], quiet=True)  # it died, or ended without its share
                    raise WorkerDied("a sensitivity worker closed its pipe before its share was done; run the "
                                     "scan again to go on") from None
                if kind == "point":
                    record(value)
                elif kind == "done":
                    sending.pop(receiver)
                    receiver.close()
                elif kind == "crash":
                    raise RuntimeError(f"a sensitivity worker failed:\n{value}")
                else:
                    raise InputError(value)
    finally:
        # All are ended before any pipe is closed: a worker that found its
        # pipe closed first printed a traceback of its own.
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
        for receiver in sending:
            receiver.close()
        for worker in workers:
            worker.wait()


def _start_worker(args):
    """A worker process running _worker(*args), and the end of the pipe its
    results come through. Not multiprocessing's: pycaffe and fork do not
    mix, and its spawned workers took a terminal's Ctrl-C, which reaches the
    whole process group, while they were still importing, and printed a
    traceback of theirs. Here the shell starts the worker with SIGINT
    ignored, which stays so across exec; it stays in the process group, so
    Ctrl-Z stops it with the parent."""
    arguments, to_worker = multiprocessing.Pipe(duplex=False)
    from_worker, results = multiprocessing.Pipe(duplex=False)
    given = [arguments.fileno(), results.fileno()]
    try:
        worker = subprocess.Popen(["/bin/sh", "-c", 'trap "" INT; exec "$@"', "sh", sys.executable,
                                   *subprocess._args_from_interpreter_flags(), "-c", _WORKER, json.dumps(sys.path),
                                   *map(str, given)], pass_fds=given, stdin=subprocess.DEVNULL)
    finally:
        arguments.close()
        results.close()
    try:
        to_worker.send(args)
    except OSError:  # it died at once: _check_workers says how
        pass
    finally:
        to_worker.close()
    return worker, from_worker


def _check_workers(workers, quiet=False):
    """Raise WorkerDied for a worker that ended other than by finishing its
    share (exit status 0); with ``quiet`` (no result for a while), also when
    none is left to send one."""
    codes = [worker.poll() for worker in workers]
    dead = [code for code in codes if code not in (None, 0)]
    if dead or (quiet and None not in codes):
        code = dead[0] if dead else 0
        raise WorkerDied(f"a sensitivity worker died ({exit_text(code)}; see Caffe's log with --verbose); "
                         "run the scan again to go on")


def _result(config, model, targets, done, kinds, primary, feeds):
    used = [done[point] for point in _points(config, {})]
    baseline = done[(None, 0.0)]["metrics"]
    eval_seconds = sum(record.get("eval_seconds", 0.0) for record in used)
    layers = []
    # Weights at 0.0 already (a scan of a pruned model): pruning up to as
    # many takes those, and the plan's overall sparsity counts them.
    zeros = {t.owner: zero_count(model.layer(t.owner).blobs[0].data) for t in prunable_targets(model)}
    for target in targets:
        records = [done[(target.owner, s)] for s in config.sparsities]
        # Points measured before zeros were recorded: keepmax takes the zeros first.
        points = [{"sparsity": s, "pruned": r["pruned"],
                   "zeros": r.get("zeros", max(r["pruned"], zeros[target.owner])), "metrics": r["metrics"]}
                  for s, r in zip(config.sparsities, records)]
        # The outputs it reaches: one it does not (an auxiliary classifier
        # and the main one's accuracy) drops by nothing there, however pruned.
        reached = {top for name in target.layers for top in feeds.get(name, ())}
        layers.append({"layer": target.owner, "shared_by": list(target.layers),
                       "params": int(np.prod(target.shape)), "zeros": zeros[target.owner],
                       "feeds": [name for name in baseline if name in reached], "points": points})
    total = sum(int(np.prod(t.shape)) for t in prunable_targets(model))
    return {"format": FORMAT, "format_version": 1, "model": config.model, "net_sha256": config.net_sha256,
            "data_sha256": config.data_sha256,
            "weights": config.weights, "weights_sha256": config.weights_sha256, "fingerprint": config.fingerprint,
            "criterion": config.criterion, "seed": config.seed, "iterations": config.iterations,
            "sparsities": list(config.sparsities), "metrics": list(baseline),
            # An output Caffe gives that no Accuracy or loss layer makes has no direction to plan by.
            "kinds": {name: kinds.get(name, "other") for name in baseline},
            "primary": primary if primary in baseline else report.primary_metric(list(baseline)),
            "data": "streamed" if any(record.get("data") == "streamed" for record in used) else "cached",
            "prunable_params": total, "prunable_zeros": sum(zeros.values()), "baseline": baseline, "layers": layers,
            "eval_seconds": round(eval_seconds, 3)}


def _check_scan(path, data):
    """InputError unless ``data`` has every field the planner reads, typed."""
    def metrics_ok(m, broken=False):
        """``broken``: a point's metric may be null, its output NaN or Inf."""
        return isinstance(m, dict) and all(NUMBER(m.get(k)) or (broken and k in m and m[k] is None)
                                           for k in metrics)

    def count_ok(v, top):  # zero counts: scans before they were recorded have none
        return COUNT(v) and v <= top

    metrics = data.get("metrics")
    ok = (isinstance(metrics, list) and metrics and all(isinstance(m, str) for m in metrics)
          and metrics_ok(data.get("baseline")) and data.get("criterion") in SPARSITY_CRITERIA
          and isinstance(data.get("fingerprint"), str) and isinstance(data.get("prunable_params"), int)
          and isinstance(data.get("layers"), list)
          and count_ok(data.get("prunable_zeros", 0), data.get("prunable_params"))
          and type(data.get("seed", 0)) is int and data.get("seed", 0) >= 0  # `plan --verify` draws with it
          and isinstance(data.get("data_sha256"), (str, type(None))))
    # Scans before kinds were recorded have neither field (the planner then goes by names).
    if ok and ("kinds" in data or "primary" in data):
        kinds = data.get("kinds")
        ok = isinstance(kinds, dict) and all(kinds.get(m) in KINDS for m in metrics) \
            and data.get("primary") in metrics
    for layer in data.get("layers") if ok else ():
        ok = ok and isinstance(layer, dict) and isinstance(layer.get("layer"), str) \
            and isinstance(layer.get("params"), int) and not isinstance(layer.get("params"), bool) \
            and count_ok(layer.get("zeros", 0), layer["params"]) \
            and isinstance(layer.get("feeds", []), list) and all(isinstance(f, str) for f in layer.get("feeds", [])) \
            and isinstance(layer.get("points"), list) and all(
                isinstance(p, dict) and NUMBER(p.get("sparsity")) and metrics_ok(p.get("metrics"), broken=True)
                and count_ok(p.get("zeros", 0), layer["params"]) for p in layer["points"])
    if not ok:
        raise InputError(f"{path}: a sensitivity file with missing or malformed fields (edited or damaged?)")


def sensitivity_file(path):
    """The sensitivity.json that ``path`` (the file, or a scan folder) names."""
    path = Path(path)
    return path / "sensitivity.json" if path.is_dir() else path


def scan_files(path):
    """The files of the scan folder a sensitivity.json (``path``, or its
    folder) is in, which a rerun continues from: not to be written over."""
    folder = sensitivity_file(path).parent
    return [folder / name for name in (*report.SENSITIVITY_FILES, SCAN_RECORD, POINTS)]


def load_sensitivity(path, weights=None):
    """A sensitivity.json; with ``weights``, it must be of that model."""
    path = sensitivity_file(path)
    text = read_input(path, "sensitivity file")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path}: not a caffedsd sensitivity file")
    _check_scan(path, data)
    if weights is not None:
        model = read_caffemodel(weights)
        if structure_fingerprint(model.structure()) != data["fingerprint"]:
            raise InputError(f"{path}: a scan of another model than {weights}")
        # Its curves and zero counts are of those weights: other weights of
        # the architecture (a retrained or pruned model) prune otherwise.
        if model.sha256() != data["weights_sha256"]:
            raise InputError(f"{weights}: not the weights the scan measured (their sha256 differs); scan these "
                             "weights to plan for them")
    return data
