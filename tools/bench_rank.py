#!/usr/bin/env python3
"""Benchmark the singular values behind ``caffedsd rank`` on a VGG16-sized layer.

Side by side, in one run, on one seeded float32 matrix shaped like VGG16's
fc6 (4096 x 25088, 411 MB):

  before   np.linalg.svd(W as float64, compute_uv=False), what rank did;
  after    caffedsd.lowrank.singular_values(W): eigenvalues of the smaller
           Gram matrix W W^T, accumulated in float64 over column slices.

Prints each one's wall time, their ratio, and the largest difference of the
two sets of singular values relative to the largest one.

    .venv/bin/python tools/bench_rank.py                 # fc6, 4096 x 25088
    .venv/bin/python tools/bench_rank.py --shape 512x4608  # a VGG16 conv5 layer

Exit status 0 whether it is fast or not (a benchmark is not a test).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchlib import cpu_name  # noqa: E402
from caffedsd.lowrank import singular_values  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="4096x25088", help="rows x columns of the weight matrix")
    args = parser.parse_args()
    rows, cols = (int(v) for v in args.shape.split("x"))
    w = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32)
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
