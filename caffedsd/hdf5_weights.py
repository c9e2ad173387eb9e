"""Caffe's HDF5 weights (``snapshot_format: HDF5``, ``Net::ToHDF5``) as a
binary caffemodel.

An HDF5 caffemodel holds ``data/<layer>/<j>``: blob j of each layer, and
nothing else. Layer types and their order live only in the net prototxt,
so converting needs it. A layer that takes a blob from another through
``param { name }`` has no dataset for it (Caffe saves only a blob's owner,
the first layer in the net that names it); the binary form repeats the
owner's values under every layer that uses the blob, as Caffe's own
``Net::ToProto`` does, or stock Caffe refuses the file. A layer named
with '/' (``conv1/bn``) lies in nested groups (``data/conv1/bn/<j>``),
found by its name in the prototxt. The weights must fit the prototxt, as
``prune --model`` checks them.
"""
from pathlib import Path

import h5py
import numpy as np

from .atomic import check_input, rewritten_hdf5
from .caffe_env import check_weights_fit, warn_unbuilt
from .caffe_proto import read_net_prototxt
from .caffemodel import is_hdf5, new_caffemodel, read_caffemodel
from .errors import HDF5_DAMAGE, InputError
from .layers import expects_blobs
from .maskfile import atomic_unmasked_path, check_model_outputs
from .netcheck import built_state, is_built
from .values import INT32_MAX


def _stored(path, group, layer):
    """{blob index: float32 array} of one layer's group. Its subgroups are
    other layers' (see _blob_groups)."""
    if not isinstance(group, h5py.Group):
        raise InputError(f"{path}: data/{layer} is not a group of blobs")
    blobs = {}
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            continue
        # "01" would be read as blob 1 beside a "1": Caffe writes neither twice.
        if not (key.isdigit() and key == str(int(key)) and isinstance(item, h5py.Dataset)):
            raise InputError(f"{path}: data/{layer}/{key} is not a blob (Caffe names them 0, 1, ...)")
        if item.shape is None:  # h5py.Empty: a dtype and no dataspace
            raise InputError(f"{path}: data/{layer}/{key} has no shape (an HDF5 null dataspace), not a blob")
        if any(dim > INT32_MAX for dim in item.shape) or item.size > INT32_MAX:
            # Caffe's blob shapes and counts are int; and a declared size is read before it is found out.
            raise InputError(f"{path}: data/{layer}/{key} has shape {list(item.shape)}, a dimension or count over "
                             f"{INT32_MAX} (Caffe's blob shapes and counts are int)")
        values = item[()]
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                blob = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError):
            raise InputError(f"{path}: data/{layer}/{key} holds {values.dtype} values, not numbers") from None
        if np.isfinite(values).all() and not np.isfinite(blob).all():
            raise InputError(f"{path}: data/{layer}/{key} holds values beyond float32's range "
                             f"({values.dtype}); a caffemodel holds float32")
        blobs[int(key)] = blob
    return blobs


def _blob_groups(path, data):
    """The groups under ``data`` that hold anything but groups, by their
    path below it. Net::ToHDF5 makes a layer's group by its name, and HDF5
    reads a '/' in it as a path: layer 'conv1/bn' is group 'bn' inside layer
    'conv1''s group, beside conv1's blobs."""
    found = set()

    def visit(name, item):
        if not isinstance(item, h5py.Group):
            if "/" not in name:
                raise InputError(f"{path}: data/{name} is not a group of blobs")
            found.add(name.rpartition("/")[0])

    data.visititems(visit)
    return found


def hdf5_blobs(path):
    """(layer name, {blob index: float32 array}) of each layer group of the
    Caffe HDF5 weights ``path``, a layer at a time, as stored (a shared blob
    under its owner only). Needs no net, as ``hdf5_layers`` does for the
    layers' order and types."""
    with h5py.File(path, "r") as handle:
        data = handle.get("data")
        if not isinstance(data, h5py.Group):
            raise InputError(f"{path}: HDF5 file without a 'data' group: not Caffe HDF5 weights")
        for layer in sorted(_blob_groups(path, data)):
            yield layer, _stored(path, data[layer], layer)


def append_hdf5_layers(path, layers):
    """Add ``layers`` ([(LayerParameter, [arrays])], as append_layers takes
    them) to the HDF5 weights ``path`` as Net::ToHDF5 writes a layer: a
    group ``data/<name>`` of float32 datasets 0, 1, ... (Caffe's loader
    goes by the groups directly under ``data``: a name with '/' would be
    no layer it finds.)"""
    if not layers:
        return
    with rewritten_hdf5(path) as h5:
        for param, arrays in layers:
            group = h5["data"].create_group(param.name)
            for index, values in enumerate(arrays):
                group.create_dataset(str(index), data=np.asarray(values, dtype=np.float32))


def _check_hdf5_names(net, where):
    """Refuse a layer with blobs whose name HDF5 does not keep apart: it
    reads '//', a leading or trailing '/' and a '.' part as path syntax."""
    for layer in net.layer:
        if expects_blobs(layer) and "/" in layer.name and any(
                part in ("", ".") for part in layer.name.split("/")):
            raise InputError(f"{where}: layer {layer.name!r} cannot be found in HDF5 weights: HDF5 reads a "
                             "'/' in a name as a path of groups, and this path has an empty or '.' part")


def hdf5_layers(path, net, where):
    """[(LayerParameter, [arrays])] for the layers of ``net`` (a V2
    NetParameter read from ``where``) that the HDF5 weights hold, in the
    net's order."""
    _check_hdf5_names(net, where)
    names = {layer.name for layer in net.layer}
    try:
        with h5py.File(path, "r") as handle:
            data = handle.get("data")
            if not isinstance(data, h5py.Group):
                raise InputError(f"{path}: HDF5 file without a 'data' group: not Caffe HDF5 weights")
            # Groups without blobs are fine: Caffe writes one for every layer,
            # the Split layers it inserts itself included.
            unknown = sorted(name for name in _blob_groups(path, data) if name not in names)
            if unknown:
                more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
                raise InputError(f"{path}: layer {unknown[0]!r} is not in {where}{more}")
            stored = {layer.name: _stored(path, data[layer.name], layer.name)
                      for layer in net.layer if layer.name in data}
    except HDF5_DAMAGE as exc:
        raise InputError(f"{path}: not readable as Caffe HDF5 weights ({exc})") from None
    # A net may define a layer once per phase under one name; both load the
    # one group of that name, and a caffemodel holds the name once: the
    # layer the TRAIN net (what Caffe snapshots) builds, else the first.
    train = built_state(net, "TRAIN")
    chosen = {}
    for i, layer in enumerate(net.layer):
        if layer.name not in chosen or (is_built(layer, train) and not is_built(net.layer[chosen[layer.name]], train)):
            chosen[layer.name] = i
    owners, layers = {}, []
    for i, layer in enumerate(net.layer):
        if layer.name not in stored or chosen[layer.name] != i:  # Caffe writes a group per layer
            continue
        blobs = stored[layer.name]
        shared = {j: p.name for j, p in enumerate(layer.param) if p.name}
        count = max([j + 1 for j in blobs] + [j + 1 for j in shared], default=0)
        arrays = []
        for j in range(count):
            if j in blobs:
                arrays.append(blobs[j])
                if j in shared:
                    owners.setdefault(shared[j], blobs[j])
            elif shared.get(j) in owners:
                arrays.append(owners[shared[j]])
            else:
                raise InputError(f"{path}: layer {layer.name!r} has no blob {j} (data/{layer.name}/{j}), "
                                 "and no earlier layer of the net shares it")
        if arrays:
            layers.append((layer, arrays))
    return layers


def convert_hdf5_weights(weights, model, output, force=False, allow_python_layers=False):
    """Write HDF5 ``weights`` of the net ``model`` as a binary V2 caffemodel
    at ``output`` (atomically). Returns (layers written, floats written)."""
    weights, model = check_input(weights), Path(model)
    if not is_hdf5(weights):
        raise InputError(f"{weights}: not an HDF5 file (a binary caffemodel needs no conversion)")
    net = read_net_prototxt(model, allow_python_layers)
    check_model_outputs(output, [weights, model], force)
    layers = hdf5_layers(weights, net, model)
    if not layers:
        raise InputError(f"{weights}: holds no blob of any layer of {model}")
    with atomic_unmasked_path(output) as tmp:
        new_caffemodel(tmp, layers, name=net.name)
        # As prune --model does: stock Caffe would abort on a shape it
        # cannot copy, or leave a layer without weights random.
        warn_unbuilt(check_weights_fit(net, model, read_caffemodel(tmp), tmp, named=weights))
    return len(layers), sum(a.size for _, arrays in layers for a in arrays)
