"""Deep Compression coding (Han et al., ICLR 2016), numpy only: k-means
weight sharing, sparse relative indices, canonical Huffman codes.

The .dcz blobs built from these pieces are in dcz_blobs.py, the container in
dcz.py, its layout in
docs/FORMAT.md. Huffman streams of format version 2 carry sync points (the
bit offset every K symbols), so ``decode_stream`` decodes all chunks of a
stream together, one symbol of every chunk per numpy step, with no Python
loop over symbols. ``huffman_decode`` is the plain one-symbol-at-a-time
decoder: it reads version 1 streams (which have no sync points) and is the
reference the vectorized decoder is tested against.
"""
from dataclasses import dataclass

import numpy as np

from .errors import FormatError, InputError
from .masks import chunk_bounds
from .values import is_whole

MAX_CODE_BITS = 20  # longest Huffman code written (version 1 allowed 24)
V1_MAX_CODE_BITS = 24
MAX_SHARED_BITS = 16  # of a shared weight's cluster label: 2^16 centroids, what a .dcz codebook holds


def check_width(bits, what="bits", limit=MAX_SHARED_BITS):
    """A code's width in bits (a shared weight's label, a relative index):
    a whole number in 1..``limit``."""
    if not is_whole(bits) or not 1 <= bits <= limit:
        raise InputError(f"{what} {bits!r}: must be a whole number in 1..{limit}")
    return int(bits)


def label_dtype(count):
    """The smallest unsigned dtype holding 0..count-1."""
    return np.uint8 if count <= 1 << 8 else np.uint16 if count <= 1 << 16 else np.uint32


# -- k-means weight sharing ----------------------------------------------------------

def kmeans_1d(values, clusters, iterations=100):
    """(codebook, assignment) of 1-D ``values`` into at most ``clusters`` centroids:
    Lloyd iterations from a linear initialization over [min, max], as in the
    paper. When there are no more distinct values than clusters, the codebook
    is those values (exact). Centroids no value is nearest to are kept here;
    ``share_weights`` drops them."""
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if not is_whole(clusters) or clusters < 1:
        raise InputError(f"clusters {clusters!r}: must be a whole number >= 1")
    codebook = sorted_kmeans(np.sort(values), clusters, iterations)
    return codebook, assign_labels(values, codebook, None)


def sorted_kmeans(ordered, clusters, iterations=100):
    """The float32 codebook of ``kmeans_1d`` from the values already sorted
    (float32), so a caller that owns them can sort in place and keep no copy."""
    if not ordered.size:
        return ordered[:0].copy()
    distinct = _distinct(ordered, clusters - 1)
    if distinct is not None:
        return distinct
    prefix = _prefix_sums(ordered)
    total = prefix(np.array([ordered.size]))
    centroids = np.linspace(float(ordered[0]), float(ordered[-1]), clusters)
    above, bounds, sums = None, None, None
    for _ in range(iterations):
        # Values up to a midpoint go to the lower centroid, as in ``assign_labels``.
        points = _above((centroids[:-1] + centroids[1:]) / 2)
        if above is None:
            bounds = np.searchsorted(ordered, points)
            sums = prefix(bounds)
        else:
            # Late iterations move few centroids: only a changed midpoint can
            # move its bound, and a sum is a function of its bound alone.
            changed = np.flatnonzero(points != above)
            found = np.searchsorted(ordered, points[changed])
            moved = changed[found != bounds[changed]]
            bounds[changed] = found
            sums[moved] = prefix(bounds[moved])
        above = points
        ends = np.concatenate([bounds, [ordered.size]])
        starts = np.concatenate([[0], bounds])
        counts = ends - starts
        range_sums = np.concatenate([sums, total]) - np.concatenate([[0.0], sums])
        updated = np.where(counts > 0, range_sums / np.maximum(counts, 1), centroids)
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    return centroids.astype(np.float32)


def _distinct(ordered, limit, chunk=None):
    """The distinct values of sorted ``ordered`` when there are at most
    ``limit`` + 1 of them, else None; by slices of ``chunk`` (default
    masks.CHUNK), so no N-sized temporary."""
    found, count = [], 0
    for start, stop in chunk_bounds(ordered.size, chunk):
        part = ordered[max(start - 1, 0):stop]
        new = part[1:][part[1:] != part[:-1]]
        count += new.size
        if count > limit:
            return None
        found.append(new)
    return np.concatenate([ordered[:1]] + found)


def _prefix_sums(ordered):
    """prefix(ends): the float64 sums of ordered[:end] for each end. Float64
    prefix sums every 64 values, plus the values past the last whole block
    before each end (no N-sized float64 array)."""
    block = 64
    full = ordered.size // block * block
    whole = ordered[:full].reshape(-1, block)  # a view
    coarse = np.concatenate([[0.0], np.cumsum(whole.sum(axis=1, dtype=np.float64))])
    tail = np.zeros((1, block), dtype=ordered.dtype)
    tail[0, :ordered.size - full] = ordered[full:]
    rows = whole if whole.size else tail
    offsets = np.arange(block)

    def prefix(ends):
        row = ends // block
        # Whole rows are gathered (contiguous reads), then cut at each end.
        window = rows[np.minimum(row, rows.shape[0] - 1)]
        window[row >= whole.shape[0]] = tail[0]
        rest = np.where(offsets < (ends - row * block)[:, None], window, 0)
        return coarse[row] + rest.sum(axis=1, dtype=np.float64)
    return prefix


def _above(points):
    """The least float32 above each float64 point: for a float32 v,
    v > point exactly when v >= _above(point)."""
    above = np.asarray(points, dtype=np.float64).astype(np.float32)
    return np.where(above.astype(np.float64) > points, above, np.nextafter(above, np.float32(np.inf)))


def assign_labels(values, codebook, midpoints):
    """Index of the codebook entry nearest each value (ties to the lower): the
    count of midpoints below it, in float32 (no float64 copy). With few
    midpoints, counting them pass by pass beats a binary search per value."""
    if midpoints is None:  # halfway between neighbouring entries
        midpoints = (codebook[:-1].astype(np.float64) + codebook[1:]) / 2
    above = _above(midpoints)
    labels = np.empty(values.size, dtype=label_dtype(codebook.size))
    for start, stop in chunk_bounds(values.size):
        chunk, out = values[start:stop], labels[start:stop]
        if above.size > 64:
            out[:] = np.searchsorted(above, chunk, side="right")
            continue
        out[:] = 0
        passed = np.empty(chunk.size, dtype=bool)
        for threshold in above:
            np.greater_equal(chunk, threshold, out=passed)
            np.add(out, passed, out=out, casting="unsafe")
    return labels


@dataclass(frozen=True)
class SharedWeights:
    """A layer's kept weights as indices into a codebook (weight sharing)."""

    positions: np.ndarray  # flat positions of the kept weights, increasing
    codebook: np.ndarray  # float32, sorted, every entry used
    labels: np.ndarray  # codebook index of each kept weight


def share_values(values, bits):
    """(codebook, labels) of kept weight ``values`` shared among at most
    2^bits centroids (k-means); centroids no value is nearest to are dropped.
    Trained quantization calls this (share_weights); compression takes the
    same codebook from ``shared_codebook``, without labelling each value."""
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    codebook, _ = shared_codebook(np.sort(values), check_width(bits))
    return codebook, assign_labels(values, codebook, None)


def shared_codebook(ordered, bits):
    """(codebook, counts) of ``share_values`` from the sorted float32 values:
    the values nearest each used centroid are counted, not labelled. Dropping
    a centroid no value is nearest to moves no value to another, so labels
    ``assign_labels`` gives against this codebook are ``share_values``' labels."""
    codebook = sorted_kmeans(ordered, 1 << bits)
    midpoints = (codebook[:-1].astype(np.float64) + codebook[1:]) / 2
    bounds = np.concatenate([[0], np.searchsorted(ordered, _above(midpoints)), [ordered.size]])
    counts = np.diff(bounds)
    used = counts > 0
    return codebook[used], counts[used]


def share_weights(weights, keep, bits):
    """The kept weights of a blob (``keep``: bool mask of its size) as a SharedWeights."""
    check_width(bits)
    flat = np.asarray(weights, dtype=np.float32).reshape(-1)
    keep = np.asarray(keep, dtype=bool).reshape(-1)
    if keep.size != flat.size:  # shorter, the rest was taken for pruned; longer, an IndexError
        raise InputError(f"keep mask of {keep.size} values for {flat.size} weights")
    positions = np.flatnonzero(keep)
    if not positions.size:
        return SharedWeights(positions, np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.uint8))
    return SharedWeights(positions, *share_values(flat[positions], bits))


def quantized(weights, keep, bits):
    """The values a blob decodes to: kept weights replaced by their centroid."""
    shared = share_weights(weights, keep, bits)
    out = np.zeros(np.size(weights), dtype=np.float32)
    out[shared.positions] = shared.codebook[shared.labels]
    return out.reshape(np.shape(weights))


# -- relative indices ----------------------------------------------------------------

def relative_indices(positions, index_bits):
    """(gaps, is_padding) for sorted flat ``positions`` of kept weights: each
    entry skips gap positions; a gap larger than 2^index_bits - 1 gets padding
    entries of gap 2^index_bits - 1 (advancing 2^index_bits each), as in the paper."""
    raw = np.diff(np.concatenate([[-1], np.asarray(positions, dtype=np.int64)])) - 1
    return expand_gaps(raw, index_bits)


def expand_gaps(raw, index_bits):
    """(gaps, is_padding) of raw gaps (positions skipped before each kept weight)."""
    raw = np.asarray(raw, dtype=np.int64)
    pads = raw >> index_bits
    last = np.cumsum(pads + 1) - 1  # where each kept weight's own entry lands
    total = int(last[-1]) + 1 if raw.size else 0
    gaps = np.full(total, (1 << index_bits) - 1, dtype=np.int64)
    padding = np.ones(total, dtype=bool)
    gaps[last] = raw & ((1 << index_bits) - 1)
    padding[last] = False
    return gaps, padding


def positions_from_gaps(gaps, padding, start=-1):
    ends = np.cumsum(np.asarray(gaps, dtype=np.int64) + 1) + start
    return ends[~np.asarray(padding, dtype=bool)]


# -- Huffman coding ----------------------------------------------------------------

def huffman_lengths(frequencies, max_bits=MAX_CODE_BITS):
    """Optimal code length per symbol (0 for unused), at most ``max_bits``."""
    freq = np.asarray(frequencies, dtype=np.int64)
    used = np.flatnonzero(freq)
    lengths = np.zeros(freq.size, dtype=np.int64)
    if used.size == 1:
        lengths[used] = 1
        return lengths
    counts = freq[used]
    for _ in range(64):  # by then every count is 1 or 2: a balanced tree
        lengths[used] = _tree_depths(counts)
        if lengths.max() <= max_bits or used.size > 1 << max_bits:
            break
        # Flatten the distribution until the longest code fits (rare; not
        # optimal, but the lengths every .dcz so far was written with).
        counts = (counts >> 1) + 1
    return lengths


def _tree_depths(counts):
    """Leaf depths of the Huffman tree of ``counts`` (at least two, all > 0):
    two queues, the leaves in (count, symbol) order and the merged nodes in
    the order they are made, whose counts never decrease. A tie takes the
    leaf, the tree a heap keyed by (count, creation order) builds, so the
    lengths are those of every earlier version."""
    order = np.argsort(counts, kind="stable")
    leaf = counts[order].tolist()
    n = len(leaf)
    merged, leaf_parent, merged_parent = [0] * (n - 1), [0] * n, [0] * (n - 1)
    i = j = 0
    for k in range(n - 1):
        total = 0
        for _ in (0, 1):
            if i < n and (j == k or leaf[i] <= merged[j]):
                leaf_parent[i] = k
                total += leaf[i]
                i += 1
            else:
                merged_parent[j] = k
                total += merged[j]
                j += 1
        merged[k] = total
    depth = [0] * (n - 1)  # of each merged node; the last is the root
    for k in range(n - 3, -1, -1):
        depth[k] = depth[merged_parent[k]] + 1
    lengths = np.empty(n, dtype=np.int64)
    lengths[order] = np.asarray(depth, dtype=np.int64)[leaf_parent] + 1
    return lengths


def canonical_order(lengths):
    """Used symbols sorted by (length, symbol): the order canonical codes count in."""
    lengths = np.asarray(lengths, dtype=np.int64)
    used = np.flatnonzero(lengths)
    return used[np.lexsort((used, lengths[used]))]


def canonical_codes(lengths):
    """Canonical Huffman codes (ints) for code ``lengths``, as in DEFLATE."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.int64)
    code, previous = 0, 0
    for symbol in canonical_order(lengths).tolist():
        code <<= int(lengths[symbol]) - previous
        codes[symbol] = code
        code += 1
        previous = int(lengths[symbol])
    return codes


class BitWriter:
    """Packs codes most significant bit first, written slice by slice.

    Consecutive symbols are first joined in groups (up to 4, while the group
    table has at most 2^16 entries and a group's code at most 57 bits); each
    group's code then lands in one or two 64-bit words: a sum over each word
    (codes never share a bit) and one carry into the next word."""

    def __init__(self, codes, lengths):
        codes = np.asarray(codes, dtype=np.uint64)
        lengths = np.asarray(lengths, dtype=np.uint64)
        longest = max(int(lengths.max(initial=0)), 1)
        self.group = 1
        while self.group < 4 and codes.size ** (self.group + 1) <= 1 << 16 and (self.group + 1) * longest <= 57:
            self.group += 1
        group_codes, group_lengths = codes, lengths
        for _ in range(self.group - 1):
            group_codes = ((group_codes[:, None] << lengths[None, :]) | codes[None, :]).reshape(-1)
            group_lengths = (group_lengths[:, None] + lengths[None, :]).reshape(-1)
        self.codes, self.lengths = codes, lengths
        self.group_codes, self.group_lengths = group_codes, group_lengths
        self.alphabet = codes.size
        self.parts = []
        self.pending = 0  # the last, incomplete 64-bit word, left-aligned
        self.pending_bits = 0
        self.leftover = np.zeros(0, dtype=np.int64)  # symbols short of a whole group

    def write(self, symbols):
        symbols = np.asarray(symbols)
        if self.leftover.size:
            symbols = np.concatenate([self.leftover, symbols])
        whole = symbols.size // self.group * self.group
        self.leftover = symbols[whole:].astype(np.int64)
        index = symbols[0:whole:self.group].astype(np.int64)
        for j in range(1, self.group):
            index = index * self.alphabet + symbols[j:whole:self.group]
        self._pack(self.group_codes[index], self.group_lengths[index])

    def _pack(self, codes, lengths):
        if not codes.size:
            return
        ends = np.cumsum(lengths) + np.uint64(self.pending_bits)
        starts = ends - lengths
        total = int(ends[-1])
        words = np.zeros(total // 64 + 2, dtype=np.uint64)
        word = starts >> np.uint64(6)
        room = np.uint64(64) - (starts & np.uint64(63))  # bits left in the start word
        fits = lengths <= room
        shift = np.where(fits, room - lengths, lengths - room)
        head = np.where(fits, codes << shift, codes >> shift)
        first = np.flatnonzero(np.concatenate([[True], word[1:] != word[:-1]]))
        words[word[first]] = np.add.reduceat(head, first)
        spill = np.flatnonzero(~fits)
        words[word[spill] + np.uint64(1)] += codes[spill] << (np.uint64(64) - shift[spill])
        words[0] += np.uint64(self.pending)
        complete = total // 64
        self.parts.append(words[:complete].astype(">u8").tobytes())
        self.pending_bits = total - complete * 64
        self.pending = int(words[complete]) if self.pending_bits else 0

    def getvalue(self):
        if self.leftover.size:
            self._pack(self.codes[self.leftover], self.lengths[self.leftover])
            self.leftover = self.leftover[:0]
        tail = self.pending.to_bytes(8, "big")[:(self.pending_bits + 7) // 8]
        return b"".join(self.parts) + tail


def huffman_encode(symbols, lengths):
    """Pack ``symbols`` with the canonical code of ``lengths``; (bytes, bit count)."""
    symbols = np.asarray(symbols, dtype=np.int64)
    writer = BitWriter(canonical_codes(lengths), lengths)
    for start, stop in chunk_bounds(symbols.size):
        writer.write(symbols[start:stop])
    return writer.getvalue(), int(np.asarray(lengths, dtype=np.int64)[symbols].sum())


def huffman_decode(data, bit_count, count, lengths):
    """Decode ``count`` symbols from ``data`` one at a time (the reference
    decoder, and the version 1 reader: those streams have no sync points)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    # Every symbol takes a bit or more: checked before anything is allocated.
    if not count <= bit_count <= 8 * len(data):
        raise FormatError(f"{count} symbols in {bit_count} bits of a {len(data)}-byte stream")
    table_symbol, table_length, width = decoding_table(lengths, V1_MAX_CODE_BITS, complete=False)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:bit_count]
    padded = np.concatenate([bits, np.zeros(width, dtype=np.uint8)]).astype(np.int64)
    # The value of the ``width`` bits starting at every position.
    windows = np.zeros(bit_count, dtype=np.int64)
    for j in range(width):
        windows = (windows << 1) | padded[j:j + bit_count]
    out = np.empty(count, dtype=np.int64)
    position = 0
    symbols, lens = table_symbol.tolist(), table_length.tolist()
    window_list = windows.tolist()
    for i in range(count):
        if position >= bit_count:
            raise FormatError("Huffman stream ends early")
        window = window_list[position]
        if not lens[window]:
            raise FormatError("Huffman stream holds an unused code")
        out[i] = symbols[window]
        position += lens[window]
    if position != bit_count:
        raise FormatError("Huffman stream has trailing bits")
    return out


def decoding_table(lengths, max_bits=MAX_CODE_BITS, complete=True):
    """(symbol, length) per value of the next ``width`` bits, and ``width``.
    With ``complete``, code lengths that leave a bit pattern no symbol's
    code starts with are refused, so every window decodes to a symbol and
    ``decode_stream`` needs no check per symbol. Otherwise (version 1, whose
    one-symbol streams have a 1-bit code) such entries have length 0."""
    lengths = np.asarray(lengths, dtype=np.int64)
    width = int(lengths.max(initial=0))
    if not width:
        raise FormatError("Huffman code with no symbols")
    if width > max_bits:
        raise FormatError(f"Huffman code lengths up to {width} bits (at most {max_bits})")
    order = canonical_order(lengths)
    spans = np.left_shift(1, width - lengths[order])
    filled = int(spans.sum())
    if filled > 1 << width:
        raise FormatError("Huffman code lengths are not a prefix code")
    if complete and filled < 1 << width:
        raise FormatError("Huffman code lengths leave bit patterns that are no symbol's code (an incomplete code)")
    table_symbol = np.zeros(1 << width, dtype=label_dtype(lengths.size))
    table_length = np.zeros(1 << width, dtype=np.uint8)
    table_symbol[:filled] = np.repeat(order, spans)
    table_length[:filled] = np.repeat(lengths[order], spans)
    return table_symbol, table_length, width


def _words(data, extra_bytes):
    """A big-endian uint64 starting at every byte of ``data`` (zero padded):
    an overlapping strided view, so gathering a window copies nothing else."""
    padded = np.zeros(len(data) + extra_bytes + 8, dtype=np.uint8)
    padded[:len(data)] = np.frombuffer(data, dtype=np.uint8)
    return np.ndarray(shape=(padded.size - 7,), dtype=">u8", buffer=padded, strides=(1,))


def decode_stream(data, count, lengths, chunk, offsets):
    """Decode ``count`` Huffman symbols from ``data``: chunks of ``chunk``
    symbols starting at bit ``offsets`` (the sync points; offsets[0] is 0),
    all decoded together. Raises FormatError when a chunk does not end where
    the next one starts, or the stream does not end in its last byte."""
    table_symbol, table_length, width = decoding_table(lengths)
    offsets = np.asarray(offsets, dtype=np.uint64)
    chunks = offsets.size
    if count == 0:
        return np.zeros(0, dtype=table_symbol.dtype)
    # Every symbol takes a bit or more: checked before anything is allocated.
    if count > 8 * len(data):
        raise FormatError(f"{count} symbols cannot fit in {len(data)} bytes")
    if chunks != -(-count // chunk) or offsets[0] != 0:
        raise FormatError("Huffman sync points do not fit the symbol count")
    steps = min(chunk, count)
    # Symbols per 64-bit read: a window starts at most 7 bits into the word.
    per_word = 4 if 4 * width + 7 <= 64 else 2
    rows = -(-steps // per_word) * per_word
    # The last chunk is shorter: it decodes past its end into zero padding.
    words = _words(data, (rows * width) // 8 + 8)
    if int(offsets[-1]) > 8 * len(data):
        raise FormatError("Huffman sync point past the end of the stream")
    out = np.empty((rows, chunks), dtype=table_symbol.dtype)
    position = offsets.copy()
    word, window = np.empty(chunks, dtype=np.uint64), np.empty(chunks, dtype=np.uint64)
    index = window.view(np.int64)  # < 2**width: numpy 1.x's take() refuses to cast uint64 indices
    length = np.empty(chunks, dtype=np.uint8)
    drop, three, seven = np.uint64(64 - width), np.uint64(3), np.uint64(7)
    last = count - (chunks - 1) * chunk
    last_end = None
    for row in range(0, rows, per_word):
        np.right_shift(position, three, out=window)
        np.left_shift(words[window], position & seven, out=word)  # (take() would copy the strided view)
        for j in range(per_word):
            np.right_shift(word, drop, out=window)
            table_symbol.take(index, out=out[row + j])
            table_length.take(index, out=length)
            position += length
            if j < per_word - 1:
                np.left_shift(word, length, out=word, casting="unsafe")
            if row + j == last - 1:
                last_end = int(position[-1])  # past here the last chunk decodes padding
            if row + j == steps - 1:
                ends = position.copy()  # past here every chunk decodes the next one's bits
    if chunks > 1 and not np.array_equal(ends[:-1], offsets[1:]):
        raise FormatError("Huffman chunk does not end at the next sync point")
    if not 8 * len(data) - 8 < last_end <= 8 * len(data):
        raise FormatError("Huffman stream does not end in its last byte")
    if data[-1] & ((1 << (8 * len(data) - last_end)) - 1):
        raise FormatError("Huffman stream's padding bits are not zero")
    return np.ascontiguousarray(out[:steps].T).reshape(-1)[:count]


def decode_fixed(data, count, width):
    """``count`` unsigned integers of ``width`` bits packed MSB first."""
    if len(data) != (count * width + 7) // 8:
        raise FormatError("fixed-width stream has the wrong length")
    if data and data[-1] & ((1 << (-count * width) % 8) - 1):
        raise FormatError("fixed-width stream's padding bits are not zero")
    out = np.empty(count, dtype=np.uint64 if width > 32 else label_dtype(1 << width))
    if not width:
        out[:] = 0
        return out
    words = _words(data, 8)
    for start, stop in chunk_bounds(count):
        position = np.arange(start, stop, dtype=np.uint64) * np.uint64(width)
        window = (words[position >> np.uint64(3)] << (position & np.uint64(7))) >> np.uint64(64 - width)
        out[start:stop] = window
    return out


class StreamWriter:
    """Huffman-codes symbols given slice by slice, noting the bit offset of
    every ``chunk``-th symbol (the sync points)."""

    def __init__(self, lengths, chunk):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.chunk = chunk
        self.writer = BitWriter(canonical_codes(self.lengths), self.lengths)
        self.count = 0
        self.bits = 0
        self.offsets = []

    def write(self, symbols):
        symbols = np.asarray(symbols)
        if not symbols.size:
            return
        lens = self.lengths.astype(np.uint8)[symbols]
        first = (-self.count) % self.chunk
        if first < symbols.size:
            before = self.bits + int(lens[:first].sum(dtype=np.int64))
            sums = np.add.reduceat(lens[first:], np.arange(0, symbols.size - first, self.chunk), dtype=np.int64)
            self.offsets.append(before + np.concatenate([[0], np.cumsum(sums[:-1])]))
            self.bits = int(before + sums.sum())
        else:
            self.bits += int(lens.sum(dtype=np.int64))
        self.writer.write(symbols)
        self.count += symbols.size

    def result(self):
        """(bytes, sync-point bit offsets)."""
        offsets = np.concatenate(self.offsets) if self.offsets else np.zeros(0, dtype=np.int64)
        return self.writer.getvalue(), offsets
