"""How a .dcz file (dcz.py, docs/FORMAT.md) stores one blob: the byte
reader, streams of symbols (constant, fixed-length or Huffman-coded, in
chunks), float blobs stored exactly, and shared blobs (pruned, quantized to a
codebook, positions as gaps). Numpy only; the container is dcz.py's."""
import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from .coding import (FormatError, StreamWriter, assign_labels, decode_fixed, decode_stream, expand_gaps,
                     huffman_encode, huffman_lengths, label_dtype, shared_codebook)
from .masks import chunk_bounds
from .wire import encode_varint as varint, read_varint

MAX_INDEX_BITS = 16
MIN_CHUNK_BITS = 13  # streams of at most 2^13 symbols are one chunk and say nothing about chunks
MAX_CHUNK_BITS = 40
# Stream header byte: 0 constant, 1 fixed-length code, 2-3 Huffman with its
# lengths deflated / as coded differences, 4 + k Huffman with lengths in k bits.
STREAM_CONSTANT, STREAM_FIXED, STREAM_HUFFMAN_DEFLATED, STREAM_HUFFMAN_STEPS, STREAM_HUFFMAN_PACKED = 0, 1, 2, 3, 4
FLOATS_PLAIN, FLOATS_PLANES, FLOATS_SORTED = 0, 1, 2


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
            # Each named once, with a code: else which entry counts would be a reader's choice.
            if pair & 7 == 0 or step_lengths[pair >> 3]:
                raise FormatError(f"code length table names difference {pair >> 3} "
                                  + ("with no length" if pair & 7 == 0 else "twice"))
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


def _stream_plans(gap_hist, big_gaps, value_hist, widths, plan=plan_stream):
    """(bytes, width, pads, value plan, gap plan) of the relative-index width
    among ``widths`` that gives the smallest streams, each stream planned by
    ``plan``. The value histogram differs between widths only in its padding
    count, so its plan is made once per distinct count."""
    value_plans, best = {}, None
    for width in widths:
        gap_freq, pads = _gap_freq(gap_hist, big_gaps, width)
        if pads not in value_plans:
            value_plans[pads] = plan(np.append(value_hist, pads) if pads else value_hist)
        gap_plan = plan(gap_freq)
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
    codebook = finite(decode_floats(reader, centroids), "its codebook's values")
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
        raise FormatError(f"{found} entries are not padding, where {kept} kept weights were said")
    return out.reshape(shape)


def finite(values, what="its values"):
    # compress refuses NaN/Inf, and so does every command computing on weights.
    if not np.isfinite(values).all():
        raise FormatError(f"{what} hold NaN/Inf, which caffedsd refuses in weights")
    return values
