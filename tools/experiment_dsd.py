#!/usr/bin/env python3
"""Does DSD help? DSD against dense training of equal length, from converged
nets, on Fashion-MNIST: LeNet-5 and the SqueezeNet-fashion net.

For each net and each regime (``full``: the 60,000 training images;
``subset``: the first 6,000, where the net can overfit):

1. **start**: train the dense net to a plateau with a stepped learning rate
   (default 20 epochs: 10 at base_lr, 6 at base_lr/10, 4 at base_lr/100),
   one dense stage per 2 epochs so the test accuracy is measured along the
   way (the convergence curve);
2. **plan**: a sensitivity scan of that model and ``plan --max-total-drop X
   --verify``: a plan whose whole-net drop was measured to be within X;
3. then, for every seed, from that same converged model:
   (a) ``dsd``: prune with the verified plan, sparse N iterations at
       lr_sparse, re-dense N at lr_sparse/10;
   (b) ``dense``: dense 2N iterations at the same two learning rates;
   (c) ``random``: as (a) with Random-Cut masks at the same per-layer
       sparsity (the paper's control; full regime only).
   Every arm's stage k re-seeds Caffe's data shuffling with (seed, k), and
   (b) starts with a 0-iteration stage in place of the prune, so within a
   seed the three arms see the same batches in the same order. Each phase
   is split into --chunks stages to measure test accuracy along the way.

Every run goes through ``caffedsd.dsd.run_recipe`` into its own folder under
--out, so the same command after a kill continues where it stopped; each
finished run appends its result to OUT/results.jsonl at once, and
OUT/summary.{json,md} and the plots are rewritten from what has finished.

Statistics, per net and regime: the paired difference of final test
accuracy per seed, (a) - (b) and (c) - (b), as mean ± 95% confidence
interval (t distribution, n - 1 degrees of freedom); the sparse model's
accuracy and density.

Run from the repository root:

    nice -n 5 .venv/bin/python tools/experiment_dsd.py            # the full experiment
    .venv/bin/python tools/experiment_dsd.py --quick              # a smoke test, under a minute
"""
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path

from google.protobuf import text_format

import benchlib
from caffedsd import report
from caffedsd.atomic import atomic_open
from caffedsd.caffe_proto import SolverParameter, parse_prototxt
from caffedsd.datasets import convert_fashion_mnist
from caffedsd.dsd import run_recipe
from caffedsd.errors import CaffeDsdError
from caffedsd.plan import load_plan
from caffedsd.plan_from_scan import make_plan
from caffedsd.recipe import Recipe
from caffedsd.sensitivity import scan
from caffedsd.caffe_env import caffe_log

NETS = {
    "lenet": {"solver": "solvers/lenet_solver.prototxt", "net": "prototxt/lenet_train_test.prototxt",
              "batch": 64, "test_batch": 100, "sparsities": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
              "scan_images": 10000},
    "squeezenet": {"solver": "solvers/squeezenet_fashion_solver.prototxt",
                   "net": "prototxt/squeezenet_fashion/train_val.prototxt",
                   "batch": 32, "test_batch": 25, "sparsities": (0.3, 0.5, 0.7, 0.9), "scan_images": 5000},
}
DATA_SOURCES = ("data/fashion-mnist/train.txt", "data/fashion-mnist/test.txt")
# The start's stepped schedule: (epochs, lr_scale of base_lr).
SCHEDULE = ((10, 1.0), (6, 0.1), (4, 0.01))
SPARSE_LR, REDENSE_LR = 0.1, 0.01  # lr_scale of base_lr for (a)'s two phases, and (b)'s
ARMS = {"full": ("dsd", "dense", "random"), "subset": ("dsd", "dense")}
START_SEED = 1


def parse_args(argv=None):
    parser = benchlib.script_parser(__doc__, show_defaults=True)
    parser.add_argument("--nets", default=None, help="Nets in the order to run them (default: lenet,squeezenet; "
                                                       "lenet with --quick).")
    parser.add_argument("--seeds", default="1,2,3,4,5", help="Seeds of the arms (data order, random cut).")
    parser.add_argument("--regimes", default="full,subset", help="full (60,000 images) and/or subset (6,000).")
    parser.add_argument("--arms", default="dsd,dense,random",
                        help="Arms to run (dsd, dense, random). Processes sharing a work folder may run side "
                             "by side when their nets, regimes or arms do not overlap, provided two processes on "
                             "one regime start only once its start and plan have finished (a run folder is held "
                             "by the process working in it, and another that needs it unfinished stops).")
    parser.add_argument("--epochs-per-eval", type=int, default=2, help="Start: epochs per dense stage.")
    parser.add_argument("--n-epochs", type=float, default=1.0,
                        help="N, in epochs of the full training set: (a) sparse N + re-dense N; (b) dense 2N.")
    parser.add_argument("--chunks", type=int, default=2, help="Stages per phase of N (test points along the way).")
    parser.add_argument("--max-total-drop", type=float, default=1.0,
                        help="The verified plan's budget: measured drop of the whole pruned net, in points.")
    parser.add_argument("--curve-seed", type=int, default=None, help="Seed whose curves are plotted (default: first).")
    parser.add_argument("--out", default=None, help="Work folder (default: work/experiment_dsd[_quick]).")
    parser.add_argument("--quick", action="store_true",
                        help="Smoke test: LeNet, 1,000 training, 300 subset and 300 test images, 2 seeds, "
                             "a few iterations.")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--summary-only", action="store_true",
                        help="Only rewrite summary.{json,md} and the plots from OUT/results.jsonl (no training).")
    parser.add_argument("--gpu", type=int, default=None, help="GPU id (default: CPU).")
    parser.add_argument("--verbose", "-v", action="store_true", help="Show Caffe's own log.")
    args = parser.parse_args(argv)
    args.nets = [n for n in (args.nets or ("lenet" if args.quick else "lenet,squeezenet")).split(",") if n]
    args.regimes = [r for r in args.regimes.split(",") if r]
    args.arms = [a for a in args.arms.split(",") if a]
    for arm in args.arms:
        if arm not in ARMS["full"]:
            parser.error(f"--arms: unknown arm {arm!r} (known: {', '.join(ARMS['full'])})")
    for net in args.nets:
        if net not in NETS:
            parser.error(f"--nets: unknown net {net!r} (known: {', '.join(NETS)})")
    for regime in args.regimes:
        if regime not in ARMS:
            parser.error(f"--regimes: unknown regime {regime!r} (known: {', '.join(ARMS)})")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected whole numbers separated by commas")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds: give distinct seeds")
    if args.chunks < 1:
        parser.error(f"--chunks {args.chunks}: must be 1 or more")
    if args.epochs_per_eval < 1 or any(epochs % args.epochs_per_eval for epochs, _ in SCHEDULE):
        parser.error(f"--epochs-per-eval {args.epochs_per_eval}: must divide the epochs of every phase of the "
                     f"start ({', '.join(str(epochs) for epochs, _ in SCHEDULE)})")
    for net in args.nets:
        n = round(args.n_epochs * math.ceil(60000 / NETS[net]["batch"])) if math.isfinite(args.n_epochs) else 0
        if not n >= args.chunks:
            parser.error(f"--n-epochs {args.n_epochs:g}: {n} iterations of {net}, fewer than --chunks {args.chunks}")
    if args.quick:
        args.seeds = args.seeds[:2]
    args.out = Path(args.out or ("work/experiment_dsd_quick" if args.quick else "work/experiment_dsd"))
    return args


def settings(args):
    """Everything that shapes the runs; a work folder is only continued with the same."""
    if args.quick:
        return {"train": 1000, "subset": 300, "test": 300, "schedule": ((1, 1.0), (1, 0.1)),
                "epochs_per_eval": 1, "n_iterations": 5, "chunks": 1, "scan": {"sparsities": (0.5, 0.9)},
                "max_total_drop": args.max_total_drop}
    return {"train": 60000, "subset": 6000, "test": 10000, "schedule": SCHEDULE,
            "epochs_per_eval": args.epochs_per_eval, "n_epochs": args.n_epochs, "chunks": args.chunks,
            "scan": {}, "max_total_drop": args.max_total_drop}


# -- files: data, net and solver copies -------------------------------------------------------------


def write_once(path, text):
    """Write ``text`` unless the file already holds it (run folders fingerprint
    these files, so they must not change under a resumed run)."""
    path = Path(path)
    if path.exists() and path.read_text() == text:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return path


def data_lists(out, name, train, test):
    folder = out / "data" / name
    marker = folder / "data.json"
    wanted = {"train": train, "test": test}
    if marker.exists() and json.loads(marker.read_text()).get("limits") == wanted:
        return json.loads(marker.read_text())["lists"]
    made = convert_fashion_mnist(folder, train_limit=train, test_limit=test)
    lists = {"train": made["train"]["list"], "test": made["test"]["list"]}
    write_once(marker, json.dumps({"limits": wanted, "lists": lists}, indent=2) + "\n")
    return lists


def net_copy(net_name, folder, lists):
    text = Path(NETS[net_name]["net"]).read_text()
    for source, new in zip(DATA_SOURCES, (lists["train"], lists["test"])):
        if source not in text:
            raise SystemExit(f"{NETS[net_name]['net']}: does not read {source}")
        text = text.replace(source, new)
    return write_once(folder / "train_val.prototxt", text)


def solver_copy(net_name, folder, net_path, seed, test_count):
    spec = NETS[net_name]
    param = SolverParameter()
    param.CopyFrom(parse_prototxt(Path(spec["solver"]), SolverParameter))
    param.net = str(net_path)
    param.lr_policy = "fixed"  # the stages' lr_scale steps it
    param.random_seed = seed
    del param.test_iter[:]
    param.test_iter.append(test_count // spec["test_batch"])
    param.display = 0
    param.snapshot_prefix = str(folder / "snapshots" / "iter")
    text = (f"# {spec['solver']}, fixed lr, random_seed {seed}, written by tools/experiment_dsd.py\n"
            + text_format.MessageToString(param))
    return write_once(folder / f"solver_seed{seed}.prototxt", text)


# -- results: one JSON line per finished run ------------------------------------------------------


class Results:
    def __init__(self, out):
        self.path = out / "results.jsonl"
        self.records = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                self.records[record["key"]] = record

    def __contains__(self, key):
        return key in self.records

    def add(self, record):
        self.records[record["key"]] = record
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()


def _timed(call, *args, **kwargs):
    cpu, wall = time.process_time(), time.time()
    value = call(*args, **kwargs)
    return value, {"cpu_seconds": round(time.process_time() - cpu, 1), "wall_seconds": round(time.time() - wall, 1)}


def stage_points(report_data):
    """(iterations since the run's start, test metrics, sparsity, kind) at each stage's end."""
    done, points = 0, []
    for stage in report_data["stages"]:
        done += stage["iterations"]
        points.append({"iterations": done, "kind": stage["kind"], "test": stage["test"],
                       "sparsity": stage["sparsity"], "lr": stage["lr"]})
    return points


class Progress:
    """run_recipe's progress hook: a line on stderr every ``every`` iterations."""

    def __init__(self, prefix, every=500):
        self.prefix, self.every = prefix, every

    def __call__(self, label, total, done):
        prefix, every, started = self.prefix, self.every, time.time()

        class _Callback:
            def __call__(self, row, chunk):
                if "replay" in row:  # a stage continued from its checkpoint: its data layers catch up first
                    print(f"  {prefix} {label}: continuing at {row['replay']}, replaying the data layers",
                          file=sys.stderr, flush=True)
                    return
                if "testing" in row:  # a TEST pass starts: its row comes when it ends
                    return
                it = row["iter"] if "test" in row else row["iter"] + 1  # a step's row: iterations done after it
                if "test" in row:  # a periodic TEST pass (the solver's test_interval), not a step
                    values = ", ".join(f"{name} {value:.4f}" for name, value in row["test"].items())
                    print(f"  {prefix} {label}: test at {it}: {values}", file=sys.stderr, flush=True)
                elif it % every == 0 or it == total:
                    rate = (time.time() - started) / max(1, it - done)
                    print(f"  {prefix} {label}: {it}/{total} loss {row['loss']:.4f} lr {row['lr']:.3g} "
                          f"{1000 * rate:.0f} ms/it", file=sys.stderr, flush=True)

            def close(self):
                pass

        return _Callback()


# -- the runs ---------------------------------------------------------------------------------------


class Experiment:
    def __init__(self, args):
        self.args, self.out = args, args.out
        self.cfg = settings(args)
        self.out.mkdir(parents=True, exist_ok=True)
        marker = self.out / "experiment.json"
        stored = json.loads(json.dumps(self.cfg))
        if marker.exists() and json.loads(marker.read_text()) != stored:
            raise SystemExit(f"{marker}: made with other settings; give another --out")
        write_once(marker, json.dumps(stored, indent=2) + "\n")
        self.results = Results(self.out)

    def iterations_per_epoch(self, net_name, regime):
        images = self.cfg["train"] if regime == "full" else self.cfg["subset"]
        return math.ceil(images / NETS[net_name]["batch"])

    def n_iterations(self, net_name):
        if "n_iterations" in self.cfg:
            return self.cfg["n_iterations"]
        return round(self.cfg["n_epochs"] * self.iterations_per_epoch(net_name, "full"))

    def files(self, net_name, regime, seed):
        lists = data_lists(self.out, f"{regime}-{self.cfg['train'] if regime == 'full' else self.cfg['subset']}",
                           self.cfg["train"] if regime == "full" else self.cfg["subset"], self.cfg["test"])
        folder = self.out / net_name / regime
        net = net_copy(net_name, folder, lists)
        return folder, net, solver_copy(net_name, folder, net, seed, self.cfg["test"])

    def run(self, key, recipe, run_dir, kind, extra=None):
        label = "/".join(str(k) for k in key)
        if label in self.results:  # finished; its folder may be held by a process beside this one
            print(f"{label}: finished, in {run_dir}", file=sys.stderr, flush=True)
            return
        print(f"{label}: -> {run_dir}", file=sys.stderr, flush=True)
        data, cost = _timed(run_recipe, recipe, run_dir, gpu=self.args.gpu, progress=Progress(label))
        self.results.add({"key": label, "kind": kind, "run_dir": str(run_dir), "points": stage_points(data),
                          **cost, **(extra or {})})

    def start(self, net_name, regime):
        folder, net, solver = self.files(net_name, regime, START_SEED)
        per_epoch = self.iterations_per_epoch(net_name, regime)
        every = self.cfg["epochs_per_eval"]
        stages = []
        for epochs, lr_scale in self.cfg["schedule"]:
            for _ in range(epochs // every):
                stages.append({"dense": {"iterations": every * per_epoch, "lr_scale": lr_scale}})
        recipe = Recipe.from_dict({"solver": str(solver), "seed": 0, "checkpoint_every": self.args.checkpoint_every,
                                   "stages": stages}, where=f"start of {net_name}/{regime}")
        run_dir = folder / "start"
        self.run((net_name, regime, "start"), recipe, run_dir, "start",
                 {"iterations_per_epoch": per_epoch, "epochs_per_stage": every})
        return run_dir / f"{len(stages):02d}-dense" / "model.caffemodel", net

    def plan(self, net_name, regime, weights, net):
        folder = self.out / net_name / regime
        plan_path = folder / "plan.yaml"
        key = f"{net_name}/{regime}/plan"
        if key not in self.results:  # the scan resumes; the plan is made again
            spec = NETS[net_name]
            sparsities = self.cfg["scan"].get("sparsities", spec["sparsities"])
            images = min(spec["scan_images"], self.cfg["test"])
            print(f"{key}: sensitivity scan and plan --verify", file=sys.stderr, flush=True)
            cpu, wall = time.process_time(), time.time()
            scan(net, weights, folder / "sens", sparsities=sparsities, iterations=images // spec["test_batch"])
            result = make_plan(folder / "sens", plan_path, max_total_drop=self.cfg["max_total_drop"], verify=True,
                               force=True)
            self.results.add({"key": key, "kind": "plan", "overall": result.overall,
                              "predicted_drop": result.drop, "measured_drop": result.measured_drop,
                              "start_overall": result.start["overall"],
                              "start_predicted_drop": result.start["drop"], "history": result.history,
                              "layers": {c.layer: c.sparsity for c in result.choices},
                              "cpu_seconds": round(time.process_time() - cpu, 1),
                              "wall_seconds": round(time.time() - wall, 1)})
        return plan_path

    def arm(self, net_name, regime, seed, arm, weights, plan_path):
        folder, _, solver = self.files(net_name, regime, seed)
        n, chunks = self.n_iterations(net_name), self.cfg["chunks"]
        part = [n // chunks + (1 if i < n % chunks else 0) for i in range(chunks)]
        if arm == "dsd":
            first = {"prune": {"plan": str(plan_path), "require_verified": True}}
            train = "sparse"
        elif arm == "random":
            plan = load_plan(plan_path)
            first = {"prune": {"criterion": "random", "layers": {r.pattern: r.value for r in plan.rules}}}
            train = "sparse"
        else:  # the same stage numbers (so the same batches) with nothing pruned
            first = {"dense": {"iterations": 0}}
            train = "dense"
        stages = [first] + [{train: {"iterations": k, "lr_scale": SPARSE_LR}} for k in part] \
            + [{"dense": {"iterations": k, "lr_scale": REDENSE_LR}} for k in part]
        recipe = Recipe.from_dict({"solver": str(solver), "weights": str(weights), "seed": seed,
                                   "checkpoint_every": self.args.checkpoint_every, "stages": stages},
                                  where=f"{net_name}/{regime}/seed{seed}/{arm}")
        return self.run((net_name, regime, f"seed{seed}", arm), recipe, folder / f"seed{seed}" / arm, "arm",
                        {"net": net_name, "regime": regime, "seed": seed, "arm": arm, "n": n})

    def work(self):
        """The runs in the order they are made: per net, the full regime's
        (a) and (b) for every seed first (the main comparison), then (c),
        then the subset regime, so an interrupted experiment has the most
        important pairs finished."""
        for net_name in self.args.nets:
            for regime in self.args.regimes:
                arms = [a for a in ARMS[regime] if a in self.args.arms]
                for group in ([a for a in arms if a != "random"], [a for a in arms if a == "random"]):
                    if group:
                        yield net_name, regime, group

    def main(self):
        starts = {}
        for net_name, regime, arms in self.work():
            if (net_name, regime) not in starts:
                weights, net = self.start(net_name, regime)
                starts[net_name, regime] = (weights, self.plan(net_name, regime, weights, net))
                self.write_summary()
            for seed in self.args.seeds:
                for arm in arms:
                    self.arm(net_name, regime, seed, arm, *starts[net_name, regime])
                    self.write_summary()
        return self.write_summary()

    # -- summary -----------------------------------------------------------------------------------

    def write_summary(self):
        data = summarize(self.results.records, self.args, self.cfg)
        write_once(self.out / "summary.json", json.dumps(data, indent=2) + "\n")
        write_once(self.out / "summary.md", markdown(data))
        self.written = ["summary.md", "summary.json"]
        if data["groups"]:
            report.plot_paired_differences(self.out / "paired_differences.png", data["groups"])
            self.written.append("paired_differences.png")
        panels = curve_panels(self.results.records, self.args.curve_seed or self.args.seeds[0])
        if panels:
            report.plot_panels(self.out / "curves.png", panels)
            self.written.append("curves.png")
        return data


def t_interval(values, level=0.95):
    """Mean and half-width of the two-sided t confidence interval."""
    from scipy.stats import t

    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"mean": mean, "half_width": None, "n": n, "sd": None}
    sd = statistics.stdev(values)
    return {"mean": mean, "half_width": t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n), "n": n, "sd": sd}


def _final(record):
    return record["points"][-1]["test"]


def _sparse(record):
    """The last sparse stage (masks held): accuracy and density of the sparse model."""
    sparse = [p for p in record["points"] if p["kind"] == "sparse"]
    return sparse[-1] if sparse else None


def summarize(records, args, cfg):
    arms = {}
    for record in records.values():
        if record["kind"] == "arm":
            arms.setdefault((record["net"], record["regime"]), {}).setdefault(record["seed"], {})[record["arm"]] = record
    groups = []
    for (net_name, regime), by_seed in sorted(arms.items()):
        for arm, versus in (("dsd", "dense"), ("random", "dense"), ("dsd", "random")):
            seeds = sorted(s for s, runs in by_seed.items() if arm in runs and versus in runs)
            if not seeds:
                continue
            diffs = {s: _final(by_seed[s][arm])["accuracy"] - _final(by_seed[s][versus])["accuracy"] for s in seeds}
            groups.append({"net": net_name, "regime": regime, "comparison": f"{arm} - {versus}",
                           "per_seed": diffs, **t_interval(list(diffs.values()))})
    rows = []
    for (net_name, regime), by_seed in sorted(arms.items()):
        for arm in ARMS[regime]:
            runs = [by_seed[s][arm] for s in sorted(by_seed) if arm in by_seed[s]]
            if not runs:
                continue
            row = {"net": net_name, "regime": regime, "arm": arm, "n": len(runs),
                   "final_accuracy": t_interval([_final(r)["accuracy"] for r in runs]),
                   "final_loss": t_interval([_final(r)["loss"] for r in runs]) if all(
                       "loss" in _final(r) for r in runs) else None,  # SqueezeNet's TEST net has no loss
                   "final_density": statistics.fmean(1 - r["points"][-1]["sparsity"] for r in runs),
                   "cpu_seconds": sum(r["cpu_seconds"] for r in runs)}
            sparse = [_sparse(r) for r in runs if _sparse(r)]
            if sparse:
                row["sparse_accuracy"] = t_interval([p["test"]["accuracy"] for p in sparse])
                row["sparse_density"] = statistics.fmean(1 - p["sparsity"] for p in sparse)
                pruned = [r["points"][0] for r in runs]
                row["pruned_accuracy"] = t_interval([p["test"]["accuracy"] for p in pruned])
            rows.append(row)
    per_seed = [{"net": net_name, "regime": regime, "seed": seed,
                 "arms": {arm: {"sparse": _sparse(r)["test"]["accuracy"] if _sparse(r) else None,
                                "final": _final(r)["accuracy"]} for arm, r in runs.items()}}
                for (net_name, regime), by_seed in sorted(arms.items()) for seed, runs in sorted(by_seed.items())]
    starts = {k: {"final": r["points"][-1]["test"], "points": r["points"], "cpu_seconds": r["cpu_seconds"],
                  "iterations_per_epoch": r["iterations_per_epoch"]}
              for k, r in records.items() if r["kind"] == "start"}
    plans = {k: {f: r[f] for f in ("overall", "predicted_drop", "measured_drop", "start_overall",
                                   "start_predicted_drop", "layers", "cpu_seconds")}
             for k, r in records.items() if r["kind"] == "plan"}
    return {"command": "tools/experiment_dsd.py" + (" --quick" if args.quick else ""), "settings": cfg,
            "seeds_asked": args.seeds, "starts": starts, "plans": plans, "rows": rows, "groups": groups,
            "per_seed": per_seed,
            "cpu_seconds": round(sum(r.get("cpu_seconds", 0) for r in records.values()), 1)}


def _ci(stat, scale=100, digits=2):
    mean = f"{stat['mean'] * scale:+.{digits}f}"
    return mean if stat["half_width"] is None else f"{mean} ± {stat['half_width'] * scale:.{digits}f}"


def _acc(stat):
    mean = f"{stat['mean']:.4f}"
    return mean if stat["half_width"] is None else f"{mean} ± {stat['half_width']:.4f}"


def markdown(data):
    lines = ["Paired differences of final test accuracy, in points (mean ± 95% CI, t distribution):", "",
             "| net | regime | comparison | seeds | per seed | mean ± 95% CI |", "|---|---|---|---:|---|---:|"]
    for g in data["groups"]:
        per_seed = ", ".join(f"{100 * v:+.2f}" for v in g["per_seed"].values())
        lines.append(f"| {g['net']} | {g['regime']} | {g['comparison']} | {g['n']} | {per_seed} | {_ci(g)} |")
    lines += ["", "Per arm (mean ± 95% CI over seeds):", "",
              "| net | regime | arm | seeds | pruned acc. | sparse acc. | sparse density | final acc. | final loss "
              "| final density | CPU s |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        sparse = (_acc(r["pruned_accuracy"]), _acc(r["sparse_accuracy"]), f"{100 * r['sparse_density']:.1f}%") \
            if "sparse_accuracy" in r else ("", "", "")
        lines.append(f"| {r['net']} | {r['regime']} | {r['arm']} | {r['n']} | {' | '.join(sparse)} "
                     f"| {_acc(r['final_accuracy'])} | {_acc(r['final_loss']) if r['final_loss'] else ''} "
                     f"| {100 * r['final_density']:.1f}% "
                     f"| {r['cpu_seconds']:.0f} |")
    lines += _per_seed_tables(data["per_seed"])
    lines += ["", "| start | final test accuracy | final test loss | CPU s |", "|---|---:|---:|---:|"]
    for key, s in data["starts"].items():
        loss = f"{s['final']['loss']:.4f}" if "loss" in s["final"] else ""
        lines.append(f"| {key} | {s['final']['accuracy']:.4f} | {loss} | {s['cpu_seconds']:.0f} |")
    lines += ["", "| plan | predicted drop, start | overall sparsity, start | predicted drop | measured drop "
              "| overall sparsity | layers |", "|---|---:|---:|---:|---:|---:|---|"]
    for key, p in data["plans"].items():
        layers = ", ".join(f"{k} {v:g}" for k, v in p["layers"].items())
        lines.append(f"| {key} | {p['start_predicted_drop']:.2f} | {p['start_overall']:.3f} | "
                     f"{p['predicted_drop']:.2f} | {p['measured_drop']:.2f} | {p['overall']:.3f} | {layers} |")
    lines += ["", f"CPU time of the finished runs: {data['cpu_seconds']:.0f} s", ""]
    return "\n".join(lines)


def _per_seed_tables(per_seed):
    """Per net and regime: each seed's sparse and final accuracies, and its paired differences."""
    def acc(value):
        return "" if value is None else f"{value:.4f}"

    def points(a, b):
        return "" if a is None or b is None else f"{100 * (a - b):+.2f}"

    lines = []
    for (net_name, regime), rows in itertools.groupby(per_seed, key=lambda r: (r["net"], r["regime"])):
        lines += ["", f"{net_name}, {regime} regime, per seed (sparse: the model at the end of the sparse phase; "
                      "final: after the last stage):", "",
                  "| seed | (a) sparse | (a) final | (b) final | (c) sparse | (c) final | (a) − (b), points "
                  "| (c) − (b), points |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in rows:
            a, b, c = (row["arms"].get(arm, {}) for arm in ("dsd", "dense", "random"))
            lines.append(f"| {row['seed']} | {acc(a.get('sparse'))} | {acc(a.get('final'))} | {acc(b.get('final'))} "
                         f"| {acc(c.get('sparse'))} | {acc(c.get('final'))} "
                         f"| {points(a.get('final'), b.get('final'))} | {points(c.get('final'), b.get('final'))} |")
    return lines


def curve_panels(records, seed):
    """Plain data for the curves figure: each start's test accuracy by epoch,
    and one seed's arms by iteration after the start."""
    panels = []
    for key, record in records.items():
        if record["kind"] != "start":
            continue
        per_epoch = record["iterations_per_epoch"]
        points = record["points"]
        panels.append({"title": f"{key}: dense to convergence", "xlabel": "epoch", "ylabel": "test accuracy",
                       "series": [{"label": "test accuracy", "x": [p["iterations"] / per_epoch for p in points],
                                   "y": [p["test"]["accuracy"] for p in points]}]})
        net_name, regime, _ = key.split("/")
        series = []
        for arm in ARMS[regime]:
            run = records.get(f"{net_name}/{regime}/seed{seed}/{arm}")
            if run:
                series.append({"label": arm, "x": [p["iterations"] for p in run["points"]],
                               "y": [p["test"]["accuracy"] for p in run["points"]]})
        if series:
            panels.append({"title": f"{net_name}/{regime}, seed {seed}: from the converged start",
                           "xlabel": "iterations after the start", "ylabel": "test accuracy", "series": series})
    return panels


def main(argv=None):
    args = parse_args(argv)
    caffe_log(args.verbose)
    started = time.time()
    experiment = Experiment(args)
    data = experiment.write_summary() if args.summary_only else experiment.main()
    print(markdown(data))
    print(f"wrote {args.out}/{', '.join(experiment.written)} ({time.time() - started:.0f} s this invocation; "
          "results.jsonl holds each finished run)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CaffeDsdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
