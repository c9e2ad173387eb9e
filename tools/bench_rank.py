#!/usr/bin/env python3
"""Benchmark the singular values behind ``caffedsd rank`` on a VGG16-sized layer.

Side by side, in one run, on one seeded float32 matrix shaped like VGG16's
fc6 (4096 x 25088, 411 MB):

  before   np.linalg.svd(W as float64, compute_uv=False), what rank did;
  after    caffedsd.lowrank.singular_values(W): eigenvalues of the smaller
           Gram matrix W W^T, accumulated in float64 over column slices.

Prints each one's wall time, their ratio, and the largest difference of the
two sets of singular values relative to the largest one.

With ``--factor R``, what ``decompose`` does instead: the rank-R factors of
the matrix,

  before   np.linalg.svd(W as float64), each factor sqrt(S_R) times U_R or V_R^T;
  after    caffedsd.lowrank.factor(W, R): the Gram matrix's top R eigenpairs,
           the other side's vectors by one product with W, by slices;

each in a fresh process, so each one's peak resident memory is its own, and
the largest difference of the two products relative to the largest entry.

    .venv/bin/python tools/bench_rank.py                 # fc6, 4096 x 25088
    .venv/bin/python tools/bench_rank.py --shape 512x4608  # a VGG16 conv5 layer
    .venv/bin/python tools/bench_rank.py --factor 256    # decompose's fc6 at rank 256

Exit status 0 whether it is fast or not (a benchmark is not a test).
"""
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib  # noqa: E402
from benchlib import cpu_name  # noqa: E402
from caffedsd.lowrank import factor, singular_values  # noqa: E402


def _matrix(rows, cols):
    """Seeded, made 256 rows at a time, so that making it leaves no peak of its own above the matrix."""
    rng, w = np.random.default_rng(0), np.empty((rows, cols), np.float32)
    for i in range(0, rows, 256):
        w[i:i + 256] = rng.standard_normal((min(256, rows - i), cols), dtype=np.float32)
    return w


def _svd_factor(w, rank):
    """What decompose did before: a float64 SVD with every singular vector."""
    u, s, vt = np.linalg.svd(np.asarray(w, dtype=np.float64), full_matrices=False)
    root = np.sqrt(s[:rank])
    return (root[:, None] * vt[:rank]).astype(np.float32), (u[:, :rank] * root).astype(np.float32)


def _timed_factor(method, rows, cols, rank, folder, out):
    w = _matrix(rows, cols)
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    first, second = _svd_factor(w, rank) if method == "before" else factor(w, rank)[:2]
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # To a file, not through the queue: a parent holding 800 MB products
    # would pass its peak on to the next child (ru_maxrss survives fork).
    np.save(Path(folder) / f"{method}.npy", second.astype(np.float64) @ first)
    out.put((seconds, peak / 1024, (peak - start_rss) / 1024))


def compare_factors(rows, cols, rank):
    context = multiprocessing.get_context("spawn")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for method in ("before", "after"):
            queue = context.Queue()
            child = context.Process(target=_timed_factor, args=(method, rows, cols, rank, folder, queue))
            child.start()
            results[method] = queue.get()
            child.join()
        before, after = (np.load(Path(folder) / f"{m}.npy", mmap_mode="r") for m in ("before", "after"))
        diff = float(np.abs(before - after).max() / np.abs(before).max())
    print(f"cpu: {cpu_name()}")
    print(f"matrix {rows}x{cols} float32 ({rows * cols * 4 / 2 ** 20:.0f} MiB), rank {rank}")
    for method, label in (("before", "full svd, float64, every vector"), ("after", "Gram eigenpairs, float64")):
        seconds, peak, grown = results[method][:3]
        print(f"{method:6} ({label}): {seconds:.1f} s, peak RSS {peak:.0f} MiB "
              f"({grown:.0f} MiB over the peak before the call)")
    print(f"ratio before/after: {results['before'][0] / results['after'][0]:.1f}x time; "
          f"max |difference of the products| / max |entry|: {diff:.1e}")


def main():
    parser = benchlib.script_parser(__doc__)
    parser.add_argument("--shape", default="4096x25088", help="rows x columns of the weight matrix")
    parser.add_argument("--factor", type=int, default=None, metavar="R",
                        help="time decompose's rank-R factors instead of rank's singular values")
    args = parser.parse_args()
    rows, cols = (int(v) for v in args.shape.split("x"))
    if args.factor is not None:
        if not 1 <= args.factor <= min(rows, cols):
            parser.error(f"--factor {args.factor}: must be 1 to {min(rows, cols)}")
        compare_factors(rows, cols, args.factor)
        return
    w = _matrix(rows, cols)
    start = time.perf_counter()
    after = singular_values(w)
    t_after = time.perf_counter() - start
    start = time.perf_counter()
    before = np.linalg.svd(np.asarray(w, dtype=np.float64), compute_uv=False)
    t_before = time.perf_counter() - start
    diff = float(np.abs(after - before).max() / before[0])
    print(f"cpu: {cpu_name()}")
    print(f"matrix {rows}x{cols} float32")
    print(f"before (full svd, compute_uv=False, float64): {t_before:.1f} s")
    print(f"after  (Gram eigenvalues, float64):          {t_after:.1f} s")
    print(f"ratio before/after: {t_before / t_after:.1f}x; max |difference| / s_max: {diff:.1e}")


if __name__ == "__main__":
    main()
