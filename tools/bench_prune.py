#!/usr/bin/env python3
"""Benchmark ``caffedsd prune`` against protobuf alone on a VGG16-sized caffemodel.

Builds a caffemodel shaped like VGG16 (13 Convolution + 3 InnerProduct layers,
138,357,544 float32 parameters, ~553 MB) with seeded random weights, then runs,
alternating, each in its own child process:

  baseline  python: read the file's bytes, NetParameter.ParseFromString,
            SerializeToString, write the result to a file (protobuf alone);
  prune     caffedsd prune --weights FILE --sparsity 0.5 -o OUT.caffemodel

and reports the median wall time and peak RSS (ru_maxrss of that child from
os.wait4) of each against the targets: prune time <= 2.0x baseline time,
prune peak RSS <= 2.5x the file size.

One untimed warm-up of each runs first so that every timed run reads the
input from the page cache (the cache is not dropped: that needs root).

Run with the venv's python, from the repo root:

    .venv/bin/python tools/bench_prune.py --repeats 3
    .venv/bin/python tools/bench_prune.py --layers fc8,conv1_1 --repeats 1   # quick smoke run

Exit status is 0 whether targets pass or fail (a benchmark is not a test);
non-zero only when something crashed.
"""
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

import numpy as np

TIME_TARGET = 2.0  # prune wall time / baseline wall time
MEMORY_TARGET = 2.5  # prune peak RSS / file size

# (name, output channels, input channels) of VGG16's 3x3 convolutions.
VGG16_CONVS = [
    ("conv1_1", 64, 3), ("conv1_2", 64, 64),
    ("conv2_1", 128, 64), ("conv2_2", 128, 128),
    ("conv3_1", 256, 128), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
    ("conv4_1", 512, 256), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512),
]
# (name, outputs, inputs) of its InnerProduct layers.
VGG16_FCS = [("fc6", 4096, 512 * 7 * 7), ("fc7", 4096, 4096), ("fc8", 1000, 4096)]
VGG16_PARAMS = 138_357_544

BASELINE_CODE = """\
import sys
from caffedsd.caffe_proto import NetParameter
src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as handle:
    data = handle.read()
net = NetParameter()
net.ParseFromString(data)
out = net.SerializeToString()
with open(dst, "wb") as handle:
    handle.write(out)
print(len(net.layer), len(out))
"""


# ------------------------------------------------------------------ model --

def vgg16_specs(only=None):
    """[(name, type, blob shapes, LayerParameter fields)] in VGG16 order."""
    specs = []
    bottom = "data"
    for name, out_c, in_c in VGG16_CONVS:
        specs.append((name, "Convolution", [(out_c, in_c, 3, 3), (out_c,)], bottom,
                      {"num_output": out_c, "pad": 1, "kernel_size": 3}))
        bottom = name if not name.endswith(("1_2", "2_2", "3_3", "4_3", "5_3")) else "pool" + name[4]
    for name, outputs, inputs in VGG16_FCS:
        specs.append((name, "InnerProduct", [(outputs, inputs), (outputs,)], bottom, {"num_output": outputs}))
        bottom = name
    if only:
        unknown = set(only) - {s[0] for s in specs}
        if unknown:
            raise SystemExit(f"bench_prune: unknown layer(s) {', '.join(sorted(unknown))}")
        specs = [s for s in specs if s[0] in only]
    return specs


def layer_stream(specs, seed, std):
    """Yield (LayerParameter, [arrays]) one layer at a time: only the layer
    being written (and the one before it, still referenced by the writer's
    loop) is in memory, never all 138M floats."""
    from caffedsd.caffe_proto import LayerParameter

    rng = np.random.default_rng(seed)
    for name, kind, shapes, bottom, fields in specs:
        param = LayerParameter(name=name, type=kind, bottom=[bottom], top=[name])
        sub = param.convolution_param if kind == "Convolution" else param.inner_product_param
        for key, value in fields.items():
            if key in ("pad", "kernel_size"):
                getattr(sub, key).append(value)
            else:
                setattr(sub, key, value)
        arrays = []
        for shape in shapes:
            arr = rng.standard_normal(shape, dtype=np.float32)
            arr *= np.float32(std)
            arrays.append(arr)
        yield param, arrays


def build_model(path, specs, seed, std):
    from caffedsd.caffemodel import new_caffemodel, read_caffemodel

    start = time.perf_counter()
    new_caffemodel(path, layer_stream(specs, seed, std), name="VGG_ILSVRC_16_layers")
    seconds = time.perf_counter() - start
    expected = sum(int(np.prod(shape)) for spec in specs for shape in spec[2])
    model = read_caffemodel(path)
    counted = sum(blob.data.size for layer in model.layers for blob in layer.blobs)
    layers = [layer.name for layer in model.layers]
    del model
    size = path.stat().st_size
    if counted != expected or layers != [s[0] for s in specs]:
        raise SystemExit(f"bench_prune: built model holds {counted} parameters in {layers}, expected {expected}")
    if not expected * 4 <= size <= expected * 4 + 4096:
        raise SystemExit(f"bench_prune: built model is {size} bytes for {expected} float32 parameters")
    return {"path": str(path), "bytes": size, "params": counted, "layers": len(layers), "build_s": seconds}


# ------------------------------------------------------------- measuring --

def run_child(argv, log_path):
    """Run argv; return (wall seconds, peak RSS bytes, exit code)."""
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped by wait4
    return wall, usage.ru_maxrss * 1024, proc.returncode  # ru_maxrss is KiB on Linux


def remove(*paths):
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


class Bench:
    def __init__(self, model_path, workdir, sparsity):
        self.model = model_path
        self.workdir = workdir
        self.base_out = workdir / "baseline_out.caffemodel"
        self.prune_out = workdir / "pruned.caffemodel"
        self.prune_masks = workdir / "pruned.masks.h5"
        self.log = workdir / "child.log"
        caffedsd = benchlib.caffedsd_command("bench_prune")
        self.argv = {
            "baseline": [sys.executable, "-c", BASELINE_CODE, str(model_path), str(self.base_out)],
            "prune": [str(caffedsd), "prune", "--weights", str(model_path), "--sparsity", str(sparsity),
                      "-o", str(self.prune_out)],
        }

    def run(self, which, check=False):
        remove(self.base_out, self.prune_out, self.prune_masks)
        wall, rss, code = run_child(self.argv[which], self.log)
        output = self.log.read_text(errors="replace")
        if code != 0:
            raise SystemExit(f"bench_prune: {which} child exited with {code}:\n{output[-4000:]}")
        if check:
            self.check(which, output)
        remove(self.base_out, self.prune_out, self.prune_masks)
        return wall, rss

    def check(self, which, output):
        size = self.model.stat().st_size
        out = self.base_out if which == "baseline" else self.prune_out
        if not out.exists() or out.stat().st_size != size:
            raise SystemExit(f"bench_prune: {which} wrote {out} of "
                             f"{out.stat().st_size if out.exists() else 'no'} bytes, input has {size}:\n{output}")
        if which == "prune" and not self.prune_masks.exists():
            raise SystemExit(f"bench_prune: prune wrote no {self.prune_masks}:\n{output}")


# --------------------------------------------------------------- report --

def mib(n):
    return n / (1 << 20)


def summarize(model, runs, machine, args):
    med = {k: {"wall_s": benchlib.median(v, "wall_s"), "peak_rss_bytes": benchlib.median(v, "peak_rss_bytes")}
           for k, v in runs.items()}
    time_ratio = med["prune"]["wall_s"] / med["baseline"]["wall_s"]
    mem_ratio = med["prune"]["peak_rss_bytes"] / model["bytes"]
    return {
        "model": model,
        "repeats": args.repeats,
        "sparsity": args.sparsity,
        "warmup": "one untimed run of each before the timed ones; page cache not dropped",
        "runs": runs,
        "median": med,
        "baseline_rss_over_file": med["baseline"]["peak_rss_bytes"] / model["bytes"],
        "time_ratio": time_ratio,
        "time_target": TIME_TARGET,
        "time_pass": time_ratio <= TIME_TARGET,
        "memory_ratio": mem_ratio,
        "memory_target": MEMORY_TARGET,
        "memory_pass": mem_ratio <= MEMORY_TARGET,
        "machine": machine,
    }


def markdown(summary):
    m = summary["model"]
    runs = summary["runs"]
    labels = {"baseline": "protobuf alone (parse + serialize)", "prune": "`caffedsd prune --sparsity "
              f"{summary['sparsity']:g}`"}
    lines = [
        f"Model: {m['layers']} layers, {m['params']:,} parameters, {m['bytes']:,} bytes "
        f"({mib(m['bytes']):.1f} MiB). Medians of {summary['repeats']} runs each, alternating, "
        "after one untimed warm-up of each (input read from the page cache; cache not dropped).",
        "",
    ]
    lines.append(benchlib.median_table(runs, labels, [("median wall (s)", "wall_s", "{:.2f}"),
                                                      ("median peak RSS (MiB)", "peak_rss_mib", "{:.0f}"),
                                                      ("peak RSS / file size", "rss_over_file", "{:.2f}x")],
                                       each=("wall of each run (s)", "wall_s", "{:.2f}")))
    passed = {True: "PASS", False: "FAIL"}
    lines += ["", benchlib.markdown_table(["target", "measured", "limit", "result"], [
        ["prune wall time / protobuf wall time", f"{summary['time_ratio']:.2f}x", f"<= {TIME_TARGET:.1f}x",
         passed[summary["time_pass"]]],
        ["prune peak RSS / file size", f"{summary['memory_ratio']:.2f}x", f"<= {MEMORY_TARGET:.1f}x",
         passed[summary["memory_pass"]]]], "lrrl"), ""]
    lines.append("Machine: " + benchlib.machine_line(summary["machine"]))
    return "\n".join(lines)


# ----------------------------------------------------------------- main --

def add_model_options(parser):
    """The options of the VGG16-shaped model, shared with bench_compression."""
    parser.add_argument("--sparsity", type=float, default=0.5, help="--sparsity given to prune (default 0.5)")
    parser.add_argument("--layers", default=None,
                        help="comma-separated subset of VGG16 layers for a quick smoke run, e.g. fc8,conv1_1 "
                             "(default: all 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--std", type=float, default=0.01, help="std of the random weights (default 0.01)")


@contextlib.contextmanager
def vgg16_workspace(args, name):
    """Yield (workdir, model_path, model): the VGG16-shaped caffemodel of
    ``args`` built in --workdir or a temporary folder, removed afterwards
    unless --keep."""
    only = [s.strip() for s in args.layers.split(",") if s.strip()] if args.layers else None
    specs = vgg16_specs(only)
    created = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}.")) if created else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        model_path = workdir / "vgg16_random.caffemodel"
        print(f"building {len(specs)}-layer VGG16-shaped caffemodel in {model_path} ...", flush=True)
        model = build_model(model_path, specs, args.seed, args.std)
        model["generator_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if only is None and model["params"] != VGG16_PARAMS:
            raise SystemExit(f"{name}: {model['params']} parameters, VGG16 has {VGG16_PARAMS}")
        print(f"  {model['params']:,} parameters, {model['bytes']:,} bytes, built in {model['build_s']:.1f} s "
              f"(this process's peak RSS so far {mib(model['generator_peak_rss_bytes']):.0f} MiB)", flush=True)
        yield workdir, model_path, model
    finally:
        if created and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work folder: {workdir}")


def main(argv=None):
    parser = benchlib.parser(__doc__)
    add_model_options(parser)
    args = parser.parse_args(argv)

    with vgg16_workspace(args, "bench_prune") as (workdir, model_path, model):
        bench = Bench(model_path, workdir, args.sparsity)
        print("warm-up (untimed): one run of each, so timed runs read the input from the page cache", flush=True)
        for which in ("baseline", "prune"):
            bench.run(which, check=True)
        def measure(which, repeat):
            wall, rss = bench.run(which)
            return {"wall_s": wall, "peak_rss_bytes": rss, "peak_rss_mib": mib(rss),
                    "rss_over_file": rss / model["bytes"]}

        def show(which, repeat, run):
            print(f"  run {repeat + 1}/{args.repeats} {which:8s} {run['wall_s']:7.2f} s  "
                  f"peak RSS {run['peak_rss_mib']:7.0f} MiB", flush=True)

        runs = benchlib.alternate(("baseline", "prune"), args.repeats, measure, show)

        summary = summarize(model, runs, benchlib.machine(), args)
        summary["command"] = [Path(sys.executable).name] + sys.argv
        print()
        print(markdown(summary))
        benchlib.write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
