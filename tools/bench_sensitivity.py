#!/usr/bin/env python3
"""Benchmark ``caffedsd.sensitivity.scan``: bookkeeping overhead and ``--jobs 2``.

On LeNet with the Fashion-MNIST TEST set (default: 20 TEST batches of 100 per
point, sparsities 0.1..0.9, all 4 prunable layers: 36 points + the baseline
= 37 evaluation passes), it runs, alternating, ``--repeats R`` times each,
every scan into a fresh, empty temporary folder:

  jobs=1   scan(..., jobs=1) through the library call, in this process;
  jobs=2   scan(..., jobs=2) through the library call (two spawned workers).

and reports:

1. bookkeeping overhead of jobs=1: wall time of the whole scan() call
   (reading and checking the model, building the Net, caching the TEST
   batches, masking, points.jsonl, the json/csv/md/png outputs) against
   ``data["eval_seconds"]``, the summed time of the evaluation passes it
   timed itself; overhead = wall / eval_seconds - 1. Target: <= 10%.
   Where the rest goes is what scan(timings=...) reports of its jobs=1
   runs: checks before the Net, the Evaluator's construction (Net + TEST
   batch caching), per-point bookkeeping outside the timed passes, and
   writing the outputs.
2. speed-up of --jobs 2: median wall(jobs=1) / median wall(jobs=2), same
   points, both through the library call (worker start-up, i.e. spawning
   two Python processes that import pycaffe and build their own Net, is
   inside the jobs=2 wall time, as it is for a user).

It also checks that each repeat's jobs=1 and jobs=2 sensitivity.csv are
byte-identical.

One untimed warm-up of each (one layer, one sparsity, one iteration) runs
first, so that importing pycaffe and matplotlib in this process is not
charged to the first timed jobs=1 run.

Run with the venv's python, from the repo root:

    GLOG_minloglevel=2 .venv/bin/python tools/bench_sensitivity.py
    .venv/bin/python tools/bench_sensitivity.py --repeats 1 --iterations 2 --sparsities 0.5   # smoke run

Exit status is 0 whether targets pass or fail (a benchmark is not a test);
non-zero only when something crashed or an input is missing.
"""
import filecmp
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib

OVERHEAD_TARGET = 0.10  # wall / eval_seconds - 1 of a jobs=1 scan
DEFAULT_MODEL = "prototxt/lenet_train_test.prototxt"
DEFAULT_WEIGHTS = "work/results_sensitivity/dense/01-dense/model.caffemodel"
DEFAULT_SPARSITIES = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"


# ------------------------------------------------------------------ runs --

def run_scan(args, jobs, base, tag, instrument=False, **overrides):
    """One scan into a fresh folder under ``base``; its numbers."""
    from caffedsd import sensitivity as sens

    out_dir = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=base)) / "scan"  # fresh and empty
    kwargs = dict(layers=args.layers, sparsities=args.sparsity_values, iterations=args.iterations,
                  seed=0, jobs=jobs)
    kwargs.update(overrides)
    timings = {} if instrument else None
    load_before = os.getloadavg()[0]
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    data = sens.scan(args.model, args.weights, out_dir, timings=timings, **kwargs)
    wall = time.perf_counter() - started
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(after, f) - getattr(before, f)
              for before, after in ((self_before, self_after), (children_before, children_after))
              for f in ("ru_utime", "ru_stime"))
    records = [json.loads(line) for line in (out_dir / "points.jsonl").read_text().splitlines() if line]
    result = {"jobs": jobs, "wall_s": round(wall, 4), "eval_seconds": data["eval_seconds"],
              "eval_seconds_exact": round(sum(r["eval_seconds"] for r in records), 6),
              "points": len(records), "data": data["data"], "cpu_s": round(cpu, 3),
              "loadavg_1min_before": round(load_before, 2), "folder": str(out_dir)}
    if instrument:
        measure_rest = timings.get("measure", 0.0) - result["eval_seconds_exact"]
        phases = ("checks", "data_digest", "evaluator", "measure", "outputs")
        result["phases_s"] = {
            "checks_before_net": round(timings.get("checks", 0.0), 4),
            "data_digest": round(timings.get("data_digest", 0.0), 4),
            "evaluator_setup": round(timings.get("evaluator", 0.0), 4),
            "per_point_bookkeeping": round(measure_rest, 4),
            "of_which_points_jsonl_append": round(timings.get("append", 0.0), 4),
            "write_outputs": round(timings.get("outputs", 0.0), 4),
            "unaccounted": round(wall - sum(timings.get(name, 0.0) for name in phases), 4),
        }
    return result


def metric_diff(folder_a, folder_b):
    """{metric: max |a - b|} over all points of two sensitivity.json files."""
    a, b = (json.loads((Path(f) / "sensitivity.json").read_text()) for f in (folder_a, folder_b))
    diff = {m: abs(a["baseline"][m] - b["baseline"][m]) for m in a["metrics"]}
    for layer_a, layer_b in zip(a["layers"], b["layers"]):
        for pa, pb in zip(layer_a["points"], layer_b["points"]):
            for m in a["metrics"]:
                diff[m] = max(diff[m], abs(pa["metrics"][m] - pb["metrics"][m]))
    return diff


def openblas_threads():
    """OpenBLAS's thread count in this process (pycaffe's BLAS), or None."""
    try:
        import ctypes

        return int(ctypes.CDLL("libopenblas.so.0").openblas_get_num_threads())
    except (OSError, AttributeError):
        return None


def overhead(run):
    return run["wall_s"] / run["eval_seconds_exact"] - 1


# ---------------------------------------------------------------- report --

def blas_line(threads):
    return (f"OpenBLAS threads: {threads if threads is not None else 'unknown'} in the jobs=1 process; "
            "each jobs=2 worker sets OPENBLAS_NUM_THREADS = nproc // 2")


def fmt_list(values, digits=2):
    return ", ".join(f"{v:.{digits}f}" for v in values)


def report(args, results):
    one, two = results["jobs1"], results["jobs2"]
    median = statistics.median
    wall1, wall2 = [r["wall_s"] for r in one], [r["wall_s"] for r in two]
    eval1, eval2 = [r["eval_seconds_exact"] for r in one], [r["eval_seconds_exact"] for r in two]
    over = [overhead(r) for r in one]
    speedups = [a / b for a, b in zip(wall1, wall2)]
    summary = {
        "overhead_median": median(over),
        "overhead_target": OVERHEAD_TARGET,
        "overhead_pass": median(over) <= OVERHEAD_TARGET,
        "speedup_median": median(wall1) / median(wall2),
        "speedup_per_repeat": speedups,
        "csv_identical": results["csv_identical"],
    }
    results["summary"] = summary
    points = one[0]["points"]
    lines = []
    n_sparsities = len(args.sparsity_values)
    lines.append(f"{args.model} with {args.weights}, {args.iterations} TEST batches per point, "
                 f"{points} points per scan (baseline + {(points - 1) // n_sparsities} layers x "
                 f"{n_sparsities} sparsities), TEST data {one[0]['data']}; medians of {args.repeats} "
                 f"alternating runs, each through the library call `scan()` into a fresh folder.")
    lines.append("")
    lines.append(benchlib.markdown_table(
        ["run", "median wall (s)", "median eval_seconds (s)", "median wall / eval - 1", "median CPU s / wall",
         "wall of each run (s)", "eval_seconds of each run (s)", "CPU s of each run"],
        [["`scan(jobs=1)`", f"{median(wall1):.2f}", f"{median(eval1):.2f}", f"{median(over) * 100:.1f}%",
          f"{median([r['cpu_s'] / r['wall_s'] for r in one]):.2f}", fmt_list(wall1), fmt_list(eval1),
          fmt_list([r['cpu_s'] for r in one], 1)],
         ["`scan(jobs=2)`", f"{median(wall2):.2f}", f"{median(eval2):.2f}",
          "n/a (eval summed over the 2 parallel workers)", f"{median([r['cpu_s'] / r['wall_s'] for r in two]):.2f}",
          fmt_list(wall2), fmt_list(eval2), fmt_list([r['cpu_s'] for r in two], 1)]], "lrrrrlll"))
    lines.append("")
    phase_names = [("checks_before_net", "read + check prototxt/caffemodel, sha256 (before the Net)"),
                   ("data_digest", "digest of the TEST examples, a pass of its own only with --jobs > 1 "
                                   "(jobs=1 takes it from the Evaluator's batches: 0)"),
                   ("evaluator_setup", "Evaluator: build the Net + cache the TEST batches"),
                   ("per_point_bookkeeping", "per-point bookkeeping outside the timed passes"),
                   ("of_which_points_jsonl_append", "  of which points.jsonl appends (fsync each)"),
                   ("write_outputs", "write sensitivity.json/.csv/.md/.png"),
                   ("unaccounted", "rest of scan()")]
    lines.append("Where the jobs=1 wall time beyond the evaluation passes goes (seconds):")
    lines.append("")
    rows = []
    for key, label in phase_names:
        values = [r["phases_s"][key] for r in one]
        shares = [r["phases_s"][key] / r["wall_s"] for r in one]
        rows.append([label, f"{median(values):.3f}", f"{median(shares) * 100:.2f}%", fmt_list(values, 3)])
    rows.append(["evaluation passes (`eval_seconds`)", f"{median(eval1):.3f}",
                 f"{median([e / w for e, w in zip(eval1, wall1)]) * 100:.2f}%", fmt_list(eval1, 3)])
    lines.append(benchlib.markdown_table(["part of `scan(jobs=1)`", "median (s)", "median share of wall",
                                          "each run (s)"], rows, "lrrl"))
    lines.append("")
    lines.append("| target | measured (median) | limit | result |")
    lines.append("|---|---:|---:|---|")
    lines.append(f"| jobs=1 bookkeeping overhead: wall / eval_seconds - 1 | {median(over) * 100:.1f}% "
                 f"(runs: {', '.join(f'{o * 100:.1f}%' for o in over)}) | <= {OVERHEAD_TARGET * 100:.0f}% | "
                 f"{'PASS' if summary['overhead_pass'] else 'FAIL'} |")
    lines.append(f"| `--jobs 2` speed-up: wall(jobs=1) / wall(jobs=2) | {summary['speedup_median']:.2f}x "
                 f"(per repeat: {', '.join(f'{s:.2f}x' for s in speedups)}) | 2.00x ideal on 2 cores; "
                 f"no pass/fail limit set | n/a |")
    same = results["csv_identical"]
    worst = {}
    for diff in results["max_metric_diff"]:
        for metric, value in diff.items():
            worst[metric] = max(worst.get(metric, 0.0), value)
    worst_text = ", ".join(f"{m} {v:.2g}" for m, v in worst.items())
    lines.append(f"| jobs=1 and jobs=2 sensitivity.csv byte-identical | "
                 f"{sum(same)}/{len(same)} repeats (largest metric difference: {worst_text}) | all | "
                 f"{'PASS' if all(same) else 'FAIL'} |")
    lines.append("")
    lines.append(f"Machine: {results['machine']}")
    lines.append(blas_line(results.get("openblas_threads")))
    lines.append(f"1-minute load average before each run: jobs=1 "
                 f"{fmt_list([r['loadavg_1min_before'] for r in one])}; jobs=2 "
                 f"{fmt_list([r['loadavg_1min_before'] for r in two])}")
    return "\n".join(lines)


# ------------------------------------------------------------------ main --

def parse_args(argv=None):
    parser = benchlib.parser(__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="train_val prototxt (default: %(default)s)")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, help="caffemodel (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=20, help="TEST batches per point (default: 20)")
    parser.add_argument("--sparsities", default=DEFAULT_SPARSITIES, help="default: %(default)s")
    parser.add_argument("--layers", default="", help="comma-separated layer globs (default: all prunable)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")
    from caffedsd.sensitivity import parse_sparsities

    args.sparsity_values = parse_sparsities(args.sparsities)
    args.layers = tuple(g.strip() for g in args.layers.split(",") if g.strip())
    missing = [p for p in (args.model, args.weights) if not Path(p).exists()]
    if missing:
        print(f"missing: {', '.join(missing)} (run from the repo root; see tools/bench_sensitivity.py's "
              "docstring and README for how to make them)", file=sys.stderr)
        return 2

    base = Path(tempfile.mkdtemp(prefix="bench_sensitivity-", dir=args.workdir))
    results = {"command": " ".join([Path(sys.executable).name] + sys.argv),
               "machine": benchlib.machine_line(benchlib.machine()),
               "iterations": args.iterations, "sparsities": list(args.sparsity_values),
               "layers": list(args.layers), "repeats": args.repeats,
               "jobs1": [], "jobs2": [], "csv_identical": [], "max_metric_diff": [], "warmup": {}}
    try:
        # Warm-up (untimed): imports pycaffe + matplotlib here, warms the page cache for the workers.
        from caffedsd.caffemodel import read_caffemodel
        from caffedsd.layers import prunable_targets

        first = prunable_targets(read_caffemodel(args.weights))[0].owner
        for jobs in (1, 2):
            started = time.perf_counter()
            run_scan(args, jobs, base, f"warmup{jobs}", layers=(first,), sparsities=(0.5,), iterations=1)
            results["warmup"][f"jobs{jobs}_s"] = round(time.perf_counter() - started, 3)
        results["openblas_threads"] = openblas_threads()
        print(f"warm-up done ({results['warmup']}); {args.repeats} repeats of jobs=1 and jobs=2, alternating",
              file=sys.stderr)

        def measure(jobs, repeat):
            run = run_scan(args, jobs, base, f"r{repeat}-jobs{jobs}", instrument=(jobs == 1))
            run["repeat"] = repeat
            return run

        def show(jobs, repeat, run):
            extra = (f", overhead {overhead(run) * 100:.1f}%" if jobs == 1 else "")
            print(f"repeat {repeat + 1}/{args.repeats} jobs={jobs}: wall {run['wall_s']:.2f} s, "
                  f"eval {run['eval_seconds_exact']:.2f} s{extra}", file=sys.stderr)

        runs = benchlib.alternate((1, 2), args.repeats, measure, show)
        results["jobs1"], results["jobs2"] = runs[1], runs[2]
        for one, two in zip(runs[1], runs[2]):
            results["csv_identical"].append(filecmp.cmp(Path(one["folder"]) / "sensitivity.csv",
                                                        Path(two["folder"]) / "sensitivity.csv", shallow=False))
            results["max_metric_diff"].append(metric_diff(one["folder"], two["folder"]))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    text = report(args, results)
    print(text)
    benchlib.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
