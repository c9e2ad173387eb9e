"""Driving a user's Caffe solver (solver_spec.SolverSpec) through pycaffe:
set-up checks, training iterations with solver hooks, TEST-phase
evaluation, saving.

``run_phase`` is the one phase driver: every train-* command and every
stage of ``dsd.run_recipe`` is a ``Phase`` it runs. The two phases of DSD
after pruning are ``train_sparse`` (masks held) and ``train_dense`` (masks
off, lr scaled).
"""
import contextlib
import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from .atomic import check_not_data, check_room, scratch_folder, temporary_folder, write_text
from .caffe_env import (build_in_child, check_gpu, cpu_only_build, has_python_layers, import_caffe, import_pycaffe,
                        layer_types)
from .caffe_proto import SolverParameter
from .caffemodel import append_layers, check_finite, new_layers_bytes, read_caffemodel
from .errors import CaffeDsdWarning, Diverged, InputError, OutputError
from .maskfile import (MaskSet, atomic_model, check_model_outputs, masks_file_bytes, masks_for, masks_path_for,
                       masks_read_for)
from .hooks import HookDispatcher
from .mask_enforcer import MaskEnforcer
from .netcheck import check_blob_shapes, check_layer_types, check_tied_weights, data_files
from .replay import replay_data
from .snapshots import SolverSnapshots, caffe_snapshot_of, snapshot_bytes, snapshots_on, written_as_a_snapshot
from .solver_spec import (built_nets, check_schedule, check_solver_weights, headline_output, read_solver, scaled_lr,
                          solver_type, solver_weights, test_iterations, tested_net_layers)
from .solverstate import (check_weights_of, clean_solverstate, restorable_name, state_current_step,
                          state_iteration)
from .testnets import (PeriodicTests, check_output_names, check_test_nets_fit, check_test_options, copy_trained,
                       evaluate, set_test_only_values, test_net_paths, test_only_layers, test_only_records,
                       tied_test_only_blobs)
from .values import INT32_MAX


def open_solver(spec, workdir, gpu=None, lr_scale=1.0, **snapshots):
    """A pycaffe Solver for ``spec`` with the changes given, written as a
    solver prototxt in ``workdir`` (net paths still resolve from the current
    folder). Caffe's own periodic test passes are off: ``run_phase`` makes
    them (``PeriodicTests``), so that their results are data, not log lines.
    ``snapshots``: snapshot_prefix, snapshot_format, in place of the
    solver's, for the snapshots caffedsd asks for (``Solver.snapshot``):
    Caffe never snapshots by itself (snapshot 0, no snapshot_after_train),
    since its own are not written whole or not at all
    (snapshots.SolverSnapshots)."""
    caffe = import_caffe(gpu)
    solver_file, param = _write_solver(spec, workdir, gpu, lr_scale, **snapshots)
    return caffe.get_solver(str(solver_file)), param


def check_solver_builds(spec, gpu=None):
    """What Caffe would abort the process on while building the solver's
    nets, as one line, before a run folder or an output exists: a layer type
    it lacks (read_solver checked the data without pycaffe; the types need
    its registry), then anything else, from building them once in a child
    process (caffe_env.build_in_child; it sees only GPU ``gpu``). Returns
    {layer name: blob 0 shape} of the nets' prunable layers."""
    known = layer_types(import_pycaffe())
    nets = built_nets(spec)
    for net, path, states in nets:
        check_layer_types(net, path, known, states)
    with scratch_folder() as work:
        return build_in_child("solver", _write_solver(spec, work)[0], spec.path,
                              python_layers=any(has_python_layers(net) for net, _, _ in nets), gpu=gpu)


def _write_solver(spec, workdir, gpu=None, lr_scale=1.0, snapshot_prefix=None, snapshot_format=None):
    """(path, SolverParameter) of ``spec`` with the changes given, written in
    ``workdir``, with Caffe's own snapshots off."""
    param = SolverParameter()
    param.CopyFrom(spec.param)
    param.base_lr = scaled_lr(spec, lr_scale)
    if snapshot_prefix is not None:
        param.snapshot_prefix = str(snapshot_prefix)
    if snapshot_format is not None:
        param.snapshot_format = snapshot_format
    param.snapshot = 0
    param.snapshot_after_train = False
    # Caffe insists on test_interval > 0 when there are test nets.
    param.test_interval = INT32_MAX
    param.test_initialization = False
    param.solver_mode = SolverParameter.GPU if gpu is not None else SolverParameter.CPU
    if gpu is not None:
        param.device_id = gpu
    solver_file = Path(workdir) / "solver.prototxt"
    write_text(solver_file, text_format.MessageToString(param))
    return solver_file, param


def load_weights(solver, spec, weights_path):
    """Copy a caffemodel into the solver's nets, after checking it fits: by
    name (a layer of the train net or of a test net), by shape (Caffe itself
    would abort the process on a shape mismatch), and one set of weights for
    layers the net ties. As `caffe train -weights` does, a test net's layers
    of phase TEST only get theirs too."""
    model = read_caffemodel(weights_path)
    check_solver_weights(spec, model)
    check_tied_weights(spec.train_layers(), model, spec.net_path)
    for index, path in enumerate(test_net_paths(solver, spec)):
        check_tied_weights(list(tested_net_layers(spec, index).values()), model, path)
    check_blob_shapes(solver.net, model, spec.net_path)
    for net, path in zip(solver.test_nets, test_net_paths(solver, spec)):
        check_blob_shapes(net, model, path)
    check_finite(model)
    solver.net.copy_from(str(weights_path))
    for net, names in test_only_layers(solver):
        if names:  # the rest share the train net's blobs when tested
            net.copy_from(str(weights_path))
    return model


def _restore_unhashed(solver, spec, latest, masks, param, folder):
    """Restore checkpoint ``latest`` of an earlier caffedsd, which hashed
    none of its files (so a cut or emptied one was not found out): its pair
    is checked as a -w and a --solverstate are. Caffe's restore aborts the
    process on a cut file, and takes an emptied caffemodel for no weights."""
    state = Path(latest["solverstate"])
    try:
        with temporary_folder(state) as scratch:
            clean = scratch / restorable_name(state)
            check_room(clean, state.stat().st_size)
            try:
                load_weights(solver, spec, state.with_suffix(".caffemodel"))
                clean_solverstate(state, clean, solver.net, masks, solver_type(param))
            except InputError as exc:  # the pair, not a folder that cannot be written
                raise InputError(f"{exc}; delete {folder} to restart the stage") from None
            solver.restore(str(clean))
    except OutputError as exc:  # the scratch copy is nothing the user asked for: name the state
        raise OutputError(f"{state}: its copy to restore from", exc.reason) from None


class StepLoss:
    """The loss Caffe logs for each step of ``net``, read after the step:
    call it once per step.

    Caffe takes a loss top's loss as data . diff, the diff holding its
    loss weights (set when the net is built), over every blob with a loss
    weight: the outputs, and a loss another layer reads (a Silence), not a
    net output. A layer that reads a loss top rewrites that diff in its
    backward pass, and from the next step on Caffe counts (and trains with)
    those weights: so the weights of such a blob are read after each step,
    for the next. (A layer that rewrites a loss top in place hides its loss:
    pycaffe's loss weight of the blob is then that layer's, counted on the
    rewritten value.) The blobs are found once a run: pycaffe rebuilds its
    blob dicts for each new wrapper, and ``solver.net`` is a new one at
    every read (39 us an iteration on a 2-core CPU, ten times a tiny net's
    step; docs/BENCHMARKS.md)."""

    def __init__(self, net):
        blobs = net.blobs
        read = {name for names in net.bottom_names.values() for name in names}
        named = [name for name, weight in net.blob_loss_weights.items() if weight]
        self._blobs = tuple(blobs[name] for name in named)
        self._read = tuple(i for i, name in enumerate(named) if name in read)
        self._weights = [blob.diff.copy() for blob in self._blobs]

    def __call__(self):
        """The loss of the forward pass just run."""
        total = sum((float(np.vdot(blob.data, weights)) for blob, weights in zip(self._blobs, self._weights)), 0.0)
        for i in self._read:
            self._weights[i] = self._blobs[i].diff.copy()
        return total


class StepRates:
    """The learning rate of each step, as Caffe's SGDSolver::GetLearningRate
    gives it. pycaffe's ``lr`` calls that, which under lr_policy
    "multistep" also advances the solver's current_step at a stepvalue
    reached: read before a step that then calls it again, a stepvalue
    repeated (3, 3) was passed twice in one iteration, and the solver
    trained at another rate than `caffe train`. So under multistep the rate
    is computed here, from ``current_step`` (the restored state's, else 0),
    passing at most one stepvalue an iteration, as Caffe does."""

    def __init__(self, param, current_step=0):
        self.param, self.current_step = param, current_step

    def __call__(self, solver):
        param = self.param
        if param.lr_policy != "multistep":
            return float(solver.lr)
        if self.current_step < len(param.stepvalue) and int(solver.iter) >= param.stepvalue[self.current_step]:
            self.current_step += 1
        # float base_lr times pow's double, kept as Caffe's float.
        return float(np.float32(np.float64(np.float32(param.base_lr))
                                * np.float64(np.float32(param.gamma)) ** self.current_step))


def train(solver, iterations, hooks=None, on_iteration=None, where="training", rates=None):
    """Run ``iterations`` solver steps; returns the curve [{iter, loss, lr}],
    numbered as Caffe's log numbers them ("Iteration N, loss = ..."): the
    loss and rate of the step that started at iteration N, whose forward
    pass saw the weights a TEST pass at iteration N sees. A loss that is NaN
    or Inf raises Diverged, naming ``where``.

    One step at a time, so the caller's ``on_iteration(row, iterations)``
    sees each one. ``hooks`` is the solver's HookDispatcher (or None): its
    hooks run inside each step (the masks re-zero pruned weights before each
    forward and their gradients before each update) and settle once more at
    the end, so a snapshot taken after ``train()`` holds them at 0.0. ``rates``: the
    run's StepRates (None: pycaffe's ``lr``, for a solver that is not under
    multistep)."""
    rates = rates or (lambda solver: float(solver.lr))
    loss = StepLoss(solver.net)
    curve = []
    for _ in range(iterations):
        lr, iteration = rates(solver), int(solver.iter)
        solver.step(1)
        row = {"iter": iteration, "loss": loss(), "lr": lr}
        if not math.isfinite(row["loss"]):
            raise Diverged(f"{where}: training diverged at iteration {row['iter']} (loss {row['loss']}, "
                           f"learning rate {lr:g}); nothing was written for it. {_remedy(hooks)}")
        curve.append(row)
        if on_iteration is not None:
            on_iteration(row, iterations)
    if hooks is not None:
        hooks.settle()
    return curve


def _remedy(hooks):
    """What to change when training diverged: the learning rate, and what
    the solver's hooks add to each step (HookDispatcher or None)."""
    options = [hook.step_option for hook in (hooks.hooks if hooks is not None else ())
               if getattr(hook, "step_option", None)]
    lower = " or ".join(["the learning rate", *options])
    return f"Lower {lower}, or set clip_gradients, then start again"


def check_test_finite(test, where, iteration, hooks=None):
    """Raise Diverged when a TEST output after training is NaN or Inf:
    weights that a last update made huge but not Inf give a net that
    computes nothing, which saved would pass for a result."""
    bad = [name for name, value in test.items() if not math.isfinite(value)]
    if bad:
        raise Diverged(f"{where}: training diverged by its last iteration ({iteration}): the TEST phase then gives "
                       f"{bad[0]} = {test[bad[0]]}; nothing was written for it. {_remedy(hooks)}")


def check_weights_finite(solver, where, hooks=None):
    """Raise Diverged when a weight is NaN or Inf: an update can blow up
    after the last forward pass whose loss train() saw, and what is saved
    then (a checkpoint, the output) would hold it. Once per save."""
    for name, blobs in solver.net.params.items():
        if any(not np.isfinite(blob.data).all() for blob in blobs):
            raise Diverged(f"{where}: training diverged in its last iteration ({int(solver.iter)}): weights of "
                           f"{name} hold NaN or Inf; nothing was written for it. {_remedy(hooks)}")


def save_net(solver, output, maskset=None, nbytes=0, appended=()):
    """Write the solver's trained weights and the layers ``appended``
    (test_only_records), with the masks, refitted to what was written,
    atomically; returns the masks path or None. ``nbytes``: at least what
    Caffe writes for the train net, checked for room first (with
    ``appended``'s), since Caffe aborts the process on a failed write."""
    output = Path(output)
    nbytes += new_layers_bytes(appended)

    def write(tmp):
        check_room(tmp, nbytes)
        solver.net.save(str(tmp))
        append_layers(tmp, appended)

    with atomic_model(output, maskset) as tmp:
        write(tmp)
    return None if maskset is None else masks_path_for(output)


@dataclass(frozen=True)
class PhaseResult:
    """What a phase did: its curve [{iter, loss, lr}], the TEST outputs after
    training, the TEST passes made while it trained [{iter, test}] (the
    solver's periodic ones, and with Phase.test_first one before training,
    whose outputs are also ``test_first``), the masks file written beside
    the output, the base_lr it trained at, and the solver's own snapshots
    it made."""

    iterations: int
    curve: list
    test: dict
    test_first: dict = None
    masks: str = None
    base_lr: float = None
    tests: tuple = ()
    snapshots: tuple = ()  # the solver's own snapshots made: (caffemodel, solverstate) pairs


@dataclass(frozen=True)
class Phase:
    """One training phase: a train-* command, or a stage of a DSD run.

    ``output`` None saves nothing (a prune stage only evaluates the model it
    was given). ``solverstate`` is a user's: cleaned at the masks, then
    restored. ``test_iterations`` None: the solver's own test_iter."""

    iterations: int
    weights: object = None  # caffemodel path to start from
    output: object = None  # caffemodel path to write (+ masks beside it)
    maskset: object = None  # MaskSet held at exactly 0.0
    hooks: tuple = ()  # further SolverHooks: force regularization, weight sharing
    lr_scale: float = 1.0
    solverstate: object = None
    test_first: bool = False
    test_iterations: object = None
    test_interval: object = None  # None: the solver's; 0: no periodic test passes
    # ((layer, blob-0 values), ...) for layers of phase TEST only, which do
    # not train: set into the test nets once loaded (train-quantized's
    # centroids), and so written too.
    test_only_values: tuple = ()

    def __post_init__(self):
        _check_iterations(self.iterations)
        object.__setattr__(self, "hooks", tuple(self.hooks))
        object.__setattr__(self, "test_only_values", tuple(self.test_only_values))
        if self.test_interval is not None:
            PeriodicTests(self.test_interval)


def run_phase(spec, phase, workdir, gpu=None, checkpoints=None, on_iteration=None):
    """Run ``phase`` on a fresh solver for ``spec`` (its prototxt written in
    ``workdir``): load weights; add the phase's hooks and the masks to the
    solver's one HookDispatcher; restore a checkpoint or a cleaned
    solverstate; train; evaluate; save.

    ``checkpoints`` (dsd's run folder) resumes from its latest snapshot,
    which it makes every ``checkpoints.every`` iterations (Caffe's own
    snapshots off), and with ``checkpoints.replay`` replays the data layers
    up to it (replay_data); ``on_iteration`` first sees that as a row
    {replay, tests}. Training stops at each periodic test pass the solver's
    schedule asks for, and at each checkpoint; ``on_iteration`` sees each
    pass as a row {iter, test}, and before it (and before the last pass,
    which PhaseResult holds) a row {testing: iteration}.

    Without ``checkpoints``, the solver's own snapshots are made as
    SolverSnapshots writes them. Returns a PhaseResult."""
    snapshots = SolverSnapshots(spec) if checkpoints is None else None
    with snapshots or contextlib.nullcontext():
        return _run_phase(spec, phase, workdir, gpu, checkpoints, snapshots, on_iteration)


def _run_phase(spec, phase, workdir, gpu, checkpoints, snapshots, on_iteration):
    options = {}
    if checkpoints is not None:
        # First: what a run killed while Caffe wrote left holds room that the
        # restore copy and the checks for room below count on.
        checkpoints.remove_cut_writes()
        # Its files are known by their binary format's names.
        options = dict(snapshot_prefix=checkpoints.prefix, snapshot_format=SolverParameter.BINARYPROTO)
    elif snapshots.solver_prefix is not None:
        options = dict(snapshot_prefix=snapshots.solver_prefix)
    solver, param = open_solver(spec, workdir, gpu=gpu, lr_scale=phase.lr_scale, **options)
    dispatcher = HookDispatcher.for_solver(solver, gpu)
    try:
        check_test_nets_fit(solver, spec)
        if phase.weights is not None:
            load_weights(solver, spec, phase.weights)
        set_test_only_values(solver, dict(phase.test_only_values))
        masks = phase.maskset.per_layer() if phase.maskset is not None else {}
        # Layers of phase TEST only do not train: their loaded zeros stay.
        untrained = {name for _, names in test_only_layers(solver) for name in names}
        masks = {name: mask for name, mask in masks.items() if name not in untrained}
        hooks = list(phase.hooks)
        if phase.maskset is not None:
            hooks.append(MaskEnforcer(masks, where=f"net of {spec.path}"))
        for hook in hooks:
            dispatcher.add(hook, solver)
        counts = [phase.test_iterations or count for count in test_iterations(param)]
        check_output_names(solver, spec, counts)
        tied = tied_test_only_blobs(solver, spec)
        latest = checkpoints.latest() if checkpoints is not None else None
        curve, tests, done = [], [], 0
        rates = StepRates(param)
        if latest is not None and latest.get("sha256"):
            with checkpoints.restorable(latest) as state:
                solver.restore(str(state))
        elif latest is not None:
            _restore_unhashed(solver, spec, latest, masks, param, checkpoints.folder)
        if latest is not None:
            rates = StepRates(param, state_current_step(latest["solverstate"]))
            # Copies: this run extends them, and the checkpoint's record keeps what it read.
            curve, tests, done = list(checkpoints.curve(latest)), list(checkpoints.tests(latest)), int(solver.iter)
            if checkpoints.replay:
                if on_iteration is not None:
                    on_iteration({"replay": done, "tests": len(tests)}, phase.iterations)
                replay_data(solver, max(1, param.iter_size), counts, done - len(curve), [t["iter"] for t in tests])
        elif phase.solverstate is not None:
            clean = Path(workdir) / restorable_name(phase.solverstate)
            try:
                clean_solverstate(phase.solverstate, clean, solver.net, masks, solver_type(param))
            except OutputError as exc:  # a scratch file the user never named
                raise OutputError(f"{phase.solverstate}: its copy to restore from, in the temporary folder "
                                  f"{tempfile.gettempdir()} (TMPDIR sets it)", exc.reason) from None
            # Here, where the inputs (the state too) have passed their checks: not a warning before an error.
            check_weights_of(phase.solverstate, phase.weights, masked=phase.maskset is not None)
            solver.restore(str(clean))
            rates = StepRates(param, state_current_step(clean))
        dispatcher.settle()
        schedule = PeriodicTests.of_solver(spec.param, phase.test_interval)
        if not any(count > 0 for count in counts):  # Caffe makes one test net per test_iter
            schedule = PeriodicTests(0)
        start = int(solver.iter)
        end = start + phase.iterations - done
        check_schedule(param, spec.path, start - done, end)
        # Training runs in pieces between test passes and checkpoints; the
        # progress callback still sees the whole phase as its total.
        progress = (lambda row, _: on_iteration(row, phase.iterations)) if on_iteration is not None else None
        headline = headline_output(spec) if on_iteration is not None else None
        sizes = snapshot_bytes(spec, solver.net)

        def snapshot_now():
            copy_trained(tied)
            snapshots.write(solver, sizes, test_only_records(solver, spec), phase.maskset)

        # What the checks below count of the layers of phase TEST only: their sizes, which training keeps.
        appended = test_only_records(solver, spec)
        if phase.output is not None and phase.iterations > done:
            # Checked again when written; a disk already too small for it
            # would otherwise cost the whole training first.
            # Files: the temporaries of the model and its masks, and the probe
            # of the room check made once they are there.
            masks = masks_file_bytes(phase.maskset) if phase.maskset is not None else 0
            check_room(Path(phase.output), sizes[0] + new_layers_bytes(appended) + masks, files=3)
        # The checkpoints and snapshots due (checked again when written): on
        # a disk too small for them, or with a folder or a name too long in
        # the way, the iterations before the first were lost, and a rerun,
        # with none to go on from, lost them again. A checkpoint is not made
        # at the end; a snapshot due there is, before the output.
        checkpoint = checkpoints.next_after(start) if checkpoints is not None else None
        if checkpoint is not None and checkpoint < end:
            checkpoints.check_room(checkpoints.folder, sizes)
        # The first, and the last, whose number's digits make the longest names.
        due = (snapshots.next_after(start), snapshots.last_until(start, end)) if snapshots is not None else ()
        for snapshot in dict.fromkeys(each for each in due if each is not None and each <= end):
            snapshots.check_room(snapshot, sizes, snapshots.held(appended), phase.maskset)
        while int(solver.iter) < end:
            now = int(solver.iter)
            if schedule.due(now) or (phase.test_first and now == start and not done):
                if progress is not None:
                    progress({"testing": now}, None)
                tests.append({"iter": now, "test": evaluate(solver, counts, tied)})
                if progress is not None:
                    progress({**tests[-1], "headline": headline}, None)
            checkpoint = checkpoints.next_after(now) if checkpoints is not None else None
            snapshot = snapshots.next_after(now) if snapshots is not None else None
            stop = min(s for s in (end, schedule.next_after(now), checkpoint, snapshot) if s is not None)
            curve += train(solver, stop - now, dispatcher, progress, where=spec.path, rates=rates)
            if stop == checkpoint and stop < end:
                check_weights_finite(solver, spec.path, dispatcher)
                checkpoints.save(solver, curve, tests, sizes)
            if stop == snapshot:
                check_weights_finite(solver, spec.path, dispatcher)
                snapshot_now()
        check_weights_finite(solver, spec.path, dispatcher)
        if progress is not None and any(count > 0 for count in counts):
            progress({"testing": int(solver.iter)}, None)
        test = evaluate(solver, counts, tied)
        if phase.iterations:
            check_test_finite(test, spec.path, int(solver.iter), dispatcher)
        first = (tests[0]["test"] if tests else test) if phase.test_first else None
        masks_out = None
        if phase.output is not None:
            copy_trained(tied)
            masks_out = save_net(solver, phase.output, phase.maskset, sizes[0], test_only_records(solver, spec))
        if snapshots is not None and snapshots.ends_with(start, end):
            # What `caffe train` ends with: a snapshot a later run can go on
            # from; after the output, which a failed write must not cost.
            try:
                snapshot_now()
            except OutputError as exc:
                if phase.output is None:
                    raise
                raise OutputError(exc.path, exc.reason, written=phase.output) from None
    finally:
        dispatcher.detach()
    return PhaseResult(phase.iterations, curve, test, first, str(masks_out) if masks_out else None, param.base_lr,
                       tuple(tests), tuple(snapshots.written) if snapshots is not None else ())


def solver_device(spec, gpu):
    """The GPU a run trains on: ``gpu`` (--gpu), else, as `caffe train`
    takes it, the solver's device_id when it says solver_mode: GPU. A
    CPU-only build trains such a solver on the CPU (where stock `caffe
    train` refuses it), and says so."""
    # Only a solver_mode the file gives: its default is GPU (caffe.cpp's train
    # reads has_solver_mode()).
    if gpu is not None or not spec.param.HasField("solver_mode") or spec.param.solver_mode != SolverParameter.GPU:
        return gpu
    if cpu_only_build():
        warnings.warn(CaffeDsdWarning(f"{spec.path} asks for solver_mode GPU; this Caffe is a CPU-only build, so it "
                                      "trains on the CPU"), stacklevel=2)
        return None
    # Checked here, where a failure can name the solver rather than a --gpu nobody gave.
    check_gpu(spec.param.device_id, f"{spec.path}: solver_mode GPU, device_id {spec.param.device_id}")
    return spec.param.device_id


def _phase(spec, phase, gpu, on_iteration):
    """A train-* command's phase, in a throwaway folder."""
    check_test_options(spec, phase.test_iterations, phase.test_interval)
    gpu = solver_device(spec, gpu)
    check_solver_builds(spec, gpu)
    with scratch_folder() as work:
        return run_phase(spec, phase, work, gpu=gpu, on_iteration=on_iteration)


def _check_outputs(spec, output, force, weights, span, masks=None, others=()):
    """Refuse outputs (OUT, and OUT.masks.h5, written or removed) that
    would replace an input: the solver and its nets, the weights, the masks
    read, ``others``, the nets' data; and Caffe's own snapshots over ``span``
    that would."""
    data = [path for net, where, states in built_nets(spec) for path in data_files(net, states, where)]
    # The data the nets read, even --force does not let this run replace:
    # it reads them while it trains.
    for path in (output, masks_path_for(output)):
        check_not_data(path, data, "the nets read")
    for given in data:
        if caffe_snapshot_of(spec.param, given, span):
            raise InputError(f"{given}: the solver's own snapshots (snapshot_prefix {spec.param.snapshot_prefix!r}) "
                             "would overwrite this file, which the nets read as data; change snapshot_prefix")
    if snapshots_on(spec.param) and written_as_a_snapshot(spec.param, span, output):
        raise InputError(f"{output}: the solver's own snapshots (snapshot_prefix {spec.param.snapshot_prefix!r}) "
                         "write a file of this name in this run; give the output another name")
    if snapshots_on(spec.param) and written_as_a_snapshot(spec.param, span, masks_path_for(output)):
        raise InputError(f"{output}: a snapshot of the solver's own (snapshot_prefix "
                         f"{spec.param.snapshot_prefix!r}) has the masks file {masks_path_for(output).name} of this "
                         "output as its own, and would remove it; give the output another name")
    inputs = [spec.path, spec.net_path, *spec.test_net_paths, weights, masks_read_for(weights, masks),
              *solver_weights(spec), *others]
    # OUT.masks.h5 is written, or removed when OUT is written without masks.
    check_model_outputs(output, inputs, force)
    for given in inputs:
        if given is not None and not force and caffe_snapshot_of(spec.param, given, span):
            raise InputError(f"{given}: the solver's own snapshots (snapshot_prefix {spec.param.snapshot_prefix!r}) "
                             "would overwrite this input; pass --force to allow it, or change snapshot_prefix")


def train_sparse(solver_path, weights, output, masks=None, iterations=None, solverstate=None, gpu=None,
                 force=False, allow_python_layers=False, on_iteration=None, test_iterations=None,
                 test_interval=None):
    """The sparse phase: train with pruned weights held at exactly 0.0."""
    spec = read_solver(solver_path, allow_python_layers)
    maskset = masks_for(read_caffemodel(weights), masks, required=True)
    span = _span(spec, iterations, solverstate)
    _check_outputs(spec, output, force, weights, span, masks, others=[solverstate])
    phase = Phase(span[1] - span[0], weights, output, maskset, solverstate=solverstate,
                  test_iterations=test_iterations, test_interval=test_interval)
    return _phase(spec, phase, gpu, on_iteration)


def train_dense(solver_path, weights, output, lr_scale=0.1, iterations=None, gpu=None, force=False,
                allow_python_layers=False, on_iteration=None, test_iterations=None,
                test_interval=None, solverstate=None):
    """The re-dense phase: masks off, pruned weights start at their 0.0,
    survivors keep their values, lr = base_lr * lr_scale, fresh history
    (or ``solverstate``'s, going on from a snapshot of this phase)."""
    spec = read_solver(solver_path, allow_python_layers)
    span = _span(spec, iterations, solverstate)
    _check_outputs(spec, output, force, weights, span, others=[solverstate])
    phase = Phase(span[1] - span[0], weights, output, lr_scale=lr_scale, solverstate=solverstate,
                  test_iterations=test_iterations, test_interval=test_interval)
    return _phase(spec, phase, gpu, on_iteration)


def train_lowrank(solver_path, output, force, weights=None, masks=None, iterations=None, gpu=None, force_write=False,
                  allow_python_layers=False, on_iteration=None, test_iterations=None,
                  test_interval=None, solverstate=None):
    """Train with force regularization added to the gradients (force.py);
    with ``masks`` (or masks beside ``weights``), pruned weights stay 0.0 too.
    ``solverstate``: going on from a snapshot (with its model as ``weights``)."""
    from .force import ForceRegularizer
    from .lowrank import filter_layout

    spec = read_solver(solver_path, allow_python_layers)
    if masks is not None and weights is None:
        raise InputError(f"--masks {masks}: masks need the weights they were made for (-w)")
    if solverstate is not None and weights is None:  # the state's own learned_net is not loaded
        raise InputError(f"--solverstate {solverstate}: give -w the caffemodel of its snapshot")
    maskset = masks_for(read_caffemodel(weights), masks) if weights is not None else None
    span = _span(spec, iterations, solverstate)
    _check_outputs(spec, output, force_write, weights, span, masks, others=[solverstate])
    layouts = {layer.name: filter_layout(layer) for layer in spec.train_layers()}
    regularizer = ForceRegularizer(force, iter_size=max(1, spec.param.iter_size), layouts=layouts)
    phase = Phase(span[1] - span[0], weights, output, maskset, hooks=(regularizer,), solverstate=solverstate,
                  test_iterations=test_iterations, test_interval=test_interval)
    return _phase(spec, phase, gpu, on_iteration)


def train_quantized(solver_path, weights, output, bits, masks=None, iterations=None, gpu=None, force=False,
                    allow_python_layers=False, on_iteration=None, test_iterations=None,
                    test_interval=None):
    """Trained quantization: k-means each prunable layer's kept weights into
    2^bits shared values (``bits``: {"conv": n, "fc": m}) and fine-tune the
    centroids; pruned weights stay 0.0 and assignments stay fixed. The
    result's "test_first" is the TEST phase right after quantization."""
    from .dcz import check_bits, layer_kind
    from .layers import prunable_targets
    from .weight_sharing import WeightSharing, cluster

    check_bits(bits, "bits", partial=False)
    spec = read_solver(solver_path, allow_python_layers)
    model = read_caffemodel(weights)
    # Its zeros are what was pruned, with masks or without (a decompressed
    # model, a released sparse one): they belong to no cluster, and stay 0.0.
    maskset = zero_masks(model, masks_for(model, masks))
    span = _span(spec, iterations)
    _check_outputs(spec, output, force, weights, span, masks)
    keep = maskset.per_layer() if maskset else {}
    # Weights of another net are named as such, as load_weights would.
    check_solver_weights(spec, model)
    trained = {layer.name for layer in spec.train_layers()}
    clusters, fixed = {}, {}
    for target in prunable_targets(model):
        layer = model.layer(target.owner)
        data = layer.blobs[0].data
        kept = (data != 0) if target.owner not in keep else (keep[target.owner] & (data != 0))
        labels, codebook = cluster(data, kept, bits[layer_kind(layer.type)])
        # The train net holds tied weights under its own layer's name, which
        # may come after one of phase TEST only in the file.
        holders = [name for name in target.layers if name in trained]
        if holders:
            clusters[holders[0]] = labels, codebook
        # Layers of phase TEST only do not train: their kept weights take the
        # centroids once (those the net ties to a trained layer then take its
        # values at each TEST pass, tied_test_only_blobs).
        values = data.astype(np.float32).reshape(-1)
        values[labels >= 0] = codebook[labels[labels >= 0]]
        fixed.update((name, values.reshape(data.shape)) for name in target.layers if name not in trained)
    phase = Phase(span[1], weights, output, maskset, hooks=(WeightSharing(clusters),),
                  test_first=True, test_iterations=test_iterations, test_interval=test_interval,
                  test_only_values=tuple(fixed.items()))
    return _phase(spec, phase, gpu, on_iteration)


def zero_masks(model, maskset=None):
    """A MaskSet keeping, of each prunable layer, the non-zero weights that
    ``maskset`` (when given) keeps: a layer it leaves out, or a 0.0 it keeps
    (a decoded codebook's), would join no cluster of train-quantized and
    train freely. None when every weight is kept."""
    from .layers import prunable_targets

    base = maskset.masks if maskset is not None else {}
    masks, shared_by = {}, {}
    for target in prunable_targets(model):
        keep = model.layer(target.owner).blobs[0].data != 0
        if target.owner in base:
            keep &= base[target.owner]
        if not keep.all():
            masks[target.owner], shared_by[target.owner] = keep, target.layers
    if not masks:
        return None
    meta = dict(maskset.meta) if maskset is not None else {"source": model.path.name, "criterion": "zeros"}
    return MaskSet(masks, shared_by, model.structure(), meta)


def _span(spec, iterations, solverstate=None):
    """(first, last) iteration a train-* command trains: --iterations, or
    what is left to the solver's max_iter (all of it, or after the iteration
    ``solverstate`` was taken at, as `caffe train --snapshot` does)."""
    start = state_iteration(solverstate) if solverstate is not None else 0
    if iterations is None:
        if start >= spec.param.max_iter:
            where = f"{solverstate}: taken at iteration {start}, and " if solverstate is not None else ""
            raise InputError(f"{where}{spec.path} stops at max_iter {spec.param.max_iter}: nothing is left to "
                             "train; give --iterations")
        iterations = spec.param.max_iter - start
    _check_iterations(iterations)
    check_schedule(spec.param, spec.path, start, start + iterations)
    return start, start + iterations


def _check_iterations(iterations):
    if iterations is None or iterations < 0:
        raise InputError(f"--iterations {iterations}: must be 0 or more")
