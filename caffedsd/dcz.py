"""`compress`/`decompress`: a caffemodel to and from a .dcz file, and the
per-stage size table. The coding itself is in coding.py, the layout in
docs/FORMAT.md.

Version 2 files are written and read a layer at a time: compressing holds one
layer's kept weights and its coded streams, decompressing one layer's decoded
blobs, which go straight into the caffemodel writer. Version 1 files (JSON
header, one Huffman stream per field with no sync points) still decode.
"""
import contextlib
import hashlib
import json
import math
import mmap
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError

from .atomic import atomic_open, check_input, check_output
from .caffe_proto import LayerParameter
from .caffemodel import check_finite, new_caffemodel, read_caffemodel
from .maskfile import atomic_unmasked_path, check_model_outputs
from .coding import (FormatError, StreamWriter, assign_labels, decode_fixed, decode_stream, expand_gaps,
                     huffman_decode, huffman_encode, huffman_lengths, label_dtype, positions_from_gaps,
                     shared_codebook)
from .errors import InputError, WireError
from .layers import PRUNABLE_TYPES
from .maskfile import masks_for, masks_read_for
from .masks import chunk_bounds
from .wire import encode_varint as varint, read_varint

MAGIC = b"CDSDDCZ\x00"
VERSION = 2
# Magic, version, and the least that follows: an empty header's length and the
# CRC-32 (version 2), the header's length and the sha256 (version 1).
MIN_FILE_BYTES = {1: len(MAGIC) + 2 + 4 + 32, 2: len(MAGIC) + 2 + 1 + 4}
MAX_INDEX_BITS = 16
MIN_CHUNK_BITS = 13  # streams of at most 2^13 symbols are one chunk and say nothing about chunks
MAX_CHUNK_BITS = 40
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
# Stream header byte: 0 constant, 1 fixed-length code, 2-3 Huffman with its
# lengths deflated / as coded differences, 4 + k Huffman with lengths in k bits.
STREAM_CONSTANT, STREAM_FIXED, STREAM_HUFFMAN_DEFLATED, STREAM_HUFFMAN_STEPS, STREAM_HUFFMAN_PACKED = 0, 1, 2, 3, 4
FLOATS_PLAIN, FLOATS_PLANES, FLOATS_SORTED = 0, 1, 2


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
    for key, value in values.items():
        if not 1 <= value <= 16:
            raise InputError(f"{what} {text!r}: {key}={value} is outside 1..16")
    return values if auto else {**DEFAULT_BITS, **values}


# -- bytes ---------------------------------------------------------------------------

class Reader:
    """A cursor over a buffer; every read past the end is a FormatError."""

    def __init__(self, buffer, start=0, end=None):
        self.view = memoryview(buffer)
        self.pos = start
        self.end = len(self.view) if end is None else end

    def take(self, n):
        if n < 0 or self.pos + n > self.end:
            raise FormatError("truncated field")
        piece = self.view[self.pos:self.pos + n]
        self.pos += n
        return piece

    def byte(self):
        return self.take(1)[0]

    def varint(self):
        start = self.pos
        value, self.pos = read_varint(self.view, self.pos, self.end)
        # One value, one encoding: a zero last byte only pads a shorter one.
        if self.pos - start > 1 and not self.view[self.pos - 1]:
            raise FormatError("a varint with a needless zero byte (not in its shortest form)")
        return value

    def blob(self):
        return bytes(self.take(self.varint()))


def _pack_fixed(values, width):
    values = np.asarray(values, dtype=np.uint64)
    if not width or not values.size:
        return b""
    bits = (values[:, None] >> np.arange(width - 1, -1, -1, dtype=np.uint64)) & np.uint64(1)
    return np.packbits(bits.astype(np.uint8)).tobytes()


# -- streams: a sequence of symbols from an alphabet the reader knows ----------------

def chunk_size(count):
    """Symbols between sync points. Small streams: 8192, so at most a few
    sync points are stored. Large ones: about sqrt(count) / 4 (at least 512),
    so the decoder takes few numpy steps, each over many chunks."""
    if count <= 1 << 16:
        return 1 << MIN_CHUNK_BITS
    return 1 << max(9, int(round(np.log2(np.sqrt(count) / 4))))


def uniform_lengths(alphabet):
    """Code lengths of the fixed-length code over ``alphabet`` symbols: w bits
    each, or w - 1 for the first 2^w - alphabet (truncated binary)."""
    width = (alphabet - 1).bit_length()
    lengths = np.full(alphabet, width, dtype=np.int64)
    lengths[:(1 << width) - alphabet] = width - 1
    return lengths


@dataclass
class StreamPlan:
    mode: int
    count: int
    lengths: np.ndarray = None  # the prefix code (Huffman or fixed-length)
    symbol: int = 0  # the one symbol (constant)
    table: bytes = b""  # the serialized code lengths (Huffman)

    def writer(self):
        return None if self.mode == STREAM_CONSTANT else StreamWriter(self.lengths, chunk_size(self.count))

    def serialize(self, writer):
        """Header byte, code lengths, sync points and data (docs/FORMAT.md)."""
        if self.mode == STREAM_CONSTANT:
            return bytes([STREAM_CONSTANT]) + varint(self.symbol)
        data, offsets = writer.result()
        chunk = chunk_size(self.count)
        pieces = [self.table, bytes([chunk.bit_length() - 1]) if self.count > 1 << MIN_CHUNK_BITS else b""]
        if offsets.size > 1:
            sizes = np.diff(offsets)
            width = int(sizes.max()).bit_length()
            pieces += [bytes([width]), _pack_fixed(sizes, width)]
        if not _implied_length(self.mode, self.lengths):
            pieces.append(varint(len(data)))
        return b"".join(pieces + [data])


def _implied_length(mode, lengths):
    """Whether a stream's byte count follows from its symbol count: fixed-length codes of 2^w symbols."""
    return mode == STREAM_FIXED and lengths.size & (lengths.size - 1) == 0


def _lengths_table(lengths):
    """A header byte and the code lengths: packed in the fewest bits each,
    deflated, or as differences coded by a small prefix code; the smallest."""
    lengths = np.asarray(lengths, dtype=np.int64)
    width = int(lengths.max()).bit_length()
    options = [bytes([STREAM_HUFFMAN_PACKED + width]) + _pack_fixed(lengths, width)]
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = deflater.compress(lengths.astype(np.uint8).tobytes()) + deflater.flush()
    options.append(bytes([STREAM_HUFFMAN_DEFLATED]) + varint(len(deflated)) + deflated)
    steps = np.diff(lengths, prepend=0) % 32
    step_lengths = huffman_lengths(np.bincount(steps, minlength=32), max_bits=7)
    used = np.flatnonzero(step_lengths)
    data, _ = huffman_encode(steps, step_lengths)
    options.append(b"".join([bytes([STREAM_HUFFMAN_STEPS, used.size]),
                             bytes((used << 3 | step_lengths[used]).tolist()), varint(len(data)), data]))
    return min(options, key=len)


def _read_lengths_table(reader, mode, alphabet):
    if mode == STREAM_HUFFMAN_DEFLATED:
        try:
            inflater = zlib.decompressobj(-15)
            lengths = np.frombuffer(inflater.decompress(reader.blob(), alphabet + 1), dtype=np.uint8)
        except zlib.error as exc:
            raise FormatError(f"bad code length table ({exc})") from None
        if not inflater.eof or inflater.unused_data:
            raise FormatError("code length table is not one whole DEFLATE stream")
    elif mode == STREAM_HUFFMAN_STEPS:
        step_lengths = np.zeros(32, dtype=np.int64)
        for pair in bytes(reader.take(reader.byte())):
            step_lengths[pair >> 3] = pair & 7
        data = bytes(reader.take(reader.varint()))
        steps = decode_stream(data, alphabet, step_lengths, max(alphabet, 1), [0])
        lengths = np.cumsum(steps.astype(np.int64)) % 32
    else:
        width = mode - STREAM_HUFFMAN_PACKED
        lengths = decode_fixed(bytes(reader.take((alphabet * width + 7) // 8)), alphabet, width)
    if lengths.size != alphabet:
        raise FormatError("code length table does not fit the alphabet")
    return np.asarray(lengths, dtype=np.int64)


def plan_stream(frequencies):
    """The cheapest way to store symbols with these counts: one symbol
    repeated, a fixed-length code, or a Huffman code (its table and sync
    points counted); (plan, estimated bytes)."""
    freq = np.asarray(frequencies, dtype=np.int64)
    count, alphabet = int(freq.sum()), freq.size
    used = np.flatnonzero(freq)
    if used.size <= 1:
        return StreamPlan(STREAM_CONSTANT, count, symbol=int(used[0]) if used.size else 0), 2
    chunk = chunk_size(count)

    def cost(lengths, table):
        bits = int(np.dot(freq, lengths))
        sync = (-(-count // chunk) - 1) * (chunk * int(lengths.max())).bit_length() // 8
        return 4 + len(table) + sync + (bits + 7) // 8

    uniform = uniform_lengths(alphabet)
    fixed = StreamPlan(STREAM_FIXED, count, lengths=uniform, table=bytes([STREAM_FIXED]))
    lengths = huffman_lengths(freq)
    table = _lengths_table(lengths)
    if cost(lengths, table) < cost(uniform, b""):
        return StreamPlan(table[0], count, lengths=lengths, table=table), cost(lengths, table)
    return fixed, cost(uniform, b"")


def read_stream(reader, alphabet, count):
    """The ``count`` symbols of a stream over ``alphabet`` symbols."""
    mode = reader.byte()
    if mode == STREAM_CONSTANT:
        symbol = reader.varint()
        if symbol >= max(alphabet, 1) or (count and not alphabet):
            raise FormatError("constant stream symbol outside the alphabet")
        # A read-only view: these few bytes can stand for any number of symbols.
        return np.broadcast_to(np.array(symbol, dtype=label_dtype(max(alphabet, 1))), (count,))
    if mode == STREAM_HUFFMAN_PACKED:
        raise FormatError("stream stage 4 (code lengths of 0 bits) is not valid")
    if mode > STREAM_HUFFMAN_PACKED + 5:
        raise FormatError(f"unknown stream stage {mode}")
    # One symbol or none needs no code: such a stream is a constant.
    if alphabet < 2:
        raise FormatError(f"a stream over {alphabet} symbol{'s' if alphabet != 1 else ''} in stage {mode}, "
                          "not 0 (constant)")
    if mode == STREAM_FIXED:
        lengths = uniform_lengths(alphabet)
    else:
        lengths = _read_lengths_table(reader, mode, alphabet)
    chunk_bits = reader.byte() if count > 1 << MIN_CHUNK_BITS else MIN_CHUNK_BITS
    if chunk_bits > MAX_CHUNK_BITS:
        raise FormatError(f"chunk size 2^{chunk_bits} is over 2^{MAX_CHUNK_BITS}")
    chunk = 1 << chunk_bits
    chunks = -(-count // chunk)
    offsets = np.zeros(min(chunks, 1), dtype=np.uint64)
    if chunks > 1:
        width = reader.byte()
        # A chunk of 2^c symbols takes at most 20 * 2^c < 2^(c+5) bits.
        if not 1 <= width <= chunk_bits + 5:
            raise FormatError(f"sync-point width {width} is outside 1..{chunk_bits + 5}")
        sizes = decode_fixed(bytes(reader.take(((chunks - 1) * width + 7) // 8)), chunks - 1, width)
        offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.uint64)])
    if _implied_length(mode, lengths):
        data = bytes(reader.take((count * int(lengths[0]) + 7) // 8))
    else:
        data = bytes(reader.take(reader.varint()))
    # The table has ``alphabet`` lengths, so every symbol decoded is below it.
    return decode_stream(data, count, lengths, chunk, offsets)


def _write_whole(symbols, plan):
    writer = plan.writer()
    if writer is not None:
        for start, stop in chunk_bounds(symbols.size):
            writer.write(symbols[start:stop])
    return plan.serialize(writer)


# -- float blobs, stored exactly -----------------------------------------------------

def _encode_planes(words):
    """uint32 words as four byte planes (most significant first), each a stream."""
    pieces = []
    for shift in (24, 16, 8, 0):
        plane = ((words >> np.uint32(shift)) & np.uint32(0xFF)).astype(np.uint8)
        pieces.append(_write_whole(plane, plan_stream(np.bincount(plane, minlength=256))[0]))
    return b"".join(pieces)


def _decode_planes(reader, count):
    # All four streams first: each is checked against the bytes it came in
    # before the words are allocated.
    planes = [read_stream(reader, 256, count) for _ in range(4)]
    words = np.empty(count, dtype=np.uint32)
    for start, stop in chunk_bounds(count):
        part = words[start:stop]
        part[:] = planes[0][start:stop]
        for plane in planes[1:]:
            part <<= np.uint32(8)
            part |= plane[start:stop]
    return words


def _monotone(words):
    """float32 bit patterns as integers in the order of the floats."""
    words = words.astype(np.int64)
    return np.where(words >> 31, 0xFFFFFFFF - words, words + 0x80000000)


def encode_floats(values):
    """Exact float32 values, the smallest of: plain; four byte planes (sign
    and exponent first), each stored the cheapest way; for values in
    increasing order (a codebook), the same planes over the differences of
    the values' order-preserving integer forms."""
    values = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
    options = [bytes([FLOATS_PLAIN]) + values.tobytes()]
    if values.size >= 8:
        words = values.view("<u4")
        options.append(bytes([FLOATS_PLANES]) + _encode_planes(words))
        steps = np.diff(_monotone(words), prepend=0)
        if (steps >= 0).all():
            options.append(bytes([FLOATS_SORTED]) + _encode_planes(steps.astype(np.uint32)))
    return min(options, key=len)


def decode_floats(reader, count):
    mode = reader.byte()
    if mode == FLOATS_PLAIN:
        return np.frombuffer(reader.take(4 * count), dtype="<f4").astype(np.float32)
    if mode == FLOATS_PLANES:
        return _decode_planes(reader, count).view(np.float32)
    if mode == FLOATS_SORTED:
        order = np.cumsum(_decode_planes(reader, count), dtype=np.int64)
        if count and order[-1] > 0xFFFFFFFF:
            raise FormatError("sorted floats out of range")
        words = np.where(order >= 0x80000000, order - 0x80000000, 0xFFFFFFFF - order)
        return words.astype(np.uint32).view(np.float32)
    raise FormatError(f"unknown float coding {mode}")


# -- shared (pruned, quantized, Huffman-coded) weight blobs ---------------------------

@dataclass
class LayerSizes:
    """One layer's sizes at each stage, as in the paper's Table 1-2 (bytes and
    bits per kept weight)."""

    layer: object  # str (report.py also prints a bytes name, escaped)
    dense: int = 0  # bytes as float32
    stored: int = 0  # bytes in the .dcz file
    before_huffman: int = 0  # bytes with fixed-width codes and indices
    weights: int = 0
    kept: int = 0
    entries: int = 0
    bits: int = 0
    index_bits: int = 0
    codebook: int = 0
    value_bits: int = 0  # bits of the coded value stream
    index_stream_bits: int = 0  # bits of the coded relative-index stream
    shared: bool = False
    notes: list = field(default_factory=list)


def _kept_slices(flat, keep):
    """(start, kept flat positions) per slice of a blob."""
    for start, stop in chunk_bounds(flat.size):
        sel = flat[start:stop] != 0
        if keep is not None:
            sel &= keep[start:stop]
        yield start, np.flatnonzero(sel) + start


def _gap_freq(gap_hist, big_gaps, width):
    """(gap-stream histogram, padding entries) of relative indices of ``width``
    bits, from the histogram of the gaps below 2^16 and the larger gaps."""
    mask = (1 << width) - 1
    gaps = np.arange(gap_hist.size, dtype=np.int64)
    pads = int(np.dot(gap_hist, gaps >> width)) + int((big_gaps >> width).sum())
    gap_freq = np.bincount(gaps & mask, weights=gap_hist, minlength=mask + 1).astype(np.int64)
    gap_freq += np.bincount(big_gaps & mask, minlength=mask + 1)
    gap_freq[mask] += pads
    return gap_freq, pads


def _stream_plans(gap_hist, big_gaps, value_hist, widths):
    """(bytes, width, pads, value plan, gap plan) of the relative-index width
    among ``widths`` that gives the smallest streams. The value histogram
    differs between widths only in its padding count, so its plan is made
    once per distinct count."""
    value_plans, best = {}, None
    for width in widths:
        gap_freq, pads = _gap_freq(gap_hist, big_gaps, width)
        if pads not in value_plans:
            value_plans[pads] = plan_stream(np.append(value_hist, pads) if pads else value_hist)
        gap_plan = plan_stream(gap_freq)
        size = gap_plan[1] + value_plans[pads][1]
        if best is None or size < best[0]:
            best = (size, width, pads, value_plans[pads][0], gap_plan[0])
    return best


def _index_widths(gap_hist, big_gaps):
    """The relative-index widths worth trying: 1 up to the longest gap's bits."""
    largest = max(int(np.flatnonzero(gap_hist).max(initial=0)), int(big_gaps.max(initial=0)))
    return range(1, max(1, min(MAX_INDEX_BITS, largest.bit_length())) + 1)


def encode_shared(data, keep, bits, index_bits, sizes):
    """The payload of a shared weight blob; fills ``sizes``. Two passes over
    the blob: statistics and k-means, then coding slice by slice. The kept
    values are held once (sorted in place for k-means); pass 2 labels each
    slice against the codebook again, so no per-weight label array is kept."""
    flat = np.asarray(data).reshape(-1)
    keep = None if keep is None else np.asarray(keep, dtype=bool).reshape(-1)
    # Pass 1: kept values, histogram of the gaps between kept positions.
    kept = sum(positions.size for _, positions in _kept_slices(flat, keep))
    values, small, big = np.empty(kept, dtype=np.float32), np.zeros(1 << MAX_INDEX_BITS, dtype=np.int64), []
    previous, done = -1, 0
    for start, positions in _kept_slices(flat, keep):
        if not positions.size:
            continue
        values[done:done + positions.size] = flat[positions]
        done += positions.size
        raw = np.diff(positions, prepend=previous) - 1
        previous = int(positions[-1])
        small += np.bincount(np.minimum(raw, small.size - 1), minlength=small.size)
        big.append(raw[raw >= small.size - 1])
    big = np.concatenate(big) if big else np.zeros(0, np.int64)
    small[-1] -= big.size  # those were counted in the last bin
    values.sort()
    codebook, used = shared_codebook(values, bits) if kept else (np.zeros(0, np.float32), np.zeros(0, np.int64))
    del values
    widths = [index_bits] if index_bits else _index_widths(small, big)
    _, width, pads, value_plan, gap_plan = _stream_plans(small, big, used, widths)
    entries = kept + pads
    # Pass 2: the two streams.
    value_writer, gap_writer = value_plan.writer(), gap_plan.writer()
    previous = -1
    for start, positions in _kept_slices(flat, keep):
        if not positions.size:
            continue
        raw = np.diff(positions, prepend=previous) - 1
        previous = int(positions[-1])
        gaps, padding = expand_gaps(raw, width)
        symbols = np.full(gaps.size, codebook.size, dtype=label_dtype(codebook.size + 1))
        symbols[~padding] = assign_labels(flat[positions].astype(np.float32), codebook, None)
        if value_writer is not None:
            value_writer.write(symbols)
        if gap_writer is not None:
            gap_writer.write(gaps)
    value_stream, gap_stream = value_plan.serialize(value_writer), gap_plan.serialize(gap_writer)
    payload = b"".join([bytes([width]), varint(kept), varint(pads), varint(codebook.size),
                        encode_floats(codebook), value_stream, gap_stream])
    sizes.shared, sizes.weights, sizes.kept, sizes.entries = True, flat.size, kept, entries
    sizes.bits, sizes.index_bits, sizes.codebook = bits, width, codebook.size
    sizes.value_bits = 0 if value_writer is None else value_writer.bits
    sizes.index_stream_bits = 0 if gap_writer is None else gap_writer.bits
    sizes.before_huffman += (entries * (bits + width) + 7) // 8 + 4 * codebook.size
    return payload


def decode_shared(reader, shape):
    size = math.prod(shape)
    width = reader.byte()
    kept, pads, centroids = reader.varint(), reader.varint(), reader.varint()
    entries = kept + pads
    if not 1 <= width <= MAX_INDEX_BITS:
        raise FormatError(f"relative index width {width} is outside 1..{MAX_INDEX_BITS}")
    if centroids > 1 << 16:
        raise FormatError(f"codebook of {centroids} values (at most 2^16)")
    # Every entry advances the position by at least 1 and the last is a kept
    # weight inside the blob.
    if entries > size:
        raise FormatError(f"{kept} kept weights and {pads} padding entries do not fit a blob of {size} values")
    codebook = _finite(decode_floats(reader, centroids), "its codebook's values")
    pad = entries > kept
    values = read_stream(reader, centroids + pad, entries)
    gaps = read_stream(reader, 1 << width, entries)
    if pad and values[-1] == centroids:
        raise FormatError("the last entry is padding: it precedes no kept weight")
    out = np.zeros(size, dtype=np.float32)
    previous, found = -1, 0
    for start, stop in chunk_bounds(entries):
        symbols = values[start:stop]
        padding = symbols == centroids
        ends = np.cumsum(gaps[start:stop].astype(np.int64) + 1) + previous
        previous = int(ends[-1])
        positions = ends[~padding]
        if previous >= size:
            raise FormatError("sparse indices do not fit the blob")
        out[positions] = codebook[symbols[~padding]]
        found += positions.size
    if found != kept:
        raise FormatError("sparse indices do not fit the blob")
    return out.reshape(shape)


# -- version 2 container -------------------------------------------------------------

class _Output:
    """A file handle that counts bytes and keeps a CRC-32 of them."""

    def __init__(self, handle):
        self.handle, self.crc, self.size = handle, 0, 0

    def write(self, data):
        self.handle.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)


def compress(weights, output, bits, index_bits=None, masks=None, force=False):
    """Write ``weights`` as a version 2 .dcz file; returns [LayerSizes] and the
    container's own bytes (header, magic, checksum)."""
    model = read_caffemodel(weights)
    check_output(output, inputs=[weights, masks_read_for(weights, masks)], force=force)
    check_finite(model)
    maskset = masks_for(model, masks)
    keep_masks = maskset.per_layer() if maskset else {}
    layers = [layer for layer in model.layers if layer.blobs]
    if not isinstance(model.name, str):  # proto2 lets a string field hold any bytes
        raise InputError(f"{model.path}: the net's name is not UTF-8 text ({model.name!r})")
    raw = _raw_header(model.name.encode("utf-8"), [
        (layer.param.SerializeToString(),
         [(BLOB_SHARED if index == 0 and layer.type in PRUNABLE_TYPES else BLOB_FLOATS, blob.shape)
          for index, blob in enumerate(layer.blobs)]) for layer in layers])
    _check_compressible(model, layers, raw)
    header = _deflate_header(raw)
    rows = []
    with atomic_open(output) as handle:
        out = _Output(handle)
        out.write(MAGIC + struct.pack("<H", VERSION) + varint(len(header)) + header)
        container = out.size + 4
        for layer in layers:
            sizes = LayerSizes(layer.name)
            before = out.size
            for index, blob in enumerate(layer.blobs):
                data = blob.data
                sizes.dense += data.size * 4
                if index == 0 and layer.type in PRUNABLE_TYPES:
                    kind = layer_kind(layer.type)
                    out.write(encode_shared(data, keep_masks.get(layer.name), bits[kind],
                                            (index_bits or {}).get(kind), sizes))
                else:
                    out.write(encode_floats(data))
                    sizes.before_huffman += data.size * 4
            sizes.stored = out.size - before
            rows.append(sizes)
        handle.write(struct.pack("<I", out.crc))
    return rows, container


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
            total += math.prod(shape)
    if total > MAX_VALUES:
        raise FormatError(f"its blobs hold {total:,} values, over {MAX_VALUES:,} (2 GiB of float32, "
                          "more than a caffemodel stock Caffe reads)")


def _decode_blob(reader, kind, shape):
    if kind == BLOB_SHARED:
        return decode_shared(reader, shape)
    return _finite(decode_floats(reader, math.prod(shape)).reshape(shape))


def _finite(values, what="its values"):
    # compress refuses NaN/Inf, and so does every command computing on weights.
    if not np.isfinite(values).all():
        raise FormatError(f"{what} hold NaN/Inf, which caffedsd refuses in weights")
    return values


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
        return _finite(np.frombuffer(data, dtype="<f4").reshape(shape).copy())
    codebook = section("codebook")
    if len(codebook) % 4 or len(codebook) > 4 << 16:
        raise FormatError(f"a codebook of {len(codebook)} bytes")
    codebook = _finite(np.frombuffer(codebook, dtype="<f4"), "its codebook's values")
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
            from .netcheck import check_pair

            check_pair(net, model, read_caffemodel(tmp), weights_path=path)
    return dcz.count
