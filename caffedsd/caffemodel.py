"""Read and write .caffemodel files (binary NetParameter) without a prototxt.

Reading maps the file and walks its outer messages (see wire.py): each blob's
floats become a read-only numpy view of the file, so a 550 MB VGG16 loads with
no protobuf size limit and no per-float copy. Layer metadata (name, type,
params) is parsed with real protobuf messages. Both the V2 (``layer``) and the
legacy V1 (``layers``) layouts are read; what is written is always V2.

Blobs stored with the legacy num/channels/height/width dims (all V1 files)
get their true axes at read time, as Caffe gives them when it loads such a
file: a Convolution weight stays 4-D, an InnerProduct weight of 1x1xNxK
becomes NxK and a bias of 1x1x1xN becomes N. Every blob written carries
``shape { dim }``, never legacy dims.

Writing re-emits every byte of the input that is not a replaced blob's data:
layer names, types, params, biases, BatchNorm/Scale/PReLU blobs and any field
this schema does not know all come back unchanged.
"""
import hashlib
import mmap
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from . import wire
from .atomic import atomic_open, check_input
from .caffe_proto import BlobShape, LayerParameter, NetParameter, V1LayerParameter, upgrade_v1_layer
from .errors import HDF5_DAMAGE, InputError
from .masks import iter_chunks, nonfinite_count
from .values import INT32_MAX, is_whole

# Field numbers of caffe.proto.
NET_LAYERS_V1, NET_LAYER_V2 = 2, 100
NET_KNOWN = {1: wire.LEN, 2: wire.LEN, 3: wire.LEN, 4: None, 5: wire.VARINT, 6: wire.LEN,
             7: wire.VARINT, 8: wire.LEN, 100: wire.LEN}
LAYER_BLOBS = {"V2": 7, "V1": 6}
BLOB_LEGACY_DIMS = (1, 2, 3, 4)
BLOB_DATA, BLOB_SHAPE, BLOB_DOUBLE_DATA = 5, 7, 8
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # what Net::ToHDF5 (snapshot_format: HDF5) writes


def is_hdf5(path):
    """True when the file holds HDF5's signature where the format puts it:
    at offset 0, or after a user block (512, 1024, 2048, ... bytes), which
    Caffe's H5Fis_hdf5 accepts as well (it picks its weights reader by it)."""
    with open(path, "rb") as handle:
        size, offset = os.fstat(handle.fileno()).st_size, 0
        while offset + len(HDF5_SIGNATURE) <= size:
            handle.seek(offset)
            if handle.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
            offset = max(512, offset * 2)
    return False


@dataclass(frozen=True, eq=False)
class Blob:
    """One blob of a layer. ``data`` is read-only, shaped like the blob."""

    data: np.ndarray
    # Where the BlobProto lies in the source, and its fields other than data,
    # so a blob can be written back with only its data replaced.
    _span: tuple = field(repr=False)
    _other_fields: tuple = field(repr=False)
    # True when the source gave legacy num/channels/height/width dims; then
    # _meta_fields are _other_fields without the dims, and writing emits a
    # shape { dim } of the true axes instead.
    _legacy: bool = field(repr=False, default=False)
    _meta_fields: tuple = field(repr=False, default=())

    @property
    def shape(self):
        return self.data.shape


@dataclass(frozen=True, eq=False)
class Layer:
    name: str
    type: str
    blobs: tuple
    # The layer's LayerParameter (V2, blobs left out): params, bias_term, ...
    param: object = field(repr=False)
    # Source pieces in order: memoryviews of non-blob fields, or a blob index.
    _pieces: tuple = field(repr=False, default=())

    @property
    def param_names(self):
        """The ``param { name }`` of each blob ('' where unnamed)."""
        return tuple(self.param.param[i].name if i < len(self.param.param) else ""
                     for i in range(len(self.blobs)))


class CaffeModel:
    """A caffemodel file opened for reading; its arrays stay valid while it lives."""

    def __init__(self, path, layout, name, layers, top_pieces, buffer):
        self.path = Path(path)
        self.layout = layout
        self.name = name
        self.layers = tuple(layers)
        self._top_pieces = tuple(top_pieces)
        self._buffer = buffer
        self._sha256 = None
        # Caffe copies weights by layer name, so two layers with blobs under
        # one name would be ambiguous. Caffe writes and loads layers without
        # blobs under any name, '' or repeated.
        self._by_name = {}
        for layer in self.layers:
            if layer.blobs:
                if layer.name in self._by_name:
                    raise InputError(f"{self.path}: layer name {layer.name!r} appears twice among layers "
                                     "with blobs")
                self._by_name[layer.name] = layer
        for layer in self.layers:
            self._by_name.setdefault(layer.name, layer)

    def layer(self, name):
        """The layer named ``name``: the one with blobs if there is one,
        else the first."""
        return self._by_name[name]

    def __contains__(self, name):
        return name in self._by_name

    def structure(self):
        """(name, type, blob shapes) of each layer that has blobs."""
        return [(layer.name, layer.type, [list(b.shape) for b in layer.blobs])
                for layer in self.layers if layer.blobs]

    def sha256(self):
        # The buffer never changes, and a VGG16 file takes seconds to hash.
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(self._buffer).hexdigest()
        return self._sha256

    def with_params(self, params):
        """This model with the LayerParameters ``params`` (by layer name: a
        prototxt's) in place of those the file stores: Caffe builds each
        layer from the prototxt and takes only its blobs from the weights,
        whose stored settings (group, transpose) may be stale or absent."""
        layers = []
        for layer in self.layers:
            if layer.name in params:
                param = type(params[layer.name])()
                param.CopyFrom(params[layer.name])
                del param.blobs[:]  # a prototxt may hold some; the file's are the weights
                layer = replace(layer, param=param)
            layers.append(layer)
        return CaffeModel(self.path, self.layout, self.name, layers, self._top_pieces, self._buffer)


def nonfinite_counts(model):
    """{(layer name, blob index): how many values are NaN or Inf}, for the
    blobs that hold any: as Caffe holds them, in float32, where a blob's
    double_data past float32's range is Inf."""
    counts = {}
    for layer in model.layers:
        for index, blob in enumerate(layer.blobs):
            bad = sum(nonfinite_count(_as_caffe_holds(part)) for part in iter_chunks(blob.data))
            if bad:
                counts[(layer.name, index)] = bad
    return counts


def _as_caffe_holds(values):
    if values.dtype == np.float32:
        return values
    with np.errstate(over="ignore"):
        return values.astype(np.float32)


def check_finite(model):
    """Raise InputError naming the first blob that holds NaN or Inf: sorting,
    clustering or factoring such weights gives garbage without an error, and
    Caffe trains on them without a complaint."""
    counts = nonfinite_counts(model)
    if counts:
        (layer, index), bad = next(iter(counts.items()))
        raise InputError(f"{model.path}: layer {layer!r} blob {index} holds {bad} NaN/Inf values")


def _fail(path, what):
    raise InputError(f"{path}: {what}")


def _looks_like_text(head):
    if not head:
        return False
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    return printable == len(head)


def _hdf5_what(path):
    """What an HDF5 file given as a caffemodel is, and what to do with it."""
    import h5py  # only to say so: caffemodels are protobuf

    from .maskfile import FORMAT

    try:
        with h5py.File(path, "r") as h5:
            masks = h5.attrs.get("format") in (FORMAT, FORMAT.encode())
            weights = "data" in h5
    except HDF5_DAMAGE:
        masks = weights = False
    if masks:
        # Named without an option: most commands have no --masks (they take the masks beside the model).
        return "a caffedsd masks file, not weights: give the caffemodel it belongs to"
    if weights:
        return ("Caffe HDF5 weights (snapshot_format: HDF5); make a binary caffemodel of them with "
                f"`caffedsd convert --model NET.prototxt --weights {path} -o OUT.caffemodel`")
    return "an HDF5 file, but neither a caffemodel nor Caffe HDF5 weights (no 'data' group)"


def read_caffemodel(path):
    """Open a caffemodel. Raises InputError naming the file on anything malformed."""
    path = check_input(path)
    if path.stat().st_size == 0:
        _fail(path, "empty file, not a caffemodel")
    with open(path, "rb") as handle:
        buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    if is_hdf5(path):
        _fail(path, _hdf5_what(path))
    if _looks_like_text(buffer[:512]):
        _fail(path, "is a text file (a prototxt?), not a binary caffemodel")
    from .dcz import MAGIC  # dcz reads caffemodels: imported here, not at the top

    if buffer[:len(MAGIC)] == MAGIC:
        _fail(path, f"a .dcz file of `caffedsd compress`, not a caffemodel; `caffedsd decompress {path} -o "
                    "OUT.caffemodel` makes one")
    try:
        return _parse_net(path, buffer)
    except (wire.WireError, DecodeError) as exc:
        _fail(path, f"not a caffemodel, or truncated ({exc})")


def _parse_net(path, buf):
    view = memoryview(buf)
    top_pieces, layers, layouts = [], [], set()
    for f in wire.iter_fields(buf):
        expected = NET_KNOWN.get(f.number, "unknown")
        if expected == "unknown" or (expected is not None and f.wire_type != expected):
            raise wire.WireError(f"unexpected field {f.number} (wire type {f.wire_type}) at byte {f.start}")
        if f.number in (NET_LAYER_V2, NET_LAYERS_V1):
            layout = "V2" if f.number == NET_LAYER_V2 else "V1"
            layouts.add(layout)
            top_pieces.append(len(layers))
            layers.append(_parse_layer(path, buf, view, f, layout, len(layers)))
        else:
            top_pieces.append(view[f.start:f.end])
    if not layers:
        _fail(path, "holds no layers: not a caffemodel")
    if len(layouts) > 1:
        _fail(path, "mixes V1 'layers' and V2 'layer' entries")
    meta = NetParameter.FromString(b"".join(bytes(p) for p in top_pieces if not isinstance(p, int)))
    return CaffeModel(path, layouts.pop(), meta.name, layers, top_pieces, buf)


def _parse_layer(path, buf, view, f, layout, index):
    blob_field = LAYER_BLOBS[layout]
    pieces, blob_fields = [], []
    for sub in wire.iter_fields(buf, f.value_start, f.end):
        if sub.number == blob_field and sub.wire_type == wire.LEN:
            pieces.append(len(blob_fields))
            blob_fields.append(sub)
        else:
            pieces.append(view[sub.start:sub.end])
    meta_bytes = b"".join(bytes(p) for p in pieces if not isinstance(p, int))
    try:
        if layout == "V2":
            param = LayerParameter.FromString(meta_bytes)
        else:
            v1 = V1LayerParameter.FromString(meta_bytes)
            param = upgrade_v1_layer(v1, where=f"{path}: layer {v1.name or v1.layer.name!r}")
            pieces = [memoryview(param.SerializeToString())] + list(range(len(blob_fields)))
    except DecodeError as exc:
        _fail(path, f"layer #{index} is not a valid LayerParameter ({exc})")
    if not param.name and blob_fields:
        _fail(path, f"layer #{index} ({param.type}) has blobs but no name, by which Caffe copies them")
    if not isinstance(param.name, str):
        # proto2 lets a string field hold any bytes; nothing downstream
        # (prototxt, masks, JSON reports) can name such a layer.
        _fail(path, f"layer #{index} has a name that is not UTF-8 text ({param.name!r})")
    where = f"{path}: layer {param.name!r}"
    blobs = tuple(true_axes(where, param, i, parse_blob(where, i, buf, view, b))
                  for i, b in enumerate(blob_fields))
    return Layer(param.name, param.type, blobs, param, tuple(pieces))


def blob_axes(param, index):
    """How many axes blob ``index`` of layer ``param`` has in Caffe, or None
    where caffedsd does not know (such blobs keep their legacy 4-D dims)."""
    if param.type in ("Convolution", "Deconvolution"):
        return 4 if index == 0 else 1 if index == 1 else None
    if param.type == "InnerProduct":
        return 2 if index == 0 else 1 if index == 1 else None
    if param.type in ("BatchNorm", "Scale", "Bias", "PReLU"):
        return 1
    return None


def true_axes(where, param, index, blob):
    """``blob`` with its legacy 4-D dims dropped to the axes Caffe gives it."""
    axes = blob_axes(param, index)
    if not blob._legacy or axes is None or blob.data.ndim <= axes:
        return blob
    shape = blob.data.shape
    lead, keep = shape[:-axes], shape[-axes:]
    if param.type in ("BatchNorm", "Scale", "Bias", "PReLU") and any(d != 1 for d in lead):
        return blob  # a multi-axis Scale/Bias blob: leave it as stored
    if any(d != 1 for d in lead):
        raise InputError(f"{where}: blob {index} has legacy dims {'x'.join(map(str, shape))}, which is not "
                         f"a {axes}-axis {param.type} {'weight' if index == 0 else 'bias'}")
    return Blob(blob.data.reshape(keep), blob._span, blob._other_fields, True, blob._meta_fields)


def parse_blob(where, index, buf, view, f):
    """The Blob whose BlobProto is field ``f`` of ``buf``."""
    legacy = {}
    shape = None
    chunks, dtypes = [], set()
    others, meta = [], []
    for sub in wire.iter_fields(buf, f.value_start, f.end):
        if sub.number in BLOB_LEGACY_DIMS and sub.wire_type == wire.VARINT:
            # An int32 field: a negative value is written sign-extended to 64
            # bits; any other value past 31 bits is refused below, as Caffe
            # would cut it short (to its low 32 bits).
            legacy[sub.number] = sub.value - (1 << 64) if sub.value >> 63 else sub.value
            others.append(view[sub.start:sub.end])
        elif sub.number == BLOB_SHAPE and sub.wire_type == wire.LEN:
            try:
                shape = tuple(BlobShape.FromString(bytes(view[sub.value_start:sub.end])).dim)
            except DecodeError as exc:
                raise wire.WireError(f"blob {index}'s shape: {exc}") from None
            others.append(view[sub.start:sub.end])
        elif sub.number in (BLOB_DATA, BLOB_DOUBLE_DATA):
            dtype = np.dtype("<f4") if sub.number == BLOB_DATA else np.dtype("<f8")
            dtypes.add(dtype)
            chunks.append(_read_floats(where, buf, sub, dtype))
        else:
            others.append(view[sub.start:sub.end])
            meta.append(view[sub.start:sub.end])
    # Blob::FromProto goes by any legacy dim it finds, over a shape beside it.
    is_legacy = bool(legacy)
    if is_legacy:
        shape = tuple(legacy.get(n, 0) for n in BLOB_LEGACY_DIMS)
    elif shape is None:
        # No shape and no legacy dims is a 0-axis blob of one value (a shared
        # PReLU slope, a Scale/Bias with num_axes 0): Blob::ToProto writes no
        # dims for it, and Blob::FromProto reads the empty shape back.
        shape = ()
    if any(not 0 <= dim <= INT32_MAX for dim in shape):
        # Blob::Reshape's CHECK aborts the process on a negative one, its
        # shape is a vector<int> (Caffe would misread a larger one as its
        # low 32 bits), and numpy took -1 for "the rest".
        raise InputError(f"{where}: blob {index} has shape {list(shape)}, a dimension outside 0..{INT32_MAX} "
                         "(Caffe's blob shapes are int)")
    if len(dtypes) > 1:
        raise InputError(f"{where}: blob {index} holds both float and double data")
    dtype = dtypes.pop() if dtypes else np.dtype("<f4")
    data = chunks[0] if len(chunks) == 1 else np.concatenate(chunks) if chunks else np.zeros(0, dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if data.size != count:
        raise InputError(f"{where}: blob {index} has shape {list(shape)} ({count} values) but holds {data.size}")
    return Blob(data.reshape(shape), (f.start, f.end), tuple(others), is_legacy, tuple(meta))


def _read_floats(where, buf, f, dtype):
    if f.wire_type == wire.LEN:
        if f.value % dtype.itemsize:
            raise InputError(f"{where}: packed data of {f.value} bytes is not a whole number of values")
        return np.frombuffer(buf, dtype=dtype, count=f.value // dtype.itemsize, offset=f.value_start)
    if f.wire_type in (wire.I32, wire.I64) and f.value == dtype.itemsize:
        # An unpacked repeated value; consecutive ones are merged by the caller.
        return np.frombuffer(buf, dtype=dtype, count=1, offset=f.value_start)
    raise InputError(f"{where}: blob data has wire type {f.wire_type}")


# ---------------------------------------------------------------- writing --
# Output is assembled as nested lists of pieces: bytes, memoryviews of the
# source, and _Stream objects whose size is known before their data exists.

class _Stream:
    """Array data written chunk by chunk; its byte count is known up front."""

    def __init__(self, nbytes, chunks):
        self.nbytes = nbytes
        self.chunks = chunks


def _size(pieces):
    total = 0
    for piece in pieces:
        if isinstance(piece, list):
            total += _size(piece)
        elif isinstance(piece, bytes):
            total += len(piece)
        else:
            total += piece.nbytes
    return total


def write_pieces(handle, pieces):
    for piece in pieces:
        if isinstance(piece, list):
            write_pieces(handle, piece)
        elif isinstance(piece, _Stream):
            for arr in piece.chunks:
                handle.write(memoryview(arr))
        else:
            handle.write(piece)


def _record(number, payload):
    """A LEN field: tag, length and ``payload`` pieces."""
    return [wire.len_header(number, _size(payload))] + payload


def _data_stream(blob, replacement, mask):
    """The blob's data field: its values, or ``replacement``'s, with the
    positions ``mask`` prunes set to 0 (both checked by write_caffemodel)."""
    dtype = blob.data.dtype
    flat_src = blob.data.reshape(-1) if replacement is None else \
        np.ascontiguousarray(replacement, dtype=dtype).reshape(-1)
    if mask is None:
        chunks = (flat_src,)
    else:
        zero = dtype.type(0)
        chunks = (np.where(keep, src, zero) for src, keep in iter_chunks(flat_src, np.asarray(mask, dtype=bool)))
    number = BLOB_DATA if dtype == np.dtype("<f4") else BLOB_DOUBLE_DATA
    return _record(number, [_Stream(flat_src.nbytes, chunks)])


def masked_blob_record(number, blob, mask):
    """Pieces of field ``number`` holding ``blob`` with unmasked data set to 0."""
    return _record(number, list(blob._other_fields) + _data_stream(blob, None, mask))


def _shape_field(shape):
    payload = BlobShape(dim=shape).SerializeToString()
    return [wire.len_header(BLOB_SHAPE, len(payload)), payload]


def _blob_record(model, view, blob, replacement=None, mask=None):
    start, end = blob._span
    if blob._legacy:
        # Legacy dims out, the true axes in as shape { dim }.
        return _record(LAYER_BLOBS["V2"], _shape_field(blob.shape) + list(blob._meta_fields)
                       + _data_stream(blob, replacement, mask))
    if replacement is None and mask is None:
        if model.layout == "V2":
            return [view[start:end]]
        # V1 keeps blobs in field 6, V2 in field 7: same payload, new tag.
        payload_start = next(wire.iter_fields(model._buffer, start, end)).value_start
        return _record(LAYER_BLOBS["V2"], [view[payload_start:end]])
    return _record(LAYER_BLOBS["V2"], list(blob._other_fields) + _data_stream(blob, replacement, mask))


def write_caffemodel(model, path, replace=None, masks=None):
    """Write ``model`` as a V2 caffemodel at ``path``, atomically.

    replace: {(layer name, blob index): array of the blob's shape} gives a
    blob new values.
    masks: {(layer name, blob index): bool array of the blob's size} writes
    the blob (or its replacement) with the positions where the mask is False
    set to exactly +0.0, streamed in slices so no full copy of a large blob
    is made.
    """
    replace, masks = dict(replace or {}), dict(masks or {})
    for what, given, measure in (("replacement", replace, np.shape), ("mask", masks, np.size)):
        for key, array in given.items():
            name, blob_index = key if isinstance(key, tuple) and len(key) == 2 else (key, None)
            if not (isinstance(name, str) and name in model and is_whole(blob_index)
                    and 0 <= blob_index < len(model.layer(name).blobs)):
                raise InputError(f"{model.path}: no blob {key!r} (expected a layer's name and a blob index)")
            blob = model.layer(name).blobs[blob_index]
            if measure(array) != measure(blob.data):  # a transposed replacement would be written scrambled
                raise InputError(f"{model.path}: layer {name!r} blob {blob_index}: a {what} of "
                                 f"{measure.__name__} {measure(array)} for a blob of {measure(blob.data)}")
    view = memoryview(model._buffer)
    pieces = [piece if not isinstance(piece, int) else _layer_record(model, view, model.layers[piece], replace, masks)
              for piece in model._top_pieces]
    with atomic_open(path) as handle:
        write_pieces(handle, pieces)


def _layer_record(model, view, layer, replace=None, masks=None):
    payload = []
    for item in layer._pieces:
        if isinstance(item, int):
            key = (layer.name, item)
            payload.append(_blob_record(model, view, layer.blobs[item], (replace or {}).get(key),
                                        (masks or {}).get(key)))
        else:
            payload.append(item)
    return _record(NET_LAYER_V2, payload)


def append_layers(path, layers):
    """Append ``layers`` ([(LayerParameter, [arrays])], as new_caffemodel
    takes them) as V2 layers to the caffemodel file ``path`` (being
    written): a protobuf message's repeated field takes records appended
    after the others."""
    with open(path, "ab") as handle:
        for param, arrays in layers:
            write_pieces(handle, _new_layer_record(param, arrays))


def new_layers_bytes(layers):
    """At least what append_layers and new_caffemodel write for ``layers``:
    all but the framing (tags, lengths, shapes)."""
    return sum(param.ByteSize() + sum(4 * np.asarray(arr).size for arr in arrays) for param, arrays in layers)


def new_caffemodel(path, layers, name=""):
    """Write a V2 caffemodel from scratch, atomically: [(LayerParameter,
    [arrays])], each array as a float32 blob with its shape. For models with
    no source file to copy bytes from (write_caffemodel does that): the
    decomposed nets of lowrank, the decoded .dcz files, test nets and
    benchmark models."""
    with atomic_open(path) as handle:
        if name:
            handle.write(NetParameter(name=name).SerializeToString())
        for param, arrays in layers:
            write_pieces(handle, _new_layer_record(param, arrays))


def _new_layer_record(param, arrays):
    meta = LayerParameter()
    meta.CopyFrom(param)
    del meta.blobs[:]
    payload = [meta.SerializeToString()]
    for arr in arrays:
        # Not ascontiguousarray: it makes a 0-axis blob 1-axis, which
        # stock Caffe refuses to copy into the net's 0-axis blob.
        arr = np.asarray(arr, dtype="<f4", order="C")
        payload.append(_record(LAYER_BLOBS["V2"], _shape_field(arr.shape) + _record(
            BLOB_DATA, [_Stream(arr.nbytes, (arr.reshape(-1),))])))
    return _record(NET_LAYER_V2, payload)


def file_sha256(path, sync=False):
    """The sha256 of the file ``path``, read a MiB at a time: mapped whole,
    a VGG16's 528 MB would count in the process's peak memory (prune hashes
    the model it writes). ``sync``: on disk too before this returns (a file
    another program wrote, such as Caffe's snapshots, that a record is
    about to name)."""
    digest = hashlib.sha256()
    chunk = bytearray(1 << 20)
    view = memoryview(chunk)
    with open(path, "rb") as handle:
        while size := handle.readinto(chunk):
            digest.update(view[:size])
        if sync:
            os.fsync(handle.fileno())
    return digest.hexdigest()
