"""Solver states (.solverstate, binary or HDF5) seen through masks.

A solverstate from a dense run carries momentum (and Adam/AdaDelta moments)
at positions that are pruned later; restored as is, that history moves pruned
weights off zero. ``clean_solverstate`` writes a copy whose history is 0.0 at
every masked position, which the sparse phase restores instead.

The copy also leaves out ``learned_net``: Caffe's restore loads the
caffemodel it names over the net's weights, which would silently replace the
pruned weights the sparse phase was given with the dense run's snapshot.

``learned_net`` and ``set_learned_net`` read and write that name: dsd's
checkpoints name the caffemodel beside them, and go on from wherever the
run folder now is.

History blob j belongs to learnable parameter j % N of the solver's net (N
learnable parameters; Adam and AdaDelta keep 2N history blobs), in Caffe's
order: layers in order, each layer's blobs in order, shared blobs once.
"""
import filecmp
import mmap
import os
import warnings
from pathlib import Path

import h5py
import numpy as np

from . import wire
from .atomic import atomic_open, atomic_path, check_input, check_room, rewritten_hdf5
from .caffemodel import is_hdf5, masked_blob_record, parse_blob, read_caffemodel, write_pieces
from .errors import HDF5_DAMAGE, CaffeDsdWarning, InputError
from .hdf5_weights import hdf5_blobs
from .maskfile import masks_path_for

STATE_ITER, STATE_LEARNED_NET, STATE_HISTORY, STATE_CURRENT_STEP = 1, 2, 3, 4


def learnable_params(net):
    """[(layer name, blob index, blob)] of a pycaffe Net, in Caffe's
    learnable_params order (a shared blob only at its first layer)."""
    seen, out = set(), []
    for name, layer in zip(net._layer_names, net.layers):
        for index, blob in enumerate(layer.blobs):
            address = blob.data.ctypes.data
            if address not in seen:
                seen.add(address)
                out.append((name, index, blob))
    return out


# Caffe's solvers keep one history blob per learnable blob, Adam and AdaDelta
# two; a restore with another count aborts the process (a glog check).
HISTORY_SETS = {"Adam": 2, "AdaDelta": 2}
# Those whose history is all sums of squares: a negative value there is of
# another type's state (SGD's and Nesterov's momentum, Adam's first moment),
# whose square root makes the first update NaN.
SQUARED_HISTORY = ("AdaGrad", "RMSProp", "AdaDelta")


def _check_history_signs(path, solver_type, history):
    """``history``: the state's history arrays, in order."""
    if solver_type not in SQUARED_HISTORY:
        return
    for j, data in enumerate(history):
        if (data < 0).any():
            raise InputError(f"{path}: history blob {j} holds negative values, which a {solver_type} solver's "
                             "(sums of squares) never does: a solverstate of another solver type (SGD, Nesterov "
                             "and Adam keep signed ones)")


def _history_masks(path, params, masks, shapes, solver_type):
    """For each history blob (given their shapes), the mask to apply or None."""
    n = len(params)
    sets = HISTORY_SETS.get(solver_type, 1)
    if n == 0 or len(shapes) != sets * n:
        raise InputError(f"{path}: {len(shapes)} history blobs, but a {solver_type} solver of this net keeps "
                         f"{sets * n}: a solverstate of another solver type or net")
    out = []
    for j, shape in enumerate(shapes):
        name, index, blob = params[j % n]
        if tuple(shape) != tuple(blob.data.shape) and int(np.prod(shape)) != blob.data.size:
            raise InputError(f"{path}: history blob {j} has shape {list(shape)}, but {name} blob {index} "
                             f"is {list(blob.data.shape)}: solverstate of another net")
        out.append(masks.get(name) if index == 0 else None)
    return out


def state_iteration(path):
    """The iteration solverstate ``path`` was taken at (0 when it says none)."""
    return _state_count(path, "iter", STATE_ITER)


def state_current_step(path):
    """The solver's current_step in solverstate ``path`` (0 when it says
    none): how many of multistep's stepvalues it has passed."""
    return _state_count(path, "current_step", STATE_CURRENT_STEP)


def _state_count(path, name, number):
    path = check_input(path, "solverstate")
    try:
        if is_hdf5(path):
            with h5py.File(path, "r") as state:
                return int(np.asarray(state[name]).ravel()[0]) if name in state else 0
        with open(path, "rb") as handle:
            buf = handle.read()
        return next((f.value for f in wire.iter_fields(buf) if f.number == number and f.wire_type == wire.VARINT), 0)
    except (wire.WireError, *HDF5_DAMAGE) as exc:
        raise InputError(f"{path}: not a solverstate, or damaged ({exc})") from None


def restorable_name(path):
    """A name for a copy of solverstate ``path`` that Caffe's restore reads in
    its format: Caffe goes by the name (".h5" or not), not the contents."""
    return "clean.solverstate.h5" if Path(path).is_file() and is_hdf5(path) else "clean.solverstate"


def clean_solverstate(path, output, net, masks, solver_type="SGD"):
    """Copy solverstate ``path`` to ``output`` with history zeroed where
    ``masks`` ({layer: bool keep-mask of blob 0}) prune; it must be a state
    of a ``solver_type`` solver of ``net``."""
    path = check_input(path, "solverstate")
    if is_hdf5(path):
        _clean_hdf5(path, Path(output), learnable_params(net), masks, solver_type)
    else:
        _clean_binary(path, Path(output), learnable_params(net), masks, solver_type)


def _clean_binary(path, output, params, masks, solver_type):
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file, not a solverstate")
    with open(path, "rb") as handle:
        buf = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(buf)
    try:
        fields = list(wire.iter_fields(buf))
        history = [(f, parse_blob(f"{path}: history", j, buf, view, f))
                   for j, f in enumerate(x for x in fields if x.number == STATE_HISTORY and x.wire_type == wire.LEN)]
    except wire.WireError as exc:
        raise InputError(f"{path}: not a solverstate, or truncated ({exc})") from None
    plan = dict(zip((f.start for f, _ in history),
                    _history_masks(path, params, masks, [b.shape for _, b in history], solver_type)))
    _check_history_signs(path, solver_type, (b.data for _, b in history))
    blobs = {f.start: b for f, b in history}
    pieces = []
    for f in fields:
        if f.number == STATE_LEARNED_NET:
            continue
        mask = plan.get(f.start)
        if mask is None:
            pieces.append(view[f.start:f.end])
        else:
            pieces.append(masked_blob_record(STATE_HISTORY, blobs[f.start], mask.reshape(blobs[f.start].shape)))
    with atomic_open(output) as out:
        write_pieces(out, pieces)


def _clean_hdf5(path, output, params, masks, solver_type):
    try:
        _copy_hdf5_cleaned(path, output, params, masks, solver_type)
    except HDF5_DAMAGE as exc:  # the room for the copy is checked first: the source is at fault
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a solverstate, or damaged ({first})") from None


def _copy_hdf5_cleaned(path, output, params, masks, solver_type):
    with h5py.File(path, "r") as src:
        history = src.get("history")
        if not isinstance(history, h5py.Group) or not all(isinstance(v, h5py.Dataset) for v in history.values()):
            raise InputError(f"{path}: HDF5 file without a 'history' group of datasets: not a solverstate")
        keys = sorted(history.keys(), key=int)
        shapes = [src["history"][k].shape for k in keys]
        plan = _history_masks(path, params, masks, shapes, solver_type)
        _check_history_signs(path, solver_type, (src["history"][k][()] for k in keys))
        with atomic_path(output) as tmp:
            # When the disk or ulimit -f runs out under HDF5's own writes,
            # h5py fails closing the file (a RuntimeError, or a crash): room
            # for the history and HDF5's own records is checked first. (Not
            # made in memory, as atomic_hdf5 does: a large net's is GBs.)
            check_room(tmp, sum(src["history"][k].nbytes for k in keys) + (1 << 20))
            # HDF5's own lock would conflict with the one atomic_path holds on it.
            with h5py.File(tmp, "w", locking=False) as dst:
                for name in src:
                    if name not in ("history", "learned_net"):
                        src.copy(src[name], dst, name=name)
                group = dst.create_group("history")
                for key, mask in zip(keys, plan):
                    data = src["history"][key][()]
                    if mask is not None:
                        data = np.where(mask.reshape(data.shape), data, data.dtype.type(0))
                    group.create_dataset(key, data=data)


def learned_net(state):
    """The caffemodel path solverstate ``state`` (binary or HDF5) names as
    its learned_net (bytes; None: none). Caffe's restore loads the weights
    from it: a path from the folder the snapshotting process ran in, which
    from another folder, or with the run folder moved, is not found (Caffe
    then aborts the process)."""
    damaged = f"{state}: damaged, not the solverstate Caffe wrote"
    if Path(state).stat().st_size == 0:
        raise InputError(damaged)
    if is_hdf5(state):
        try:
            with h5py.File(state, "r") as handle:
                named = handle.get("learned_net")
                return bytes(np.asarray(named[()])).split(b"\0")[0] if isinstance(named, h5py.Dataset) else None
        except (*HDF5_DAMAGE, TypeError) as exc:
            raise InputError(f"{damaged} ({exc})") from None
    with open(state, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            named = [buf[f.value_start:f.end] for f in wire.iter_fields(buf)
                     if f.number == STATE_LEARNED_NET and f.wire_type == wire.LEN]
        except wire.WireError:
            raise InputError(damaged) from None
    return named[-1] if named else None


def check_weights_of(state, weights, masked=False):
    """Warn when ``weights`` (the -w given with --solverstate ``state``,
    loaded already) are not the caffemodel Caffe saved with the state: the
    run would go on from them with the state's history and iteration, which
    nothing else notices (a resumed command given its first -w again). The
    state's model is looked for where Caffe would (its path as written)
    and beside the state; found, it must hold the same weights; not found,
    the same file name is the pair (or the name without the ``.h5`` that
    `convert` drops). A ``masked`` run may start from a dense run's state
    (no masks beside its model): its history is cleaned for the pruned
    weights."""
    named = learned_net(state)
    if named is None or weights is None:
        return
    name = os.fsdecode(os.path.basename(named))
    weights = Path(weights)
    where = (Path(os.fsdecode(named)), Path(state).parent / name)
    found = [path for path in dict.fromkeys(map(_found_file, where)) if path is not None]  # a file read once
    if found:
        if any(_same_weights(path, weights) for path in found):
            return
    elif name in (weights.name, weights.name + ".h5"):
        return
    if masked and not any(masks_path_for(path).is_file() for path in found):
        return
    warnings.warn(CaffeDsdWarning(
        f"--solverstate {state} was saved with {name}, and -w is {weights}: the run goes on from those weights "
        f"with the state's history, at its iteration {state_iteration(state)}; give -w the snapshot's caffemodel "
        "unless that is what you meant"))


def _found_file(path):
    """``path`` resolved, where it is a regular file; else None (also where
    it cannot be one: a symlink loop, a NUL byte from a damaged state)."""
    try:
        path = path.resolve()
        return path if path.is_file() else None
    except (OSError, RuntimeError, ValueError):
        return None


def _same_weights(path, weights):
    """Whether ``path`` (resolved) holds the weights of the binary
    caffemodel ``weights``: the same file or bytes, or Caffe's HDF5 weights
    of the same values (what `convert` made ``weights`` of). A file that
    cannot be read holds none."""
    try:
        if path == weights.resolve() or filecmp.cmp(path, weights, shallow=False):
            return True
    except OSError:
        return False
    if not is_hdf5(path):
        return False
    model, compared = read_caffemodel(weights), 0
    try:
        for layer, blobs in hdf5_blobs(path):
            held = model.layer(layer).blobs if layer in model else ()
            for index, values in blobs.items():
                if index >= len(held) or not np.array_equal(values.ravel(), held[index].data.ravel()):
                    return False
                compared += 1
    except (InputError, *HDF5_DAMAGE):
        return False
    return compared > 0


def _write_with_learned_net(buf, parts, name, out):
    """Write the binary state ``buf`` (its fields ``parts``) to file ``out``
    with learned_net ``name``, where Caffe puts it: in place of the one
    there, else after the iteration. Piece by piece, from views of ``buf``:
    a VGG16 state is half a GB."""
    field = wire.len_header(STATE_LEARNED_NET, len(name)) + name
    kept = [f for f in parts if f.number != STATE_LEARNED_NET]
    at = next((i for i, f in enumerate(parts) if f.number == STATE_LEARNED_NET),
              sum(1 for f in parts if f.number == STATE_ITER))
    with memoryview(buf) as view:
        for f in kept[:at]:
            out.write(view[f.start:f.end])
        out.write(field)
        for f in kept[at:]:
            out.write(view[f.start:f.end])


def set_learned_net(state, name, output=None):
    """Make solverstate ``state`` (binary or HDF5) name the caffemodel
    ``name`` (bytes) as its learned_net, as Caffe writes it: rewritten in
    place, or, a binary one, written to ``output``."""
    if is_hdf5(state):
        with rewritten_hdf5(state) as handle:
            if "learned_net" in handle:
                del handle["learned_net"]
            # Caffe's hdf5_load_string reads a C string: the NUL must be in the data.
            handle.create_dataset("learned_net", data=np.array(name + b"\0", dtype=f"S{len(name) + 1}"))
        return
    rewritten = output or f"{state}.learned_net"
    with open(state, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf, \
            open(rewritten, "wb") as out:
        _write_with_learned_net(buf, list(wire.iter_fields(buf)), name, out)
    if output is None:
        os.replace(rewritten, state)
