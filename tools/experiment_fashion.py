#!/usr/bin/env python3
"""DSD against a dense baseline of the same length, LeNet-5 on Fashion-MNIST,
over several seeds.

For each seed S:

  * a copy of the solver (default solvers/lenet_solver.prototxt) with
    ``random_seed: S`` and its snapshot_prefix inside the experiment folder;
  * a DSD run: dense N1 -> prune (keepmax, 0.5 everywhere, 0.9 for ip1, the
    split of recipes/lenet_dsd.yaml) -> sparse N2 -> dense N3 at lr_scale 0.1;
  * a dense baseline: one dense stage of N1 + N2 + N3 iterations.

Both go through ``caffedsd.dsd.run_recipe`` into their own run folders, so
rerunning the same command after an interruption continues where it stopped
(finished stages are skipped, a training stage resumes from its last
checkpoint). Then every number of the summary is read from the runs'
reports: mean and sample standard deviation over seeds of test accuracy and
loss, per row, and the DSD-minus-baseline accuracy difference per seed.

Run from the repository root (paths in solvers and recipes are relative to
it):

    .venv/bin/python tools/experiment_fashion.py
    .venv/bin/python tools/experiment_fashion.py --seeds 1 --dense 20 --sparse 10 --redense 10 \\
        --out work/experiment_smoke
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from google.protobuf import text_format

from caffedsd.caffe_proto import SolverParameter, parse_prototxt
from caffedsd.dsd import run_recipe
from caffedsd.errors import CaffeDsdError, InputError
from caffedsd.recipe import Recipe
from caffedsd.report import parse_curve_csv
from caffedsd.caffe_env import caffe_log

# The prune split of recipes/lenet_dsd.yaml: keepmax, 50% of every prunable
# layer, 90% of ip1.
PRUNE = {"criterion": "keepmax", "sparsity": 0.5, "layers": {"ip1": 0.9}}
REDENSE_LR_SCALE = 0.1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="DSD vs a dense baseline of equal length on LeNet-5 / Fashion-MNIST, over several seeds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3", help="Comma-separated solver random seeds.")
    parser.add_argument("--dense", type=int, default=2000, help="N1: iterations of the first dense stage.")
    parser.add_argument("--sparse", type=int, default=1000, help="N2: iterations of the sparse stage.")
    parser.add_argument("--redense", type=int, default=1000,
                        help=f"N3: iterations of the final dense stage (at lr_scale {REDENSE_LR_SCALE}).")
    parser.add_argument("--solver", default="solvers/lenet_solver.prototxt", help="Solver to copy per seed.")
    parser.add_argument("--out", default="work/experiment_fashion", help="Experiment work folder.")
    parser.add_argument("--json", dest="json_path", default=None,
                        help="Write the summary and per-seed numbers here (default: OUT/summary.json).")
    parser.add_argument("--markdown", default=None, help="Also write the table here (default: OUT/summary.md).")
    parser.add_argument("--checkpoint-every", type=int, default=500,
                        help="Iterations between resume checkpoints inside a training stage.")
    parser.add_argument("--gpu", type=int, default=None, help="GPU id (default: CPU).")
    parser.add_argument("--verbose", "-v", action="store_true", help="Show Caffe's own log.")
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected whole numbers separated by commas")
    if not args.seeds:
        parser.error("--seeds: give at least one seed")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds: a seed is repeated")
    for name in ("dense", "sparse", "redense"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: must be at least 1")
    args.out = Path(args.out)
    args.json_path = Path(args.json_path) if args.json_path else args.out / "summary.json"
    args.markdown = Path(args.markdown) if args.markdown else args.out / "summary.md"
    return args


# -- setting up ---------------------------------------------------------------


def write_solver_copy(base, seed, out):
    """OUT/seedS/solver.prototxt: ``base`` with random_seed and snapshot_prefix
    changed, everything else kept. An existing copy with other contents is
    an error (its runs were made with it; resuming must not mix solvers)."""
    param = SolverParameter()
    param.CopyFrom(parse_prototxt(Path(base), SolverParameter))
    param.random_seed = seed
    folder = out / f"seed{seed}"
    param.snapshot_prefix = str(folder / "snapshots" / "lenet")
    text = f"# {base} with random_seed: {seed}, written by tools/experiment_fashion.py\n" \
           + text_format.MessageToString(param)
    path = folder / "solver.prototxt"
    if path.exists():
        if path.read_text() != text:
            raise InputError(f"{path}: exists with other settings (was {base} changed?); "
                             "give a new --out or remove it")
        return path
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def dsd_recipe(solver, seed, n1, n2, n3, checkpoint_every):
    return Recipe.from_dict({
        "solver": str(solver), "seed": seed, "checkpoint_every": checkpoint_every,
        "stages": [{"dense": {"iterations": n1}},
                   {"prune": dict(PRUNE)},
                   {"sparse": {"iterations": n2}},
                   {"dense": {"iterations": n3, "lr_scale": REDENSE_LR_SCALE}}],
    }, where=f"DSD recipe, seed {seed}")


def baseline_recipe(solver, seed, iterations, checkpoint_every):
    return Recipe.from_dict({
        "solver": str(solver), "seed": seed, "checkpoint_every": checkpoint_every,
        "stages": [{"dense": {"iterations": iterations}}],
    }, where=f"baseline recipe, seed {seed}")


class Progress:
    """run_recipe's progress hook: a line on stderr every ``every`` iterations."""

    def __init__(self, prefix, every=250):
        self.prefix, self.every = prefix, every

    def __call__(self, label, total, done):
        prefix, every = self.prefix, self.every
        started = time.time()

        class _Callback:
            def __call__(self, row, chunk):
                it = row["iter"]
                if it % every == 0 or it == total:
                    rate = (time.time() - started) / max(1, it - done)
                    print(f"  {prefix} {label}: {it}/{total}  loss {row['loss']:.4f}  lr {row['lr']:.3g}  "
                          f"{1000 * rate:.1f} ms/it", file=sys.stderr, flush=True)

            def close(self):
                pass

        if done:
            print(f"  {prefix} {label}: resuming at {done}/{total}", file=sys.stderr, flush=True)
        return _Callback()


# -- reading the reports ------------------------------------------------------


def _stage(report, number, kind):
    for stage in report["stages"]:
        if stage["stage"] == number:
            if stage["kind"] != kind:
                raise RuntimeError(f"stage {number} of the report is {stage['kind']}, expected {kind}")
            return stage
    raise RuntimeError(f"the report has no stage {number}")


def _point(stage, cumulative):
    return {"stage": stage["stage"], "kind": stage["kind"], "iterations": stage["iterations"],
            "cumulative_iterations": cumulative, "lr": stage["lr"],
            "accuracy": stage["test"]["accuracy"], "loss": stage["test"]["loss"],
            "sparsity": stage["sparsity"], "density": 1.0 - stage["sparsity"],
            "seconds": stage.get("seconds")}


ROWS = [  # key, label
    ("baseline", "dense baseline"),
    ("dense1", "DSD 1: dense"),
    ("pruned", "DSD 2: pruned, not retrained"),
    ("sparse", "DSD 3: sparse retrained"),
    ("final", "DSD 4: re-dense (lr x0.1)"),
]


def seed_numbers(baseline_report, dsd_report):
    """The five rows of one seed, every number from the two reports."""
    base = _stage(baseline_report, 1, "dense")
    d1, pr, sp, d2 = (_stage(dsd_report, 1, "dense"), _stage(dsd_report, 2, "prune"),
                      _stage(dsd_report, 3, "sparse"), _stage(dsd_report, 4, "dense"))
    n1 = d1["iterations"]
    n12 = n1 + sp["iterations"]
    rows = {"baseline": _point(base, base["iterations"]), "dense1": _point(d1, n1),
            "pruned": _point(pr, n1), "sparse": _point(sp, n12),
            "final": _point(d2, n12 + d2["iterations"])}
    rows["pruned"]["layer_sparsity"] = pr.get("layers")
    rows["dsd_minus_baseline_accuracy"] = rows["final"]["accuracy"] - rows["baseline"]["accuracy"]
    rows["dsd_minus_baseline_loss"] = rows["final"]["loss"] - rows["baseline"]["loss"]
    return rows


def same_start(dsd_dir, base_dir, dsd_report, base_report):
    """Whether the baseline's first N1 training losses equal DSD stage 1's
    (same init and same batches: a paired comparison)."""
    first = _stage(dsd_report, 1, "dense")
    base = _stage(base_report, 1, "dense")
    a = parse_curve_csv((dsd_dir / first["folder"] / first["curve"]).read_text())
    b = parse_curve_csv((base_dir / base["folder"] / base["curve"]).read_text())
    return len(a) > 0 and a == b[:len(a)]


def mean_std(values):
    values = list(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": mean, "std": std, "n": len(values), "values": values}


def summarize(per_seed):
    seeds = list(per_seed)
    summary = {}
    for key, label in ROWS:
        points = [per_seed[s][key] for s in seeds]
        summary[key] = {"label": label,
                        "iterations": sorted({p["cumulative_iterations"] for p in points}),
                        "accuracy": mean_std(p["accuracy"] for p in points),
                        "loss": mean_std(p["loss"] for p in points),
                        "density": mean_std(p["density"] for p in points)}
    summary["dsd_minus_baseline_accuracy"] = mean_std(per_seed[s]["dsd_minus_baseline_accuracy"] for s in seeds)
    summary["dsd_minus_baseline_loss"] = mean_std(per_seed[s]["dsd_minus_baseline_loss"] for s in seeds)
    return summary


def _ms(stat, digits=4, scale=1.0, signed=False):
    sign = "+" if signed else ""
    mean = f"{stat['mean'] * scale:{sign}.{digits}f}"
    if stat["std"] is None:
        return mean
    return f"{mean} ± {stat['std'] * scale:.{digits}f}"


def markdown(summary, per_seed):
    seeds = list(per_seed)
    lines = ["| row | iterations | density of prunable weights | test accuracy (mean ± std) "
             "| test loss (mean ± std) |",
             "|---|---:|---:|---:|---:|"]
    for key, label in ROWS:
        row = summary[key]
        its = "/".join(str(i) for i in row["iterations"])
        lines.append(f"| {label} | {its} | {_ms(row['density'], 1, 100)}% | {_ms(row['accuracy'])} "
                     f"| {_ms(row['loss'])} |")
    lines += ["", "| seed | baseline accuracy | DSD final accuracy | DSD - baseline (accuracy) "
                  "| DSD - baseline (loss) |",
              "|---:|---:|---:|---:|---:|"]
    for s in seeds:
        r = per_seed[s]
        lines.append(f"| {s} | {r['baseline']['accuracy']:.4f} | {r['final']['accuracy']:.4f} "
                     f"| {r['dsd_minus_baseline_accuracy']:+.4f} | {r['dsd_minus_baseline_loss']:+.4f} |")
    diff, dloss = summary["dsd_minus_baseline_accuracy"], summary["dsd_minus_baseline_loss"]
    lines.append(f"| mean ± std | | | {_ms(diff, signed=True)} | {_ms(dloss, signed=True)} |")
    return "\n".join(lines) + "\n"


# -- main ---------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    caffe_log(args.verbose)
    n1, n2, n3 = args.dense, args.sparse, args.redense
    total = n1 + n2 + n3
    per_seed, runs = {}, {}
    started = time.time()
    for seed in args.seeds:
        solver = write_solver_copy(args.solver, seed, args.out)
        folder = args.out / f"seed{seed}"
        dsd_dir = folder / f"dsd-{n1}-{n2}-{n3}"
        base_dir = folder / f"dense-{total}"
        print(f"seed {seed}: DSD {n1}+{n2}+{n3} -> {dsd_dir}", file=sys.stderr, flush=True)
        dsd_report = run_recipe(dsd_recipe(solver, seed, n1, n2, n3, args.checkpoint_every), dsd_dir,
                                gpu=args.gpu, progress=Progress(f"seed {seed} dsd"))
        print(f"seed {seed}: dense baseline {total} -> {base_dir}", file=sys.stderr, flush=True)
        base_report = run_recipe(baseline_recipe(solver, seed, total, args.checkpoint_every), base_dir,
                                 gpu=args.gpu, progress=Progress(f"seed {seed} baseline"))
        # Read back what run_recipe wrote, so the summary is the reports' numbers.
        dsd_report = json.loads((dsd_dir / "report.json").read_text())
        base_report = json.loads((base_dir / "report.json").read_text())
        per_seed[seed] = seed_numbers(base_report, dsd_report)
        per_seed[seed]["baseline_starts_like_dsd"] = same_start(dsd_dir, base_dir, dsd_report, base_report)
        runs[seed] = {"solver": str(solver), "dsd": str(dsd_dir), "baseline": str(base_dir)}
    summary = summarize(per_seed)
    table = markdown(summary, per_seed)
    print(table)
    data = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else None,
        "settings": {"seeds": args.seeds, "dense": n1, "sparse": n2, "redense": n3, "total": total,
                     "solver": args.solver, "prune": PRUNE, "redense_lr_scale": REDENSE_LR_SCALE,
                     "checkpoint_every": args.checkpoint_every},
        "runs": {str(s): r for s, r in runs.items()},
        "summary": summary,
        "per_seed": {str(s): r for s, r in per_seed.items()},
        "seconds_this_invocation": round(time.time() - started, 1),
    }
    args.json_path.parent.mkdir(parents=True, exist_ok=True)
    args.json_path.write_text(json.dumps(data, indent=2) + "\n")
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(table)
    print(f"wrote {args.json_path} and {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CaffeDsdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
