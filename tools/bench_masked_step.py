#!/usr/bin/env python3
"""Benchmark the sparse phase's training step against a plain solver.step loop.

``caffedsd train-sparse`` trains with a MaskEnforcer attached to the pycaffe
Solver (callbacks zero pruned gradients at on_gradients_ready and pruned
weights at on_start) and runs ``caffedsd.training.train``, which calls
``solver.step(1)`` once per iteration and reads the loss (whatever else the
current train() does is timed too). This script times that loop against a
plain ``solver.step(1)`` loop (no enforcer, no callbacks) on the same net,
data and initial weights, and reports seconds per iteration and the ratio
masked / plain (target <= 1.05). It then times each enforcer call alone and
counts how often train() makes it per iteration (skip with --no-breakdown).

Nets (DummyData inputs, so no data files are needed):

  lenet       LeNet: conv1 20@5x5, pool, conv2 50@5x5, pool, ip1 500, relu,
              ip2 10, SoftmaxWithLoss; batch 64 of 1x28x28.
  squeezenet  SqueezeNet v1.0's layers (conv1 96@7x7/2, fire2..fire9,
              conv10 1000@1x1, global average pool; 1,248,424 parameters) at
              3x64x64 input, batch 8.

Masks: keepmax at --sparsity on the weights (blob 0) of every Convolution and
InnerProduct layer. Both runs start from the same pruned weights (saved once,
copied into every fresh solver). Each measurement is a fresh solver, untimed
warm-up iterations, then --iterations timed ones; plain and masked runs
alternate (ABBA order), --repeats times. After every masked run the script
asserts that every pruned weight is exactly 0.0.

Run with the venv's python, from the repo root:

    .venv/bin/python tools/bench_masked_step.py
    .venv/bin/python tools/bench_masked_step.py --nets lenet --repeats 3   # quick run

Exit status is 0 whether the target passes or fails (a benchmark is not a
test); non-zero only when something crashed.
"""
import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import cpu_name

os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402

from caffedsd.caffe_env import import_caffe  # noqa: E402
from caffedsd.masked_solver import MaskEnforcer  # noqa: E402
from caffedsd.masks import compute_mask  # noqa: E402
from caffedsd.training import net_loss, train  # noqa: E402

TARGET = 1.05  # masked s/iter / plain s/iter
PIECES = ("on_gradients_ready", "on_start", "zero_weights")  # the enforcer's per-iteration work
SQUEEZENET_V10_PARAMS = 1_248_424  # weights + biases of SqueezeNet v1.0 (1000 classes)

# ------------------------------------------------------------------ nets --

LENET = """\
name: "LeNet"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 64 dim: 1 dim: 28 dim: 28 } shape { dim: 64 }
                     data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 0 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 20 kernel_size: 5 stride: 1
                      weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 50 kernel_size: 5 stride: 1
                      weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

# (name, squeeze1x1, expand1x1, expand3x3) of SqueezeNet v1.0's fire modules.
FIRES = [("fire2", 16, 64, 64), ("fire3", 16, 64, 64), ("fire4", 32, 128, 128), ("fire5", 32, 128, 128),
         ("fire6", 48, 192, 192), ("fire7", 48, 192, 192), ("fire8", 64, 256, 256), ("fire9", 64, 256, 256)]
POOL_AFTER = {"fire4": "pool4", "fire8": "pool8"}  # max pools 3x3/2 after these (and pool1 after conv1)


def _conv(name, bottom, top, num_output, kernel, stride=1, pad=0, filler='type: "xavier"'):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top}"\n'
            f'  convolution_param {{ num_output: {num_output} kernel_size: {kernel} stride: {stride} pad: {pad}\n'
            f'    weight_filler {{ {filler} }} bias_filler {{ type: "constant" value: 0 }} }} }}\n')


def _relu(name, blob):
    return f'layer {{ name: "{name}" type: "ReLU" bottom: "{blob}" top: "{blob}" }}\n'


def _maxpool(name, bottom, top):
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{top}"\n'
            f'  pooling_param {{ pool: MAX kernel_size: 3 stride: 2 }} }}\n')


def squeezenet_prototxt(batch, size):
    """SqueezeNet v1.0 (deploy structure of DeepScale/SqueezeNet) with a
    DummyData input of batch x 3 x size x size and constant-0 labels."""
    text = [
        'name: "SqueezeNet_v1.0_like"\n',
        f'layer {{ name: "data" type: "DummyData" top: "data" top: "label"\n'
        f'  dummy_data_param {{ shape {{ dim: {batch} dim: 3 dim: {size} dim: {size} }} shape {{ dim: {batch} }}\n'
        f'    data_filler {{ type: "gaussian" std: 1 }} data_filler {{ type: "constant" value: 0 }} }} }}\n',
        _conv("conv1", "data", "conv1", 96, 7, stride=2),
        _relu("relu_conv1", "conv1"),
        _maxpool("pool1", "conv1", "pool1"),
    ]
    bottom = "pool1"
    for name, squeeze, e1, e3 in FIRES:
        s = f"{name}/squeeze1x1"
        text += [
            _conv(s, bottom, s, squeeze, 1), _relu(f"{name}/relu_squeeze1x1", s),
            _conv(f"{name}/expand1x1", s, f"{name}/expand1x1", e1, 1),
            _relu(f"{name}/relu_expand1x1", f"{name}/expand1x1"),
            _conv(f"{name}/expand3x3", s, f"{name}/expand3x3", e3, 3, pad=1),
            _relu(f"{name}/relu_expand3x3", f"{name}/expand3x3"),
            f'layer {{ name: "{name}/concat" type: "Concat" bottom: "{name}/expand1x1" '
            f'bottom: "{name}/expand3x3" top: "{name}/concat" }}\n',
        ]
        bottom = f"{name}/concat"
        if name in POOL_AFTER:
            text.append(_maxpool(POOL_AFTER[name], bottom, POOL_AFTER[name]))
            bottom = POOL_AFTER[name]
    text += [
        f'layer {{ name: "drop9" type: "Dropout" bottom: "{bottom}" top: "{bottom}" '
        'dropout_param { dropout_ratio: 0.5 } }\n',
        _conv("conv10", bottom, "conv10", 1000, 1, filler='type: "gaussian" mean: 0.0 std: 0.01'),
        _relu("relu_conv10", "conv10"),
        'layer { name: "pool10" type: "Pooling" bottom: "conv10" top: "pool10" '
        'pooling_param { pool: AVE global_pooling: true } }\n',
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "pool10" bottom: "label" top: "loss" }\n',
    ]
    return "".join(text)


def solver_prototxt(net_path, base_lr, seed, gpu):
    mode = f"solver_mode: GPU\ndevice_id: {gpu}\n" if gpu is not None else "solver_mode: CPU\n"
    return (f'net: "{net_path}"\ntype: "SGD"\nbase_lr: {base_lr}\nmomentum: 0.9\nweight_decay: 0.0005\n'
            f'lr_policy: "fixed"\nmax_iter: 1000000\ndisplay: 0\nsnapshot: 0\nsnapshot_after_train: false\n'
            f'random_seed: {seed}\n{mode}')


NETS = {
    # name: (description, prototxt builder, default timed iterations, base_lr)
    "lenet": ("LeNet, batch 64, 1x28x28", lambda: LENET, 40, 0.01),
    "squeezenet": ("SqueezeNet v1.0 layers, batch 8, 3x64x64", lambda: squeezenet_prototxt(8, 64), 10, 0.001),
}

# ----------------------------------------------------------------- bench --


class NetBench:
    """One net's solver file, pruned initial weights and masks."""

    def __init__(self, caffe, name, workdir, sparsity, seed, gpu):
        self.caffe = caffe
        self.name = name
        desc, build, self.default_iterations, base_lr = NETS[name]
        self.description = desc
        folder = Path(workdir) / name
        folder.mkdir(parents=True, exist_ok=True)
        net_path = folder / "train.prototxt"
        net_path.write_text(build())
        self.solver_path = folder / "solver.prototxt"
        self.solver_path.write_text(solver_prototxt(net_path, base_lr, seed, gpu))
        self.weights_path = folder / "init.caffemodel"

        solver = caffe.get_solver(str(self.solver_path))
        net = solver.net
        self.params = sum(int(b.data.size) for blobs in net.params.values() for b in blobs)
        self.weights = sum(int(blobs[0].data.size) for blobs in net.params.values())
        layer_types = dict(zip(net._layer_names, (layer.type for layer in net.layers)))
        self.masks = {}
        for layer, blobs in net.params.items():
            if layer_types[layer] in ("Convolution", "InnerProduct"):
                w = blobs[0].data
                mask = compute_mask(w, "keepmax", sparsity)
                self.masks[layer] = mask
                w[...] = np.where(mask, w, w.dtype.type(0))  # both runs start from the pruned weights
        self.masked_weights = sum(int(m.size) for m in self.masks.values())
        self.pruned = sum(int(m.size - np.count_nonzero(m)) for m in self.masks.values())
        net.save(str(self.weights_path))
        del net, solver
        gc.collect()

    def fresh_solver(self):
        solver = self.caffe.get_solver(str(self.solver_path))
        solver.net.copy_from(str(self.weights_path))
        return solver

    def run_plain(self, warmup, iterations):
        solver = self.fresh_solver()
        for _ in range(warmup):
            solver.step(1)
        start = time.perf_counter()
        for _ in range(iterations):
            solver.step(1)
        elapsed = time.perf_counter() - start
        del solver
        gc.collect()
        return elapsed / iterations

    def run_masked(self, warmup, iterations):
        solver = self.fresh_solver()
        enforcer = MaskEnforcer(self.masks).attach(solver, where=f"{self.name} net")
        train(solver, warmup, enforcer)
        start = time.perf_counter()
        curve = train(solver, iterations, enforcer)
        elapsed = time.perf_counter() - start
        assert len(curve) == iterations and curve[-1]["iter"] == warmup + iterations
        self.check_zeros(solver)
        enforcer.detach()
        del solver, enforcer
        gc.collect()
        return elapsed / iterations

    def check_zeros(self, solver):
        """Every pruned weight is exactly 0.0; survivors have trained."""
        for layer, mask in self.masks.items():
            w = solver.net.params[layer][0].data
            nonzero = int(np.count_nonzero(w[~mask]))
            assert nonzero == 0, f"{self.name}: {layer} has {nonzero} non-zero pruned weights"
            assert np.all(np.isfinite(w)), f"{self.name}: {layer} has non-finite weights"

    def breakdown(self, calls=30, iterations=10):
        """Where the masked loop's extra time goes: seconds per call of each
        enforcer method and of net_loss, alone (on a solver that has run a
        step, so data and diff are filled), and how many times train() calls
        each per iteration (counted in a separate untimed train() call of
        ``iterations``, as timed, so whatever the current train() does is
        what is counted)."""
        solver = self.fresh_solver()
        enforcer = MaskEnforcer(self.masks)
        counts = dict.fromkeys(PIECES, 0)

        def counted(piece, fn):
            def wrapper(*a, **k):
                counts[piece] += 1
                return fn(*a, **k)
            return wrapper

        # Instance attributes shadow the methods: attach registers these
        # wrappers as the callbacks and train() calls the wrapped zero_weights.
        enforcer._on_gradients_ready = counted("on_gradients_ready", enforcer._on_gradients_ready)
        enforcer._on_start = counted("on_start", enforcer._on_start)
        enforcer.zero_weights = counted("zero_weights", enforcer.zero_weights)
        enforcer.attach(solver)
        train(solver, 1, enforcer)  # fills data and diff; attach's own zeroing is not counted below
        counts.update(dict.fromkeys(PIECES, 0))
        train(solver, iterations, enforcer)
        per_iter = {piece: counts[piece] / iterations for piece in PIECES}
        per_iter["net_loss"] = 1.0  # train() reads the loss once per iteration

        def per_call(fn):
            fn()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            return (time.perf_counter() - start) / calls

        net = solver.net
        seconds = {
            "on_gradients_ready": per_call(enforcer._on_gradients_ready),
            "on_start": per_call(enforcer._on_start),
            "zero_weights": per_call(enforcer.zero_weights),
            "net_loss": per_call(lambda: net_loss(net)),
        }
        enforcer.detach()
        return {"s_per_call": seconds, "calls_per_iteration": per_iter,
                "s_per_iteration": sum(seconds[k] * per_iter[k] for k in seconds)}


# ---------------------------------------------------------------- report --


def code_info():
    """The caffedsd code measured: git HEAD, uncommitted changes under
    caffedsd/ (read-only git commands), sha256 of the two files timed."""
    import hashlib
    import subprocess

    import caffedsd
    package = Path(caffedsd.__file__).resolve().parent
    info = {"files": {}}
    for name in ("training.py", "masked_solver.py"):
        info["files"][name] = hashlib.sha256((package / name).read_bytes()).hexdigest()[:12]
    try:
        def git(*a):
            return subprocess.run(["git", *a], cwd=package.parent, capture_output=True, text=True,
                                  check=True).stdout.strip()
        info["head"] = git("rev-parse", "--short", "HEAD")
        info["modified"] = [line.split(maxsplit=1)[1] for line in git("status", "--porcelain", "--", "caffedsd").splitlines()]
    except (OSError, subprocess.CalledProcessError):
        info["head"], info["modified"] = None, []
    return info


def machine_info(gpu):
    cpu = cpu_name()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "mode": f"GPU {gpu}" if gpu is not None else "CPU",
        "code": code_info(),
        "loadavg_at_end": list(load) if load else None,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
    }


def summarize(bench, plain, masked, ratios, breakdown, args, iterations, warmup):
    med_plain = statistics.median(plain)
    med_masked = statistics.median(masked)
    med_ratio = statistics.median(ratios)
    return {
        "net": bench.name,
        "description": bench.description,
        "params": bench.params,
        "masked_weights": bench.masked_weights,
        "pruned_weights": bench.pruned,
        "sparsity": args.sparsity,
        "warmup_iterations": warmup,
        "timed_iterations": iterations,
        "repeats": args.repeats,
        "plain_s_per_iter": plain,
        "masked_s_per_iter": masked,
        "ratios": ratios,
        "median_plain_s_per_iter": med_plain,
        "median_masked_s_per_iter": med_masked,
        "median_ratio": med_ratio,
        "ratio_of_medians": med_masked / med_plain,
        "target": TARGET,
        "pass": med_ratio <= TARGET,
        "overhead": breakdown,
    }


def markdown(results, machine, repeats):
    lines = [
        "| net | params | plain s/iter | masked s/iter | ratio | target | result |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(f"| {r['description']} | {r['params']:,} | {r['median_plain_s_per_iter']:.4f} | "
                     f"{r['median_masked_s_per_iter']:.4f} | {r['median_ratio']:.4f} | <= {TARGET:.2f} | "
                     f"{'PASS' if r['pass'] else 'FAIL'} |")
    lines += ["", f"s/iter: medians of {repeats} runs each (alternating plain/masked); ratio: median of the "
              f"{repeats} per-pair ratios masked/plain.", ""]
    for r in results:
        lines.append(f"- {r['net']}: ratios " + ", ".join(f"{x:.3f}" for x in r["ratios"])
                     + f" (ratio of medians {r['ratio_of_medians']:.3f}; {r['warmup_iterations']} warm-up + "
                     f"{r['timed_iterations']} timed iterations per run; {r['pruned_weights']:,} of "
                     f"{r['masked_weights']:,} weights pruned)")
    lines.append("")
    for r in results:
        b = r["overhead"]
        if b is None:
            continue
        parts = ", ".join(f"{name} {1e3 * b['s_per_call'][name]:.3f} ms x {b['calls_per_iteration'][name]:g}"
                          for name in (*PIECES, "net_loss"))
        lines.append(f"- {r['net']} overhead, timed alone (ms per call x calls per iteration of train()): {parts}; "
                     f"total {1e3 * b['s_per_iteration']:.3f} ms per iteration = "
                     f"{100 * b['s_per_iteration'] / r['median_plain_s_per_iter']:.1f}% of the median plain step")
    lines.append("")
    code = machine.get("code") or {}
    if code.get("head"):
        dirty = f" + uncommitted changes to {', '.join(code['modified'])}" if code["modified"] else ""
        lines.append(f"Code: caffedsd at {code['head']}{dirty} (sha256 "
                     + ", ".join(f"{k} {v}" for k, v in code["files"].items()) + ")")
    lines.append(f"Machine: nproc {machine['nproc']} ({machine['cpu']}), {machine['platform']}, "
                 f"Python {machine['python']}, numpy {machine['numpy']}, Caffe mode {machine['mode']}")
    return "\n".join(lines)


# ------------------------------------------------------------------ main --


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", default="lenet,squeezenet",
                        help=f"comma-separated nets to run, of {', '.join(NETS)} (default: both)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating plain/masked pairs (default 5)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="timed iterations per run (default: "
                             + ", ".join(f"{n} {v[2]}" for n, v in NETS.items()) + ")")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations before each run (default 3)")
    parser.add_argument("--sparsity", type=float, default=0.6,
                        help="keepmax sparsity of every Convolution/InnerProduct weight (default 0.6)")
    parser.add_argument("--seed", type=int, default=1701, help="solver random_seed (default 1701)")
    parser.add_argument("--gpu", type=int, default=None, help="run on this GPU instead of the CPU")
    parser.add_argument("--no-breakdown", action="store_true",
                        help="skip timing the enforcer's calls alone")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers to this JSON file")
    args = parser.parse_args(argv)
    nets = [s.strip() for s in args.nets.split(",") if s.strip()]
    unknown = [n for n in nets if n not in NETS]
    if unknown or not nets:
        parser.error(f"--nets: unknown {', '.join(unknown) or '(none)'}; known: {', '.join(NETS)}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.iterations is not None and args.iterations < 1:
        parser.error("--iterations must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if not 0 < args.sparsity < 1:
        parser.error("--sparsity must be between 0 and 1")

    caffe = import_caffe(args.gpu)
    workdir = Path(tempfile.mkdtemp(prefix="bench_masked_step."))
    results = []
    try:
        for name in nets:
            bench = NetBench(caffe, name, workdir, args.sparsity, args.seed, args.gpu)
            iterations = args.iterations or bench.default_iterations
            print(f"{name}: {bench.description}; {bench.params:,} parameters "
                  f"({bench.weights:,} weights, {bench.params - bench.weights:,} biases); "
                  f"{len(bench.masks)} masked layers, {bench.pruned:,} of {bench.masked_weights:,} weights pruned",
                  flush=True)
            if name == "squeezenet" and bench.params != SQUEEZENET_V10_PARAMS:
                print(f"  note: SqueezeNet v1.0 has {SQUEEZENET_V10_PARAMS:,} parameters", flush=True)
            plain, masked, ratios = [], [], []
            for i in range(args.repeats):
                order = ("plain", "masked") if i % 2 == 0 else ("masked", "plain")
                got = {}
                for which in order:
                    run = bench.run_plain if which == "plain" else bench.run_masked
                    got[which] = run(args.warmup, iterations)
                plain.append(got["plain"])
                masked.append(got["masked"])
                ratios.append(got["masked"] / got["plain"])
                print(f"  pair {i + 1}/{args.repeats}: plain {got['plain']:.4f} s/iter, masked "
                      f"{got['masked']:.4f} s/iter, ratio {ratios[-1]:.3f}", flush=True)
            breakdown = None if args.no_breakdown else bench.breakdown(iterations=iterations)
            results.append(summarize(bench, plain, masked, ratios, breakdown, args, iterations, args.warmup))
        machine = machine_info(args.gpu)
        print()
        print(markdown(results, machine, args.repeats))
        if args.json:
            summary = {"command": [Path(sys.executable).name] + sys.argv, "machine": machine, "results": results}
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
            print(f"\nwrote {args.json}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
