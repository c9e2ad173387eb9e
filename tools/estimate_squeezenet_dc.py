#!/usr/bin/env python3
"""The size SqueezeNet v1.0 would reach in caffedsd's .dcz format with the
Deep Compression settings of the SqueezeNet paper: pruned 3x (67% of the
weights of every layer, keepmax; the DSD-SqueezeNet release also says
"pruned 3x") and 6-bit shared values, 8-bit relative indices (all layers are
convolutions).

It rests on: the exact layer shapes of caffedsd's v1.0 generator (checked
against the published model in the tests), and random weights (normal,
per-layer std sqrt(2 / fan_in)) in place of the trained ones, which are not
available here. Huffman gains depend on the trained weights' distribution,
so this is an estimate of the format's cost for those shapes, not a
measurement on the released model.

    .venv/bin/python tools/estimate_squeezenet_dc.py
"""
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib  # noqa: E402
from caffedsd.caffemodel import new_caffemodel, read_caffemodel  # noqa: E402
from caffedsd.dcz import compress  # noqa: E402
from caffedsd.plan import SparsityPlan  # noqa: E402
from caffedsd.pruning import prune_file  # noqa: E402
from caffedsd.squeezenet import SqueezeNetSpec  # noqa: E402


def main():
    spec = SqueezeNetSpec()
    net = spec.net("deploy")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        from caffedsd.caffe_env import import_caffe
        from google.protobuf import text_format

        caffe = import_caffe()
        (work / "deploy.prototxt").write_text(text_format.MessageToString(net))
        shapes_net = caffe.Net(str(work / "deploy.prototxt"), caffe.TEST)
        layers = []
        for layer in net.layer:
            if layer.name in shapes_net.params:
                blobs = shapes_net.params[layer.name]
                w_shape = blobs[0].data.shape
                fan_in = int(np.prod(w_shape[1:]))
                arrays = [rng.normal(0, np.sqrt(2 / fan_in), size=w_shape).astype(np.float32),
                          rng.normal(0, 0.01, size=blobs[1].data.shape).astype(np.float32)]
                layers.append((layer, arrays))
        dense = work / "squeezenet_v1.0_random.caffemodel"
        new_caffemodel(dense, layers, name=net.name)
        pruned = work / "pruned.caffemodel"
        prune_file(dense, pruned, SparsityPlan(sparsity=2 / 3))
        rows, container = compress(pruned, work / "squeezenet.dcz", {"conv": 6, "fc": 6}, {"conv": 8, "fc": 5})
        size = (work / "squeezenet.dcz").stat().st_size
        params = sum(b.data.size for layer in read_caffemodel(dense).layers for b in layer.blobs)
        print(f"parameters: {params}")
        print(f"dense caffemodel: {dense.stat().st_size} bytes")
        print(f"pruned 3x, 6-bit codes, 8-bit indices, .dcz: {size} bytes ({size / 2 ** 20:.3f} MiB, "
              f"{size / 1e6:.3f} MB); {dense.stat().st_size / size:.1f}x smaller than the dense file")
        stages = {"dense": sum(r.dense for r in rows),
                  "pruned + quantized": sum(r.before_huffman for r in rows) + container,
                  "pruned + quantized + Huffman (the file)": sum(r.stored for r in rows) + container}
        print("bytes by stage:", stages)


if __name__ == "__main__":
    benchlib.script_parser(__doc__).parse_args()
    main()
