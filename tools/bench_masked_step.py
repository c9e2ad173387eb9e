#!/usr/bin/env python3
"""Benchmark the sparse phase's training step against a plain solver.step loop.

``caffedsd train-sparse`` trains through ``caffedsd.training.train`` with
the masks (a MaskEnforcer hook) in the solver's HookDispatcher: pruned
gradients are zeroed at on_gradients_ready and pruned weights at on_start,
and train() calls ``solver.step(1)`` once per iteration and reads the loss.
This script times that loop against a plain ``solver.step(1)`` loop (no
hooks) on the same net, data and initial weights, and reports seconds per
iteration and the ratio hooked / plain, for each variant:

  CPU (default)   loop     train() with no hooks: the driver's own cost
                  host     masks on the host backend (target <= 1.05)
  --gpu ID        loop     as on the CPU
                  device   masks on the device backend: CuPy over the
                           blobs' GPU memory, no copies (target <= 1.02)
                  host     the host fallback in GPU mode (blobs copied to
                           the host and back; measured for comparison)
                  device+force  masks and force regularization (degradation,
                           decay 1e-4) on the device: what the force costs
  --force         adds host+force on the CPU

It then times each hook point alone and counts how often train() runs it
per iteration (skip with --no-breakdown). With --profile DIR, one more run
of the plain loop and of each variant is profiled (cProfile, timed
iterations only) into DIR/NET.profile.txt. cProfile does not see a
Boost.Python call: Caffe's step (and a wait for the GPU in it) is in the own
time of train(), or of steps() for the plain loop, the Python hooks it calls
left out; so these tell Caffe's and the GPU's share of a difference from the
Python side's.

Nets (DummyData inputs, so no data files are needed):

  lenet       LeNet: conv1 20@5x5, pool, conv2 50@5x5, pool, ip1 500, relu,
              ip2 10, SoftmaxWithLoss; batch 64 of 1x28x28.
  squeezenet  SqueezeNet v1.0 from caffedsd's generator (SqueezeNetSpec()):
              1,248,424 parameters; batch 32 of 3x227x227 with --gpu,
              batch 8 of 3x64x64 on the CPU.
  tiny        two InnerProducts (8 -> 8 -> 4), batch 2 of 8 values: a step
              of microseconds, where the per-iteration cost of train() and of
              the hook points shows (not in the default nets).
  vgg16       VGG16's layers (13 conv 3x3, fc6/fc7 4096, fc8 1000;
              138,357,544 parameters); batch 16 of 3x224x224; GPU only
              (--nets vgg16 on the CPU works, slowly).

Masks: keepmax at --sparsity on the weights (blob 0) of every Convolution and
InnerProduct layer. Both runs start from the same pruned weights (saved once,
copied into every fresh solver). Each measurement is a fresh solver, untimed
warm-up iterations, then --iterations timed ones (with --gpu, each timed
stretch ends with a device synchronize); plain and hooked runs alternate
(ABBA order), --repeats times. After every run with masks the script asserts
that every pruned weight is exactly 0.0.

Run with the venv's python, from the repo root:

    .venv/bin/python tools/bench_masked_step.py
    .venv/bin/python tools/bench_masked_step.py --nets lenet --repeats 3      # quick run
    .venv/bin/python tools/bench_masked_step.py --gpu 0 --nets lenet,squeezenet,vgg16 --json gpu.json

Exit status is 0 whether the targets pass or fail (a benchmark is not a
test); non-zero only when something crashed.
"""
import cProfile
import gc
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib

os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from caffedsd.caffe_env import import_caffe  # noqa: E402
from caffedsd.caffe_proto import NetParameter  # noqa: E402
from caffedsd.force import ForceRegularizer, ForceSpec  # noqa: E402
from caffedsd.hooks import HookDispatcher, device_hooks_available  # noqa: E402
from caffedsd.mask_enforcer import MaskEnforcer  # noqa: E402
from caffedsd.masks import compute_mask, zero_count  # noqa: E402
from caffedsd.squeezenet import SqueezeNetSpec  # noqa: E402
from caffedsd.training import StepLoss, train  # noqa: E402

VARIANTS = ("loop", "host", "device", "host+force", "device+force")
TARGETS = {"host": 1.05, "device": 1.02}  # hooked s/iter / plain s/iter; variants with force have none
FORCE_DECAY = 1e-4
POINTS = ("on_start", "on_gradients_ready", "settle")  # the dispatcher's work per iteration
SQUEEZENET_V10_PARAMS = 1_248_424  # weights + biases of SqueezeNet v1.0 (1000 classes)
VGG16_PARAMS = 138_357_544

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


TINY = """\
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 2 dim: 8 } shape { dim: 2 }
                     data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 0 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 8 weight_filler { type: "xavier" } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def _dummy_data(net, batch, channels, size):
    layer = net.layer.add(name="data", type="DummyData", top=["data", "label"])
    layer.dummy_data_param.shape.add(dim=[batch, channels, size, size])
    layer.dummy_data_param.shape.add(dim=[batch])
    layer.dummy_data_param.data_filler.add(type="gaussian", std=1)
    layer.dummy_data_param.data_filler.add(type="constant", value=0)


def squeezenet_prototxt(batch, size):
    """SqueezeNet v1.0 as caffedsd's generator makes it, its data layers
    replaced by DummyData of batch x 3 x size x size (constant-0 labels)."""
    made = SqueezeNetSpec(input_size=size, train_batch=batch).net("train_val")
    net = NetParameter(name=made.name)
    _dummy_data(net, batch, 3, size)
    net.layer.extend(layer for layer in made.layer if layer.name != "data")
    return text_format.MessageToString(net)


VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def vgg16_prototxt(batch, size=224):
    """VGG16's layers (Simonyan & Zisserman, configuration D) with DummyData."""
    net = NetParameter(name="VGG16_like")
    _dummy_data(net, batch, 3, size)
    bottom = "data"
    for block, widths in enumerate(VGG16_BLOCKS, 1):
        for index, width in enumerate(widths, 1):
            name = f"conv{block}_{index}"
            conv = net.layer.add(name=name, type="Convolution", bottom=[bottom], top=[name])
            conv.convolution_param.num_output = width
            conv.convolution_param.kernel_size.append(3)
            conv.convolution_param.pad.append(1)
            conv.convolution_param.weight_filler.type = "xavier"
            net.layer.add(name=f"relu{block}_{index}", type="ReLU", bottom=[name], top=[name])
            bottom = name
        pool = net.layer.add(name=f"pool{block}", type="Pooling", bottom=[bottom], top=[f"pool{block}"])
        pool.pooling_param.pool = pool.pooling_param.MAX
        pool.pooling_param.kernel_size = 2
        pool.pooling_param.stride = 2
        bottom = f"pool{block}"
    for name, width in (("fc6", 4096), ("fc7", 4096), ("fc8", 1000)):
        fc = net.layer.add(name=name, type="InnerProduct", bottom=[bottom], top=[name])
        fc.inner_product_param.num_output = width
        fc.inner_product_param.weight_filler.type = "gaussian"
        fc.inner_product_param.weight_filler.std = 0.005
        bottom = name
        if name != "fc8":
            net.layer.add(name=f"relu{name[2:]}", type="ReLU", bottom=[name], top=[name])
    net.layer.add(name="loss", type="SoftmaxWithLoss", bottom=["fc8", "label"], top=["loss"])
    return text_format.MessageToString(net)


def solver_prototxt(net_path, base_lr, seed, gpu):
    mode = f"solver_mode: GPU\ndevice_id: {gpu}\n" if gpu is not None else "solver_mode: CPU\n"
    return (f'net: "{net_path}"\ntype: "SGD"\nbase_lr: {base_lr}\nmomentum: 0.9\nweight_decay: 0.0005\n'
            f'lr_policy: "fixed"\nmax_iter: 1000000\ndisplay: 0\nsnapshot: 0\nsnapshot_after_train: false\n'
            f'random_seed: {seed}\n{mode}')


def net_choices(gpu):
    """name: (description, prototxt builder, default timed iterations, base_lr)."""
    sq_batch, sq_size = (32, 227) if gpu is not None else (8, 64)
    return {
        "lenet": ("LeNet, batch 64, 1x28x28", lambda: LENET, 40 if gpu is None else 200, 0.01),
        "squeezenet": (f"SqueezeNet v1.0, batch {sq_batch}, 3x{sq_size}x{sq_size}",
                       lambda: squeezenet_prototxt(sq_batch, sq_size), 10 if gpu is None else 50, 0.001),
        "tiny": ("two InnerProducts 8-8-4, batch 2", lambda: TINY, 2000, 0.01),
        "vgg16": ("VGG16-sized, batch 16, 3x224x224", lambda: vgg16_prototxt(16), 3 if gpu is None else 20, 0.001),
    }


# ----------------------------------------------------------------- bench --


class NetBench:
    """One net's solver file, pruned initial weights and masks."""

    def __init__(self, caffe, name, spec, workdir, sparsity, seed, gpu):
        self.caffe = caffe
        self.name = name
        self.gpu = gpu
        desc, build, self.default_iterations, base_lr = spec
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
        self.pruned = sum(zero_count(m) for m in self.masks.values())
        net.save(str(self.weights_path))
        del net, solver
        gc.collect()

    def fresh_solver(self):
        solver = self.caffe.get_solver(str(self.solver_path))
        solver.net.copy_from(str(self.weights_path))
        return solver

    def hooked_solver(self, variant):
        """A fresh solver with the variant's hooks: "host", "device",
        "host+force", "device+force"."""
        backend, _, force = variant.partition("+")
        solver = self.fresh_solver()
        dispatcher = HookDispatcher.for_solver(solver, self.gpu, backend)
        if force:
            dispatcher.add(ForceRegularizer(ForceSpec(FORCE_DECAY)), solver)
        dispatcher.add(MaskEnforcer(self.masks, where=f"{self.name} net"), solver)
        assert dispatcher.backend.name == backend, (dispatcher.backend.name, backend)
        return solver, dispatcher

    def run_plain(self, warmup, iterations, profiler=None):
        solver = self.fresh_solver()
        for _ in range(warmup):
            solver.step(1)
        benchlib.synchronize(self.gpu)
        with _timed(profiler) as clock:
            steps(solver, iterations)
            benchlib.synchronize(self.gpu)
        elapsed = clock.seconds
        del solver
        gc.collect()
        return elapsed / iterations

    def run_hooked(self, variant, warmup, iterations, profiler=None):
        if variant == "loop":
            solver, dispatcher = self.fresh_solver(), None
        else:
            solver, dispatcher = self.hooked_solver(variant)
        train(solver, warmup, dispatcher)
        benchlib.synchronize(self.gpu)
        with _timed(profiler) as clock:
            curve = train(solver, iterations, dispatcher)
            benchlib.synchronize(self.gpu)
        elapsed = clock.seconds
        assert len(curve) == iterations and curve[-1]["iter"] == warmup + iterations - 1
        if dispatcher is not None:
            self.check_zeros(solver)
            dispatcher.detach()
        del solver, dispatcher
        gc.collect()
        return elapsed / iterations

    def check_zeros(self, solver):
        """Every pruned weight is exactly 0.0; survivors are finite."""
        for layer, mask in self.masks.items():
            w = solver.net.params[layer][0].data
            nonzero = int(np.count_nonzero(w[~mask]))
            assert nonzero == 0, f"{self.name}: {layer} has {nonzero} non-zero pruned weights"
            assert np.all(np.isfinite(w)), f"{self.name}: {layer} has non-finite weights"

    def breakdown(self, variant, calls=30, iterations=10):
        """Where the hooked loop's extra time goes: seconds per call of each
        dispatcher hook point and of the loss read (StepLoss, "net_loss"),
        alone (on a solver that has run a step, so data and diff are filled;
        with --gpu each call is followed by a synchronize), and how many
        times train() runs each per iteration (counted in an untimed train()
        call of ``iterations``)."""
        solver, dispatcher = self.hooked_solver(variant)
        counts = dict.fromkeys(POINTS, 0)
        probe = _Counter(counts)
        # A hook that only counts, run by the same dispatcher at every point.
        dispatcher.add(probe, solver)
        train(solver, 1, dispatcher)
        counts.update(dict.fromkeys(POINTS, 0))
        train(solver, iterations, dispatcher)
        per_iter = {point: counts[point] / iterations for point in POINTS}
        per_iter["net_loss"] = 1.0  # train() reads the loss once per iteration
        dispatcher.remove(probe)

        def per_call(fn):
            fn()
            benchlib.synchronize(self.gpu)
            start = time.perf_counter()
            for _ in range(calls):
                fn()
                benchlib.synchronize(self.gpu)
            return (time.perf_counter() - start) / calls

        loss = StepLoss(solver.net)
        seconds = {point: per_call(getattr(dispatcher, point)) for point in POINTS}
        seconds["net_loss"] = per_call(loss)
        dispatcher.detach()
        return {"variant": variant, "s_per_call": seconds, "calls_per_iteration": per_iter,
                "s_per_iteration": sum(seconds[k] * per_iter[k] for k in seconds)}


def steps(solver, iterations):
    """The plain loop: ``solver.step(1)`` ``iterations`` times."""
    for _ in range(iterations):
        solver.step(1)


class _timed:
    """Wall seconds of a with-block (``.seconds``), under ``profiler`` (a
    cProfile.Profile, or None) for that block only."""

    def __init__(self, profiler=None):
        self.profiler = profiler
        self.seconds = None

    def __enter__(self):
        if self.profiler is not None:
            self.profiler.enable()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._start
        if self.profiler is not None:
            self.profiler.disable()
        return False


def profile_text(bench, warmup, iterations, variants, top=25):
    """Tables of one plain run and one run of each variant of ``bench``
    under cProfile (their timed iterations only): the ``top`` functions by
    own time, in calls and microseconds per iteration (pstats prints
    milliseconds, where a tiny net's costs are all 0.000)."""
    lines = [f"{bench.name}: {bench.description}; {warmup} warm-up + {iterations} profiled iterations a run"]
    for which in ("plain", *variants):
        profiler = cProfile.Profile()
        seconds = (bench.run_plain(warmup, iterations, profiler) if which == "plain"
                   else bench.run_hooked(which, warmup, iterations, profiler))
        rows = sorted(pstats.Stats(profiler).stats.items(), key=lambda item: -item[1][2])[:top]
        lines += ["", f"== {which}: {1e6 * seconds:.1f} us/iter under the profiler",
                  f"{'calls/iter':>10} {'own us/iter':>12} {'cum us/iter':>12}  function"]
        for (path, line, function), (_, calls, own, cumulative, _) in rows:
            where = f"{Path(path).name}:{line}({function})" if line else function
            lines.append(f"{calls / iterations:10.3g} {1e6 * own / iterations:12.2f} "
                         f"{1e6 * cumulative / iterations:12.2f}  {where}")
    return "\n".join(lines) + "\n"


class _Counter:
    """A SolverHook that counts the dispatcher's calls (order: after all)."""

    order = 10 ** 6

    def __init__(self, counts):
        self.counts = counts

    def bind(self, net, backend):
        pass

    def on_start(self):
        self.counts["on_start"] += 1

    def on_gradients_ready(self):
        self.counts["on_gradients_ready"] += 1

    def settle(self):
        self.counts["settle"] += 1

    def release(self):
        pass


# ---------------------------------------------------------------- report --


def code_info():
    """The caffedsd code measured: git HEAD, uncommitted changes under
    caffedsd/ (read-only git commands), sha256 of the files timed."""
    import hashlib
    import subprocess

    import caffedsd
    package = Path(caffedsd.__file__).resolve().parent
    info = {"files": {}}
    for name in ("training.py", "hooks.py", "mask_enforcer.py", "device.py", "force.py"):
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
    ok, why = device_hooks_available()
    return benchlib.machine(mode=f"GPU {gpu}" if gpu is not None else "CPU", gpu=benchlib.gpu_name(gpu),
                            device_hooks="yes" if ok else f"no: {why}", code=code_info(),
                            omp_num_threads=os.environ.get("OMP_NUM_THREADS"))


def summarize(bench, variant, plain, hooked, args, iterations):
    ratios = [h / p for p, h in zip(plain, hooked)]
    med_ratio = statistics.median(ratios)
    # A step of microseconds shows the fixed costs; no target is meant for it.
    target = None if bench.name == "tiny" else TARGETS.get(variant)
    return {
        "net": bench.name,
        "variant": variant,
        "description": bench.description,
        "params": bench.params,
        "masked_weights": bench.masked_weights,
        "pruned_weights": bench.pruned,
        "sparsity": args.sparsity,
        "warmup_iterations": args.warmup,
        "timed_iterations": iterations,
        "repeats": args.repeats,
        "plain_s_per_iter": plain,
        "hooked_s_per_iter": hooked,
        "ratios": ratios,
        "median_plain_s_per_iter": statistics.median(plain),
        "median_hooked_s_per_iter": statistics.median(hooked),
        "median_ratio": med_ratio,
        "ratio_of_medians": statistics.median(hooked) / statistics.median(plain),
        "target": target,
        "pass": None if target is None else med_ratio <= target,
    }


def markdown(results, breakdowns, machine, repeats):
    lines = [
        "| net | hooks | params | plain s/iter | hooked s/iter | ratio | target | result |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        target = f"<= {r['target']:.2f}" if r["target"] else "-"
        verdict = "-" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL")
        lines.append(f"| {r['description']} | {r['variant']} | {r['params']:,} | {r['median_plain_s_per_iter']:.4g} | "
                     f"{r['median_hooked_s_per_iter']:.4g} | {r['median_ratio']:.4f} | {target} | {verdict} |")
    lines += ["", f"s/iter: medians of {repeats} runs each (alternating plain/hooked); ratio: median of the "
              f"{repeats} per-pair ratios hooked/plain.", ""]
    for r in results:
        lines.append(f"- {r['net']} {r['variant']}: ratios " + ", ".join(f"{x:.3f}" for x in r["ratios"])
                     + f" (ratio of medians {r['ratio_of_medians']:.3f}; {r['warmup_iterations']} warm-up + "
                     f"{r['timed_iterations']} timed iterations per run; "
                     + ("no masks held: train() alone)" if r["variant"] == "loop" else
                        f"{r['pruned_weights']:,} of {r['masked_weights']:,} weights pruned)"))
    lines.append("")
    for net, b in breakdowns:
        plain = next(r["median_plain_s_per_iter"] for r in results if r["net"] == net)
        parts = ", ".join(f"{name} {1e3 * b['s_per_call'][name]:.3f} ms x {b['calls_per_iteration'][name]:g}"
                          for name in (*POINTS, "net_loss"))
        lines.append(f"- {net} {b['variant']} overhead, timed alone (ms per call x calls per iteration of train()): "
                     f"{parts}; total {1e3 * b['s_per_iteration']:.3f} ms per iteration = "
                     f"{100 * b['s_per_iteration'] / plain:.1f}% of the median plain step")
    lines.append("")
    code = machine.get("code") or {}
    if code.get("head"):
        dirty = f" + uncommitted changes to {', '.join(code['modified'])}" if code["modified"] else ""
        lines.append(f"Code: caffedsd at {code['head']}{dirty} (sha256 "
                     + ", ".join(f"{k} {v}" for k, v in code["files"].items()) + ")")
    lines.append("Machine: " + benchlib.machine_line(machine))
    return "\n".join(lines)


# ------------------------------------------------------------------ main --


def main(argv=None):
    parser = benchlib.parser(__doc__, repeats=5, workdir=False)
    parser.add_argument("--nets", default=None,
                        help="comma-separated nets of lenet, squeezenet, tiny, vgg16 "
                             "(default: lenet,squeezenet on the CPU, lenet,squeezenet,vgg16 with --gpu)")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated variants of {', '.join(VARIANTS)} "
                             "(default: loop,host on the CPU, loop,device,host,device+force with --gpu)")
    parser.add_argument("--force", action="store_true", help="also measure host+force on the CPU")
    parser.add_argument("--iterations", type=int, default=None, help="timed iterations per run (default: per net)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations before each run (default 3)")
    parser.add_argument("--sparsity", type=float, default=0.6,
                        help="keepmax sparsity of every Convolution/InnerProduct weight (default 0.6)")
    parser.add_argument("--seed", type=int, default=1701, help="solver random_seed (default 1701)")
    parser.add_argument("--gpu", type=int, default=None, metavar="ID", help="run on this GPU instead of the CPU")
    parser.add_argument("--no-breakdown", action="store_true", help="skip timing the hook points alone")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="also profile a run of each variant into DIR/NET.profile.txt")
    args = parser.parse_args(argv)
    choices = net_choices(args.gpu)
    nets = [n.strip() for n in (args.nets or ("lenet,squeezenet,vgg16" if args.gpu is not None
                                              else "lenet,squeezenet")).split(",") if n.strip()]
    unknown = [n for n in nets if n not in choices]
    if unknown or not nets:
        parser.error(f"--nets: unknown {', '.join(unknown) or '(none)'}; known: {', '.join(choices)}")
    default_variants = ("loop,device,host,device+force" if args.gpu is not None
                        else "loop,host" + (",host+force" if args.force else ""))
    variants = [v.strip() for v in (args.variants or default_variants).split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        parser.error(f"--variants: unknown {', '.join(bad) or '(none)'}")
    if args.gpu is None and any(v.startswith("device") for v in variants):
        parser.error("--variants device...: needs --gpu")
    if args.iterations is not None and args.iterations < 1:
        parser.error("--iterations must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if not 0 < args.sparsity < 1:
        parser.error("--sparsity must be between 0 and 1")
    if any(v.startswith("device") for v in variants):
        ok, why = device_hooks_available()
        if not ok:
            print(f"no device hooks here ({why}); measuring the host variants only", file=sys.stderr)
            variants = [v for v in variants if not v.startswith("device")] or ["host"]

    caffe = import_caffe(args.gpu)
    workdir = Path(tempfile.mkdtemp(prefix="bench_masked_step."))
    results, breakdowns = [], []
    try:
        for name in nets:
            bench = NetBench(caffe, name, choices[name], workdir, args.sparsity, args.seed, args.gpu)
            iterations = args.iterations or bench.default_iterations
            print(f"{name}: {bench.description}; {bench.params:,} parameters "
                  f"({bench.weights:,} weights, {bench.params - bench.weights:,} biases); "
                  f"{len(bench.masks)} masked layers, {bench.pruned:,} of {bench.masked_weights:,} weights pruned",
                  flush=True)
            expected = {"squeezenet": SQUEEZENET_V10_PARAMS, "vgg16": VGG16_PARAMS}.get(name)
            if expected and bench.params != expected:
                print(f"  note: the reference net has {expected:,} parameters", flush=True)
            for variant in variants:
                def measure(which, repeat):
                    return (bench.run_plain(args.warmup, iterations) if which == "plain"
                            else bench.run_hooked(variant, args.warmup, iterations))

                def show(which, repeat, seconds):
                    print(f"  {variant} run {repeat + 1}/{args.repeats}: {which} {seconds:.4g} s/iter", flush=True)

                runs = benchlib.alternate(("plain", "hooked"), args.repeats, measure, show)
                results.append(summarize(bench, variant, runs["plain"], runs["hooked"], args, iterations))
                if not args.no_breakdown and variant != "loop":
                    breakdowns.append((name, bench.breakdown(variant, iterations=min(iterations, 20))))
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                target = args.profile / f"{name}.profile.txt"
                target.write_text(profile_text(bench, args.warmup, iterations, variants))
                print(f"wrote {target}", flush=True)
            # After each net, so that a run cut short (a time limit on a
            # borrowed GPU) keeps the nets it finished.
            machine = machine_info(args.gpu)
            done = "" if name == nets[-1] else f" (so far: {', '.join(nets[:nets.index(name) + 1])})"
            print(f"\n{name} done{done}\n")
            print(markdown(results, breakdowns, machine, args.repeats), flush=True)
            benchlib.write_json(args.json, {"command": [Path(sys.executable).name] + sys.argv, "machine": machine,
                                            "nets_done": nets[:nets.index(name) + 1], "results": results,
                                            "breakdowns": [dict(b, net=n) for n, b in breakdowns]})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
