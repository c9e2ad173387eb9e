"""Deep Compression storage: coding units, round trips of both format
versions, stock caffe, bad input."""
import dataclasses
import hashlib
import heapq
import json
import math
import shutil
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from caffedsd.atomic import atomic_open
from caffedsd.caffe_proto import LayerParameter, NetParameter
from caffedsd.caffemodel import new_caffemodel, read_caffemodel
from caffedsd.coding import (MAX_CODE_BITS, StreamWriter, assign_labels, canonical_codes, decode_stream,
                             huffman_decode, huffman_encode, huffman_lengths, kmeans_1d, positions_from_gaps,
                             quantized, relative_indices, share_values, share_weights, shared_codebook)
from caffedsd.dcz import (BLOB_FLOATS, BLOB_SHARED, HEADER_DICTIONARY, MAGIC, _header, _read_header, compress,
                          parse_bits, read_dcz)
from caffedsd.dcz_blobs import LayerSizes, Reader, decode_floats, decode_shared, encode_floats, encode_shared
from caffedsd.errors import FormatError, InputError
from caffedsd.layers import PRUNABLE_TYPES
from caffedsd.masks import chunk_bounds
from caffedsd.wire import encode_varint
from caffedsd.report import compression_table
from caffedsd.weight_sharing import cluster
from conftest import OTHER_NET, ROOT, assert_one_line_error, save_net

LENET_ZOO = ROOT.parent / "shared" / "modelzoo" / "lenet_mnist"


# -- version 1 files, as caffedsd 0.1 wrote them (the reader must still decode them) --

def _v1_pack(header, sections):
    header = dict(header)
    offsets, position = [], 0
    for section in sections:
        offsets.append([position, len(section)])
        position += len(section)
    header["sections"] = offsets
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    body = MAGIC + struct.pack("<HI", 1, len(head)) + head + b"".join(sections)
    return body + hashlib.sha256(body).digest()


def write_v1(weights, output, bits, index_bits):
    """A version 1 .dcz file, as caffedsd 0.1 wrote it (kept so tests can make one)."""
    model = read_caffemodel(weights)
    layers_meta, sections = [], []

    def section(data):
        sections.append(bytes(data))
        return len(sections) - 1

    for layer in [layer for layer in model.layers if layer.blobs]:
        meta = {"name": layer.name, "param": section(layer.param.SerializeToString()), "blobs": []}
        for index, blob in enumerate(layer.blobs):
            data = np.asarray(blob.data, dtype=np.float32)
            if index == 0 and layer.type in PRUNABLE_TYPES:
                meta["blobs"].append(_v1_blob_fields(data, data != 0, bits, index_bits, section))
            else:
                meta["blobs"].append({"kind": "raw", "shape": list(data.shape),
                                      "data": section(data.astype("<f4").tobytes())})
        layers_meta.append(meta)
    with atomic_open(output) as handle:
        handle.write(_v1_pack({"format": "caffedsd-dcz", "name": model.name, "source": Path(weights).name,
                               "layers": layers_meta}, sections))


def _v1_blob_fields(data, keep, bits, index_bits, section):
    positions = np.flatnonzero(keep.reshape(-1))
    codebook, assignment = share_values(data.reshape(-1)[positions], bits) if positions.size else (
        np.zeros(0, np.float32), np.zeros(0, np.int64))
    gaps, padding = relative_indices(positions, index_bits)
    values = np.full(gaps.size, codebook.size, dtype=np.int64)
    values[~padding] = assignment
    value_lengths = huffman_lengths(np.bincount(values, minlength=codebook.size + 1))
    gap_lengths = huffman_lengths(np.bincount(gaps, minlength=1 << index_bits))
    value_stream, value_bits = huffman_encode(values, value_lengths)
    gap_stream, gap_bits = huffman_encode(gaps, gap_lengths)
    return {"kind": "dc", "shape": list(data.shape), "bits": bits, "index_bits": index_bits,
            "entries": int(gaps.size), "kept": int(positions.size),
            "codebook": section(codebook.astype("<f4").tobytes()),
            "value_lengths": section(zlib.compress(value_lengths.astype(np.uint8).tobytes(), 9)),
            "gap_lengths": section(zlib.compress(gap_lengths.astype(np.uint8).tobytes(), 9)),
            "values": section(value_stream), "value_bits": value_bits,
            "gaps": section(gap_stream), "gap_bits": gap_bits}


def test_huffman_lengths_are_optimal_on_a_known_distribution():
    # The textbook example: a:45 b:13 c:12 d:16 e:9 f:5 -> 1 3 3 3 4 4 bits, 224 bits in all.
    freq = [45, 13, 12, 16, 9, 5]
    lengths = huffman_lengths(freq)
    assert lengths.tolist() == [1, 3, 3, 3, 4, 4]
    assert int(np.dot(freq, lengths)) == 224
    assert huffman_lengths([0, 7, 0]).tolist() == [0, 1, 0]


def test_canonical_codes_are_prefix_free_and_round_trip():
    lengths = huffman_lengths([45, 13, 12, 16, 9, 5])
    codes = canonical_codes(lengths)
    assert codes.tolist() == [0b0, 0b100, 0b101, 0b110, 0b1110, 0b1111]
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths)]
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    symbols = np.random.default_rng(1).integers(0, 6, size=500)
    data, bits = huffman_encode(symbols, lengths)
    assert bits == int(lengths[symbols].sum())
    # The bits themselves: each symbol's code, most significant bit first.
    expected = "".join(words[s] for s in symbols)
    assert np.unpackbits(np.frombuffer(data, np.uint8))[:bits].tolist() == [int(c) for c in expected]
    assert np.array_equal(huffman_decode(data, bits, 500, lengths), symbols)


def test_lengths_are_limited_to_the_maximum():
    fibonacci = [1, 1]
    while len(fibonacci) < 30:
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    assert huffman_lengths(fibonacci[:MAX_CODE_BITS + 1]).max() == MAX_CODE_BITS  # exactly the maximum
    limited = huffman_lengths(fibonacci)  # unlimited, it would need 29 bits
    assert limited.max() <= MAX_CODE_BITS and np.sum(2.0 ** -limited) == 1.0  # still a complete prefix code


def _heap_lengths(freq, max_bits):
    """Huffman code lengths as caffedsd built them until 0.3: a heap keyed by
    (count, creation order), every merge adding 1 to its symbols; counts
    halved and the code built again while a code is too long."""
    freq = np.asarray(freq, dtype=np.int64)
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
        lengths[s1 + s2] += 1
        heapq.heappush(heap, (f1 + f2, counter, s1 + s2))
        counter += 1
    if lengths.max() > max_bits:
        return _heap_lengths(np.where(freq > 0, (freq >> 1) + 1, 0), max_bits)
    return lengths


@pytest.mark.parametrize("seed", range(6))
def test_huffman_lengths_are_those_every_earlier_file_was_written_with(seed):
    # Optimal codes are not unique: ties must go the way the heap took them,
    # or the same input would compress to other bytes. Many ties here, and
    # codes long enough that 7 bits is a limit that binds.
    rng = np.random.default_rng(seed)
    for _ in range(40):
        size = int(rng.integers(2, 400))
        freq = [rng.integers(0, 4, size), rng.integers(0, 60, size) ** 3,
                (2 ** rng.integers(0, 30, size)) * rng.integers(0, 2, size)][seed % 3]
        if np.count_nonzero(freq) < 2:
            continue
        for max_bits in (7, 12, MAX_CODE_BITS):
            if np.count_nonzero(freq) <= 1 << max_bits:
                lengths = huffman_lengths(freq, max_bits)
                assert np.array_equal(lengths, _heap_lengths(freq, max_bits))
                assert lengths.max() <= max_bits and np.sum(2.0 ** -lengths[lengths > 0]) == 1.0


def test_large_alphabets_are_coded_quickly():
    flat = huffman_lengths(np.ones(1 << 16, dtype=np.int64))
    assert (flat == 16).all()  # 2^16 equal counts: 16 bits each
    one_more = huffman_lengths(np.ones((1 << 16) + 1, dtype=np.int64))
    assert np.bincount(one_more).tolist() == [0] * 16 + [(1 << 16) - 1, 2]
    # A geometric histogram over 2^16 symbols (the gaps of a 50%-pruned
    # layer): unlimited, codes reach 60 bits. It was many seconds per call.
    geometric = (1 << 60) >> np.minimum(np.arange(1 << 16), 59)
    start = time.perf_counter()
    lengths = huffman_lengths(geometric)
    assert time.perf_counter() - start < 5
    assert lengths.max() == MAX_CODE_BITS and np.sum(2.0 ** -lengths) == 1.0
    assert lengths[:2].tolist() == [1, 2]


def _random_stream(rng, longest):
    """Shuffled symbols: with ``longest``, Fibonacci counts, whose Huffman code
    has lengths 1..MAX_CODE_BITS; else random counts over a random alphabet."""
    if longest:
        fibonacci = [1, 1]
        while len(fibonacci) < MAX_CODE_BITS + 1:
            fibonacci.append(fibonacci[-1] + fibonacci[-2])
        freq = np.array(fibonacci + [0] * int(rng.integers(0, 5)))
    else:
        freq = rng.integers(0, 50, int(rng.integers(2, 300))) ** int(rng.integers(1, 4))
        freq[rng.integers(0, freq.size, 2)] += 1
    symbols = np.repeat(np.arange(freq.size), freq)
    rng.shuffle(symbols)
    return (symbols if longest else symbols[:int(rng.integers(1, min(symbols.size, 20000) + 1))]), freq.size


@pytest.mark.parametrize("seed", range(12))
def test_vectorized_decoder_matches_the_reference_decoder(seed):
    rng = np.random.default_rng(seed)
    symbols, alphabet = _random_stream(rng, MAX_CODE_BITS if seed % 3 == 0 else 0)
    lengths = huffman_lengths(np.bincount(symbols, minlength=alphabet))
    if seed % 3 == 0:
        assert lengths.max() == MAX_CODE_BITS
    chunk = int(rng.choice([1, 2, 7, 64, 1000, 1 << 20]))
    writer = StreamWriter(lengths, chunk)
    cuts = sorted({0, symbols.size, *rng.integers(0, symbols.size, 3).tolist()})
    for start, stop in zip(cuts[:-1], cuts[1:]):  # written slice by slice, as compress does
        writer.write(symbols[start:stop])
    data, offsets = writer.result()
    assert offsets.size == -(-symbols.size // chunk) and offsets[0] == 0
    reference = huffman_decode(data, writer.bits, symbols.size, lengths)
    assert np.array_equal(reference, symbols)
    assert np.array_equal(decode_stream(data, symbols.size, lengths, chunk, offsets), symbols)


def test_vectorized_decoder_refuses_a_wrong_sync_point():
    symbols = np.random.default_rng(3).integers(0, 5, size=100)
    lengths = huffman_lengths(np.bincount(symbols))
    writer = StreamWriter(lengths, 10)
    writer.write(symbols)
    data, offsets = writer.result()
    offsets[4] += 1
    with pytest.raises(FormatError, match="sync point"):
        decode_stream(data, symbols.size, lengths, 10, offsets)


def test_chunk_bounds_cover_the_range():
    assert list(chunk_bounds(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(chunk_bounds(0, 4)) == []


def test_relative_indices_pad_large_gaps():
    positions = np.array([0, 3, 40])  # gaps 0, 2, 36 with 3-bit indices (max 7)
    gaps, padding = relative_indices(positions, 3)
    # 36 = 4 pads of 8 positions + 4 -> [0, 2, 7, 7, 7, 7, 4]
    assert gaps.tolist() == [0, 2, 7, 7, 7, 7, 4]
    assert padding.tolist() == [False, False, True, True, True, True, False]
    assert positions_from_gaps(gaps, padding).tolist() == [0, 3, 40]


def test_kmeans_linear_init_and_exact_codebook():
    values = np.array([0.1, 0.11, 0.5, 0.52, 0.9, 0.95])
    codebook, labels = kmeans_1d(values, 3)
    assert np.allclose(codebook, [0.105, 0.51, 0.925], atol=1e-6)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    codebook, labels = kmeans_1d([3.0, -1.0, 3.0], 4)  # fewer distinct values than codes: exact
    assert codebook.tolist() == [-1.0, 3.0] and labels.tolist() == [1, 0, 1]


def test_kmeans_is_exact_up_to_as_many_distinct_values_as_clusters():
    assert kmeans_1d([10.0, 0.0, 1.0, 1.0], 3)[0].tolist() == [0.0, 1.0, 10.0]
    # One more distinct value: Lloyd from [0, 5.5, 11]; nothing is near 5.5.
    codebook, labels = kmeans_1d([0.0, 1.0, 10.0, 11.0], 3)
    assert codebook.tolist() == [0.5, 5.5, 10.5] and labels.tolist() == [0, 0, 2, 2]


def _lloyd_reference(values, clusters, iterations=100):
    """Lloyd's iterations spelled out: exact sums (math.fsum), nothing kept
    between iterations."""
    ordered = np.sort(np.asarray(values, dtype=np.float32))
    if np.unique(ordered).size <= clusters:
        return np.unique(ordered)
    centroids = np.linspace(float(ordered[0]), float(ordered[-1]), clusters)
    for _ in range(iterations):
        midpoints = (centroids[:-1] + centroids[1:]) / 2
        groups = np.split(ordered, np.searchsorted(ordered, midpoints, side="right"))
        updated = np.array([math.fsum(g.tolist()) / g.size if g.size else c for g, c in zip(groups, centroids)])
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    return centroids.astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_kmeans_equals_plain_lloyd_iterations(seed):
    # Multiples of 1/64 below 2^10: every float64 sum is exact, so the block
    # sums, the sums kept between iterations and the reference agree to the bit.
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(scale=200, size=int(rng.integers(50, 6000)))) / 64
    for clusters in (1, 2, 5, 64, 300, 4096):
        codebook, labels = kmeans_1d(values, clusters)
        assert np.array_equal(codebook, _lloyd_reference(values, clusters))
        assert np.array_equal(labels, assign_labels(values.astype(np.float32), codebook, None))


def test_distinct_values_by_slices_are_np_unique():
    from caffedsd.coding import _distinct

    rng = np.random.default_rng(5)
    ordered = np.sort(rng.integers(0, 40, size=1000)).astype(np.float32)  # runs of ~25 across slices of 97
    unique = np.unique(ordered)
    for chunk in (None, 1, 25, 97):
        assert np.array_equal(_distinct(ordered, unique.size - 1, chunk), unique), chunk
        assert np.array_equal(_distinct(ordered, 1000, chunk), unique), chunk
        assert _distinct(ordered, unique.size - 2, chunk) is None, chunk
    assert _distinct(ordered[:1], 0, 97).tolist() == ordered[:1].tolist()


def test_shared_codebook_counts_the_labels_share_values_gives():
    rng = np.random.default_rng(9)
    values = np.concatenate([rng.normal(size=3000), [40.0, -40.0]]).astype(np.float32)  # far outliers: unused centroids
    dropped = []
    for bits in (1, 3, 6, 10):
        codebook, labels = share_values(values, bits)
        full, _ = kmeans_1d(values, 1 << bits)
        used = np.unique(full[assign_labels(values, full, None)])
        assert np.array_equal(codebook, used)
        dropped.append(full.size - codebook.size)
        assert np.array_equal(codebook[labels], full[assign_labels(values, full, None)])  # no value moved
        sorted_codebook, counts = shared_codebook(np.sort(values), bits)
        assert np.array_equal(sorted_codebook, codebook)
        assert np.array_equal(counts, np.bincount(labels, minlength=codebook.size))
    assert dropped[0] == 0 and min(dropped[1:]) > 0  # the outliers leave centroids unused


def test_weight_sharing_drops_unused_centroids_and_is_computed_once():
    # Linear init over [0, 10] with 4 centroids (0, 3.33, 6.67, 10): nothing is near 3.33 or 6.67.
    w = np.array([[0.0, 0.1, 0.2, 9.8], [9.9, 10.0, 0.0, 0.3]], dtype=np.float32)
    shared = share_weights(w, w != 0, 2)
    assert shared.codebook.tolist() == pytest.approx([0.2, 9.9])
    assert shared.positions.tolist() == [1, 2, 3, 4, 5, 7]
    assert shared.labels.tolist() == [0, 0, 1, 1, 1, 0]
    labels, codebook = cluster(w, w != 0, 2)  # trained quantization's clusters: the same k-means
    assert np.array_equal(codebook, shared.codebook)
    assert labels.tolist() == [-1, 0, 0, 1, 1, 1, -1, 0]
    assert quantized(w, w != 0, 2)[0].tolist() == pytest.approx([0.0, 0.2, 0.2, 9.9])


def _round_trip(weights, keep, bits, index_bits=None):
    sizes = LayerSizes("x")
    payload = encode_shared(weights, keep, bits, index_bits, sizes)
    reader = Reader(payload)
    decoded = decode_shared(reader, weights.shape)
    assert reader.pos == len(payload)
    return decoded, sizes


def test_blob_round_trip_equals_the_quantized_weights():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(20, 30)).astype(np.float32)
    keep = np.abs(w) > 1.0
    for bits, index_bits in ((4, 3), (6, 8), (2, 1), (5, None), (16, None)):
        decoded, sizes = _round_trip(w * keep, None, bits, index_bits)
        assert np.array_equal(decoded, quantized(w, keep, bits))
        assert np.count_nonzero(decoded[~keep]) == 0
        assert len(np.unique(decoded[keep])) <= 2 ** bits
        assert sizes.kept == keep.sum() and sizes.codebook == len(np.unique(decoded[keep]))
    # A mask keeps fewer than the non-zeros.
    decoded, _ = _round_trip(w, keep, 3)
    assert np.array_equal(decoded, quantized(w, keep & (w != 0), 3))


def test_round_trip_is_exact_when_the_bits_hold_every_value():
    w = np.random.default_rng(2).choice([-0.5, 0.25, 1.5], size=(7, 9)).astype(np.float32)
    w[0, :4] = 0
    assert np.array_equal(_round_trip(w, None, 2, 5)[0], w)
    empty = np.zeros((3, 4), dtype=np.float32)
    assert np.array_equal(_round_trip(empty, None, 4)[0], empty)


def test_index_width_is_chosen_by_size():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(200, 300)).astype(np.float32)
    w[rng.random(w.shape) > 0.05] = 0  # 5% kept: gaps average 19
    auto, sizes = _round_trip(w, None, 4)
    payloads = {b: len(encode_shared(w, None, 4, b, LayerSizes("x"))) for b in range(1, 12)}
    assert sizes.index_bits == min(payloads, key=payloads.get)
    assert np.array_equal(auto, quantized(w, w != 0, 4))


def test_shared_blobs_are_the_bytes_earlier_versions_wrote():
    # sha256 of encode_shared's payloads as caffedsd 0.3 wrote them (before
    # Huffman codes were built with two queues and k-means kept its sums
    # between iterations): the same input must give the same file.
    rng = np.random.default_rng(2016)
    w = (rng.standard_normal((300, 700)) * 0.02).astype(np.float32)
    w[rng.random(w.shape) < 0.6] = 0
    w[5, :] = 0  # a long gap
    keep = rng.random(w.shape) < 0.9
    expected = {(4, None, False): "2302cae72f566969", (8, None, True): "5aeb33f1fccab6d5",
                (12, None, False): "14df70d54141ac91", (16, None, True): "ca5313da153b7bbd",
                (5, 3, False): "428c8168955ddade", (16, 2, False): "6d75c45667f21acf"}
    for (bits, index_bits, masked), digest in expected.items():
        payload = encode_shared(w, keep if masked else None, bits, index_bits, LayerSizes("x"))
        assert hashlib.sha256(payload).hexdigest()[:16] == digest, (bits, index_bits, masked)


def test_index_width_search_plans_each_value_histogram_once():
    import caffedsd.dcz_blobs as blobs

    planned = []
    plan_stream = blobs.plan_stream

    def counting(freq):
        planned.append(np.asarray(freq).tolist())
        return plan_stream(freq)

    # Gaps 1 (5 times), 2 (3 times) and 4 (twice); padding entries by width:
    # 1 bit: 3 * 1 + 2 * 2 = 7; 2 bits: 2; 3 bits and up: none.
    gap_hist, value_hist, none = np.array([0, 5, 3, 0, 2]), np.array([4, 6, 1, 1, 1]), np.zeros(0, np.int64)
    size, width, pads, _, _ = blobs._stream_plans(gap_hist, none, value_hist, range(1, 9), plan=counting)
    assert [p for p in planned if len(p) in (5, 6)] == [[4, 6, 1, 1, 1, 7], [4, 6, 1, 1, 1, 2], [4, 6, 1, 1, 1]]
    assert len(planned) == 3 + 8  # and one gap histogram per width
    # 2 bits: each gap of 4 is a padding entry (coded 3) and an entry of gap 0.
    assert blobs._gap_freq(gap_hist, np.zeros(0, np.int64), 2)[0].tolist() == [2, 5, 3, 2]
    direct = {w: plan_stream(blobs._gap_freq(gap_hist, none, w)[0])[1]
              + plan_stream(np.append(value_hist, p) if p else value_hist)[1]
              for w, p in zip(range(1, 9), [7, 2] + [0] * 6)}
    assert size == min(direct.values()) and width == min(direct, key=direct.get)
    assert pads == {1: 7, 2: 2}.get(width, 0)


def test_floats_are_exact_in_every_coding():
    rng = np.random.default_rng(4)
    cases = [rng.normal(size=500).astype(np.float32), np.sort(rng.normal(size=40)).astype(np.float32),
             np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-45, 3.0, -2.5], dtype=np.float32),
             np.full(100, 0.25, dtype=np.float32), np.array([1.5], dtype=np.float32)]
    for values in cases:
        data = encode_floats(values)
        reader = Reader(data)
        back = decode_floats(reader, values.size)
        assert reader.pos == len(data) and back.tobytes() == values.tobytes()
    assert len(encode_floats(np.full(100, 0.25, np.float32))) < 20  # one repeated value: four constant planes


def _prune(cli, weights, out, *rates):
    args = [a for rate in rates for a in ("-r", rate)]
    result = cli("prune", "-w", weights, *args, "-o", out)
    assert result.exit_code == 0, result.output


def test_compress_decompress_lenet_in_stock_caffe(lenet, tmp_path, cli):
    _, proto, weights = lenet
    assert cli("prune", "-w", weights, "-s", 0.8, "-o", "p.caffemodel").exit_code == 0
    result = cli("compress", "-w", "p.caffemodel", "--bits", "conv=8,fc=5", "-o", "p.dcz")
    assert result.exit_code == 0, result.output
    assert "total" in result.output and "after Huffman" in result.output and "P+Q+H B" in result.output
    # The table's total and the container make the file's size.
    total = [line for line in result.output.splitlines() if line.startswith("total")][0].split()
    container = int(result.output.split("bytes (")[1].split()[0])
    assert int(total[-2]) + container == (tmp_path / "p.dcz").stat().st_size
    assert (tmp_path / "p.dcz").stat().st_size * 10 < (tmp_path / "p.caffemodel").stat().st_size
    result = cli("decompress", "p.dcz", "-p", proto, "-o", "back.caffemodel")
    assert result.exit_code == 0, result.output
    source, back = read_caffemodel(tmp_path / "p.caffemodel"), read_caffemodel(tmp_path / "back.caffemodel")
    for layer in source.layers:
        if not layer.blobs:
            continue
        w = layer.blobs[0].data
        bits = 5 if layer.type == "InnerProduct" else 8
        assert np.array_equal(back.layer(layer.name).blobs[0].data, quantized(w, w != 0, bits))
        for a, b in zip(layer.blobs[1:], back.layer(layer.name).blobs[1:]):
            assert np.array_equal(a.data, b.data)  # biases exact
    from caffedsd.verify import parse_test_outputs, run_caffe_test

    code, log = run_caffe_test(proto, tmp_path / "back.caffemodel", iterations=5)
    assert code == 0 and parse_test_outputs(log)["accuracy"] > 0.5


def test_version_1_files_still_decode(lenet, tmp_path, cli):
    _, proto, weights = lenet
    assert cli("prune", "-w", weights, "-s", 0.8, "-o", "p.caffemodel").exit_code == 0
    write_v1(tmp_path / "p.caffemodel", tmp_path / "old.dcz", 5, 5)
    data = (tmp_path / "old.dcz").read_bytes()
    assert struct.unpack_from("<H", data, 8)[0] == 1 and b'"format":"caffedsd-dcz"' in data
    assert cli("compress", "-w", "p.caffemodel", "--bits", 5, "-o", "new.dcz").exit_code == 0
    assert struct.unpack_from("<H", (tmp_path / "new.dcz").read_bytes(), 8)[0] == 2
    result = cli("decompress", "old.dcz", "-p", proto, "-o", "old.caffemodel")
    assert result.exit_code == 0, result.output
    assert cli("decompress", "new.dcz", "-p", proto, "-o", "new.caffemodel").exit_code == 0
    old, new = read_caffemodel(tmp_path / "old.caffemodel"), read_caffemodel(tmp_path / "new.caffemodel")
    source = read_caffemodel(tmp_path / "p.caffemodel")
    for layer in source.layers:
        for index, blob in enumerate(layer.blobs):
            expected = quantized(blob.data, blob.data != 0, 5) if index == 0 else blob.data
            assert np.array_equal(old.layer(layer.name).blobs[index].data, expected)
            assert np.array_equal(new.layer(layer.name).blobs[index].data, expected)
    assert read_dcz(tmp_path / "old.dcz")[1] == "LeNet"
    truncated = data[:-100]
    (tmp_path / "cut1.dcz").write_bytes(truncated)
    assert_one_line_error(cli("decompress", "cut1.dcz", "-o", "x.caffemodel"), "checksum mismatch")
    # Given where a caffemodel goes, it was "not a caffemodel, or truncated (unsupported wire type 3 at byte 0)".
    for command in (("stats",), ("prune", "-s", 0.5, "-o", "x.caffemodel"), ("compress", "-o", "x.dcz")):
        assert_one_line_error(cli(command[0], "-w", "new.dcz", *command[1:]),
                              "new.dcz: a .dcz file of `caffedsd compress`, not a caffemodel; `caffedsd decompress "
                              "new.dcz -o OUT.caffemodel` makes one")


def test_non_utf8_layer_names(tmp_path, cli):
    """caffemodel.py refuses a layer name that is not UTF-8 (one line, nothing
    written); the table prints such a name escaped and the header carries its
    bytes (decompress then refuses it: test_names_are_utf8_both_ways)."""
    name = b"ip\xff1"
    param = LayerParameter.FromString(LayerParameter(type="InnerProduct", bottom=["data"], top=["ip"])
                                      .SerializeToString() + b"\n" + bytes([len(name)]) + name)
    w = np.where(np.arange(128).reshape(8, 16) % 3 == 0, 0.5, 0).astype(np.float32)
    new_caffemodel(tmp_path / "odd.caffemodel", [(param, [w, np.ones(8, np.float32)])], name="odd")
    assert_one_line_error(cli("compress", "-w", "odd.caffemodel", "--bits", 3, "-o", "odd.dcz"), "not UTF-8")
    assert not (tmp_path / "odd.dcz").exists()
    sizes = LayerSizes(name, dense=4, stored=2)
    assert "ip\\xff1" in compression_table([sizes])
    header = _header(b"odd", [(param.SerializeToString(), [(BLOB_SHARED, w.shape), (BLOB_FLOATS, (8,))])])
    assert _read_header(header) == (b"odd", [(param.SerializeToString(), [(BLOB_SHARED, (8, 16)),
                                                                          (BLOB_FLOATS, (8,))])])


def test_the_table_counts_bits_per_kept_weight_before_huffman_too():
    """The columns before Huffman were the code widths, those after it per
    kept weight, padding entries included: 4,000 weights with 200,993
    entries read as 2 -> 51.99 bits, Huffman seemingly 25 times worse."""
    # 10 kept weights, 40 entries (30 of them padding): 3-bit codes and
    # 2-bit indices are 12 and 8 bits per kept weight.
    sizes = LayerSizes("ip", dense=400, stored=20, before_huffman=30, weights=100, kept=10, entries=40, bits=3,
                       index_bits=2, value_bits=60, index_stream_bits=50, shared=True)
    row = compression_table([sizes]).splitlines()[2].split()
    assert row[:6] == ["ip", "10.0%", "12.00", "6.00", "8.00", "5.00"]


def test_tiny_net_has_a_small_fixed_cost(tiny, tmp_path, cli):
    _, weights = tiny
    _prune(cli, weights, "p.caffemodel", "conv1=0.5", "fc1=0.5", "fc2a=0.5")
    rows, container = compress(tmp_path / "p.caffemodel", tmp_path / "p.dcz", {"conv": 8, "fc": 8})
    size = (tmp_path / "p.dcz").stat().st_size
    assert size == container + sum(r.stored for r in rows)
    # Magic, version, checksum and the deflated layer list: well under the 1.2 KB of version 1.
    assert container < 200, container


def test_bits_for_one_kind_leave_the_other_at_its_default(tiny, tmp_path, cli):
    """--bits fc=1 names only the fc layers: conv keeps its 8 bits, as a
    kind --index-bits leaves out keeps auto."""
    assert parse_bits("fc=4") == {"conv": 8, "fc": 4}
    assert parse_bits("conv=3") == {"conv": 3, "fc": 5}
    assert parse_bits("conv=3", "--index-bits", auto=True) == {"conv": 3}
    with pytest.raises(InputError, match="--bits 'conv=8,fc=5,conv=4': conv is given twice"):
        parse_bits("conv=8,fc=5,conv=4")
    _, weights = tiny
    result = cli("compress", "-w", weights, "--bits", "fc=1", "-o", "t.dcz")
    assert result.exit_code == 0, result.output
    assert cli("decompress", "t.dcz", "-o", "back.caffemodel").exit_code == 0
    source, back = read_caffemodel(weights), read_caffemodel(tmp_path / "back.caffemodel")
    # conv1's 36 distinct weights fit 2^8 codes: exact. 1 bit: two values per fc layer.
    assert np.array_equal(back.layer("conv1").blobs[0].data, source.layer("conv1").blobs[0].data)
    for name in ("fc1", "fc2a", "fc2b"):
        assert len(np.unique(back.layer(name).blobs[0].data)) == 2, name


def test_a_prototxt_that_does_not_fit_names_the_dcz_file(tiny, tmp_path, cli):
    _, weights = tiny
    assert cli("compress", "-w", weights, "-o", "t.dcz").exit_code == 0
    (tmp_path / "other.prototxt").write_text(OTHER_NET)
    result = cli("decompress", "t.dcz", "-p", "other.prototxt", "-o", "m.caffemodel")
    assert_one_line_error(result, "other.prototxt does not match t.dcz: layers with no weights in t.dcz "
                                  "(Caffe would leave them at their initial values): ip1")
    assert ".tmp" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.caffemodel", "net.prototxt", "other.prototxt", "t.dcz"]


def test_a_decompressed_model_takes_away_the_masks_of_the_one_it_replaces(tiny, tmp_path, cli):
    """Left beside the new model, an earlier prune's masks would be taken
    for its own: prune would prune what they prune, verify would fail."""
    _, weights = tiny
    _prune(cli, weights, "m.caffemodel", "conv1=0.9")
    assert (tmp_path / "m.masks.h5").is_file()
    assert cli("compress", "-w", weights, "-o", "t.dcz").exit_code == 0
    assert cli("decompress", "t.dcz", "-o", "m.caffemodel").exit_code == 0
    assert not (tmp_path / "m.masks.h5").exists()
    assert cli("verify", "-w", "m.caffemodel").exit_code == 0
    # -o m: m.masks.h5 is the name of m.caffemodel's masks too, a model not
    # replaced, which the next read of m would take for m's.
    _prune(cli, weights, "m.caffemodel", "conv1=0.9")
    assert_one_line_error(cli("decompress", "t.dcz", "-o", "m"), "m: its masks file would be m.masks.h5, which is "
                          "that of m.caffemodel beside it; name the output m.caffemodel, or another name")
    assert_one_line_error(cli("prune", "-w", weights, "-s", 0.5, "-o", "m"), "m: its masks file would be m.masks.h5")
    assert (tmp_path / "m.masks.h5").is_file() and cli("verify", "-w", "m.caffemodel").exit_code == 0
    assert not (tmp_path / "m").exists()
    # The other way round: -o m.caffemodel beside a model m replaced m's
    # masks (prune) or took them away (decompress), without --force.
    (tmp_path / "m.caffemodel").rename(tmp_path / "m")
    before = (tmp_path / "m.masks.h5").read_bytes()
    for command in (("decompress", "t.dcz", "-o", "m.caffemodel"),
                    ("prune", "-w", weights, "-s", 0.5, "-o", "m.caffemodel")):
        assert_one_line_error(cli(*command), "m.caffemodel: its masks file would be m.masks.h5, which is that of m "
                                             "beside it; name the output m, or another name")
    assert (tmp_path / "m.masks.h5").read_bytes() == before and cli("verify", "-w", "m").exit_code == 0
    assert not (tmp_path / "m.caffemodel").exists()
    (tmp_path / "n").mkdir()  # a folder is no model
    assert cli("decompress", "t.dcz", "-o", "n.caffemodel").exit_code == 0
    (tmp_path / "notes").write_text("notes\n")  # nor a file whose masks file there is none
    assert cli("prune", "-w", weights, "-s", 0.5, "-o", "notes.caffemodel").exit_code == 0


def test_no_output_replaces_the_masks_file_of_a_model_beside_it(caffe, tiny, tmp_path, cli):
    """-o m.masks.h5 beside m.caffemodel wrote a caffemodel (or a .dcz, a
    plan) over m's masks, without --force: m's masks were lost, and every
    command on m then failed on an unreadable masks file."""
    proto, weights = tiny
    _prune(cli, weights, "m.caffemodel", "conv1=0.9")
    assert cli("compress", "-w", weights, "-o", "t.dcz").exit_code == 0
    caffe.Net(str(proto), str(weights), caffe.TEST).save_hdf5(str(tmp_path / "w.caffemodel.h5"))
    before = (tmp_path / "m.masks.h5").read_bytes()
    for command in (("prune", "-w", weights, "-s", 0.5, "-o", "m.masks.h5"),
                    ("decompress", "t.dcz", "-o", "m.masks.h5", "--force"),
                    ("compress", "-w", weights, "-o", "m.masks.h5"),
                    ("convert", "-w", "w.caffemodel.h5", "-p", proto, "-o", "m.masks.h5")):
        result = cli(*command)
        assert result.exit_code == 2, (command, result.output)
        assert result.output.strip().endswith("m.masks.h5: is the masks file of m.caffemodel beside it, which this "
                                              "output would replace; give the output another name"), result.output
    (tmp_path / "m.caffemodel").rename(tmp_path / "m")  # a model without the suffix: m.masks.h5 records it
    assert_one_line_error(cli("decompress", "t.dcz", "-o", "m.masks.h5"), "m.masks.h5: is the masks file of m ")
    assert (tmp_path / "m.masks.h5").read_bytes() == before and cli("verify", "-w", "m").exit_code == 0
    # A folder output too (squeezenet, decompose, sensitivity, dsd, data), beside a model with no masks yet
    shutil.copy(weights, tmp_path / "k.caffemodel")
    assert_one_line_error(cli("squeezenet", "-o", "k.masks.h5"), "k.masks.h5: is the masks file of k.caffemodel ")
    assert not (tmp_path / "k.masks.h5").exists() and cli("verify", "-w", "k.caffemodel").exit_code == 0
    (tmp_path / "m").write_text("notes\n")  # no model: masks of none there, an output like any
    assert cli("decompress", "t.dcz", "-o", "m.masks.h5").exit_code == 0
    assert cli("decompress", "t.dcz", "-o", "m.masks.h5", "--force").exit_code == 0  # not masks: of no model


@pytest.mark.skipif(not (LENET_ZOO / "lenet_iter_10000.caffemodel").is_file(), reason="no ../shared/modelzoo")
def test_real_lenet_at_the_papers_settings_is_40x_smaller(tmp_path, cli):
    weights = LENET_ZOO / "lenet_iter_10000.caffemodel"
    _prune(cli, weights, "p.caffemodel", "conv1=0.34", "conv2=0.88", "ip1=0.92", "ip2=0.81")
    result = cli("compress", "-w", "p.caffemodel", "--bits", "conv=8,fc=5", "-o", "p.dcz")
    assert result.exit_code == 0, result.output
    ratio = (tmp_path / "p.caffemodel").stat().st_size / (tmp_path / "p.dcz").stat().st_size
    assert ratio >= 40.0, result.output
    assert cli("decompress", "p.dcz", "-p", LENET_ZOO / "lenet.prototxt", "-o", "q.caffemodel").exit_code == 0
    source, back = read_caffemodel(tmp_path / "p.caffemodel"), read_caffemodel(tmp_path / "q.caffemodel")
    for layer in source.layers:
        if layer.blobs:
            w = layer.blobs[0].data
            expected = quantized(w, w != 0, 5 if layer.type == "InnerProduct" else 8)
            assert np.array_equal(back.layer(layer.name).blobs[0].data, expected)


@pytest.mark.slow
def test_train_quantized_keeps_sharing_and_zeros(lenet, tmp_path, cli):
    work, proto, weights = lenet
    solver = work / "solver.prototxt"
    assert cli("prune", "-w", weights, "-s", 0.7, "-o", "p.caffemodel").exit_code == 0
    bits = {"conv1": 3, "conv2": 3, "ip1": 5, "ip2": 5}
    result = cli("train-quantized", "--solver", solver, "-w", "p.caffemodel", "--bits", "conv=3,fc=5", "-n", 20,
                 "-o", "q.caffemodel")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-2] == "wrote q.caffemodel and q.masks.h5 after 20 iterations"
    assert result.output.splitlines()[-1] == (f"wrote the solver's snapshot {work / 'lenet'}_iter_20.caffemodel and "
                                              f"{work / 'lenet'}_iter_20.solverstate")  # snapshot_after_train
    pruned, trained = read_caffemodel(tmp_path / "p.caffemodel"), read_caffemodel(tmp_path / "q.caffemodel")
    for name in ("conv1", "conv2", "ip1", "ip2"):
        before, after = pruned.layer(name).blobs[0].data, trained.layer(name).blobs[0].data
        assert np.count_nonzero(after[before == 0]) == 0  # pruned stay 0.0
        values = np.unique(after[before != 0])
        assert len(values) <= 2 ** bits[name], name  # still shared among the centroids
        start = np.unique(quantized(before, before != 0, bits[name])[before != 0])
        assert not np.array_equal(np.sort(values), np.sort(start))  # the centroids were trained
    # So compressing at the same bits keeps every trained value.
    assert cli("compress", "-w", "q.caffemodel", "--bits", "conv=3,fc=5", "-o", "q.dcz").exit_code == 0
    assert cli("decompress", "q.dcz", "-o", "back.caffemodel").exit_code == 0
    back = read_caffemodel(tmp_path / "back.caffemodel")
    for name in bits:
        assert np.array_equal(back.layer(name).blobs[0].data, trained.layer(name).blobs[0].data), name
    # Every weight stayed in its cluster: same partition of positions as at the start.
    w0 = pruned.layer("ip2").blobs[0].data
    q0, q1 = quantized(w0, w0 != 0, 5), trained.layer("ip2").blobs[0].data
    for value in np.unique(q0[w0 != 0]):
        assert len(np.unique(q1[q0 == value])) == 1


def test_bad_inputs(caffe, lenet, tmp_path, cli, other_model):
    work, proto, weights = lenet
    # Another net's weights are named as such, as by the other train-* commands: the refusal of
    # layers the solver does not train came first, and listed the other net's every layer.
    _, strange = save_net(caffe, tmp_path, 'layer { name: "data" type: "Input" top: "data" input_param { shape '
                          '{ dim: 1 dim: 4 } } }\nlayer { name: "fcX" type: "InnerProduct" bottom: "data" top: "fcX" '
                          'inner_product_param { num_output: 2 } }\n', name="strange")
    assert_one_line_error(cli("train-quantized", "--solver", work / "solver.prototxt", "-w", strange, "-n", 1,
                              "-o", "q.caffemodel"), f"{proto} does not match {strange}: layers with no weights")
    assert cli("compress", "-w", weights, "--bits", 6, "-o", "w.dcz").exit_code == 0
    data = (tmp_path / "w.dcz").read_bytes()
    (tmp_path / "cut.dcz").write_bytes(data[:-100])
    assert_one_line_error(cli("decompress", "cut.dcz", "-o", "x.caffemodel"), "checksum mismatch")
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    (tmp_path / "flip.dcz").write_bytes(bytes(flipped))
    assert_one_line_error(cli("decompress", "flip.dcz", "-o", "x.caffemodel"), "checksum mismatch")
    future = bytearray(data)
    future[8:10] = (99).to_bytes(2, "little")
    (tmp_path / "future.dcz").write_bytes(bytes(future))
    assert_one_line_error(cli("decompress", "future.dcz", "-o", "x.caffemodel"), "format version 99 is newer")
    (tmp_path / "text.dcz").write_text("hello")
    assert_one_line_error(cli("decompress", "text.dcz", "-o", "x.caffemodel"), "bad magic number")
    assert_one_line_error(cli("compress", "-w", weights, "--bits", 17, "-o", "y.dcz"),
                          "--bits '17': conv 17: must be a whole number in 1..16")
    assert_one_line_error(cli("compress", "-w", weights, "--bits", "conv=0,fc=4", "-o", "y.dcz"),
                          "conv 0: must be a whole number in 1..16")
    assert_one_line_error(cli("compress", "-w", weights, "--index-bits", "wide", "-o", "y.dcz"), "expected auto")
    assert_one_line_error(cli("compress", "-w", weights, "--masks", "other/p.masks.h5", "-o", "y.dcz"),
                          "masks were made for another model")
    # Masks of the model's structure, at whose positions it holds weights:
    # the .dcz would have dropped them, with no word.
    assert cli("prune", "-w", weights, "-s", 0.5, "-o", "q.caffemodel").exit_code == 0
    assert_one_line_error(cli("compress", "-w", weights, "--masks", "q.masks.h5", "-o", "y.dcz"),
                          f"q.masks.h5: 250 of the 250 positions it masks in layer 'conv1' of {weights} are not 0.0, "
                          "and compress stores none of them")
    assert not (tmp_path / "x.caffemodel").exists() and not (tmp_path / "y.dcz").exists()
    assert read_dcz(tmp_path / "w.dcz")[1] == "LeNet"
    # Inputs that are not -w: the masks read from beside the weights, and decompress's -p.
    assert cli("prune", "-w", weights, "-s", 0.5, "-o", "p.caffemodel").exit_code == 0
    shutil.copy(proto, tmp_path / "net.prototxt")
    before = {name: (tmp_path / name).read_bytes() for name in ("p.masks.h5", "net.prototxt")}
    assert_one_line_error(cli("compress", "-w", "p.caffemodel", "-o", "p.masks.h5"),
                          "p.masks.h5: output would overwrite the input p.masks.h5")
    assert_one_line_error(cli("decompress", "w.dcz", "-p", "net.prototxt", "-o", "net.prototxt"),
                          "net.prototxt: output would overwrite the input net.prototxt")
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def _vgg16_prototxt(specs):
    """A deploy net for bench_prune's VGG16-shaped layers (224x224 input)."""
    lines = ['name: "VGG_ILSVRC_16_layers"',
             'layer { name: "data" type: "Input" top: "data" '
             'input_param { shape { dim: 1 dim: 3 dim: 224 dim: 224 } } }']
    for name, kind, shapes, bottom, fields in specs:
        if bottom.startswith("pool") and f'name: "{bottom}"' not in "\n".join(lines):
            conv = {"pool1": "conv1_2", "pool2": "conv2_2", "pool3": "conv3_3", "pool4": "conv4_3", "pool5": "conv5_3"}
            lines.append(f'layer {{ name: "{bottom}" type: "Pooling" bottom: "{conv[bottom]}" top: "{bottom}" '
                         'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }')
        if kind == "Convolution":
            lines.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                         f'convolution_param {{ num_output: {fields["num_output"]} pad: 1 kernel_size: 3 }} }}')
        else:
            lines.append(f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" '
                         f'inner_product_param {{ num_output: {fields["num_output"]} }} }}')
        lines.append(f'layer {{ name: "relu_{name}" type: "ReLU" bottom: "{name}" top: "{name}" }}')
    return "\n".join(lines) + "\n"


@pytest.mark.caffe
@pytest.mark.slow
def test_vgg16_shaped_model_decodes_and_loads_in_stock_caffe(tmp_path, cli):
    sys.path.insert(0, str(ROOT / "tools"))
    from bench_prune import build_model, vgg16_specs

    from caffedsd.verify import run_caffe_test

    specs = vgg16_specs()
    build_model(tmp_path / "vgg.caffemodel", specs, seed=0, std=0.01)
    assert cli("prune", "-w", "vgg.caffemodel", "-s", 0.5, "-o", "p.caffemodel").exit_code == 0
    (tmp_path / "p.masks.h5").unlink()
    result = cli("compress", "-w", "p.caffemodel", "--bits", 5, "-o", "p.dcz")
    assert result.exit_code == 0, result.output
    (tmp_path / "vgg.prototxt").write_text(_vgg16_prototxt(specs))
    result = cli("decompress", "p.dcz", "-p", "vgg.prototxt", "-o", "q.caffemodel")
    assert result.exit_code == 0, result.output
    source, back = read_caffemodel(tmp_path / "p.caffemodel"), read_caffemodel(tmp_path / "q.caffemodel")
    for name in ("conv1_1", "fc8"):  # one small, one large layer checked value by value
        w = source.layer(name).blobs[0].data
        assert np.array_equal(back.layer(name).blobs[0].data, quantized(w, w != 0, 5))
    del source, back
    code, log = run_caffe_test(tmp_path / "vgg.prototxt", tmp_path / "q.caffemodel", iterations=1)
    assert code == 0, log[-2000:]
    assert "Ignoring source layer" not in log


# -- crafted files: what a reader must refuse, and how ---------------------------------

def _v2_file(path, layers, payload, name=b"net", header=None):
    """A version 2 .dcz file of ``layers`` ([(LayerParameter, [(kind, shape)])])
    and the blob payloads (or of the deflated ``header`` given), its CRC-32
    right: only the reader's own checks stand between it and an output."""
    if header is None:
        header = _header(name, [(param.SerializeToString(), blobs) for param, blobs in layers])
    body = MAGIC + struct.pack("<H", 2) + encode_varint(len(header)) + header + payload
    Path(path).write_bytes(body + struct.pack("<I", zlib.crc32(body)))


def _ip(name="fc"):
    return LayerParameter(name=name, type="InnerProduct", bottom=["data"], top=[name])


def test_version_0_and_short_files_are_named_as_such(tmp_path, cli):
    layers = [(_ip(), [(BLOB_FLOATS, (2,))])]
    _v2_file(tmp_path / "ok.dcz", layers, encode_floats(np.array([1.0, 2.0], np.float32)))
    data = (tmp_path / "ok.dcz").read_bytes()
    assert cli("decompress", "ok.dcz", "-o", "ok.caffemodel").exit_code == 0
    (tmp_path / "v0.dcz").write_bytes(data[:8] + b"\0\0" + data[10:])
    assert_one_line_error(cli("decompress", "v0.dcz", "-o", "x.caffemodel"), "format version 0 is no .dcz version")
    for size in (9, 10, 13):
        (tmp_path / "cut.dcz").write_bytes(data[:size])
        assert_one_line_error(cli("decompress", "cut.dcz", "-o", "x.caffemodel"), f"truncated: {size} bytes")
    assert not (tmp_path / "x.caffemodel").exists()


def _fixed_stream(symbols, alphabet, chunk_bits=None, sync=None):
    """A stage 1 stream (plain w-bit codes; ``alphabet`` a power of two) with
    the chunk-size byte and sync points given, right or not."""
    width = alphabet.bit_length() - 1
    data = np.packbits(((np.asarray(symbols)[:, None] >> np.arange(width - 1, -1, -1)) & 1).astype(np.uint8))
    head = bytes([1]) + (bytes([chunk_bits]) if chunk_bits is not None else b"")
    return head + (sync or b"") + data.tobytes()


def test_sizes_are_checked_before_anything_is_allocated(tmp_path, cli):
    """A few bytes of constant streams can declare any number of values:
    4 TiB of shared weights, 256 GiB of floats. Refused in one line from the
    header, as is a sync-point width no chunk needs (70 overflowed)."""
    const = bytes([0, 0])  # a constant stream of symbol 0
    cases = {
        "shared.dcz": ([(_ip(), [(BLOB_SHARED, (1 << 20, 1 << 20))])], bytes([1, 0, 0, 0, 0]) + const * 2),
        "floats.dcz": ([(_ip(), [(BLOB_FLOATS, (1 << 18, 1 << 18))])], bytes([1]) + const * 4),
    }
    for name, (layers, payload) in cases.items():
        _v2_file(tmp_path / name, layers, payload)
        assert_one_line_error(cli("decompress", name, "-o", "x.caffemodel"), "2 GiB of float32")
    # 9000 bytes in chunks of 2^12: two sync points of 70 bits each.
    plane = _fixed_stream(np.zeros(9000, np.int64), 256, 12, bytes([70]) + bytes(18))
    _v2_file(tmp_path / "sync.dcz", [(_ip(), [(BLOB_FLOATS, (9000,))])], bytes([1]) + plane + const * 3)
    assert_one_line_error(cli("decompress", "sync.dcz", "-o", "x.caffemodel"),
                          "layer 'fc' blob 0: sync-point width 70 is outside 1..17")
    with pytest.raises(FormatError, match="100 symbols cannot fit in 1 bytes"):
        decode_stream(b"\0", 100, np.array([1, 1]), 8192, [0])
    assert not (tmp_path / "x.caffemodel").exists()


def test_version_1_sizes_and_nesting_are_checked(tmp_path, cli):
    param = _ip().SerializeToString()
    head = b'{"format":"caffedsd-dcz","sections":' + b"[" * 100000 + b"]" * 100000 + b"}"
    body = MAGIC + struct.pack("<HI", 1, len(head)) + head
    (tmp_path / "deep.dcz").write_bytes(body + hashlib.sha256(body).digest())
    assert_one_line_error(cli("decompress", "deep.dcz", "-o", "x.caffemodel"), "nested too deeply")
    huge = {"format": "caffedsd-dcz", "name": "n", "layers": [
        {"name": "fc", "param": 0, "blobs": [{"kind": "raw", "shape": [1 << 20, 1 << 20], "data": 1}]}]}
    (tmp_path / "huge.dcz").write_bytes(_v1_pack(huge, [param, b""]))
    assert_one_line_error(cli("decompress", "huge.dcz", "-o", "x.caffemodel"), "2 GiB of float32")
    lying = {"format": "caffedsd-dcz", "name": "n", "layers": [{"name": "fc", "param": 0, "blobs": [
        {"kind": "dc", "shape": [4], "index_bits": 2, "entries": 1, "kept": 1, "codebook": 1, "values": 2,
         "value_bits": 1 << 40, "gaps": 2, "gap_bits": 1, "value_lengths": 3, "gap_lengths": 4}]}]}
    sections = [param, np.float32([0.5]).tobytes(), b"\0", zlib.compress(bytes([1, 1])),
                zlib.compress(bytes([2, 2, 2, 2]))]
    (tmp_path / "bits.dcz").write_bytes(_v1_pack(lying, sections))
    assert_one_line_error(cli("decompress", "bits.dcz", "-o", "x.caffemodel"),
                          f"layer 'fc' blob 0: 1 symbols in {1 << 40} bits of a 1-byte stream")
    assert not (tmp_path / "x.caffemodel").exists()


def test_compress_refuses_a_model_past_the_readers_limits(tmp_path, cli):
    import caffedsd.dcz as dcz

    new_caffemodel(tmp_path / "m.caffemodel", [(_ip(), [np.ones((4, 4), np.float32), np.ones(4, np.float32)])])
    model = read_caffemodel(tmp_path / "m.caffemodel")
    layer = model.layers[0]

    def holding(count):  # a zero-stride view: the count without the memory
        data = np.broadcast_to(np.float32(1), (count,))
        return [dataclasses.replace(layer, blobs=(dataclasses.replace(layer.blobs[0], data=data),))]

    dcz._check_compressible(model, holding(dcz.MAX_VALUES), b"")
    with pytest.raises(InputError) as refused:
        dcz._check_compressible(model, holding(dcz.MAX_VALUES + 1), b"")
    assert str(refused.value).startswith(f"{model.path}: its blobs hold 536,870,913 values, over the 536,870,912 ")
    # decompress refuses such a header before it reads a blob
    _v2_file(tmp_path / "big.dcz", [(_ip(), [(BLOB_FLOATS, (1 << 15, (1 << 14) + 1))])], b"")
    assert_one_line_error(cli("decompress", "big.dcz", "-o", "big.caffemodel"),
                          "its blobs hold 536,903,680 values, over 536,870,912")
    assert not (tmp_path / "big.caffemodel").exists()
    assert cli("compress", "-w", "m.caffemodel", "-o", "m.dcz").exit_code == 0
    assert cli("decompress", "m.dcz", "-o", "back.caffemodel").exit_code == 0


def _shared(shape_size, width, kept, pads, codebook, values, gaps):
    """A shared blob's payload from its streams, as given."""
    return (bytes([width]) + encode_varint(kept) + encode_varint(pads) + encode_varint(len(codebook))
            + encode_floats(np.float32(codebook)) + values + gaps)


def test_a_code_no_symbol_has_is_refused(tmp_path, cli):
    """Code lengths [1, 2, 0] leave the pattern 11 to no symbol. It decoded
    as symbol 0 without moving on: '0 11 11' gave three weights of -1.0."""
    values = bytes([6, 0b01100000]) + encode_varint(1) + bytes([0b01100000])  # lengths in 2 bits: 01 10 00
    payload = _shared(16, 4, 3, 0, [-1, 0.5, 2], values, _fixed_stream([0, 4, 9], 16))
    _v2_file(tmp_path / "bad.dcz", [(_ip(), [(BLOB_SHARED, (4, 4))])], payload)
    assert_one_line_error(cli("decompress", "bad.dcz", "-o", "x.caffemodel"),
                          "layer 'fc' blob 0: Huffman code lengths leave bit patterns that are no symbol's code")
    assert not (tmp_path / "x.caffemodel").exists()
    # The same blob with a complete code (lengths 1, 2, 2) decodes: '0 11 10' = -1, 2, 0.5.
    values = bytes([6, 0b01101000]) + encode_varint(1) + bytes([0b01110000])
    _v2_file(tmp_path / "good.dcz", [(_ip(), [(BLOB_SHARED, (4, 4))])],
             _shared(16, 4, 3, 0, [-1, 0.5, 2], values, _fixed_stream([0, 4, 9], 16)))
    assert cli("decompress", "good.dcz", "-o", "good.caffemodel").exit_code == 0
    back = read_caffemodel(tmp_path / "good.caffemodel").layer("fc").blobs[0].data.reshape(-1)
    assert back[[0, 5, 15]].tolist() == [-1.0, 2.0, 0.5] and np.count_nonzero(back) == 3
    # Two kept weights and a padding entry said, three weights found: named as such, not as indices past the blob.
    _v2_file(tmp_path / "count.dcz", [(_ip(), [(BLOB_SHARED, (4, 4))])],
             _shared(16, 4, 2, 1, [-1, 0.5, 2], _fixed_stream([0, 1, 2], 4), _fixed_stream([0, 4, 9], 16)))
    assert_one_line_error(cli("decompress", "count.dcz", "-o", "x.caffemodel"),
                          "layer 'fc' blob 0: 3 entries are not padding, where 2 kept weights were said")


def test_stage_4_and_codes_over_one_symbol_are_named():
    from caffedsd.dcz_blobs import read_stream

    with pytest.raises(FormatError, match=r"stream stage 4 \(code lengths of 0 bits\) is not valid"):
        read_stream(Reader(bytes([4, 0, 0])), 3, 2)  # said: code lengths up to 0 bits (1..20 allowed)
    for stage in (1, 2, 3, 5):
        with pytest.raises(FormatError, match=f"a stream over 1 symbol in stage {stage}, not 0"):
            read_stream(Reader(bytes([stage, 0, 0, 0])), 1, 5)
    assert read_stream(Reader(bytes([0, 0])), 1, 5).tolist() == [0] * 5
    assert read_stream(Reader(bytes([0, 0])), 0, 0).tolist() == []
    with pytest.raises(FormatError, match="outside the alphabet"):
        read_stream(Reader(bytes([0, 0])), 0, 5)  # 5 symbols of an empty alphabet


def test_a_dimension_caffe_cannot_hold_is_refused_in_a_caffemodel_and_a_dcz(tmp_path, cli):
    """Beside a 0, a dimension over INT_MAX passes every count check (no
    values), and numpy took a -1 for "the rest": a caffemodel of shape
    [-1, -2] was a traceback, one of [0, 2^40] was compressed, and such a
    .dcz decompressed into a caffemodel no Caffe net loads."""
    for dims, count in (([-1, -2], 2), ([0, 1 << 40], 0), ([1 << 32 | 1], 1)):
        net = NetParameter()
        blob = net.layer.add(name="fc", type="InnerProduct").blobs.add()
        blob.shape.dim.extend(dims)
        blob.data.extend([1.0] * count)
        (tmp_path / "w.caffemodel").write_bytes(net.SerializeToString())
        assert_one_line_error(cli("stats", "-w", "w.caffemodel"),
                              f"w.caffemodel: layer 'fc': blob 0 has shape {dims}, a dimension outside "
                              "0..2147483647 (Caffe's blob shapes are int)")
    legacy = NetParameter()
    blob = legacy.layer.add(name="fc", type="InnerProduct").blobs.add()
    blob.num, blob.channels, blob.height, blob.width = -1, 1, 1, 1  # int32: a 10-byte varint
    blob.data.append(1.0)
    (tmp_path / "v.caffemodel").write_bytes(legacy.SerializeToString())
    assert_one_line_error(cli("stats", "-w", "v.caffemodel"), "blob 0 has shape [-1, 1, 1, 1], a dimension outside")
    # A varint past 32 bits in an int32 field (the same 10 bytes), which Caffe misreads as its low 32
    # bits (1 here): refused, as a BlobShape dim past 2^31 is.
    wide = legacy.SerializeToString().replace(encode_varint((1 << 64) - 1), encode_varint((1 << 63) | 1))
    (tmp_path / "v.caffemodel").write_bytes(wide)
    assert_one_line_error(cli("stats", "-w", "v.caffemodel"),
                          f"blob 0 has shape [{-(1 << 63) + 1}, 1, 1, 1], a dimension outside 0..2147483647")
    _v2_file(tmp_path / "wide.dcz", [(_ip(), [(BLOB_FLOATS, (0, 1 << 31))])], encode_floats(np.zeros(0, np.float32)))
    assert_one_line_error(cli("decompress", "wide.dcz", "-o", "wide.caffemodel"),
                          "layer 'fc' blob 0: shape [0, 2147483648] has a dimension over 2147483647 (Caffe's blob "
                          "shapes are int)")
    assert not (tmp_path / "wide.caffemodel").exists()


def test_a_stage_3_table_names_each_difference_once_with_a_length():
    """A difference named with length 0, or twice (the later entry counted),
    was taken: whether a file decoded hung on a rule FORMAT.md never gave."""
    from caffedsd.dcz_blobs import read_stream

    with pytest.raises(FormatError, match="^code length table names difference 5 with no length$"):
        read_stream(Reader(bytes([3, 2, 1 << 3 | 1, 5 << 3 | 0, 1, 0])), 3, 4)
    with pytest.raises(FormatError, match="^code length table names difference 1 twice$"):
        read_stream(Reader(bytes([3, 3, 1 << 3 | 1, 0 << 3 | 2, 1 << 3 | 2, 1, 0])), 3, 4)


def test_decompress_refuses_what_it_would_write_and_caffedsd_refuse(tmp_path, cli):
    """Each of these decoded to a caffemodel caffedsd then refused (a name
    twice, no layers) or one holding NaN/Inf, which compress refuses."""
    floats = encode_floats(np.float32([1, 2]))
    shared = _shared(4, 2, 1, 0, [0.5], bytes([0, 0]), bytes([0, 0]))
    cases = {
        "twice": ([(_ip(), [(BLOB_FLOATS, (2,))]), (_ip(), [(BLOB_FLOATS, (2,))])], floats * 2,
                  "layer name 'fc' appears twice"),
        "none": ([], b"", "holds no layers with weights"),
        "unnamed": ([(_ip(""), [(BLOB_FLOATS, (2,))])], floats, "layer #0 (InnerProduct) has blobs but no name"),
        "no_blobs": ([(_ip(), [])], b"", "layer #0 ('fc') has no blobs"),
        "nan_codebook": ([(_ip(), [(BLOB_SHARED, (4,))])], _shared(4, 2, 1, 0, [np.nan], bytes([0, 0]), bytes([0, 0])),
                         "layer 'fc' blob 0: its codebook's values hold NaN/Inf"),
        "inf_bias": ([(_ip(), [(BLOB_SHARED, (4,)), (BLOB_FLOATS, (2,))])],
                     shared + encode_floats(np.float32([1, np.inf])), "layer 'fc' blob 1: its values hold NaN/Inf"),
        "shared_bias": ([(_ip(), [(BLOB_FLOATS, (4,)), (BLOB_SHARED, (4,))])], encode_floats(np.ones(4)) + shared,
                        "layer 'fc' blob 1 (InnerProduct): shared weights (kind 1) go only in blob 0"),
    }
    for name, (layers, payload, message) in cases.items():
        _v2_file(tmp_path / f"{name}.dcz", layers, payload)
        assert_one_line_error(cli("decompress", f"{name}.dcz", "-o", "x.caffemodel"), message)
    assert not (tmp_path / "x.caffemodel").exists()
    _v2_file(tmp_path / "ok.dcz", [(_ip(), [(BLOB_SHARED, (4,)), (BLOB_FLOATS, (2,))])], shared + floats)
    assert cli("decompress", "ok.dcz", "-o", "ok.caffemodel").exit_code == 0
    assert read_caffemodel(tmp_path / "ok.caffemodel").layer("fc").blobs[0].data.tolist() == [0.5, 0, 0, 0]
    # compress does not write a file of no layers with weights.
    new_caffemodel(tmp_path / "empty.caffemodel", [(LayerParameter(name="data", type="Input", top=["data"]), [])])
    assert_one_line_error(cli("compress", "-w", "empty.caffemodel", "-o", "e.dcz"), "holds no layers with weights")
    assert not (tmp_path / "e.dcz").exists()


def test_names_are_utf8_both_ways(tmp_path, cli):
    """A net name that is not UTF-8 decompressed to a model named "" with
    exit status 0, and compress wrote one. Names are UTF-8 text: read_caffemodel
    refuses other layer names, and now compress and decompress refuse such
    a net name, decompress such a layer name, in one line."""
    w = np.ones((2, 2), np.float32)
    new_caffemodel(tmp_path / "m.caffemodel", [(_ip(), [w])])
    (tmp_path / "odd.caffemodel").write_bytes(b"\n\x02N\xff" + (tmp_path / "m.caffemodel").read_bytes())
    assert_one_line_error(cli("compress", "-w", "odd.caffemodel", "-o", "odd.dcz"),
                          "the net's name is not UTF-8 text (b'N\\xff')")
    assert not (tmp_path / "odd.dcz").exists()
    payload = encode_floats(w)
    _v2_file(tmp_path / "net.dcz", [(_ip(), [(BLOB_FLOATS, (2, 2))])], payload, name=b"N\xff")
    assert_one_line_error(cli("decompress", "net.dcz", "-o", "x.caffemodel"), "the net's name is not UTF-8 text")
    odd = LayerParameter.FromString(LayerParameter(type="InnerProduct").SerializeToString() + b"\n\x03A\xffA")
    _v2_file(tmp_path / "layer.dcz", [(odd, [(BLOB_FLOATS, (2, 2))])], payload)
    assert_one_line_error(cli("decompress", "layer.dcz", "-o", "x.caffemodel"),
                          "layer #0 has a name that is not UTF-8 text (b'A\\xffA')")
    assert not (tmp_path / "x.caffemodel").exists()
    _v2_file(tmp_path / "ok.dcz", [(_ip(), [(BLOB_FLOATS, (2, 2))])], payload, name="Né".encode())
    assert cli("decompress", "ok.dcz", "-o", "ok.caffemodel").exit_code == 0
    assert read_caffemodel(tmp_path / "ok.caffemodel").name == "Né"


def test_bytes_past_the_end_of_a_part_are_refused_everywhere(tmp_path, cli):
    """Trailing payload bytes were refused, but bytes after the header's
    last layer, after its DEFLATE stream or a DEFLATE stream cut short were
    taken, as were non-zero padding bits, padding entries after the last
    kept weight and varints with needless zero bytes."""
    from caffedsd.dcz import _raw_header

    layers = [(_ip(), [(BLOB_SHARED, (4, 4))])]
    raw = _raw_header(b"net", [(_ip().SerializeToString(), [(BLOB_SHARED, (4, 4))])])

    def deflate(data, finish=True):
        deflater = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=HEADER_DICTIONARY)
        return deflater.compress(data) + deflater.flush(zlib.Z_FINISH if finish else zlib.Z_SYNC_FLUSH)

    gaps = _fixed_stream([0, 4, 9], 16)
    values = bytes([1, 1, 0b01110000])  # stage 1 over 3 symbols (codes 0, 10, 11), 1 byte: 0 11 10 -> 0, 2, 1
    good = _shared(16, 4, 3, 0, [-1, 0.5, 2], values, gaps)
    cases = {
        "fields": (deflate(raw + b"\0"), good, "trailing bytes after the header's last layer"),
        "after": (deflate(raw) + b"\0", good, "header is not one whole DEFLATE stream"),
        "cut": (deflate(raw, finish=False), good, "header is not one whole DEFLATE stream"),
        "padbits": (None, _shared(16, 4, 3, 0, [-1, 0.5, 2], bytes([1, 1, 0b01110001]), gaps),
                    "layer 'fc' blob 0: Huffman stream's padding bits are not zero"),
        "varint": (None, bytes([4, 0x83, 0]) + good[2:], "a varint with a needless zero byte"),
        # Two entries: kept weight 0 at position 0, then padding (symbol 1) to position 16.
        "pad_last": (None, _shared(16, 4, 1, 1, [0.5], bytes([1, 0b01000000]), _fixed_stream([0, 15], 16)),
                     "the last entry is padding"),
    }
    for name, (header, payload, message) in cases.items():
        _v2_file(tmp_path / f"{name}.dcz", layers, payload, header=header)
        assert_one_line_error(cli("decompress", f"{name}.dcz", "-o", "x.caffemodel"), message)
    assert not (tmp_path / "x.caffemodel").exists()
    # Code lengths deflated (stage 2): a stream cut short, then a whole one.
    for flush in (zlib.Z_SYNC_FLUSH, zlib.Z_FINISH):
        table = zlib.compressobj(9, zlib.DEFLATED, -15)
        table = table.compress(bytes([1, 2, 2])) + table.flush(flush)
        values = bytes([2]) + encode_varint(len(table)) + table + encode_varint(1) + bytes([0b01110000])
        _v2_file(tmp_path / f"table{flush}.dcz", layers, _shared(16, 4, 3, 0, [-1, 0.5, 2], values, gaps))
    assert_one_line_error(cli("decompress", f"table{zlib.Z_SYNC_FLUSH}.dcz", "-o", "x.caffemodel"),
                          "code length table is not one whole DEFLATE stream")
    assert cli("decompress", f"table{zlib.Z_FINISH}.dcz", "-o", "t.caffemodel").exit_code == 0
    _v2_file(tmp_path / "good.dcz", layers, good)
    assert cli("decompress", "good.dcz", "-o", "good.caffemodel").exit_code == 0
    back = read_caffemodel(tmp_path / "good.caffemodel").layer("fc").blobs[0].data.reshape(-1)
    assert back[[0, 5, 15]].tolist() == [-1.0, 2.0, 0.5]


def test_version_1_code_tables_must_fit_their_alphabets(tmp_path, cli):
    """A version 1 value-length table holds C + 1 lengths (the codebook and
    PAD) and a gap-length table 2^w; codes are at most 24 bits."""
    def v1(value_lengths, gap_lengths=(2, 2, 2, 2)):
        header = {"format": "caffedsd-dcz", "name": "n", "layers": [{"name": "fc", "param": 0, "blobs": [
            {"kind": "dc", "shape": [4], "bits": 1, "index_bits": 2, "entries": 1, "kept": 1, "codebook": 1,
             "values": 2, "value_bits": 1, "gaps": 2, "gap_bits": 2, "value_lengths": 3, "gap_lengths": 4}]}]}
        return _v1_pack(header, [_ip().SerializeToString(), np.float32([0.5]).tobytes(), b"\0",
                                 zlib.compress(bytes(value_lengths)), zlib.compress(bytes(gap_lengths))])

    (tmp_path / "ok.dcz").write_bytes(v1([1, 1]))
    assert cli("decompress", "ok.dcz", "-o", "ok.caffemodel").exit_code == 0
    assert read_caffemodel(tmp_path / "ok.caffemodel").layer("fc").blobs[0].data.tolist() == [0.5, 0, 0, 0]
    for name, data, message in (("long", v1([1, 1, 0]), "code length table does not hold 2 lengths"),
                                ("gaps", v1([1, 1], [2, 2, 2]), "code length table does not hold 4 lengths"),
                                ("deep", v1([1, 25]), "Huffman code lengths up to 25 bits (at most 24)")):
        (tmp_path / f"{name}.dcz").write_bytes(data)
        assert_one_line_error(cli("decompress", f"{name}.dcz", "-o", "x.caffemodel"), f"layer 'fc' blob 0: {message}")
    assert not (tmp_path / "x.caffemodel").exists()


def test_format_md_gives_the_header_dictionary():
    """A reader can be written from docs/FORMAT.md alone: its hex dump is the
    dictionary the header is deflated with."""
    text = (ROOT / "docs" / "FORMAT.md").read_text()
    block = text.split("**Header dictionary.**", 1)[1].split("```", 2)[1]
    assert bytes.fromhex("".join(block.split())) == HEADER_DICTIONARY
    assert hashlib.sha256(HEADER_DICTIONARY).hexdigest() in text
