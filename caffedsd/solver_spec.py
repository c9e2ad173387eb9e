"""Reading a user's solver prototxt as Caffe's Solver would: which train
net and test nets it builds, in which states, and what Caffe would abort
on (an unknown solver type or lr_policy, no net, a net given twice).

``read_solver`` gives the ``SolverSpec`` that training.run_phase trains.
"""
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .caffe_env import built_by_caffedsd, caffe_has_leveldb
from .caffe_proto import LayerParameter, SolverParameter, inline_net, parse_prototxt, read_net_prototxt
from .errors import InputError
from .layers import expects_blobs
from .netcheck import built_layers, check_data_sources, check_pair, output_kinds, solver_state
from .values import GREATEST_FLOAT32, INT32_MAX, LEAST_NORMAL_FLOAT32


@dataclass(frozen=True)
class SolverSpec:
    """A checked solver prototxt: its parameters and the net it trains.

    A net given inline (``net_param`` and the like) has the solver's own
    path as its path: that is the file that holds it."""

    path: Path
    param: object  # SolverParameter
    net_path: Path
    net: object  # NetParameter (V2)
    test_nets: tuple = ()  # ((path, NetParameter), ...): test_net_param, then test_net files, as Caffe orders them

    @property
    def test_net_paths(self):
        return tuple(path for path, _ in self.test_nets)

    def train_layers(self):
        """The LayerParameters of the train net that Caffe builds (TRAIN phase, the solver's train_state)."""
        return built_layers(self.net, [solver_state(self.net, "TRAIN", self.param.train_state)])


# What stock Caffe knows; anything else aborts the process (glog's fatal log).
# Checked on caffedsd's own build only: a fork (CAFFE_ROOT) may know more.
_SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")


_LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def solver_weights(spec):
    """The files the solver's own ``weights`` name, which Caffe loads into
    the train net when it opens the solver (before -w's): comma-separated
    lists, read from the current folder."""
    return [Path(name) for entry in spec.param.weights for name in entry.split(",") if name]


def _check_solver_param(param, path):
    # Caffe snapshots at multiples of any non-zero value, a negative one too.
    if param.snapshot < 0:
        raise InputError(f"{path}: snapshot {param.snapshot} must be 0 (no periodic snapshots) or more")
    if not built_by_caffedsd():
        return
    if param.HasField("type") and param.type not in _SOLVER_TYPES:
        raise InputError(f"{path}: solver type {param.type!r} is not one of Caffe's ({', '.join(_SOLVER_TYPES)})")
    if param.lr_policy not in _LR_POLICIES:
        raise InputError(f"{path}: lr_policy {param.lr_policy!r} is not one of Caffe's ({', '.join(_LR_POLICIES)})")
    if param.lr_policy in ("step", "sigmoid") and param.stepsize <= 0:
        raise InputError(f"{path}: lr_policy \"{param.lr_policy}\" needs a stepsize above 0")
    # SGDSolver::GetLearningRate checks these at the first update.
    if param.lr_policy in ("step", "exp", "inv", "multistep", "sigmoid") and not param.gamma >= 0:
        raise InputError(f"{path}: lr_policy \"{param.lr_policy}\" needs a gamma of 0 or more, not {param.gamma:g}")
    # Caffe finds these only inside an update, aborting the process (glog's
    # fatal log), or dividing the gradients by 0.
    if param.weight_decay and param.regularization_type not in ("L1", "L2"):
        raise InputError(f"{path}: regularization_type {param.regularization_type!r} is not one of Caffe's "
                         "(L1, L2)")
    if param.iter_size < 1:
        raise InputError(f"{path}: iter_size {param.iter_size} must be 1 or more")


def solver_type(param):
    """The solver's type: its ``type``, or the deprecated ``solver_type``
    enum (whose values are _SOLVER_TYPES' order)."""
    return param.type if param.HasField("type") else _SOLVER_TYPES[param.solver_type]


def read_solver(path, allow_python_layers=False):
    """Parse and check a solver prototxt: its net and data files must exist.

    Paths in it are relative to the current folder, as for `caffe train`."""
    path = Path(path)
    param = parse_prototxt(path, SolverParameter)
    _check_solver_param(param, path)
    resolve_prefix(param, path)
    net_path, net = _train_net(param, path, allow_python_layers)
    test_nets = [(path, inline_net(each, f"{path}: test_net_param #{i + 1}", allow_python_layers))
                 for i, each in enumerate(param.test_net_param)]
    test_nets += [_net_file(path, "test_net", each, allow_python_layers) for each in param.test_net]
    spec = SolverSpec(path, param, net_path, net, tuple(test_nets))
    leveldb = caffe_has_leveldb()
    for each, where, states in built_nets(spec):
        check_data_sources(each, where, leveldb, states)
    return spec


# Where Caffe's Solver::InitTrainNet takes the train net from: exactly one.
_TRAIN_NET_FIELDS = ("train_net_param", "train_net", "net_param", "net")


def _train_net(param, path, allow_python_layers):
    """(path, NetParameter) of the solver's train net, a file or inline."""
    given = [field for field in _TRAIN_NET_FIELDS if param.HasField(field)]
    if not given:
        raise InputError(f"{path}: names no net (net: \"train_val.prototxt\")")
    if len(given) > 1:
        raise InputError(f"{path}: gives the train net {len(given)} times ({', '.join(given)}); Caffe takes "
                         "exactly one")
    (field,) = given
    if field.endswith("_param"):
        return path, inline_net(getattr(param, field), f"{path}: {field}", allow_python_layers)
    return _net_file(path, field, getattr(param, field), allow_python_layers)


def _net_file(solver_path, field, net_file, allow_python_layers):
    """(path, NetParameter) of a net file the solver names in ``field``."""
    net_path = Path(net_file)
    if not net_path.exists():  # one that is there but not a file: read_net_prototxt says so
        raise InputError(f"{solver_path}: {field} {net_file!r} does not exist (paths are relative to the current "
                         "folder)")
    return net_path, read_net_prototxt(net_path, allow_python_layers)


def built_nets(spec):
    """[(NetParameter, path, NetStates)]: the train/val net and each
    test_net file, with the states the Solver builds them in (Caffe's
    Solver::InitTrainNet and InitTestNets): TRAIN with train_state; then a
    TEST net per test_iter, the test_net_param and test_net ones first,
    the train/val net (given as `net` or `net_param`) for the rest, each
    with its test_state."""
    param = spec.param
    test_states = list(param.test_state)

    def test_state(index):
        return test_states[index] if index < len(test_states) else None

    files = len(spec.test_nets)
    generic = test_net_count(spec) - files
    main = [solver_state(spec.net, "TRAIN", param.train_state)]
    main += [solver_state(spec.net, "TEST", test_state(files + i)) for i in range(generic)]
    return [(spec.net, spec.net_path, main)] + [(net, path, [solver_state(net, "TEST", test_state(i))])
                                                for i, (path, net) in enumerate(spec.test_nets)]


def check_solver_weights(spec, model):
    """Raise InputError where the caffemodel ``model`` does not fit the
    solver's nets as Caffe builds them (built_nets): a layer built in a
    state without weights, of other shapes, or weights no built layer takes
    (Caffe would ignore them, and what caffedsd writes would lose them). A
    layer the files have but no state builds needs none."""
    (net, path, states), *tests = built_nets(spec)
    check_pair(net, path, model, others=[(other, other_states) for other, _, other_states in tests], states=states,
               strict="the solver's states, nor its test nets")
    for other, other_path, other_states in tests:
        check_pair(other, other_path, model, unused_weights=True, states=other_states)


def headline_output(spec):
    """The output of the Solver's first test net (Caffe's order, as
    built_nets) a one-line summary shows: netcheck.output_kinds' default,
    GoogLeNet's loss3/top-1 rather than its loss1/loss1; None for none."""
    return output_kinds(*tested_net(spec, 0))[1]


def test_output_name(index, top):
    """How an output ``top`` of test net #``index`` is named in what is
    printed and recorded: the first net's by itself, net #i's (Caffe's
    "Testing net (#i)") as "#i/top"."""
    return f"#{index}/{top}" if index else top


def solver_output_kinds(spec):
    """{output: "accuracy" or "loss"} of the Solver's test nets, by the
    layers that make them (netcheck.output_kinds), named as evaluate names
    them; outputs of other layers are left out."""
    kinds = {}
    for index in range(len(test_iterations(spec.param))):
        kinds.update((test_output_name(index, top), kind)
                     for top, kind in output_kinds(*tested_net(spec, index))[0].items())
    return kinds


def scaled_lr(spec, lr_scale, label="--lr-scale"):
    """The solver's base_lr times ``lr_scale``; InputError (``label``
    naming the scale) where Caffe could not train at it."""
    if not (lr_scale > 0 and math.isfinite(lr_scale)):
        raise InputError(f"{label} {lr_scale}: must be a positive number")
    rate = spec.param.base_lr * lr_scale
    if 0 < abs(rate) < LEAST_NORMAL_FLOAT32:
        # Caffe's learning rate is a float: it would train at 0 without a word.
        raise InputError(f"{label} {lr_scale!r}: {spec.path}'s base_lr {spec.param.base_lr:g} times it is "
                         f"{rate:g}, below the least float Caffe computes with ({LEAST_NORMAL_FLOAT32:g})")
    if abs(rate) > GREATEST_FLOAT32:
        # It would be inf there: the first step makes every weight NaN.
        raise InputError(f"{label} {lr_scale!r}: {spec.path}'s base_lr {spec.param.base_lr:g} times it is "
                         f"{rate:g}, beyond the greatest float Caffe computes with ({GREATEST_FLOAT32:g})")
    return rate


def test_net_count(spec):
    """How many test nets the Solver builds: the test_net_param and test_net
    ones, then the train/val net (`net` or `net_param`) for each test_iter left."""
    param = spec.param
    files = len(spec.test_nets)
    return files + (max(0, len(param.test_iter) - files) if param.HasField("net") or param.HasField("net_param")
                     else 0)


def tested_net_source(spec, index):
    """(path, NetParameter) the solver's test net #``index`` is built from:
    Caffe's InitTestNets builds the test_net_param and test_net ones first,
    then the train/val net for each test_iter left."""
    return spec.test_nets[index] if index < len(spec.test_nets) else (spec.net_path, spec.net)


def tested_net(spec, index):
    """(NetParameter, NetState) of the solver's test net #``index``."""
    _, net = tested_net_source(spec, index)
    states = spec.param.test_state
    return net, solver_state(net, "TEST", states[index] if index < len(states) else None)


def tested_net_layers(spec, index):
    """{name: LayerParameter} of the layers of the solver's test net #``index``."""
    net, state = tested_net(spec, index)
    return {layer.name: layer for layer in built_layers(net, [state])}


def trained_param_names(layers, trained):
    """The param names carried, in a test net whose LayerParameters are
    ``layers``, by the layers the train net also has (``trained``: its
    layer names with weights): a layer of phase TEST only carrying one
    shares trained weights there. Caffe ties names within one net only."""
    return {param.name for layer in layers if layer.name in trained for param in layer.param if param.name}


def written_test_only(layer, index, tied):
    """A copy of ``layer``, of phase TEST only in test net #``index``, as a
    model written after training holds it beside the train net's layers
    (test_only_records). A param name not in ``tied`` (trained_param_names)
    ties it to no trained weights, and gets "@test<index>" appended: in the
    model's one list of layers, where caffedsd groups tied weights by name,
    it then ties none of the train net's or another test net's layers."""
    written = LayerParameter()
    written.CopyFrom(layer)
    for param in written.param:
        if param.name and param.name not in tied:
            param.name += f"@test{index}"
    return written


def test_only_params(spec, trained=None, weighted=None):
    """{name: (test net index, LayerParameter as written_test_only gives
    it)} of the layers of phase TEST only a model written after training
    holds (test_only_records): the test nets' layers with weights that the
    train net lacks. ``trained``: the train net's layer names with weights;
    ``weighted[k]``: test net k's; by default, from the prototxt's layer
    types. A layer in several test nets is written from the first that
    ties it to trained weights by a param name (it holds them there, and
    `caffe test` of that net copies it into the trained layer's blob),
    else from the first that has it."""
    if trained is None:
        trained = {layer.name for layer in spec.train_layers() if expects_blobs(layer)}
    chosen = {}
    for index in range(test_net_count(spec)):
        layers = tested_net_layers(spec, index)
        tied = trained_param_names(layers.values(), trained)
        names = weighted[index] if weighted is not None else [n for n, layer in layers.items() if expects_blobs(layer)]
        for name in names:
            if name in trained:
                continue
            ties = any(param.name in tied for param in layers[name].param)
            if name not in chosen or (ties and not chosen[name][2]):
                chosen[name] = (index, written_test_only(layers[name], index, tied), ties)
    return {name: (index, written) for name, (index, written, _) in chosen.items()}


def test_iterations(param):
    """Batches of each test net that cover its test set (test_iter: one per
    test net, in Caffe's order)."""
    return list(param.test_iter)


def check_schedule(param, path, start, end):
    """Refuse training from ``start`` to ``end`` past max_iter under
    lr_policy "poly": Caffe's rate base_lr (1 - iter/max_iter)^power is 0 at
    max_iter and then negative (gradient ascent) or NaN; `caffe train` stops
    there, pycaffe's step does not. Refuse any ``end`` past Caffe's int
    iteration counter, which would wrap to negative iterations."""
    if end > INT32_MAX:
        raise InputError(f"{path}: this run would train from iteration {start} to {end}, past {INT32_MAX}, "
                         "the last iteration Caffe's counter (a C int) holds")
    if param.lr_policy == "poly" and end > param.max_iter:
        raise InputError(f"{path}: lr_policy \"poly\" brings the learning rate to 0 at max_iter {param.max_iter}, "
                         f"and this run would train from iteration {start} to {end}, where it turns negative: "
                         f"give at most {max(0, param.max_iter - start)} iterations, or raise max_iter")


def resolve_prefix(param, path):
    """Give ``param`` the snapshot_prefix as Caffe reads the solver file
    ``path`` (UpgradeSnapshotPrefixProperty): none gives the file's path
    without its extension, a folder gives the file's stem in it. caffedsd
    hands Caffe a solver file of its own, whose name Caffe would take
    instead."""
    if not param.HasField("snapshot_prefix"):
        param.snapshot_prefix = str(path.with_suffix(""))
    elif os.path.isdir(param.snapshot_prefix):
        param.snapshot_prefix = os.path.join(param.snapshot_prefix, path.stem)
