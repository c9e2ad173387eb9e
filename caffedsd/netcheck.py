"""Does a net prototxt fit a caffemodel, and can Caffe read its data?

Stock Caffe copies weights by layer name, logs "Ignoring source layer" at
INFO level for weights the net lacks, and silently leaves a net layer with no
weights at its initial values (its fillers': random, constant or zero).
caffedsd refuses both, and weights whose outputs or kernel differ from the
prototxt's.

A data file Caffe cannot open, or a layer type it does not have, aborts the
whole process (glog's fatal log), so both are checked before Caffe builds
the net.
"""
from pathlib import Path

import numpy as np

from .caffe_proto import NetState
from .caffemodel import is_hdf5
from .errors import InputError
from .layers import expected_blob_count, expects_blobs

_SHOWN = 6


def name_list(names):
    """``names`` joined, the first few only, with how many more there are."""
    names = list(names)
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _kernel(conv, spatial):
    """The kernel dims a ConvolutionParameter gives, for ``spatial`` axes."""
    if conv.HasField("kernel_h") or conv.HasField("kernel_w"):
        return (conv.kernel_h, conv.kernel_w)
    sizes = list(conv.kernel_size)
    return tuple(sizes * spatial if len(sizes) == 1 else sizes)


def _shape_problem(layer_param, blobs):
    """What the prototxt alone says of the weight and bias shapes, where
    they disagree: the outputs (num_output: a fine-tuned model's classes)
    and the kernel. The input axis needs the whole net's shapes: Caffe
    (check_blob_shapes) knows those."""
    weights = tuple(blobs[0].shape)
    shown = "x".join(map(str, weights))
    if layer_param.type in ("Convolution", "Deconvolution"):
        conv = layer_param.convolution_param
        outputs = conv.num_output
        # Deconvolution stores (inputs, outputs / group, kernel...).
        axis, rows = (0, outputs) if layer_param.type == "Convolution" else (1, outputs // max(conv.group, 1))
        if len(weights) < 3 or weights[axis] != rows:
            return f"num_output {outputs}, weights {shown}"
        kernel = _kernel(conv, len(weights) - 2)
        if weights[2:] != kernel:
            return f"kernel {'x'.join(map(str, kernel))}, weights {shown}"
    elif layer_param.type == "InnerProduct":
        ip = layer_param.inner_product_param
        outputs = ip.num_output
        if len(weights) != 2 or weights[1 if ip.transpose else 0] != outputs:
            return f"num_output {outputs}, weights {shown}"
    else:
        return None
    if len(blobs) > 1 and tuple(blobs[1].shape) != (outputs,):
        return f"num_output {outputs}, bias {'x'.join(map(str, blobs[1].shape))}"
    return None


def check_pair(net, net_path, model, weights_path=None, unused_weights=False, others=(), states=None,
               strict=False):
    """Raise InputError listing every mismatch between prototxt and weights.
    ``weights_path``: the file to name for the weights, when ``model`` was
    read from a temporary made of it (a conversion's output).
    ``unused_weights``: weights of layers the net lacks are expected (a
    deploy net of a train_val, without its auxiliary classifiers).
    ``states``: the NetStates the net is built in (None: every layer of the
    file): only the layers built need weights, of their shapes.
    ``strict``: weights of a layer the file has but no state builds are
    ignored too (what Caffe would not load, an output would not hold); a
    string names those states in the message.
    ``others``: further (NetParameter, states) the weights are copied into
    (a solver's test_net files), whose layers' weights are not ignored."""
    weights_path = Path(weights_path or model.path)
    built = built_layers(net, states)
    net_layers = {}
    for layer_param in built:
        net_layers.setdefault(layer_param.name, layer_param)
    with_blobs = {layer.name: layer for layer in model.layers if layer.blobs}
    problems = []
    no_weights = []
    for one in [None] if states is None else [[state] for state in states]:
        # Blobs a param name ties to a layer with weights are filled through
        # it (Caffe's own snapshot of a net whose TEST-only layer shares them
        # holds none of its own), in a net built in that state: Caffe ties
        # names within one net.
        layers = built_layers(net, one)
        filled = {param.name for layer in layers if layer.name in with_blobs for param in layer.param if param.name}
        no_weights += [p.name for p in layers if expects_blobs(p) and p.name not in with_blobs
                       and not _filled_through_ties(p, filled)]
    no_weights = list(dict.fromkeys(no_weights))
    if no_weights:
        problems.append(f"layers with no weights in {weights_path.name} (Caffe would leave them at their initial "
                        "values): " + name_list(no_weights))
    known = set(net_layers) if strict else {layer.name for layer in net.layer}
    known.update(layer.name for other, other_states in others
                 for layer in built_layers(other, other_states if strict else None))
    ignored = [] if unused_weights else [n for n in with_blobs if n not in known]
    if ignored:
        where = f"{net_path} does not build in {strict}" if isinstance(strict, str) else \
            f"{net_path} does not build in the states `caffe train` and `caffe test` build it in" if strict else \
            f"{net_path} does not have"
        problems.append(f"weights of layers {where} (Caffe would ignore them): " + name_list(ignored))
    counts, shapes = [], []
    for layer_param in built:  # each layer of a name: a TRAIN and a TEST one may differ
        name = layer_param.name
        if name not in with_blobs:
            continue
        blobs = with_blobs[name].blobs
        expected = expected_blob_count(layer_param)
        if expected is not None and expected != len(blobs):
            counts.append(f"{name} ({expected} in net, {len(blobs)} in weights)")
        elif problem := _shape_problem(layer_param, blobs):
            shapes.append(f"{name} ({problem})")
    counts, shapes = list(dict.fromkeys(counts)), list(dict.fromkeys(shapes))
    if counts:
        problems.append("blob counts differ: " + name_list(counts))
    if shapes:
        problems.append("blob shapes differ: " + name_list(shapes))
    if problems:
        raise InputError(f"{net_path} does not match {weights_path}: " + "; ".join(problems))


def _filled_through_ties(layer, filled):
    """Whether every blob ``layer`` expects has a param name in ``filled``."""
    expected = expected_blob_count(layer)
    names = [param.name for param in layer.param]
    return bool(expected) and len(names) >= expected and all(names[i] in filled for i in range(expected))


def check_tied_weights(layers, model, net_path, weights_path=None, remedy="give them one set of weights"):
    """Raise InputError where layers that ``layers`` (LayerParameters of one
    net) tie by a param name hold different weights in the caffemodel
    ``model`` (``weights_path``: the file to name instead): Caffe copies
    each layer's into the one shared blob, so the last copied are what
    trains, while masks and clusters made of the file are made of each
    layer's own."""
    first = {}
    for layer in layers:
        if layer.name not in model:
            continue
        blobs = model.layer(layer.name).blobs
        for index, spec in enumerate(layer.param):
            if not spec.name or index >= len(blobs):
                continue
            other = first.setdefault(spec.name, (layer.name, index))
            if other == (layer.name, index):
                continue
            # share_mode PERMISSIVE ties blobs of one count in two shapes: one blob's values either way.
            theirs, mine = model.layer(other[0]).blobs[other[1]].data, blobs[index].data
            if theirs.size != mine.size or not np.array_equal(theirs.reshape(-1), mine.reshape(-1)):
                raise InputError(f"{weights_path or model.path}: layers {other[0]} and {layer.name} hold different "
                                 f"weights, but {net_path} ties them (param {spec.name!r}): Caffe would keep "
                                 f"whichever it copies last, and masks made of the file would not fit; {remedy}")


def check_blob_shapes(net, model, net_path):
    """Raise InputError where a blob of the caffemodel ``model`` has another
    shape than the pycaffe Net ``net`` (built from ``net_path``) gives it:
    Caffe aborts the process when copying such a blob."""
    for name, blobs in net.params.items():
        if name not in model:
            continue
        source = model.layer(name).blobs
        for index, blob in enumerate(blobs):
            if index < len(source) and not _same_shape(blob.data.shape, source[index].shape):
                raise InputError(f"{model.path}: layer {name!r} blob {index} is {list(source[index].shape)}, "
                                 f"but {net_path} makes it {list(blob.data.shape)}")


def _same_shape(a, b):
    """Equal shapes, allowing Caffe's legacy 4-D blobs padded with 1s."""
    return tuple(a) == tuple(b) or [d for d in a if d != 1] == [d for d in b if d != 1]


_SOURCES = {"HDF5Data": "hdf5_data_param", "Data": "data_param", "ImageData": "image_data_param",
            "WindowData": "window_data_param"}  # layer type: its parameter with the source
_LEVELDB = 0  # DataParameter.DB: LEVELDB = 0 (the default), LMDB = 1


_PHASES = {value.name: value.number for value in NetState.DESCRIPTOR.fields_by_name["phase"].enum_type.values}


def loaded_states(net):
    """The states a net file is built in by itself, with no solver's
    train_state or test_state: `caffe train`'s TRAIN and `caffe test`'s TEST
    (built_state). A layer of a stage neither picks is built by neither."""
    return [built_state(net, "TRAIN"), built_state(net, "TEST")]


def built_state(net, phase):
    """The NetState Caffe builds ``net`` in when it is loaded for ``phase``
    ("TRAIN" or "TEST") by itself, as `caffe test` and pycaffe's caffe.Net
    do: the net's own state, with that phase and level 0."""
    state = NetState()
    state.CopyFrom(net.state)
    state.phase = _PHASES[phase]
    state.level = 0
    return state


def solver_state(net, phase, extra=None):
    """The NetState of a net a Solver builds for ``phase``: the phase, then
    the net's own state and the solver's ``extra`` (train_state or one
    test_state) merged over it, in Caffe's order."""
    state = NetState()
    state.phase = _PHASES[phase]
    state.MergeFrom(net.state)
    if extra is not None:
        state.MergeFrom(extra)
    return state


def _meets(state, rule):
    """Caffe's Net::StateMeetsRule."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    return all(stage in state.stage for stage in rule.stage) and \
        not any(stage in state.stage for stage in rule.not_stage)


def is_built(layer, state):
    """True when Caffe builds ``layer`` in NetState ``state``, by its include
    and exclude rules (Caffe's Net::FilterNet)."""
    if len(layer.include):
        return any(_meets(state, rule) for rule in layer.include)
    return not any(_meets(state, rule) for rule in layer.exclude)


def built_layers(net, states):
    """The layers of ``net`` Caffe builds in at least one of ``states``; None: all."""
    if states is None:
        return list(net.layer)
    states = list(states)
    return [layer for layer in net.layer if any(is_built(layer, state) for state in states)]


def output_feeds(net, state, names):
    """{layer: [the outputs its result reaches]} for the layers ``names`` of
    ``net`` as built in ``state``: the net's outputs are the tops no later
    layer reads, and a layer feeds those its tops lead to. GoogLeNet's
    auxiliary classifiers feed loss1/* and loss2/*, never loss3/top-1."""
    layers = built_layers(net, [state])
    outputs = []
    for layer in layers:  # in order: an in-place layer reads a top and gives it again
        outputs = [top for top in outputs if top not in layer.bottom]
        outputs += [top for top in layer.top if top not in outputs]
    feeds = {}
    for index, layer in enumerate(layers):
        if layer.name not in names:
            continue
        reached = set(layer.top)
        for later in layers[index + 1:]:
            if reached & set(later.bottom):
                reached |= set(later.top)
        feeds[layer.name] = [top for top in outputs if top in reached]
    return feeds


KINDS = ("accuracy", "loss", "other")


def output_kinds(net, state):
    """The outputs ``net`` measures in ``state`` (as built_layers): ({top:
    "accuracy" or "loss"}, in the net's order; the one a plan or a progress
    line shows by default, or None). A top is a loss when its layer is one (a
    *Loss type, or a loss_weight), whatever its name: GoogLeNet names its
    accuracies loss3/top-1. The default is the top-1 accuracy of the last
    classifier (GoogLeNet's loss1 and loss2 are auxiliary), else the first
    accuracy, else the first loss."""
    kinds, top1 = {}, []
    layers = built_layers(net, [state])
    uses = _top_uses(layers)
    for i, layer in enumerate(layers):
        if layer.type == "Accuracy":
            kinds.update((top, "accuracy") for top in layer.top)
            if layer.top and layer.accuracy_param.top_k == 1:
                top1.append(layer.top[0])
        elif layer.type.endswith("Loss") or any(w for w in layer.loss_weight):
            # A top with a loss_weight that a later layer also reads is an
            # output under the name of its Split's first top, which carries
            # the weight (util/insert_splits.cpp).
            kinds.update((f"{top}_{layer.name}_{j}_split_0" if j < len(layer.loss_weight) and layer.loss_weight[j]
                          and uses.get((i, j), 0) > 1 else top, "loss") for j, top in enumerate(layer.top))
    if top1:
        return kinds, top1[-1]
    return kinds, next((top for top, kind in kinds.items() if kind == "accuracy"), next(iter(kinds), None))


def _top_uses(layers):
    """{(layer index, top index): uses} of ``layers`` (as built), counted as
    Caffe's InsertSplits counts them: each later bottom that reads the top,
    and its own loss_weight when not 0."""
    last_top, uses = {}, {}
    for i, layer in enumerate(layers):
        for blob in layer.bottom:
            if blob in last_top:
                uses[last_top[blob]] = uses.get(last_top[blob], 0) + 1
        for j, blob in enumerate(layer.top):
            last_top[blob] = (i, j)
        for j, weight in enumerate(layer.loss_weight[:len(layer.top)]):
            if weight:
                top = last_top[layer.top[j]]
                uses[top] = uses.get(top, 0) + 1
    return uses


def layer_names_with_splits(layers):
    """The names of the layers Caffe's Net holds for ``layers`` (as built):
    each, followed by the Split layers InsertSplits adds after it for a top
    used more than once (util/insert_splits.cpp: by later bottoms, and by a
    loss_weight), named blob_layer_index_split."""
    uses = _top_uses(layers)
    names = []
    for i, layer in enumerate(layers):
        names.append(layer.name)
        names += [f"{blob}_{layer.name}_{j}_split" for j, blob in enumerate(layer.top) if uses.get((i, j), 0) > 1]
    return names


def data_files(net, states=None, net_path=None):
    """The files the data layers of ``net`` built in ``states`` read: mean
    files, sources (an HDF5Data list and the files it lists; the files of
    a database folder), as far as they exist. Outputs must not replace them.
    ``net_path`` names the net in errors."""
    files = []
    for layer in built_layers(net, states):
        files.append(layer.transform_param.mean_file)
        if layer.type not in _SOURCES:
            continue
        source = Path(getattr(layer, _SOURCES[layer.type]).source)
        if source.is_dir():
            files += [path for path in source.iterdir() if path.is_file()]
        elif source.is_file():
            files.append(source)
            if layer.type == "HDF5Data":
                files += hdf5_list(layer, net_path)
    return [Path(f) for f in files if f]


_LIST_FORMAT = "Caffe's HDF5Data reads a text file naming one .h5 file per line"


def hdf5_list(layer, net_path=None):
    """The paths an HDF5Data ``layer``'s source lists, or a one-line
    InputError: the source is commonly given as the .h5 file itself, or the
    folder holding it, and reading either as text would end in a traceback."""
    source = layer.hdf5_data_param.source
    where = (f"{net_path}: " if net_path else "") + f"layer {layer.name!r}: hdf5_data_param.source {source!r}"
    path = Path(source)
    if path.is_dir():
        raise InputError(f"{where} is a folder, not a list of HDF5 files ({_LIST_FORMAT})")
    if not path.is_file():  # a device or pipe, which reading would hang on
        raise InputError(f"{where} is not a regular file ({_LIST_FORMAT})")
    try:
        if is_hdf5(path):
            raise InputError(f"{where} is an HDF5 file, not a list of HDF5 files ({_LIST_FORMAT})")
        return path.read_text().split()
    except OSError as exc:
        raise InputError(f"{where} cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{where} holds binary data, not a list of HDF5 files ({_LIST_FORMAT})") from None


def check_data_sources(net, net_path, has_leveldb=None, states=None, forward=True):
    """Raise InputError when a data layer of ``net`` reads a file that is not
    there, or a database its ``backend`` cannot open, or, when caffedsd is
    to run the net ``forward``, is a MemoryData layer, which only Python can
    feed. ``has_leveldb``: whether this Caffe was built with LevelDB (None:
    not known). Only the layers built in one of ``states`` are checked
    (None: all): a TRAIN layer's data need not exist for a TEST pass."""
    for layer in built_layers(net, states):
        if layer.type == "MemoryData" and forward:
            raise InputError(f"{net_path}: layer {layer.name!r} is a MemoryData layer, which only Python "
                             "(set_input_arrays) feeds and caffedsd does not; read the data from files "
                             "(Data, HDF5Data, ImageData)")
        mean_file = layer.transform_param.mean_file
        if mean_file and not Path(mean_file).is_file():
            raise InputError(f"{net_path}: layer {layer.name!r} subtracts the mean in {mean_file!r}, "
                             "which does not exist")
        if layer.type not in _SOURCES:
            continue
        source = getattr(layer, _SOURCES[layer.type]).source
        if not source or not Path(source).exists():
            raise InputError(f"{net_path}: layer {layer.name!r} reads {source!r}, which does not exist")
        if layer.type in ("ImageData", "WindowData") and not Path(source).is_file():
            # Caffe reads it as a text list: a folder reads as no lines, and
            # Caffe aborts the process; a pipe would hang.
            raise InputError(f"{net_path}: layer {layer.name!r} reads {source!r}, which is not a regular file "
                             "(a text file listing its images)")
        if layer.type == "HDF5Data":
            for line in hdf5_list(layer, net_path):
                if not Path(line).is_file():
                    what = "is not a regular file (a folder, device or pipe)" if Path(line).exists() else \
                        "does not exist"
                    raise InputError(f"{source}: lists {line!r}, which {what} (layer {layer.name!r} of {net_path})")
        if layer.type == "Data" and layer.data_param.backend == _LEVELDB:
            _check_leveldb(layer.name, source, net_path, has_leveldb)
        elif layer.type == "Data" and lmdb_entries(source) == 0:
            # Caffe's cursor throws std::bad_alloc on it: "MemoryError".
            raise InputError(f"{net_path}: layer {layer.name!r} reads {source!r}, an LMDB that holds no records")


# LMDB's meta pages (lmdb's mdb.c, 64-bit): a 16-byte page header, then the
# magic, the version, the map's address and size, the free and main
# databases' records of 48 bytes (the free one's first field holds the page
# size), the last page and the transaction id. Of the two meta pages, the
# one of the later transaction is the database's state.
_LMDB_MAGIC = 0xBEEFC0DE
_LMDB_PAGE_SIZE_AT, _LMDB_ENTRIES_AT, _LMDB_TXNID_AT = 40, 120, 144


def lmdb_entries(folder):
    """How many records the main database of the LMDB in ``folder`` holds,
    read from data.mdb's meta pages, or None when they cannot be read (not
    an LMDB of this layout)."""
    try:
        with open(Path(folder) / "data.mdb", "rb") as handle:
            first = handle.read(_LMDB_TXNID_AT + 8)
            if len(first) < _LMDB_TXNID_AT + 8 or int.from_bytes(first[16:20], "little") != _LMDB_MAGIC:
                return None
            handle.seek(int.from_bytes(first[_LMDB_PAGE_SIZE_AT:_LMDB_PAGE_SIZE_AT + 4], "little"))
            second = handle.read(_LMDB_TXNID_AT + 8)
    except OSError:
        return None
    metas = [meta for meta in (first, second)
             if len(meta) == _LMDB_TXNID_AT + 8 and int.from_bytes(meta[16:20], "little") == _LMDB_MAGIC]
    latest = max(metas, key=lambda meta: int.from_bytes(meta[_LMDB_TXNID_AT:], "little"))
    return int.from_bytes(latest[_LMDB_ENTRIES_AT:_LMDB_ENTRIES_AT + 8], "little")


def _check_leveldb(layer, source, net_path, has_leveldb):
    if (Path(source) / "data.mdb").is_file():
        raise InputError(f"{net_path}: layer {layer!r} reads {source!r}, an LMDB, with backend LEVELDB "
                         "(data_param's default): add `backend: LMDB` to its data_param")
    if has_leveldb is False:
        raise InputError(f"{net_path}: layer {layer!r} reads {source!r} with backend LEVELDB, and this Caffe "
                         "was built without LevelDB: convert the data to LMDB, or use a Caffe built with it "
                         "(CAFFE_ROOT)")


def check_layer_types(net, net_path, known, states=None):
    """Raise InputError for a layer whose type is not in ``known`` (the
    running Caffe's layer registry; None: not known), among the layers
    built in one of ``states`` (None: all)."""
    if known is None:
        return
    for layer in built_layers(net, states):
        if layer.type not in known:
            raise InputError(f"{net_path}: layer {layer.name!r} has type {layer.type!r}, which this Caffe does "
                             "not have (a layer of a Caffe fork, or one needing OpenCV, which `make setup` "
                             "builds without; CAFFE_ROOT picks another Caffe)")
