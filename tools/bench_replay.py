"""What a continued dsd stage pays to replay its data: a training iteration
(`solver.step(1)`) against the replay of one (replay.replay_data's layers
run `iter_size` times), per solver, on the CPU or, with --gpu ID, on a GPU.

A resumed stage replays every iteration it had made before its checkpoint,
so the ratio is the fraction of the time those iterations took that the
replay costs. Paths in a solver are relative to the current folder, as for
`caffe train`:

    GLOG_minloglevel=2 .venv/bin/python tools/bench_replay.py solvers/lenet_solver.prototxt:200:5000
    cd work/modelzoo_train/squeezenet_v1.1 && \\
        GLOG_minloglevel=2 ../../../.venv/bin/python ../../../tools/bench_replay.py solver.prototxt:1:20
    GLOG_minloglevel=2 .venv/bin/python tools/bench_replay.py --gpu 0 solvers/lenet_solver.prototxt:1000:5000

On a GPU a step is short and the replay (the data layers, on the host)
is not, so there the ratio can be much larger than on the CPU; each timed
stretch ends with a device synchronize.

Each argument is SOLVER[:STEPS[:REPLAYS]]: the iterations timed of each kind.
"""
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
from caffedsd.solver_spec import read_solver  # noqa: E402
from caffedsd.replay import replay_batches, replayed_layers  # noqa: E402
from caffedsd.training import open_solver  # noqa: E402


def _spec(text):
    """SOLVER[:STEPS[:REPLAYS]] -> (path, steps, replays)."""
    path, *counts = text.split(":")
    counts = [int(c) for c in counts] + [20, 200][len(counts):]
    return Path(path), counts[0], counts[1]


def measure(solver_path, steps, replays, repeats, gpu=None):
    """{step: [{ms}], replay: [{ms}]} per iteration, the replayed layers'
    names and the solver's iter_size."""
    spec = read_solver(solver_path)
    iter_size = max(1, spec.param.iter_size)
    # As run_phase opens it: Caffe's own periodic test passes off, so that
    # no timed stretch of steps holds one.
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as work:
        solver, _ = open_solver(spec, work, gpu)
    layers = replayed_layers(solver.net)
    solver.step(1)  # warm: first allocations, the prefetch threads' first batches

    def one(kind, _):
        benchlib.synchronize(gpu)
        start = time.perf_counter()
        if kind == "step":
            solver.step(steps)
        else:
            replay_batches(solver.net, replays * iter_size)
        benchlib.synchronize(gpu)
        return {"ms": (time.perf_counter() - start) * 1e3 / (steps if kind == "step" else replays)}

    runs = benchlib.alternate(("step", "replay"), repeats, one)
    return runs, [solver.net._layer_names[i] for i in layers], iter_size


def main():
    parser = benchlib.parser(__doc__, workdir=False)
    parser.add_argument("solvers", nargs="+", help="SOLVER[:STEPS[:REPLAYS]]")
    parser.add_argument("--gpu", type=int, default=None, metavar="ID", help="run on this GPU instead of the CPU")
    args = parser.parse_args()
    rows, results = [], {}
    for text in args.solvers:
        path, steps, replays = _spec(text)
        runs, names, iter_size = measure(path, steps, replays, args.repeats, args.gpu)
        step, replay = benchlib.median(runs["step"], "ms"), benchlib.median(runs["replay"], "ms")
        results[str(path)] = {"runs": runs, "layers": names, "iter_size": iter_size, "steps": steps,
                              "replays": replays}
        rows.append([text.split(":")[0], ", ".join(names), str(iter_size), f"{step:.2f}", f"{replay:.3f}",
                     f"{replay / step:.4f}"])
    print(benchlib.markdown_table(["solver", "replayed layers", "iter_size", "step ms (median)",
                                   "replay ms per iteration (median)", "replay / step"], rows, "llrrrr"))
    on = {} if args.gpu is None else {"mode": f"GPU {args.gpu}", "gpu": benchlib.gpu_name(args.gpu)}
    machine = benchlib.machine(**on)
    print("Machine: " + benchlib.machine_line(machine))
    benchlib.write_json(args.json, results)


if __name__ == "__main__":
    main()
