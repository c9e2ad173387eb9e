"""Datasets for Caffe's HDF5Data layer.

Reads IDX files (the MNIST family's format, plain or gzip-compressed) and turns
Fashion-MNIST into the HDF5 files and list files that an ``HDF5Data`` layer
reads, with pixels scaled the way Caffe's LeNet example scales them.
"""
import gzip
import math
import os
import zlib
from pathlib import Path

import h5py
import numpy as np

from .atomic import atomic_folder, atomic_hdf5, atomic_path, atomic_paths, check_replaceable
from .errors import HDF5_DAMAGE, InputError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


def fashion_mnist_dir():
    """Where Fashion-MNIST's .gz files are: the folder CAFFEDSD_FASHION_MNIST
    names (a machine without Debian's package), else FASHION_MNIST_DIR."""
    return os.environ.get("CAFFEDSD_FASHION_MNIST") or FASHION_MNIST_DIR

# IDX stores multi-byte values big-endian.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"

# Caffe's LeNet example scales uint8 pixels by 1/256 (a power of two, so the
# float32 values are exact).
PIXEL_SCALE = 0.00390625

_SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path):
    """Return the array stored in the IDX file ``path`` (native byte order)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read IDX file ({exc.strerror})") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{path}: corrupt or truncated gzip data ({exc})") from None

    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise InputError(f"{path}: not an IDX file (bad magic number)")
    dtype = _IDX_DTYPES.get(raw[2])
    if dtype is None:
        raise InputError(f"{path}: unknown IDX data type code 0x{raw[2]:02X}")
    ndims = raw[3]
    header_size = 4 + 4 * ndims
    if len(raw) < header_size:
        raise InputError(f"{path}: IDX header truncated ({ndims} dimensions declared)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndims, offset=4))

    expected = math.prod(shape) * dtype.itemsize
    actual = len(raw) - header_size
    if actual != expected:
        dims = "x".join(map(str, shape))
        raise InputError(f"{path}: IDX data is {actual} bytes but dimensions {dims} need {expected}")
    # astype copies, so the result is writable and native-endian rather than a
    # read-only view of the file's bytes.
    data = np.frombuffer(raw, dtype=dtype, offset=header_size)
    return data.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def _check_limit(name, limit):
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise InputError(f"{name}: {limit!r} is not a positive integer")


def _load_split(source_dir, images_name, labels_name, limit):
    images_path = source_dir / images_name
    labels_path = source_dir / labels_name
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise InputError(f"{images_path}: expected N x 28 x 28 uint8 images, "
                         f"found {'x'.join(map(str, images.shape))} {images.dtype}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise InputError(f"{labels_path}: expected a 1-dimensional uint8 label list, "
                         f"found {'x'.join(map(str, labels.shape))} {labels.dtype}")
    if len(labels) != len(images):
        raise InputError(f"{labels_path}: {len(labels)} labels for the {len(images)} images in {images_path}")
    if len(images) == 0:
        raise InputError(f"{images_path}: holds no images")
    if labels.max() > 9:
        raise InputError(f"{labels_path}: label {int(labels.max())} is outside 0..9")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def _h5_arrays(images, labels):
    """{dataset: array} of the HDF5 file for ``images`` and ``labels``."""
    data = images.astype(np.float32)[:, np.newaxis, :, :]
    data *= np.float32(PIXEL_SCALE)
    return {"data": data, "label": labels.astype(np.float32)}


def _write_h5(path, arrays):
    with atomic_hdf5(path) as h5:
        for name, array in arrays.items():
            h5.create_dataset(name, data=array)


def _write_list(path, text):
    """A list of paths, which Caffe opens as it reads them: as the file
    system spells them (its encoding), not as text in another."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(os.fsencode(text))


def _holds(path, content):
    """Whether the file ``path`` holds ``content``: a list file's text, or
    an HDF5 file's {dataset: array} (its datasets and no others)."""
    try:
        if isinstance(content, str):
            return path.read_bytes() == os.fsencode(content)
        with h5py.File(path, "r") as h5:
            return set(h5) == set(content) and all(
                isinstance(h5[name], h5py.Dataset) and h5[name].shape == array.shape
                and h5[name].dtype == array.dtype and np.array_equal(h5[name][...], array)
                for name, array in content.items())
    # Unreadable or damaged, it is not known to hold the content, so only --force replaces it.
    except HDF5_DAMAGE:
        return False


def convert_fashion_mnist(out_dir, source_dir=None, train_limit=None, test_limit=None, force=False):
    """Write Fashion-MNIST as HDF5Data inputs into ``out_dir``.

    Creates ``train.h5``/``test.h5`` (``data``: float32 N x 1 x 28 x 28 scaled
    by 1/256, ``label``: float32 N) and ``train.txt``/``test.txt`` listing the
    absolute path of each. ``train_limit``/``test_limit`` keep only the first
    examples. ``source_dir`` defaults to fashion_mnist_dir(). Returns the
    paths and example counts, and for each split whether its files were
    already there as they would be written (``unchanged``). Files there with
    other contents are data that trainings and scans may be reading: they
    are refused unless ``force``.
    """
    _check_limit("--train-limit", train_limit)
    _check_limit("--test-limit", test_limit)
    source_dir = Path(source_dir if source_dir is not None else fashion_mnist_dir())
    if not source_dir.is_dir():
        raise InputError(f"{source_dir}: Fashion-MNIST folder not found "
                         "(Debian's package dataset-fashion-mnist installs it)")
    out_dir = Path(os.path.abspath(out_dir))
    # Caffe splits the list file on whitespace, so such a path cannot be listed.
    if any(ch.isspace() for ch in str(out_dir)):
        raise InputError(f"{out_dir}: output folder path contains whitespace, "
                         "which Caffe's HDF5Data list files cannot hold")

    # Everything is read and checked before anything is written, so a bad
    # test file does not leave a fresh train.h5 beside a stale test.h5.
    limits = {"train": train_limit, "test": test_limit}
    splits = {name: _load_split(source_dir, *files, limits[name]) for name, files in _SPLITS.items()}

    contents = {}
    for name, (images, labels) in splits.items():
        contents[f"{name}.h5"] = _h5_arrays(images, labels)
        contents[f"{name}.txt"] = f"{out_dir / name}.h5\n"  # the path the file has once the folder is in place
    there = {file: (out_dir / file).is_file() and _holds(out_dir / file, content)
             for file, content in contents.items()}
    for file in contents:  # before the first write: a folder in a later file's place
        check_replaceable(out_dir / file)
    other = [file for file in contents if (out_dir / file).exists() and not there[file]]
    if other and not force:
        raise InputError(f"{out_dir / other[0]}: exists with other contents than this conversion writes; "
                         "give --force to replace it, or another -o")
    # Into an existing folder (--force), all files or none: a full disk, a
    # Ctrl-C or SIGTERM after the first would leave a new train.h5 beside
    # an earlier test.h5.
    changed = [file for file in contents if not there[file]]
    with atomic_folder(out_dir) as folder, atomic_paths(*(folder / file for file in changed)) as temporaries:
        for file, tmp in zip(changed, temporaries):
            (_write_h5 if file.endswith(".h5") else _write_list)(tmp, contents[file])
    result = {name: {"h5": str(out_dir / f"{name}.h5"), "list": str(out_dir / f"{name}.txt"),
                     "count": int(len(images)), "unchanged": there[f"{name}.h5"] and there[f"{name}.txt"]}
              for name, (images, _) in splits.items()}
    result["source_dir"] = str(source_dir)
    return result
