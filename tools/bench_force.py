#!/usr/bin/env python3
"""Benchmark one force-regularization step on a VGG16-sized layer: this tree against an earlier commit.

What is timed is what ``caffedsd train-lowrank`` adds to every iteration:
``ForceRegularizer.on_gradients_ready`` on the host backend, on a real
pycaffe Net (an Input and one layer: VGG16's fc6 by default, 4096 x 25088,
392 MiB of float32 weights), with the weights and the gradient filled from a
fixed seed. The same step runs with this tree's ``caffedsd.force`` and with
``caffedsd/force.py`` as it was at ``--base`` (loaded from git into the
package, so it runs on this tree's hooks), each in its own child process,
alternating, --repeats times, and the report gives per kind the median
seconds of the step, the child's peak RSS during the step (its high-water
mark, reset just before the step through /proc/self/clear_refs) and its
growth (that peak minus the RSS just before the step), and the ratios this
tree / base. After each step the child checksums the gradient; the parent reports
the largest relative difference between the two versions' gradients.

The default base, 6424098, is the last commit whose force.py held whole
float64 copies of a layer (about 12x the layer's size for fc6).

Run with the venv's python, from the repo root:

    .venv/bin/python tools/bench_force.py                       # fc6, both force types
    .venv/bin/python tools/bench_force.py --layers conv5 --repeats 1

Exit status is 0 whatever the ratios; non-zero only when something crashed.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import benchlib
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASE = "6424098"
# name: (Caffe layer text with {n} outputs, input shape, outputs)
LAYERS = {
    "fc6": ('type: "InnerProduct" inner_product_param {{ num_output: {n} }}', (1, 25088), 4096),
    "conv5": ('type: "Convolution" convolution_param {{ num_output: {n} kernel_size: 3 pad: 1 }}', (1, 512, 14, 14),
              512),
}
CASES = (("degradation", "fixed"), ("constant", "adaptive"))


def net_text(layer):
    body, shape, outputs = LAYERS[layer]
    dims = " ".join(f"dim: {d}" for d in shape)
    return (f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'
            f'layer {{ name: "{layer}" bottom: "data" top: "out" {body.format(n=outputs)} }}\n')


def load_force(version):
    """caffedsd.force of this tree ("tree"), or as it was at a git revision."""
    if version == "tree":
        from caffedsd import force
        return force
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{version}:caffedsd/force.py"], check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"caffedsd.force_at_{version}")
    module.__package__ = "caffedsd"
    exec(compile(source, f"{version}:caffedsd/force.py", "exec"), module.__dict__)
    return module


def rss_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak():
    """Start the peak RSS (VmHWM) afresh from the current RSS (Linux 4.0+)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def peak_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(version, layer, force_type, decay_type, workdir):
    """One step in this process; prints a JSON line."""
    from caffedsd.caffe_env import import_caffe
    from caffedsd.hooks import HostBackend

    caffe = import_caffe()
    force = load_force(version)
    path = Path(workdir) / f"{layer}.prototxt"
    path.write_text(net_text(layer))
    net = caffe.Net(str(path), caffe.TEST)
    blob = net.params[layer][0]
    rng = np.random.default_rng(0)
    # In place: a temporary as large as the layer would set the peak that
    # the step's growth is measured against.
    data, diff = blob.data, blob.diff
    rng.standard_normal(dtype=np.float32, out=data)
    rng.standard_normal(dtype=np.float32, out=diff)
    diff *= 1e-3
    regularizer = force.ForceRegularizer(force.ForceSpec(1e-4, force_type, decay_type))
    regularizer.bind(net, HostBackend())
    reset_peak()
    before = rss_bytes()
    start = time.perf_counter()
    regularizer.on_gradients_ready()
    seconds = time.perf_counter() - start
    peak = peak_bytes()
    np.save(Path(workdir) / f"{version}-{layer}-{force_type}.npy", blob.diff)
    print(json.dumps({"step_s": seconds, "peak_rss_bytes": peak, "growth_bytes": max(0, peak - before),
                      "weights_bytes": int(blob.data.nbytes)}))


def main():
    parser = benchlib.parser(__doc__, repeats=3, workdir=False)
    parser.add_argument("--base", default=DEFAULT_BASE, help="the git revision to compare with (default %(default)s)")
    parser.add_argument("--layers", default="fc6", help=f"comma-separated, of {', '.join(LAYERS)} (default fc6)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    layers = args.layers.split(",")
    unknown = [layer for layer in layers if layer not in LAYERS]
    if unknown:
        raise SystemExit(f"bench_force: unknown layer {', '.join(unknown)} (known: {', '.join(LAYERS)})")
    kinds = ("base", "tree")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_force-") as work:
        for layer in layers:
            for force_type, decay_type in CASES:
                def measure(kind, repeat):
                    version = args.base if kind == "base" else "tree"
                    argv = [sys.executable, __file__, "--child", version, layer, force_type, decay_type, work]
                    proc = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ,
                                                                                           GLOG_minloglevel="2"))
                    if proc.returncode != 0:
                        raise SystemExit(f"bench_force: the {kind} child failed:\n{proc.stderr[-4000:]}")
                    return json.loads(proc.stdout.strip().splitlines()[-1])

                def show(kind, repeat, result):
                    print(f"{layer} {force_type}/{decay_type} {kind} run {repeat + 1}/{args.repeats}: "
                          f"step {result['step_s']:.2f} s, growth {result['growth_bytes'] / 2**20:.0f} MiB",
                          flush=True)

                runs = benchlib.alternate(kinds, args.repeats, measure, show)
                old = np.load(Path(work) / f"{args.base}-{layer}-{force_type}.npy")
                new = np.load(Path(work) / f"tree-{layer}-{force_type}.npy")
                difference = float(np.max(np.abs(new - old)) / np.max(np.abs(old)))
                results[f"{layer} {force_type}/{decay_type}"] = {"runs": runs, "max_relative_difference": difference}
    report(results, args)


def report(results, args):
    mib = 2 ** 20
    rows = []
    for case, result in results.items():
        runs = result["runs"]
        med = {kind: {key: benchlib.median(runs[kind], key) for key in ("step_s", "peak_rss_bytes", "growth_bytes")}
               for kind in runs}
        weights = runs["tree"][0]["weights_bytes"]
        rows.append([case, f"{weights / mib:.0f}",
                     f"{med['base']['step_s']:.2f}", f"{med['tree']['step_s']:.2f}",
                     f"{med['tree']['step_s'] / med['base']['step_s']:.2f}",
                     f"{med['base']['growth_bytes'] / mib:.0f}", f"{med['tree']['growth_bytes'] / mib:.0f}",
                     f"{med['base']['peak_rss_bytes'] / mib:.0f}", f"{med['tree']['peak_rss_bytes'] / mib:.0f}",
                     f"{med['tree']['peak_rss_bytes'] / med['base']['peak_rss_bytes']:.2f}",
                     f"{result['max_relative_difference']:.1e}"])
        result["median"] = med
    print()
    print(benchlib.markdown_table(["layer, force/decay", "weights MiB", f"step s ({args.base})", "step s (tree)",
                                   "step ratio", f"growth MiB ({args.base})", "growth MiB (tree)",
                                   f"peak RSS MiB ({args.base})", "peak RSS MiB (tree)", "peak ratio",
                                   "largest gradient difference"], rows))
    print(f"\nMedians of {args.repeats} runs of each, alternating, each a fresh child process; peak RSS = the "
          "child's high-water mark, reset just before the step; growth = that peak minus the RSS just before the "
          "step; gradient difference: max |tree - base| / max |base|.")
    info = benchlib.machine()
    print("Machine: " + benchlib.machine_line(info))
    benchlib.write_json(args.json, {"base": args.base, "results": results, "machine": info})


if __name__ == "__main__":
    main()
