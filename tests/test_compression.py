"""Deep Compression storage: coding units, round trips, stock caffe, bad input."""
import numpy as np
import pytest

from caffedsd.caffemodel import read_caffemodel
from caffedsd.compression import (canonical_codes, decode_blob, encode_blob, huffman_decode, huffman_encode,
                                  huffman_lengths, kmeans_1d, positions_from_gaps, quantized, relative_indices)
from caffedsd.dcz import read_dcz
from conftest import assert_one_line_error


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
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths)]
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    symbols = np.random.default_rng(1).integers(0, 6, size=500)
    data, bits = huffman_encode(symbols, lengths)
    assert bits == int(lengths[symbols].sum())
    assert np.array_equal(huffman_decode(data, bits, 500, lengths), symbols)


def test_relative_indices_pad_large_gaps():
    positions = np.array([0, 3, 40])  # gaps 0, 2, 36 with 3-bit indices (max 7)
    gaps, padding = relative_indices(positions, 3)
    # 36 = 7 pads of 8 positions (4 entries) + 4 -> [0, 2, 7, 7, 7, 7, 4]
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


def test_blob_round_trip_equals_the_quantized_weights():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(20, 30)).astype(np.float32)
    keep = np.abs(w) > 1.0
    for bits, index_bits in ((4, 3), (6, 8), (2, 1)):
        encoded = encode_blob(w, keep, bits, index_bits)
        decoded = decode_blob(encoded)
        assert np.array_equal(decoded, quantized(w, keep, bits))
        assert np.count_nonzero(decoded[~keep]) == 0
        assert len(np.unique(decoded[keep])) <= 2 ** bits


def test_round_trip_is_exact_when_the_bits_hold_every_value():
    w = np.random.default_rng(2).choice([-0.5, 0.25, 1.5], size=(7, 9)).astype(np.float32)
    w[0, :4] = 0
    assert np.array_equal(decode_blob(encode_blob(w, w != 0, 2, 5)), w)


def test_compress_decompress_lenet_in_stock_caffe(lenet, tmp_path, cli):
    _, proto, weights = lenet
    assert cli("prune", "-w", weights, "-s", 0.8, "-o", "p.caffemodel").exit_code == 0
    result = cli("compress", "-w", "p.caffemodel", "--bits", "conv=8,fc=5", "-o", "p.dcz")
    assert result.exit_code == 0, result.output
    assert "total" in result.output and "huffman B" in result.output
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


@pytest.mark.slow
def test_train_quantized_keeps_sharing_and_zeros(lenet, tmp_path, cli):
    work, proto, weights = lenet
    solver = work / "solver.prototxt"
    assert cli("prune", "-w", weights, "-s", 0.7, "-o", "p.caffemodel").exit_code == 0
    result = cli("train-quantized", "--solver", solver, "-w", "p.caffemodel", "--bits", 3, "-n", 20,
                 "-o", "q.caffemodel")
    assert result.exit_code == 0, result.output
    pruned, trained = read_caffemodel(tmp_path / "p.caffemodel"), read_caffemodel(tmp_path / "q.caffemodel")
    for name in ("conv1", "conv2", "ip1", "ip2"):
        before, after = pruned.layer(name).blobs[0].data, trained.layer(name).blobs[0].data
        assert np.count_nonzero(after[before == 0]) == 0  # pruned stay 0.0
        values = np.unique(after[before != 0])
        assert len(values) <= 8  # still shared among 2^3 centroids
        start = np.unique(quantized(before, before != 0, 3)[before != 0])
        assert not np.array_equal(np.sort(values), np.sort(start))  # the centroids were trained
    # Every weight stayed in its cluster: same partition of positions as at the start.
    w0 = pruned.layer("ip2").blobs[0].data
    q0, q1 = quantized(w0, w0 != 0, 3), trained.layer("ip2").blobs[0].data
    for value in np.unique(q0[w0 != 0]):
        assert len(np.unique(q1[q0 == value])) == 1


def test_bad_inputs(lenet, tmp_path, cli, other_model):
    _, proto, weights = lenet
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
    assert_one_line_error(cli("compress", "-w", weights, "--bits", 17, "-o", "y.dcz"), "17 is outside 1..16")
    assert_one_line_error(cli("compress", "-w", weights, "--bits", "conv=0,fc=4", "-o", "y.dcz"), "conv=0 is outside 1..16")
    assert_one_line_error(cli("compress", "-w", weights, "--masks", "other/p.masks.h5", "-o", "y.dcz"),
                    "masks were made for another model")
    assert not (tmp_path / "x.caffemodel").exists() and not (tmp_path / "y.dcz").exists()
    assert read_dcz(tmp_path / "w.dcz")[1] == "LeNet"
