"""The solver's own snapshots (its ``snapshot``, ``snapshot_prefix`` and
``snapshot_format``), in a train-* command.

Caffe writes them inside ``Solver::Step``, in place: a run killed during one
leaves a short ``PREFIX_iter_N.caffemodel``, which stock `caffe test` runs
with whatever weights it lacks left random, without a word. caffedsd opens
the solver with Caffe's snapshots off and asks for each itself
(``Solver.snapshot``), into a temporary folder beside the prefix; the pair
is then renamed into place, model first, the state's ``learned_net`` naming
the model where Caffe would have written it. The files are Caffe's, with
Caffe's names and contents, and in the model the layers of phase TEST only
that Caffe's snapshot of the train net leaves out.

dsd's stages keep checkpoints of their own instead (dsd._Checkpoints).
"""
import contextlib
import os
import re
import warnings
from pathlib import Path

from .atomic import atomic_paths, check_output, check_room, raise_no_room, replace_held, same_file, temporary_folder
from .caffe_proto import SolverParameter
from .caffemodel import append_layers, new_layers_bytes
from .errors import CaffeDsdWarning, InputError
from .hdf5_weights import append_hdf5_layers
from .maskfile import atomic_model, masks_path_for
from .layers import expects_blobs
from .netcheck import built_layers, layer_names_with_splits, solver_state
from .solver_spec import built_nets, solver_type
from .solverstate import set_learned_net
from .values import next_multiple


def snapshots_on(param):
    return param.snapshot > 0 or param.snapshot_after_train


def check_prefix(param, path):
    """Caffe checks at start-up that it can write its periodic snapshots;
    the one it ends with (snapshot_after_train) is only tried at the end,
    where Caffe aborts the process."""
    if not snapshots_on(param):
        return
    if os.path.isdir(param.snapshot_prefix):
        # Caffe reads caffedsd's solver file, whose stem it would put after a folder.
        raise InputError(f"{path}: snapshot_prefix {param.snapshot_prefix!r} (as Caffe reads {path.name}) is a "
                         "folder; give one that names the snapshots' path and file name start")
    folder = os.path.dirname(param.snapshot_prefix) or "."
    if not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
        raise InputError(f"{path}: snapshot_prefix {param.snapshot_prefix!r}: folder {folder!r} does not exist "
                         "or cannot be written")


def check_hdf5_layers(spec, param):
    """Caffe's HDF5 snapshots (Net::ToHDF5) make a group per layer of the
    train net, Split layers included, named by the layer, and Caffe aborts
    the process where that fails: for a group that is there already, and
    for "." (the group itself). A name with "/" is a group path: where its
    parent is no earlier layer's group, the write fails; where it is, the
    write works, but Caffe's loader (CopyTrainedLayersFromHDF5, which a
    resumed solverstate goes through too) takes that layer's group for one
    more blob and aborts, while the nested layer's weights are never read.
    Found here, before training."""
    if param.snapshot_format != SolverParameter.HDF5 or not snapshots_on(param):
        return
    made = set()
    layers = built_layers(spec.net, [solver_state(spec.net, "TRAIN", param.train_state)])
    for name in layer_names_with_splits(layers):
        if "/" in name:
            why = ("HDF5 takes '/' for a group path: Caffe aborts writing the snapshot, or writes one that "
                   "stock Caffe cannot load")
        elif name == ".":
            why = "HDF5 takes '.' for the group itself: Caffe aborts at the first snapshot"
        elif name in made:
            why = "a layer of that name before it: Caffe aborts at the first snapshot"
        else:
            made.add(name)
            continue
        raise InputError(f"{spec.path}: snapshot_format HDF5 cannot hold layer {name!r} of {spec.net_path} "
                         f"({why}): use snapshot_format BINARYPROTO")


def hdf5_test_only_layers(spec):
    """The names of the layers of phase TEST only, with weights, that HDF5
    snapshots of ``spec``'s solver hold (SolverSnapshots.write adds them);
    warns of those they cannot: `convert` reads HDF5 weights with one net
    file, which only the train/val net's own layers are in, and Caffe's
    loader finds a layer by a group directly under ``data``, where a name
    with '/' is none."""
    nets = built_nets(spec)
    trained = {layer.name for layer in built_layers(spec.net, nets[0][2][:1])}
    own = {layer.name for layer in spec.net.layer}
    test_only = dict.fromkeys(layer.name for net, _, states in nets for layer in built_layers(net, states)
                              if layer.name not in trained and expects_blobs(layer))
    held = {name for name in test_only if name in own and "/" not in name and name != "."}
    if left := [name for name in test_only if name not in held]:
        warnings.warn(CaffeDsdWarning(
            f"{spec.path}: the HDF5 snapshots leave out layer {left[0]!r}"
            + (f" (and {len(left) - 1} more)" if len(left) > 1 else "")
            + " of phase TEST only: its name has '/' or it is in a test_net file, so Caffe or `convert` would not "
              "find it; a run going on from them would leave it random (snapshot_format: BINARYPROTO keeps it)"),
            stacklevel=2)
    return held


class SolverSnapshots:
    """The snapshots a solver's parameters ask for, written whole or not at
    all (see the module's doc). Used as a context: it holds the temporary
    folder ``solver_prefix`` is in, which the solver must be opened with."""

    def __init__(self, spec):
        """The snapshots of solver_spec.SolverSpec ``spec``, checked."""
        param = spec.param
        check_prefix(param, spec.path)
        check_hdf5_layers(spec, param)
        self.prefix = param.snapshot_prefix
        self.every = max(0, param.snapshot)
        self.after_train = param.snapshot_after_train
        self.extension = ".h5" if param.snapshot_format == SolverParameter.HDF5 else ""
        self._held = hdf5_test_only_layers(spec) if self.extension and snapshots_on(param) else None
        self._folder = None
        self._scratch = contextlib.nullcontext()
        self._warned_unmasked = False
        self.written = []  # (caffemodel, solverstate) of each snapshot made, in order

    def __enter__(self):
        if self.every or self.after_train:
            self._scratch = temporary_folder(Path(self.prefix))
        self._folder = self._scratch.__enter__()
        return self

    def __exit__(self, *exc):
        self._folder = None
        return self._scratch.__exit__(*exc)

    @property
    def solver_prefix(self):
        """The snapshot_prefix to open the solver with (None: no snapshots):
        Caffe's own, asked for by ``write``, go into the temporary folder."""
        return None if self._folder is None else self._folder / os.path.basename(self.prefix)

    def next_after(self, iteration):
        """The next iteration at which Caffe would snapshot by itself, or None."""
        return next_multiple(iteration, self.every)

    def ends_with(self, start, end):
        """Whether a run from ``start`` to ``end`` ends with one more, as
        `caffe train` does (snapshot_after_train), unless it just made one."""
        return self.after_train and end > start and not (self.every and end % self.every == 0)

    def last_until(self, start, end):
        """The last iteration a run from ``start`` to ``end`` snapshots at,
        or None for none."""
        if self.ends_with(start, end):
            return end
        last = self.every * (end // self.every) if self.every else 0
        return last if last > start else None

    def paths(self, iteration, prefix=None):
        """(caffemodel, solverstate) as Caffe names them for ``iteration``:
        strings, since the state records the model's as Caffe spelt it."""
        stem = f"{prefix or self.prefix}_iter_{iteration}"
        return f"{stem}.caffemodel{self.extension}", f"{stem}.solverstate{self.extension}"

    def held(self, appended):
        """Those of ``appended`` (write's) that its snapshots hold."""
        return [(param, arrays) for param, arrays in appended if not self.extension or param.name in self._held]

    def _masked(self, maskset):
        """Whether a snapshot is written with ``maskset`` beside it (write's)."""
        return maskset is not None and not self.extension

    def check_room(self, iteration, sizes, appended=(), maskset=None):
        """Raise OutputError unless the snapshot of ``iteration`` fits
        (write's ``sizes``, ``appended`` and ``maskset``), and InputError
        unless its files can go into place; returns the pair's sizes,
        ``appended`` counted in."""
        model, state = (Path(path) for path in self.paths(iteration))
        for path in (model, state, *((masks_path_for(model),) if self._masked(maskset) else ())):
            try:  # a folder in the way, or a name too long for its temporary: found before training
                check_output(path)
            except InputError as exc:
                raise InputError(f"snapshot_prefix {self.prefix!r}: its snapshot of iteration {iteration}: {exc}") \
                    from None
        # The state is written twice (Caffe's, then the rewrite naming the
        # model); new files at most at once: the pair and the temporaries of
        # its two renames into place.
        grown = new_layers_bytes(appended)
        rewritten = 0
        if self.extension and appended:
            # HDF5 headers of each group and dataset; the model is then
            # rewritten whole beside Caffe's (hdf5_weights.append_hdf5_layers).
            grown += 4096 * sum(1 + len(arrays) for _, arrays in appended)
            rewritten = sizes[0] + grown
        sizes = (sizes[0] + grown, sizes[1])
        check_room(model, sum(sizes) + sizes[1] + rewritten, max(sizes), files=4)
        return sizes

    def write(self, solver, sizes, appended=(), maskset=None):
        """Snapshot ``solver`` at its iteration; ``sizes``: lower bounds of
        Caffe's two files (snapshot_bytes), checked for room first,
        since Caffe aborts the process on a failed write. ``appended``: the
        layers of phase TEST only (testnets.test_only_records), which
        Caffe's snapshot of the train net lacks: a model without them is
        refused as the weights to go on from (they would be left random),
        and so are the masks of the model the run began with. ``maskset``:
        the masks the run holds, written beside a binary model, where a run
        going on from it finds them (train-lowrank, whose masks are
        optional, would go on without). Caffe's HDF5 weights have masks of
        no file of their own: `convert` makes them a caffemodel first."""
        iteration = int(solver.iter)
        model, state = self.paths(iteration)
        appended = self.held(appended)
        masked = self._masked(maskset)
        sizes = self.check_room(iteration, sizes, appended, maskset)
        made = self.paths(iteration, self.solver_prefix)
        try:
            solver.snapshot()
            try:
                (append_hdf5_layers if self.extension else append_layers)(made[0], appended)
            except OSError as exc:
                raise_no_room(model, exc)
                raise
            try:
                set_learned_net(made[1], os.fsencode(model))
            except OSError as exc:
                raise_no_room(state, exc)
                raise
            # The model is renamed first (the inner block), so that no state
            # names a model not yet in place; the masks of a model it
            # replaces go with it, or are replaced by its own.
            if maskset is not None and self.extension and not self._warned_unmasked:
                self._warned_unmasked = True
                warnings.warn(CaffeDsdWarning(
                    f"{model}: HDF5 snapshots hold no masks: to go on from one, `caffedsd convert` it and give "
                    "--masks the masks this run began with (snapshot_format: BINARYPROTO writes them beside each "
                    "snapshot)"), stacklevel=2)
            with atomic_paths(state) as (state_tmp,), atomic_model(model, maskset if masked else None) as model_tmp:
                replace_held(made[0], model_tmp)
                replace_held(made[1], state_tmp)
            self.written.append((model, state))
        finally:
            for each in made:
                Path(each).unlink(missing_ok=True)


def snapshot_bytes(spec, net):
    """At least the bytes Caffe writes for the solver's train ``net``: (its
    caffemodel: every layer's parameters and every blob; a solverstate's
    history: one float per learnable value, a blob shared through
    param { name } once, and two for Adam and AdaDelta, which keep two
    moments), in the solver's snapshot_format. The floats alone fell short
    by the framing, and Caffe aborted (exit 134) on a disk that held the
    floats but not the file."""
    built = spec.train_layers()
    names = {layer.name: [p.name for p in layer.param] for layer in built}
    # A layer's record: its parameters and a few tags; a blob's: its shape
    # (a varint of up to 10 bytes an axis), tags and lengths.
    model = sum(layer.ByteSize() + 16 for layer in built) + 64
    history = 64 + 1024  # iter, current_step, and learned_net: the path of the model snapshot
    moments = 2 if solver_type(spec.param) in ("Adam", "AdaDelta") else 1
    # HDF5 snapshots: a file's own records, and the headers of each group and
    # dataset (a tiny net's model was 9,472 bytes for 1,604 of floats).
    hdf5 = 4096 if spec.param.snapshot_format == SolverParameter.HDF5 else 0
    # data/, and a group in it for every layer (a ReLU's too); history/, iter, current_step, learned_net.
    model, history = model + (2 + len(built)) * hdf5, history + 5 * hdf5
    shared = set()
    for layer, blobs in net.params.items():
        params = names.get(layer, [])
        for index, blob in enumerate(blobs):
            framing = 24 + 11 * len(blob.shape) + hdf5
            model += 4 * blob.count + framing
            name = params[index] if index < len(params) else ""
            if name not in shared:
                history += moments * (4 * blob.count + framing)
            if name:
                shared.add(name)
    return model, history


def caffe_snapshot_of(param, path, span):
    """True when one of Caffe's own snapshots over iterations ``span``
    (first, last] would write the file ``path`` is, by any of its names (a
    symlink, a hard link, a linked folder): every ``snapshot`` iterations
    and, with snapshot_after_train, at the last."""
    folder = Path(param.snapshot_prefix).parent
    try:
        present = os.listdir(folder)
    except OSError:  # no folder yet: nothing there to overwrite
        return False
    return any(_snapshot_name(param, span, each) and same_file(folder / each, path) for each in present)


def _snapshot_name(param, span, name):
    """Whether Caffe's own snapshots over iterations ``span`` write (or,
    masks, remove) a file of this name in the snapshot_prefix's folder."""
    prefix = Path(param.snapshot_prefix)
    # Its model and state, and the masks its model replaces go with (maskfile.masks_path_for).
    found = re.fullmatch(re.escape(prefix.name) + r"_iter_(\d+)\.(?:(?:caffemodel|solverstate)(?:\.h5)?|"
                         r"masks\.h5|caffemodel\.h5\.masks\.h5)", name)
    if not found:
        return False
    k, (first, last) = int(found.group(1)), span
    return first < k <= last and ((param.snapshot > 0 and k % param.snapshot == 0)
                                  or (k == last and param.snapshot_after_train))


def written_as_a_snapshot(param, span, output):
    """Whether the output path (there or not) is one of Caffe's own
    snapshots over ``span``: written after it, or before it at a periodic
    snapshot, whose state would then name the output as its model."""
    output = Path(output)
    return (os.path.realpath(output.parent) == os.path.realpath(Path(param.snapshot_prefix).parent)
            and _snapshot_name(param, span, output.name))
