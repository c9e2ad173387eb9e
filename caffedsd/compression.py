"""Deep Compression storage (Han et al., ICLR 2016): pruning, weight sharing
by k-means, Huffman coding. Numpy only; the file format is in docs/FORMAT.md.

A prunable weight blob is stored as:
  - relative indices: for each kept weight, the number of positions skipped
    since the previous one, in a fixed width of ``index_bits``; a gap too
    large for it gets padding entries (a skip of 2^index_bits - 1 with the
    PAD symbol in place of a value), as in the paper;
  - shared values: each kept weight is an index into a per-layer codebook
    of 2^bits centroids found by k-means over the kept weights (linear
    initialization over [min, max], as in the paper). When the layer has no
    more distinct values than codes, the codebook is those values (exact);
  - both index streams Huffman coded (canonical codes; only the code
    lengths are stored).
Every other blob (biases, BatchNorm, ...) is stored exactly as float32.
"""
import hashlib
import heapq
import json
import struct
from dataclasses import dataclass

import numpy as np

from .errors import FormatError

MAGIC = b"CDSDDCZ\x00"
VERSION = 1
MAX_CODE_BITS = 24


# -- k-means weight sharing ----------------------------------------------------------

def kmeans_1d(values, clusters, iterations=100):
    """(codebook, assignment) of 1-D ``values`` into at most ``clusters`` centroids."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    distinct = np.unique(values)
    if distinct.size <= clusters:
        return distinct.astype(np.float32), np.searchsorted(distinct, values).astype(np.int64)
    centroids = np.linspace(values.min(), values.max(), clusters)
    order = np.argsort(values)
    ordered = values[order]
    prefix = np.concatenate([[0.0], np.cumsum(ordered)])
    for _ in range(iterations):
        bounds = np.searchsorted(ordered, (centroids[:-1] + centroids[1:]) / 2)
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [ordered.size]])
        counts = ends - starts
        sums = prefix[ends] - prefix[starts]
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(updated, centroids, rtol=0, atol=0):
            break
        centroids = updated
    codebook = centroids.astype(np.float32)
    # Assign to the nearest float32 centroid, so decoding gives these values.
    midpoints = (codebook[:-1].astype(np.float64) + codebook[1:]) / 2
    return codebook, np.searchsorted(midpoints, values).astype(np.int64)


# -- Huffman coding ----------------------------------------------------------------

def huffman_lengths(frequencies):
    """Optimal code length per symbol (0 for unused symbols)."""
    freq = np.asarray(frequencies, dtype=np.int64)
    used = np.flatnonzero(freq)
    lengths = np.zeros(freq.size, dtype=np.int64)
    if used.size == 1:
        lengths[used] = 1
        return lengths
    heap = [(int(freq[s]), n, [int(s)]) for n, s in enumerate(used)]
    heapq.heapify(heap)
    counter = len(heap)
    while len(heap) > 1:
        f1, _, s1 = heapq.heappop(heap)
        f2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (f1 + f2, counter, s1 + s2))
        counter += 1
    if lengths.max(initial=0) > MAX_CODE_BITS:
        # Flatten the distribution until the longest code fits (rare; not optimal).
        return huffman_lengths(np.where(freq > 0, (freq >> 1) + 1, 0))
    return lengths


def canonical_codes(lengths):
    """Canonical Huffman codes (ints) for code ``lengths``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.int64)
    code, previous = 0, 0
    for symbol in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        codes[symbol] = code
        code += 1
        previous = int(lengths[symbol])
    return codes


def huffman_encode(symbols, lengths):
    """Pack ``symbols`` with the canonical code of ``lengths``; (bytes, bit count)."""
    symbols = np.asarray(symbols, dtype=np.int64)
    codes, lens = canonical_codes(lengths)[symbols], np.asarray(lengths)[symbols]
    if symbols.size == 0:
        return b"", 0
    ends = np.cumsum(lens)
    starts = ends - lens
    bits = np.zeros(int(ends[-1]), dtype=np.uint8)
    for j in range(int(lens.max())):
        active = lens > j
        bits[starts[active] + j] = (codes[active] >> (lens[active] - 1 - j)) & 1
    return np.packbits(bits).tobytes(), int(ends[-1])


def huffman_decode(data, bit_count, count, lengths):
    """Decode ``count`` symbols from ``data`` (canonical code of ``lengths``)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    width = int(lengths.max())
    codes = canonical_codes(lengths)
    # A table indexed by the next ``width`` bits: symbol and its length.
    table_symbol = np.zeros(1 << width, dtype=np.int64)
    table_length = np.zeros(1 << width, dtype=np.int64)
    for symbol in np.flatnonzero(lengths):
        shift = width - int(lengths[symbol])
        start = int(codes[symbol]) << shift
        table_symbol[start:start + (1 << shift)] = symbol
        table_length[start:start + (1 << shift)] = lengths[symbol]
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
        out[i] = symbols[window]
        position += lens[window]
    if position != bit_count:
        raise FormatError("Huffman stream has trailing bits")
    return out


# -- one blob --------------------------------------------------------------------

def relative_indices(positions, index_bits):
    """(gaps, is_padding) for sorted flat ``positions`` of kept weights."""
    limit = (1 << index_bits) - 1
    gaps, padding = [], []
    raw = np.diff(np.concatenate([[-1], np.asarray(positions, dtype=np.int64)])) - 1
    if raw.size and raw.max() <= limit:
        return raw, np.zeros(raw.size, dtype=bool)
    for gap in raw.tolist():
        while gap > limit:
            gaps.append(limit)
            padding.append(True)
            gap -= limit + 1
        gaps.append(gap)
        padding.append(False)
    return np.asarray(gaps, dtype=np.int64), np.asarray(padding, dtype=bool)


def positions_from_gaps(gaps, padding):
    steps = np.asarray(gaps, dtype=np.int64) + 1
    ends = np.cumsum(steps) - 1
    return ends[~np.asarray(padding, dtype=bool)]


@dataclass(frozen=True)
class EncodedBlob:
    shape: tuple
    bits: int
    index_bits: int
    codebook: np.ndarray  # float32, at most 2^bits entries
    value_lengths: np.ndarray  # Huffman lengths over codebook indices + PAD (last)
    gap_lengths: np.ndarray  # Huffman lengths over gaps 0..2^index_bits - 1
    entries: int  # kept weights + padding entries
    kept: int
    value_stream: bytes
    value_bits: int
    gap_stream: bytes
    gap_bits: int


def encode_blob(weights, keep, bits, index_bits):
    """Encode one weight blob: keep (bool) marks the positions stored."""
    flat = np.asarray(weights, dtype=np.float32).reshape(-1)
    positions = np.flatnonzero(np.asarray(keep, dtype=bool).reshape(-1))
    codebook, assignment = kmeans_1d(flat[positions], 1 << bits) if positions.size else (
        np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64))
    gaps, padding = relative_indices(positions, index_bits)
    pad_symbol = codebook.size
    values = np.full(gaps.size, pad_symbol, dtype=np.int64)
    values[~padding] = assignment
    value_lengths = huffman_lengths(np.bincount(values, minlength=codebook.size + 1))
    gap_lengths = huffman_lengths(np.bincount(gaps, minlength=1 << index_bits))
    value_stream, value_bits = huffman_encode(values, value_lengths)
    gap_stream, gap_bits = huffman_encode(gaps, gap_lengths)
    return EncodedBlob(tuple(np.shape(weights)), bits, index_bits, codebook, value_lengths, gap_lengths,
                       int(gaps.size), int(positions.size), value_stream, value_bits, gap_stream, gap_bits)


def decode_blob(blob):
    values = huffman_decode(blob.value_stream, blob.value_bits, blob.entries, blob.value_lengths)
    gaps = huffman_decode(blob.gap_stream, blob.gap_bits, blob.entries, blob.gap_lengths)
    padding = values == blob.codebook.size
    positions = positions_from_gaps(gaps, padding)
    size = int(np.prod(blob.shape))
    if positions.size != blob.kept or (positions.size and positions[-1] >= size):
        raise FormatError("sparse indices do not fit the blob")
    out = np.zeros(size, dtype=np.float32)
    out[positions] = blob.codebook[values[~padding]]
    return out.reshape(blob.shape)


def quantized(weights, keep, bits):
    """The values a blob decodes to: kept weights replaced by their centroid."""
    flat = np.asarray(weights, dtype=np.float32).reshape(-1)
    positions = np.flatnonzero(np.asarray(keep, dtype=bool).reshape(-1))
    out = np.zeros(flat.size, dtype=np.float32)
    if positions.size:
        codebook, assignment = kmeans_1d(flat[positions], 1 << bits)
        out[positions] = codebook[assignment]
    return out.reshape(np.shape(weights))


# -- the container -----------------------------------------------------------------

def pack(header, sections):
    """MAGIC, version, header length, JSON header, sections, sha256 of all before."""
    header = dict(header)
    offsets, position = [], 0
    for section in sections:
        offsets.append([position, len(section)])
        position += len(section)
    header["sections"] = offsets
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    body = MAGIC + struct.pack("<HI", VERSION, len(head)) + head + b"".join(sections)
    return body + hashlib.sha256(body).digest()


def unpack(data):
    """(header, [section bytes]) of a .dcz file's bytes; FormatError if bad."""
    if len(data) < len(MAGIC) + 6 + 32 or data[:len(MAGIC)] != MAGIC:
        raise FormatError("not a caffedsd .dcz file (bad magic number)")
    version, head_len = struct.unpack_from("<HI", data, len(MAGIC))
    if version > VERSION:
        raise FormatError(f"format version {version} is newer than this caffedsd reads ({VERSION})")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise FormatError("checksum mismatch: the file is truncated or corrupted")
    start = len(MAGIC) + 6
    header = json.loads(body[start:start + head_len].decode("utf-8"))
    payload = body[start + head_len:]
    return header, [payload[offset:offset + length] for offset, length in header["sections"]]
