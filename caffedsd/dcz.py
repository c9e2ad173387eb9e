"""`compress`/`decompress`: a caffemodel to and from a .dcz file, and the
per-stage size table. How a blob is stored is in dcz_blobs.py, the coding in
coding.py, the layout in docs/FORMAT.md.

Version 2 files are written and read a layer at a time: compressing holds one
layer's kept weights and its coded streams, decompressing one layer's decoded
blobs, which go straight into the caffemodel writer. Version 1 files (JSON
header, one Huffman stream per field with no sync points) still decode.
"""
import contextlib
import dataclasses
import hashlib
import json
import math
import mmap
import struct
import zlib
from collections import Counter
from collections.abc import Mapping

import numpy as np
from google.protobuf.message import DecodeError

from .atomic import atomic_open, check_input, check_output
from .caffe_proto import LayerParameter
from .caffemodel import check_finite, new_caffemodel, read_caffemodel
from .coding import MAX_SHARED_BITS, FormatError, check_width, huffman_decode, positions_from_gaps
from .dcz_blobs import (MAX_INDEX_BITS, LayerSizes, Reader, decode_floats, decode_shared, encode_floats,
                        encode_shared, finite)
from .errors import InputError, WireError
from .layers import PRUNABLE_TYPES, group_target, shared_groups, tied_copies
from .maskfile import (atomic_unmasked_path, check_model_outputs, check_not_masks_of_another, masks_for,
                       masks_path_for, masks_read_for)
from .masks import masked_nonzeros, zero_count
from .values import INT32_MAX
from .wire import encode_varint as varint

MAGIC = b"CDSDDCZ\x00"
VERSION = 2
# Magic, version, and the least that follows: an empty header's length and the
# CRC-32 (version 2), the header's length and the sha256 (version 1).
MIN_FILE_BYTES = {1: len(MAGIC) + 2 + 4 + 32, 2: len(MAGIC) + 2 + 1 + 4}
# Limits a reader checks before it allocates anything: a few bytes of
# constant streams can declare any number of values. 2^29 float32 values are
# 2 GiB, more than the caffemodel stock Caffe reads (INT_MAX bytes); 32 axes
# is Caffe's kMaxBlobAxes; no net's layer parameters come near 64 MiB.
MAX_VALUES = 1 << 29
MAX_AXES = 32
MAX_HEADER_BYTES = 1 << 26
# A preset dictionary for deflating the header: typical serialized layer
# parameters, so names, types and fillers common in Caffe nets cost little.
# Part of the format: never change it for version 2.
HEADER_DICTIONARY = (
    b'\n\x02bn\x12\tBatchNorm\x1a\x04conv"\x02bn\n\x05scale\x12\x05Scale\x1a\x02bn"\x05scale\n\x05conv1\x12\x0b'
    b'Convolution\x1a\x04data"\x05conv12\n\x1d\x00\x00\x80?%\x00\x00\x80?2\n\x1d\x00\x00\x00@%\x00\x00\x00\x00'
    b'\xd2\x06&\x08@\x18\x01 \x030\x01:\x0b\n\x04msra5\n\xd7#<B\x0f\n\x08constant\x15\xcd\xcc\xcc=\n\x02fc\x12\x0c'
    b'InnerProduct\x1a\x04pool"\x02fc2\n\x1d\x00\x00\x80?%\x00\x00\x80?2\n\x1d\x00\x00\x00@%\x00\x00\x00\x00'
    b'\xaa\x07$\x08@\x1a\x0f\n\x08gaussian5\n\xd7#<"\x0f\n\x08constant\x15\xcd\xcc\xcc=xavier')
BLOB_FLOATS, BLOB_SHARED = 0, 1


def layer_kind(layer_type):
    return "fc" if layer_type == "InnerProduct" else "conv"


# Bits of the shared-weight codes, the paper's: what a kind left out of
# --bits keeps.
DEFAULT_BITS = {"conv": 8, "fc": 5}


def parse_bits(text, what="--bits", auto=False):
    """'6' -> {'conv': 6, 'fc': 6}; 'conv=8,fc=5' -> {'conv': 8, 'fc': 5};
    a kind not named keeps DEFAULT_BITS ('fc=4' -> {'conv': 8, 'fc': 4}).
    With ``auto``, 'auto' -> {} and a kind not named is left out: both are
    chosen per layer."""
    text = str(text).strip()
    if auto and text == "auto":
        return {}
    try:
        if "=" not in text:
            values = {"conv": int(text), "fc": int(text)}
        else:
            values = {}
            for item in text.split(","):
                key, _, value = item.partition("=")
                key = key.strip()
                if key not in ("conv", "fc"):
                    raise InputError(f"{what} {text!r}: keys are conv and fc")
                if key in values:  # not the last one winning unseen
                    raise InputError(f"{what} {text!r}: {key} is given twice")
                values[key] = int(value)
    except ValueError:
        expected = "auto, N or conv=N,fc=M" if auto else "N or conv=N,fc=M"
        raise InputError(f"{what} {text!r}: expected {expected} with whole numbers") from None
    check_bits(values, f"{what} {text!r}")
    return values if auto else {**DEFAULT_BITS, **values}


def check_bits(bits, what="bits", partial=True, limit=MAX_SHARED_BITS):
    """A map of widths by layer kind as parse_bits makes it: {'conv': n,
    'fc': m}, each in 1..``limit``; either may be left out where ``partial``."""
    if not isinstance(bits, Mapping) or not set(bits) <= set(DEFAULT_BITS) or \
            (not partial and set(bits) != set(DEFAULT_BITS)):
        raise InputError(f"{what} {bits!r}: expected {{'conv': N, 'fc': M}}" + ("" if partial else ", both given"))
    for key, value in bits.items():
        check_width(value, f"{what}: {key}", limit)
    return bits


# -- version 2 container -------------------------------------------------------------

class _Output:
    """A file handle that counts bytes and keeps a CRC-32 of them."""

    def __init__(self, handle):
        self.handle, self.crc, self.size = handle, 0, 0

    def write(self, data):
        self.handle.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)


def _check_masked_zeros(model, keep_masks, masks_path):
    """The .dcz stores no weight at a masked position: one that is not 0.0
    there (masks of a model trained on without them) would be lost."""
    for layer, mask in keep_masks.items():
        bad = masked_nonzeros(model.layer(layer).blobs[0].data, mask)
        if bad:
            raise InputError(f"{masks_path}: {bad} of the {zero_count(mask)} positions it masks in "
                             f"layer {layer!r} of {model.path} are not 0.0, and compress stores none of them; give "
                             f"the masks that model was written with, or apply these first: caffedsd prune -w "
                             f"{model.path} --masks {masks_path} -s 0 -o OUT.caffemodel")


def compress(weights, output, bits, index_bits=None, masks=None, force=False):
    """Write ``weights`` as a version 2 .dcz file; returns [LayerSizes] and the
    container's own bytes (header, magic, checksum)."""
    check_bits(bits, "bits", partial=False)
    check_bits(index_bits or {}, "index_bits", limit=MAX_INDEX_BITS)
    model = read_caffemodel(weights)
    check_output(output, inputs=[weights, masks_read_for(weights, masks)], force=force)
    check_not_masks_of_another(output)
    check_finite(model)
    maskset = masks_for(model, masks)
    keep_masks = maskset.per_layer() if maskset else {}
    _check_masked_zeros(model, keep_masks, masks or masks_path_for(weights))
    layers = [layer for layer in model.layers if layer.blobs]
    if not isinstance(model.name, str):  # proto2 lets a string field hold any bytes
        raise InputError(f"{model.path}: the net's name is not UTF-8 text ({model.name!r})")
    raw = _raw_header(model.name.encode("utf-8"), [
        (layer.param.SerializeToString(),
         [(BLOB_SHARED if index == 0 and layer.type in PRUNABLE_TYPES else BLOB_FLOATS, blob.shape)
          for index, blob in enumerate(layer.blobs)]) for layer in layers])
    _check_compressible(model, layers, raw)
    header = _deflate_header(raw)

    # Layers that share weights (Caffe's one blob) are stored as one coding:
    # the first layer's, with its kind's bits, where a Convolution and an
    # InnerProduct share (PERMISSIVE) too. Each of them gets its row.
    targets = [group_target(group) for group in shared_groups(model)]
    groups = {layer: target.owner for target in targets for layer in target.layers}
    copies = _tied_copies_of_shared(model, targets)
    held = {owner for owner, members in Counter(groups.values()).items() if members > 1} | set(copies.values())
    coded = {}

    def shared(owner):
        """(payload, LayerSizes of its coding) of the weights of ``owner``."""
        if owner in coded:
            return coded[owner]
        layer, sizes = model.layer(owner), LayerSizes(owner)
        kind = layer_kind(layer.type)
        made = encode_shared(layer.blobs[0].data, keep_masks.get(owner), bits[kind], (index_bits or {}).get(kind),
                             sizes), sizes
        if owner in held:  # a layer at a time, but for what another layer reuses
            coded[owner] = made
        return made

    # A copy may come before its owner in the file.
    quantized = {owner: decode_shared(Reader(shared(owner)[0]), model.layer(owner).blobs[0].shape)
                 for owner in dict.fromkeys(copies.values())}
    rows = []
    with atomic_open(output) as handle:
        out = _Output(handle)
        out.write(MAGIC + struct.pack("<H", VERSION) + varint(len(header)) + header)
        container = out.size + 4
        for layer in layers:
            payload, sizes = shared(groups[layer.name]) if layer.name in groups else (None, LayerSizes(layer.name))
            sizes = dataclasses.replace(sizes, layer=layer.name, notes=list(sizes.notes))
            before = out.size
            for index, blob in enumerate(layer.blobs):
                data = blob.data
                sizes.dense += data.size * 4
                if index == 0 and payload is not None:
                    out.write(payload)
                else:
                    owner = copies.get((layer.name, index))
                    out.write(encode_floats(data if owner is None else quantized[owner].reshape(data.shape)))
                    sizes.before_huffman += data.size * 4
            sizes.stored = out.size - before
            rows.append(sizes)
        handle.write(struct.pack("<I", out.crc))
    return rows, container


def _tied_copies_of_shared(model, targets):
    """{(layer, blob index): owner} of the blobs a param name ties to the
    weights of ``targets`` (layers.tied_copies: an Embed tied to an
    InnerProduct) that hold their values. Stored as floats, each is written
    with its owner's quantized values: with its own exact ones, Caffe ran
    the net with whichever it copied last."""
    copies = {}
    for target in targets:
        weights = model.layer(target.owner).blobs[0].data.reshape(-1)
        for name, index in tied_copies(model, target):
            copy = model.layer(name).blobs[index].data
            if copy.size == weights.size and np.array_equal(copy.reshape(-1), weights):
                copies[name, index] = target.owner
    return copies


def _check_compressible(model, layers, raw_header):
    """Refuse a model whose .dcz file decompress would refuse (the limits of
    ``_check_layers`` and ``_read_header``)."""
    if not layers:
        raise InputError(f"{model.path}: holds no layers with weights, nothing to compress")
    total = sum(blob.data.size for layer in layers for blob in layer.blobs)
    if total > MAX_VALUES:
        raise InputError(f"{model.path}: its blobs hold {total:,} values, over the {MAX_VALUES:,} a .dcz file "
                         "holds (2 GiB of float32, more than a caffemodel stock Caffe reads)")
    for layer in layers:
        for index, blob in enumerate(layer.blobs):
            if blob.data.ndim > MAX_AXES:
                raise InputError(f"{model.path}: layer {layer.name!r} blob {index} has {blob.data.ndim} axes "
                                 f"(Caffe's blobs have at most {MAX_AXES})")
    if len(raw_header) > MAX_HEADER_BYTES:
        raise InputError(f"{model.path}: its layer parameters take {len(raw_header):,} bytes, over the "
                         f"{MAX_HEADER_BYTES:,} a .dcz header holds")


def _raw_header(name, layers):
    """The version 2 header before deflating: ``name`` (bytes) and, per layer,
    (serialized LayerParameter, [(blob kind, shape)])."""
    header = bytearray(varint(len(name)) + name + varint(len(layers)))
    for param, blobs in layers:
        header += varint(len(param)) + param + varint(len(blobs))
        for kind, shape in blobs:
            header += bytes([kind]) + varint(len(shape)) + b"".join(varint(d) for d in shape)
    return bytes(header)


def _deflate_header(raw):
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=HEADER_DICTIONARY)
    return deflater.compress(raw) + deflater.flush()


def _header(name, layers):
    """The deflated version 2 header (``_raw_header``'s arguments)."""
    return _deflate_header(_raw_header(name, layers))


def _read_header(data):
    """(name, layers) of a deflated header, as ``_header`` takes them."""
    try:
        inflater = zlib.decompressobj(-15, zdict=HEADER_DICTIONARY)
        # DEFLATE inflates up to ~1000 times: a few MB could claim GBs.
        raw = inflater.decompress(data, MAX_HEADER_BYTES + 1)
    except zlib.error as exc:
        raise FormatError(f"bad header ({exc})") from None
    if len(raw) > MAX_HEADER_BYTES:
        raise FormatError(f"header inflates to over {MAX_HEADER_BYTES} bytes")
    if not inflater.eof or inflater.unused_data:
        raise FormatError("header is not one whole DEFLATE stream")
    meta = Reader(raw)
    name = meta.blob()
    layers = []
    for _ in range(meta.varint()):
        param = meta.blob()
        blobs = []
        for _ in range(meta.varint()):
            kind = meta.byte()
            axes = meta.varint()
            if axes > MAX_AXES:
                raise FormatError(f"a blob shape of {axes} axes (Caffe's blobs have at most {MAX_AXES})")
            blobs.append((kind, tuple(meta.varint() for _ in range(axes))))
        layers.append((param, blobs))
    if meta.pos != meta.end:
        raise FormatError("trailing bytes after the header's last layer")
    return name, layers


def _open_v2(buffer):
    reader = Reader(buffer, len(MAGIC) + 2, len(buffer) - 4)
    name, layers = _read_header(reader.blob())
    layers = [(LayerParameter.FromString(param), blobs) for param, blobs in layers]
    _check_layers(layers)
    try:
        name = name.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"the net's name is not UTF-8 text ({name!r})") from None
    return name, layers, reader


def _check_layers(layers):
    """Refuse, before anything is decoded, what would decode to a caffemodel
    caffedsd refuses (read_caffemodel: Caffe copies weights by layer name)
    and blobs no caffemodel holds. ``layers``: [(LayerParameter, [(blob
    kind, shape)])]."""
    if not layers:
        raise FormatError("holds no layers with weights")
    names, total = set(), 0
    for number, (param, blobs) in enumerate(layers):
        if not isinstance(param.name, str):  # as read_caffemodel: nothing downstream can name it
            raise FormatError(f"layer #{number} has a name that is not UTF-8 text ({param.name!r})")
        if not blobs:
            raise FormatError(f"layer #{number} ({param.name!r}) has no blobs")
        if not param.name:
            raise FormatError(f"layer #{number} ({param.type}) has blobs but no name, by which Caffe copies them")
        if param.name in names:
            raise FormatError(f"layer name {param.name!r} appears twice")
        names.add(param.name)
        for index, (kind, shape) in enumerate(blobs):
            where = f"layer {param.name!r} blob {index}"
            if kind not in (BLOB_FLOATS, BLOB_SHARED):
                raise FormatError(f"{where}: unknown blob kind {kind!r}")
            if kind == BLOB_SHARED and (index or param.type not in PRUNABLE_TYPES):
                raise FormatError(f"{where} ({param.type}): shared weights (kind 1) go only in blob 0 of a "
                                  "Convolution, Deconvolution or InnerProduct layer")
            if any(dim > INT32_MAX for dim in shape):  # with a 0 beside it, no count check finds it
                raise FormatError(f"{where}: shape {list(shape)} has a dimension over {INT32_MAX} (Caffe's blob "
                                  "shapes are int)")
            total += math.prod(shape)
    if total > MAX_VALUES:
        raise FormatError(f"its blobs hold {total:,} values, over {MAX_VALUES:,} (2 GiB of float32, "
                          "more than a caffemodel stock Caffe reads)")


def _decode_blob(reader, kind, shape):
    if kind == BLOB_SHARED:
        return decode_shared(reader, shape)
    return finite(decode_floats(reader, math.prod(shape)).reshape(shape))


def _iter_v2(layers, reader):
    for param, blobs in layers:
        arrays = []
        for index, (kind, shape) in enumerate(blobs):
            with _blob_context(param, index, shape):
                arrays.append(_decode_blob(reader, kind, shape))
        yield param, arrays
    if reader.pos != reader.end:
        raise FormatError("trailing bytes after the last layer")


@contextlib.contextmanager
def _blob_context(param, index, shape):
    """Errors decoding a blob name its layer and blob."""
    where = f"layer {param.name!r} blob {index}"
    try:
        yield
    except (FormatError, WireError, zlib.error) as exc:
        raise FormatError(f"{where}: {exc}") from None
    except MemoryError:
        raise FormatError(f"{where}: not enough memory to decode its {math.prod(shape):,} values") from None


# -- version 1 container (read; tests/test_compression.py writes one) ---------------

def _v1_int(value, what, limit=None):
    """A whole number of the JSON header, at least 0 (and below ``limit``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (limit is not None and value >= limit):
        bound = "" if limit is None else f" below {limit}"
        raise FormatError(f"header field {what!r} is {str(value)[:40]}, not a whole number{bound}")
    return value


def _v1_table(data, size):
    """The ``size`` code lengths of a zlib-compressed section."""
    inflater = zlib.decompressobj()
    lengths = inflater.decompress(data, size + 1)
    if len(lengths) != size or not inflater.eof or inflater.unused_data:
        raise FormatError(f"code length table does not hold {size} lengths")
    return np.frombuffer(lengths, dtype=np.uint8).astype(np.int64)


def _v1_blob(blob, sections, shape):
    size = math.prod(shape)

    def section(key):
        return sections[_v1_int(blob[key], key, len(sections))]

    if blob["kind"] == "raw":
        data = section("data")
        if len(data) != 4 * size:
            raise FormatError(f"{len(data)} bytes of raw floats for {size} values")
        return finite(np.frombuffer(data, dtype="<f4").reshape(shape).copy())
    codebook = section("codebook")
    if len(codebook) % 4 or len(codebook) > 4 << 16:
        raise FormatError(f"a codebook of {len(codebook)} bytes")
    codebook = finite(np.frombuffer(codebook, dtype="<f4"), "its codebook's values")
    width = _v1_int(blob["index_bits"], "index_bits", MAX_INDEX_BITS + 1)
    if not width:
        raise FormatError("relative index width 0")
    # Each entry advances the position by at least 1, the last to a kept weight.
    entries = _v1_int(blob["entries"], "entries", size + 1)
    values = huffman_decode(section("values"), _v1_int(blob["value_bits"], "value_bits"), entries,
                            _v1_table(section("value_lengths"), codebook.size + 1))
    gaps = huffman_decode(section("gaps"), _v1_int(blob["gap_bits"], "gap_bits"), entries,
                          _v1_table(section("gap_lengths"), 1 << width))
    padding = values == codebook.size
    positions = positions_from_gaps(gaps, padding)
    if positions.size != blob["kept"] or (positions.size and positions[-1] >= size):
        raise FormatError("sparse indices do not fit the blob")
    out = np.zeros(size, dtype=np.float32)
    out[positions] = codebook[values[~padding]]
    return out.reshape(shape)


def _v1_shape(blob):
    shape = blob["shape"]
    if not isinstance(shape, list) or len(shape) > MAX_AXES:
        raise FormatError(f"a blob shape that is not a list of at most {MAX_AXES} axes")
    return tuple(_v1_int(d, "shape") for d in shape)


def _open_v1(buffer):
    data = bytes(buffer)
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise FormatError("checksum mismatch: the file is truncated or corrupted")
    (head_len,) = struct.unpack_from("<I", data, len(MAGIC) + 2)
    start = len(MAGIC) + 6
    if start + head_len > len(body):
        raise FormatError("the header runs past the end of the file")
    try:
        header = json.loads(body[start:start + head_len].decode("utf-8"))
    except RecursionError:
        raise FormatError("the header's JSON is nested too deeply") from None
    if not isinstance(header, dict) or not isinstance(header.get("name", ""), str):
        raise FormatError("the header is not a JSON object with a text name")
    payload = body[start + head_len:]
    sections = []
    for entry in header["sections"]:
        offset, length = (_v1_int(v, "sections") for v in entry)
        if offset + length > len(payload):
            raise FormatError(f"section {len(sections)} runs past the end of the file")
        sections.append(payload[offset:offset + length])
    metas = [(LayerParameter.FromString(sections[_v1_int(meta["param"], "param", len(sections))]), meta["blobs"])
             for meta in header["layers"]]
    layers = [(param, [(_V1_KINDS.get(blob["kind"], blob["kind"]), _v1_shape(blob)) for blob in blobs])
              for param, blobs in metas]
    _check_layers(layers)
    decoded = []
    for (param, blobs), (_, kinds) in zip(metas, layers):
        arrays = []
        for index, (blob, (_, shape)) in enumerate(zip(blobs, kinds)):
            with _blob_context(param, index, shape):
                arrays.append(_v1_blob(blob, sections, shape))
        decoded.append((param, arrays))
    return header.get("name", ""), decoded


_V1_KINDS = {"raw": BLOB_FLOATS, "dc": BLOB_SHARED}


# -- reading either version ----------------------------------------------------------

def _guarded(path, action):
    try:
        return action()
    except (FormatError, WireError) as exc:  # the decoders do not know the file
        raise InputError(f"{path}: {exc}") from None
    except (KeyError, ValueError, IndexError, TypeError, zlib.error, struct.error, DecodeError) as exc:
        raise InputError(f"{path}: corrupted .dcz content ({exc})") from None


class DczFile:
    """An opened .dcz file: ``name``, ``count`` (layers with blobs) and
    ``layers()``, which decodes one layer at a time: (LayerParameter, [arrays])."""

    def __init__(self, path):
        self.path = check_input(path)
        with open(self.path, "rb") as handle:
            size = handle.seek(0, 2)
            self._buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self.version = _guarded(self.path, self._check)
        if self.version == 1:
            self.name, self._v1_layers = _guarded(self.path, lambda: _open_v1(self._buffer))
            self.count = len(self._v1_layers)
        else:
            self.name, self._v2_layers, self._reader = _guarded(self.path, lambda: _open_v2(self._buffer))
            self.count = len(self._v2_layers)

    def _check(self):
        data = self._buffer
        if data[:len(MAGIC)] != MAGIC:
            raise FormatError("not a caffedsd .dcz file (bad magic number)")
        if len(data) < len(MAGIC) + 2:
            raise FormatError(f"truncated: {len(data)} bytes, the format version is missing")
        (version,) = struct.unpack_from("<H", data, len(MAGIC))
        if version == 0:
            raise FormatError(f"format version 0 is no .dcz version (caffedsd reads 1 to {VERSION})")
        if version > VERSION:
            raise FormatError(f"format version {version} is newer than this caffedsd reads ({VERSION})")
        if len(data) < MIN_FILE_BYTES[version]:
            raise FormatError(f"truncated: {len(data)} bytes, a version {version} file has at least "
                              f"{MIN_FILE_BYTES[version]}")
        if version == 2 and zlib.crc32(memoryview(data)[:-4]) != struct.unpack_from("<I", data, len(data) - 4)[0]:
            raise FormatError("checksum mismatch: the file is truncated or corrupted")
        return version

    def layers(self):
        if self.version == 1:
            yield from self._v1_layers
            return
        iterator = _iter_v2(self._v2_layers, self._reader)
        while True:
            item = _guarded(self.path, lambda: next(iterator, None))
            if item is None:
                return
            yield item


def read_dcz(path):
    """[(LayerParameter, [arrays])] and the net name of a .dcz file (all in memory)."""
    dcz = DczFile(path)
    return list(dcz.layers()), dcz.name


def decompress(path, output, model=None, force=False, allow_python_layers=False):
    """Write the caffemodel a .dcz file holds (weights = the quantized values),
    a layer at a time; with ``model``, the prototxt must fit it, or nothing is
    written. Returns the number of layers with weights."""
    check_model_outputs(output, [path, model], force)
    net = None
    if model is not None:
        from .caffe_proto import read_net_prototxt

        net = read_net_prototxt(model, allow_python_layers)
    dcz = DczFile(path)
    with atomic_unmasked_path(output) as tmp:
        new_caffemodel(tmp, dcz.layers(), name=dcz.name)
        if net is not None:
            from .caffe_env import check_weights_fit, warn_unbuilt

            # A .dcz older compress wrote kept an Embed's exact copy of tied weights.
            warn_unbuilt(check_weights_fit(net, model, read_caffemodel(tmp), tmp, named=path,
                                           tie_remedy="compress the model again, or decompress it without -p"))
    return dcz.count
