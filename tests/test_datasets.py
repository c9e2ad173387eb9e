"""Tests for caffedsd.datasets, on tiny IDX files written by hand."""
import gzip
import os
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

from caffedsd.datasets import convert_fashion_mnist, fashion_mnist_dir, read_idx
from caffedsd.errors import InputError


def idx_bytes(code, dims, payload):
    return b"\x00\x00" + bytes([code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


def write(path, data, compress=False):
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


# --- read_idx: each dtype, plain and gzip -------------------------------------

@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "code, payload, expected",
    [
        (0x08, bytes([0, 1, 255, 128]), np.array([0, 1, 255, 128], dtype=np.uint8)),
        (0x09, bytes([0, 1, 0xFF, 0x80]), np.array([0, 1, -1, -128], dtype=np.int8)),
        (0x0B, b"\x00\x01\x01\x00\xff\xff\x80\x00", np.array([1, 256, -1, -32768], dtype=np.int16)),
        (0x0C, b"\x00\x00\x00\x01\x00\x01\x00\x00\xff\xff\xff\xfe\x7f\xff\xff\xff",
         np.array([1, 65536, -2, 2**31 - 1], dtype=np.int32)),
        (0x0D, b"\x3f\x80\x00\x00\xc0\x00\x00\x00\x3e\x80\x00\x00\x00\x00\x00\x00",
         np.array([1.0, -2.0, 0.25, 0.0], dtype=np.float32)),
        (0x0E, b"\x3f\xf0" + b"\x00" * 6 + b"\xc0\x00" + b"\x00" * 6
         + b"\x3f\xd0" + b"\x00" * 6 + b"\x40\x59" + b"\x00" * 6,
         np.array([1.0, -2.0, 0.25, 100.0], dtype=np.float64)),
    ],
)
def test_read_idx_dtypes(tmp_path, code, payload, expected, compress):
    path = write(tmp_path / "a.idx", idx_bytes(code, [2, 2], payload), compress)
    got = read_idx(path)
    assert got.shape == (2, 2)
    assert got.dtype == expected.dtype
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, expected.reshape(2, 2))


def test_read_idx_three_dims_row_major(tmp_path):
    path = write(tmp_path / "a.idx", idx_bytes(0x08, [2, 1, 3], bytes(range(6))))
    got = read_idx(str(path))
    assert got.shape == (2, 1, 3)
    assert got[1, 0, 2] == 5
    assert got[0, 0, 1] == 1


def test_read_idx_result_is_writable(tmp_path):
    path = write(tmp_path / "a.idx", idx_bytes(0x0C, [1], b"\x00\x00\x00\x07"), compress=True)
    got = read_idx(path)
    got[0] = 3
    assert got[0] == 3


# --- read_idx: malformed files ------------------------------------------------

@pytest.mark.parametrize(
    "name, data, compress, fragment",
    [
        ("empty.idx", b"", False, "magic"),
        ("badmagic.idx", b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", False, "magic"),
        ("badtype.idx", b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", False, "0x07"),
        ("shorthdr.idx", b"\x00\x00\x08\x02\x00\x00\x00\x01", False, "header"),
        ("short.idx", idx_bytes(0x08, [2, 3], bytes(5)), False, "5 bytes"),
        ("long.idx", idx_bytes(0x08, [2, 3], bytes(7)), False, "7 bytes"),
        ("shortwide.idx", idx_bytes(0x0C, [2], bytes(7)), True, "need 8"),
        ("badmagic.gz", b"\x00\x01\x08\x01\x00\x00\x00\x01\x05", True, "magic"),
    ],
)
def test_read_idx_malformed(tmp_path, name, data, compress, fragment):
    path = write(tmp_path / name, data, compress)
    with pytest.raises(InputError) as info:
        read_idx(path)
    message = str(info.value)
    assert name in message
    assert fragment in message
    assert "\n" not in message


def test_read_idx_truncated_gzip(tmp_path):
    whole = gzip.compress(idx_bytes(0x08, [100], bytes(range(100))))
    path = tmp_path / "cut.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match="cut.gz"):
        read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path):
    whole = bytearray(gzip.compress(idx_bytes(0x08, [100], bytes(range(100)))))
    whole[-8] ^= 0xFF  # break the CRC
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(whole))
    with pytest.raises(InputError, match="crc.gz"):
        read_idx(path)


def test_read_idx_missing(tmp_path):
    with pytest.raises(InputError, match="nothere.idx"):
        read_idx(tmp_path / "nothere.idx")


def test_read_idx_directory(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(InputError, match="adir"):
        read_idx(tmp_path / "adir")


# --- convert_fashion_mnist ----------------------------------------------------

def make_source(folder, n_train=5, n_test=3, compress=True):
    """A tiny Fashion-MNIST lookalike: image i has every pixel 10*i except
    pixel (3, 4) which is 200; labels are i % 10 (train) and 9 - i (test)."""
    folder.mkdir()
    for prefix, n, labels in (("train", n_train, [i % 10 for i in range(n_train)]),
                              ("t10k", n_test, [9 - i for i in range(n_test)])):
        pixels = bytearray()
        for i in range(n):
            image = bytearray([10 * i]) * 784
            image[3 * 28 + 4] = 200
            pixels += image
        write(folder / f"{prefix}-images-idx3-ubyte.gz", idx_bytes(0x08, [n, 28, 28], bytes(pixels)), compress)
        write(folder / f"{prefix}-labels-idx1-ubyte.gz", idx_bytes(0x08, [n], bytes(labels)), compress)
    return folder


@pytest.mark.parametrize("compress", [True, False])
def test_convert_round_trip(tmp_path, compress):
    source = make_source(tmp_path / "src", compress=compress)
    out = tmp_path / "out" / "nested"
    result = convert_fashion_mnist(out, source_dir=source)

    assert result == {
        "train": {"h5": str(out / "train.h5"), "list": str(out / "train.txt"), "count": 5, "unchanged": False},
        "test": {"h5": str(out / "test.h5"), "list": str(out / "test.txt"), "count": 3, "unchanged": False},
        "source_dir": str(source),
    }
    assert sorted(os.listdir(out)) == ["test.h5", "test.txt", "train.h5", "train.txt"]

    with h5py.File(out / "train.h5", "r") as h5:
        data, label = h5["data"][...], h5["label"][...]
        assert h5["data"].compression is None
    assert data.shape == (5, 1, 28, 28) and data.dtype == np.float32
    assert label.shape == (5,) and label.dtype == np.float32
    assert data[2, 0, 3, 4] == np.float32(200 / 256)  # 0.78125, exact
    assert data[2, 0, 0, 0] == np.float32(20 / 256)
    assert data[4, 0, 27, 27] == np.float32(0.15625)  # 40 / 256
    assert data.max() < 1.0
    np.testing.assert_array_equal(label, [0, 1, 2, 3, 4])

    with h5py.File(out / "test.h5", "r") as h5:
        assert h5["data"].shape == (3, 1, 28, 28)
        np.testing.assert_array_equal(h5["label"][...], [9, 8, 7])

    for name in ("train", "test"):
        text = (out / f"{name}.txt").read_text()
        assert text == f"{out / name}.h5\n"
        assert Path(text.strip()).is_absolute()


def test_a_folder_in_a_later_files_place_changes_nothing(tmp_path):
    """Refused before the first write: train.h5 is not replaced and then
    the run stopped at test.txt."""
    source = make_source(tmp_path / "src")
    out = tmp_path / "out"
    convert_fashion_mnist(out, source_dir=source, train_limit=3)
    before = (out / "train.h5").read_bytes()
    (out / "test.txt").unlink()
    (out / "test.txt").mkdir()
    with pytest.raises(InputError, match="test.txt: is a folder, not a regular file"):
        convert_fashion_mnist(out, source_dir=source, train_limit=4, force=True)
    assert (out / "train.h5").read_bytes() == before


def test_the_source_folder_from_the_environment(tmp_path):
    """`caffedsd data fashion-mnist` without --source reads CAFFEDSD_FASHION_MNIST's folder
    (a machine without Debian's package)."""
    from click.testing import CliRunner

    from caffedsd.cli import main

    source = make_source(tmp_path / "src")
    runner = CliRunner()
    result = runner.invoke(main, ["data", "fashion-mnist", "-o", str(tmp_path / "out"), "--train-limit", "2"],
                           env={"CAFFEDSD_FASHION_MNIST": str(source)})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "train.h5").is_file()
    command = ["data", "fashion-mnist", "-o", str(tmp_path / "out"), "--source", str(source)]
    again = runner.invoke(main, [*command, "--train-limit", "2"])
    assert again.exit_code == 0 and again.output.count(", already there") == 2, again.output
    other = runner.invoke(main, command)
    assert other.exit_code == 2 and other.output == (
        f"caffedsd: {tmp_path / 'out' / 'train.h5'}: exists with other contents than this conversion "
        "writes; give --force to replace it, or another -o\n")
    forced = runner.invoke(main, [*command, "--force"])
    assert forced.exit_code == 0 and forced.output.count(", already there") == 1, forced.output
    missing = runner.invoke(main, ["data", "fashion-mnist", "-o", str(tmp_path / "out2")],
                            env={"CAFFEDSD_FASHION_MNIST": str(tmp_path / "nosuch")})
    assert missing.exit_code == 2 and f"{tmp_path / 'nosuch'}: Fashion-MNIST folder not found" in missing.output


def test_convert_relative_out_dir_listed_absolute(tmp_path, monkeypatch):
    source = make_source(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    result = convert_fashion_mnist("rel", source_dir=source)
    assert result["train"]["h5"] == str(tmp_path / "rel" / "train.h5")
    assert (tmp_path / "rel" / "train.txt").read_text() == f"{tmp_path / 'rel' / 'train.h5'}\n"


def test_convert_limits(tmp_path):
    source = make_source(tmp_path / "src")
    out = tmp_path / "out"
    result = convert_fashion_mnist(out, source_dir=source, train_limit=2, test_limit=1)
    assert result["train"]["count"] == 2 and result["test"]["count"] == 1
    with h5py.File(out / "train.h5", "r") as h5:
        assert h5["data"].shape == (2, 1, 28, 28)
        np.testing.assert_array_equal(h5["label"][...], [0, 1])
        assert h5["data"][1, 0, 0, 0] == np.float32(10 / 256)
    with h5py.File(out / "test.h5", "r") as h5:
        np.testing.assert_array_equal(h5["label"][...], [9])


def test_convert_limit_above_count_keeps_all(tmp_path):
    source = make_source(tmp_path / "src")
    result = convert_fashion_mnist(tmp_path / "out", source_dir=source, train_limit=1000)
    assert result["train"]["count"] == 5


@pytest.mark.parametrize("limit", [0, -1, 2.5, "3", True])
@pytest.mark.parametrize("which", ["train_limit", "test_limit"])
def test_convert_bad_limit(tmp_path, which, limit):
    source = make_source(tmp_path / "src")
    with pytest.raises(InputError) as info:
        convert_fashion_mnist(tmp_path / "out", source_dir=source, **{which: limit})
    assert f"--{which.replace('_', '-')}: {limit!r}" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_convert_missing_source_dir(tmp_path):
    with pytest.raises(InputError, match="nosuch"):
        convert_fashion_mnist(tmp_path / "out", source_dir=tmp_path / "nosuch")


def test_convert_missing_file(tmp_path):
    source = make_source(tmp_path / "src")
    (source / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(InputError, match="t10k-labels-idx1-ubyte.gz"):
        convert_fashion_mnist(tmp_path / "out", source_dir=source)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name, data",
    [
        ("train-images-idx3-ubyte.gz", idx_bytes(0x08, [5, 28, 27], bytes(5 * 28 * 27))),
        ("train-images-idx3-ubyte.gz", idx_bytes(0x08, [5, 784], bytes(5 * 784))),
        ("train-images-idx3-ubyte.gz", idx_bytes(0x09, [5, 28, 28], bytes(5 * 784))),
        ("train-images-idx3-ubyte.gz", idx_bytes(0x08, [0, 28, 28], b"")),
        ("train-labels-idx1-ubyte.gz", idx_bytes(0x08, [4], bytes(4))),
        ("train-labels-idx1-ubyte.gz", idx_bytes(0x08, [5, 1], bytes(5))),
        ("train-labels-idx1-ubyte.gz", idx_bytes(0x0C, [5], bytes(20))),
        ("t10k-labels-idx1-ubyte.gz", idx_bytes(0x08, [3], bytes([1, 10, 2]))),
        ("t10k-images-idx3-ubyte.gz", b"garbage"),
    ],
)
def test_convert_bad_contents(tmp_path, name, data):
    source = make_source(tmp_path / "src")
    write(source / name, data, compress=True)
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        convert_fashion_mnist(out, source_dir=source)
    assert name in str(info.value)
    # Nothing is written when any input is bad, not even the good split.
    assert not out.exists()


def test_convert_keeps_its_files_and_replaces_other_contents_only_with_force(tmp_path):
    """A training may be reading the folder: the same conversion again
    leaves its files alone, and another (a limit) is refused in one line
    naming the first file it would change, unless forced."""
    source = make_source(tmp_path / "src")
    out = tmp_path / "out"
    convert_fashion_mnist(out, source_dir=source)
    stamps = {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)}
    again = convert_fashion_mnist(out, source_dir=source)
    assert again["train"]["unchanged"] and again["test"]["unchanged"]
    assert {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)} == stamps
    with pytest.raises(InputError) as info:
        convert_fashion_mnist(out, source_dir=source, train_limit=1)
    assert str(info.value) == (f"{out / 'train.h5'}: exists with other contents than this conversion writes; "
                               "give --force to replace it, or another -o")
    result = convert_fashion_mnist(out, source_dir=source, train_limit=1, force=True)
    assert result["train"]["count"] == 1 and not result["train"]["unchanged"] and result["test"]["unchanged"]
    assert sorted(os.listdir(out)) == ["test.h5", "test.txt", "train.h5", "train.txt"]  # no temporaries
    with h5py.File(out / "train.h5", "r") as h5:
        assert h5["data"].shape == (1, 1, 28, 28)
    assert os.stat(out / "test.h5").st_mtime_ns == stamps["test.h5"]
    with h5py.File(out / "test.h5", "r+") as h5:
        h5["label"][0] = 5  # one label edited
    with pytest.raises(InputError, match="test.h5: exists with other contents"):
        convert_fashion_mnist(out, source_dir=source, train_limit=1)
    (out / "test.txt").write_text("elsewhere.h5\n")
    (out / "test.h5").write_bytes(b"not HDF5")
    with pytest.raises(InputError, match="test.h5: exists with other contents"):
        convert_fashion_mnist(out, source_dir=source, train_limit=1)
    convert_fashion_mnist(out, source_dir=source, train_limit=1, force=True)
    assert (out / "test.txt").read_text() == f"{out / 'test.h5'}\n"


def test_convert_rejects_whitespace_in_out_dir(tmp_path):
    source = make_source(tmp_path / "src")
    with pytest.raises(InputError, match="whitespace"):
        convert_fashion_mnist(tmp_path / "has space", source_dir=source)


def test_convert_real_fashion_mnist(tmp_path):
    source = fashion_mnist_dir()
    if not os.path.isdir(source):
        pytest.skip(f"{source} not installed (Debian package dataset-fashion-mnist)")
    result = convert_fashion_mnist(tmp_path / "fm", train_limit=100, test_limit=50)
    assert result["train"]["count"] == 100 and result["test"]["count"] == 50
    assert result["source_dir"] == source
    with h5py.File(result["train"]["h5"], "r") as h5:
        data, label = h5["data"][...], h5["label"][...]
    assert data.shape == (100, 1, 28, 28) and data.dtype == np.float32
    assert 0.0 <= data.min() and data.max() < 1.0
    # Every value is a whole number of 1/256 steps.
    np.testing.assert_array_equal(data * 256, np.round(data * 256))
    assert set(np.unique(label)) <= set(range(10))
    # The published first training labels: Ankle boot, T-shirt/top, T-shirt/top.
    np.testing.assert_array_equal(label[:3], [9, 0, 0])
    with h5py.File(result["test"]["h5"], "r") as h5:
        assert h5["data"].shape == (50, 1, 28, 28)
        np.testing.assert_array_equal(h5["label"][:3], [9, 2, 1])


def test_a_signal_while_force_replaces_the_files_ends_the_run_once_all_are_in(tmp_path):
    """Ctrl-C or SIGTERM between the files of an existing folder left a new
    train.h5 beside an earlier test.h5."""
    import signal
    import subprocess
    import sys

    source = make_source(tmp_path / "src")
    out = tmp_path / "out"
    convert_fashion_mnist(out, source_dir=source)
    # An audit hook sees the first file renamed into place (os.replace raises "os.rename").
    code = ("import os, signal, sys\n"
            f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
            "from caffedsd.datasets import convert_fashion_mnist\n"
            "def hook(event, args):\n"
            "    if event == 'os.rename' and str(args[1]).endswith('train.h5'):\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "sys.addaudithook(hook)\n"
            f"convert_fashion_mnist({str(out)!r}, source_dir={str(source)!r}, train_limit=2, test_limit=1, "
            "force=True)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGTERM, result.stderr
    for name, count in (("train.h5", 2), ("test.h5", 1)):
        with h5py.File(out / name, "r") as h5:
            assert h5["data"].shape[0] == count, name
