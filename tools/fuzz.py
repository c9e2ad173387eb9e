#!/usr/bin/env python3
"""Fuzz every reader of caffedsd with mutated inputs.

For each reader (caffemodel, masks .h5, .dcz, net prototxt, solver prototxt,
plan YAML, recipe YAML, sensitivity.json, solverstate, HDF5 weights; the solver
also with its nets inline) a valid seed file is
made (a small net with seeded weights, pruned, compressed, snapshotted), then
mutated at random (seeded): bits flipped, bytes replaced, ranges deleted,
duplicated or truncated, odd tokens inserted; HDF5 masks also get structural
damage (attributes of the wrong type, groups removed, datasets reshaped,
dangling links). Each mutated file goes through the command that reads it,
in this process. A run passes when it either succeeds or fails the way bad
input must: exit status 2 (or, for the few readers called as library
functions, a caffedsd error that the CLI turns into exit status 2), one line
of message, no traceback, and no output file left behind. Anything else is a
crash, and the input is kept under OUT/crashes/.

Commands that would go on to run Caffe on a parsed file (a mutated solver
can make Caffe abort the process) are fuzzed through their reader function:
solver (solver_spec.read_solver), recipe (recipe.load_recipe) and solverstate
(solverstate.clean_solverstate).

    .venv/bin/python tools/fuzz.py --runs 2000 --seed 1 -o work/fuzz
    .venv/bin/python tools/fuzz.py --readers masks,dcz --runs 500

tests/test_fuzz.py runs the same engine briefly (seeded, bounded) in the suite.
Exit status 1 when a crash was found, else 0.
"""
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchlib  # noqa: E402
from caffedsd.errors import CaffeDsdError  # noqa: E402

NET = """name: "fuzz"
layer { name: "data" type: "DummyData" top: "data" top: "target"
        dummy_data_param { shape { dim: 4 dim: 2 dim: 6 dim: 6 } shape { dim: 4 dim: 5 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc1" type: "InnerProduct" bottom: "conv1" top: "fc1"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fc1" bottom: "target" top: "loss" }
"""

# Tokens that tend to reach odd corners of parsers.
TOKENS = [b"-1", b"0", b"1e309", b"nan", b"-inf", b"4294967296", b"\"\"", b"{", b"}", b"[", b"]", b":", b"null",
          b"true", b"\xff\xfe", b"\x00", b"layer {", b"- ", b"!!python/object", b"&a *a", b"\n", b"%", b"\\"]


def mutate(data, rng):
    """1 to 4 random byte-level changes of ``data``."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(data)) if data else 0
        if not data or op == 0:
            data[pos:pos] = rng.choice(TOKENS)
        elif op == 1:
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 2:
            data[pos] = rng.randrange(256)
        elif op == 3:
            del data[pos:pos + rng.randint(1, 64)]
        elif op == 4:
            end = min(len(data), pos + rng.randint(1, 64))
            data[pos:pos] = data[pos:end]
        elif op == 5:
            del data[pos:]
        else:
            data[pos:pos + 1] = rng.choice(TOKENS)
    return bytes(data)


def mutate_h5(path, rng):
    """Structural damage to an HDF5 masks file, in place."""
    import h5py

    with h5py.File(path, "r+") as h5:
        group = h5.get("masks")
        names = list(group) if isinstance(group, h5py.Group) else []
        op = rng.randrange(9)
        attr = rng.choice(["format", "format_version", "fingerprint", "structure", "criterion", "amounts"])
        if op == 0 and attr in h5.attrs:
            del h5.attrs[attr]
        elif op == 1:
            h5.attrs[attr] = rng.choice([np.int64(3), np.float64(1.5), b"\xff\xfe", "[1, 2", "{}", "null",
                                         np.arange(3), "[[\"conv1\", \"Convolution\", [[-1]]]]"])
        elif op == 2 and names:
            del group[rng.choice(names)]
        elif op == 3 and "masks" in h5:
            del h5["masks"]
            if rng.random() < 0.5:
                h5["masks"] = np.zeros(3)
        elif op == 4 and names:
            name = rng.choice(names)
            attrs = dict(group[name].attrs)
            del group[name]
            group[name] = rng.choice([np.zeros((2, 2), bool), np.array(["x"], dtype="S1"), np.float64(1)])
            for key, value in attrs.items():
                group[name].attrs[key] = value
        elif op == 5 and names:
            ds = group[rng.choice(names)]
            key = rng.choice(["layer", "shared_by", "blob"])
            ds.attrs[key] = rng.choice([np.int64(1), b"\xff", "[\"nope\"]", "[1]", "fc1", "{"])
        elif op == 6 and isinstance(group, h5py.Group):
            group["dangling"] = h5py.SoftLink("/nowhere")
        elif op == 7 and isinstance(group, h5py.Group):
            group["extra"] = h5py.ExternalLink("missing.h5", "/x")
        elif op == 8 and names:
            group.move(names[0], "renamed")


# -- seeds ---------------------------------------------------------------------

def make_seeds(folder):
    """Valid inputs of every reader in ``folder``; returns a dict of paths."""
    from click.testing import CliRunner

    from caffedsd.caffe_env import import_caffe
    from caffedsd.cli import main

    from caffedsd.solver_spec import read_solver

    caffe = import_caffe()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = folder / "net.prototxt"
    net.write_text(NET)
    solver = folder / "solver.prototxt"
    solver.write_text(f'net: "{net}"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 10\n'
                      f'snapshot_prefix: "{folder / "snap"}"\nrandom_seed: 5\n')
    caffe.set_random_seed(5)
    sgd = caffe.get_solver(str(solver))
    sgd.step(2)
    weights = folder / "model.caffemodel"
    sgd.net.save(str(weights))
    sgd.snapshot()
    state = folder / "snap_iter_2.solverstate"
    sgd.net.save_hdf5(str(folder / "model.caffemodel.h5"))
    # The same solver with its nets inline: read_solver's other path (net_param, test_net_param).
    inline = folder / "solver_inline.prototxt"
    inline.write_text(f"net_param {{ {NET} }}\ntest_net_param {{ {NET} }}\ntest_iter: 1\ntest_interval: 5\n"
                      'base_lr: 0.01\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 10\n'
                      f'snapshot_prefix: "{folder / "snap"}"\n')
    read_solver(inline)
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output

    run("prune", "-w", weights, "-s", 0.5, "-o", folder / "pruned.caffemodel")
    run("compress", "-w", folder / "pruned.caffemodel", "-o", folder / "model.dcz")
    plan = folder / "plan.yaml"
    plan.write_text("criterion: keepmax\nsparsity: 0.3\nlayers:\n  conv1: 0.5\n  'fc*': 0.7\n")
    run("prune", "-w", weights, "--plan", plan, "-o", folder / "planned.caffemodel")
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"solver: {solver}\nweights: {weights}\ncheckpoint_every: 5\nstages:\n"
                      "  - prune: {sparsity: 0.5}\n  - sparse: {iterations: 5}\n"
                      "  - dense: {iterations: 5, lr_scale: 0.1}\n")
    from caffedsd.recipe import load_recipe

    load_recipe(recipe)
    from caffedsd.caffemodel import read_caffemodel
    from caffedsd.maskfile import structure_fingerprint

    model = read_caffemodel(weights)
    sens = folder / "sensitivity.json"
    layers = [{"layer": name, "shared_by": [name], "params": int(np.prod(shapes[0])),
               "points": [{"sparsity": s, "pruned": int(s * np.prod(shapes[0])),
                           "metrics": {"loss": 1.0 + s * (i + 1)}} for s in (0.3, 0.6, 0.9)]}
              for i, (name, _, shapes) in enumerate(model.structure())]
    sens.write_text(json.dumps({
        "format": "caffedsd-sensitivity", "format_version": 1, "model": str(net), "weights": str(weights),
        "weights_sha256": model.sha256(), "fingerprint": structure_fingerprint(model.structure()),
        "criterion": "keepmax", "seed": 0, "iterations": 1, "sparsities": [0.3, 0.6, 0.9], "metrics": ["loss"],
        "data": "cached", "prunable_params": sum(layer["params"] for layer in layers), "baseline": {"loss": 1.0},
        "layers": layers, "eval_seconds": 0.1}, indent=1))
    run("plan", "--sensitivity", sens, "--max-drop", 1.0, "-o", folder / "from_sens.yaml")
    return {"net": net, "solver": solver, "solver_inline": inline, "weights": weights,
            "pruned": folder / "pruned.caffemodel",
            "masks": folder / "pruned.masks.h5", "dcz": folder / "model.dcz", "plan": plan, "recipe": recipe,
            "sensitivity": sens, "solverstate": state, "hdf5_weights": folder / "model.caffemodel.h5",
            "pycaffe_net": sgd.net}


# -- readers ---------------------------------------------------------------------

class Crash(Exception):
    """A run that did not end as bad input must."""


def _cli(args):
    from click.testing import CliRunner

    from caffedsd.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exit_code == 0:
        return "ok"
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        detail = "".join(traceback.format_exception(result.exception))
        raise Crash(f"{type(result.exception).__name__}: {result.exception}\n{detail}")
    lines = [line for line in text.splitlines() if line.strip()]
    if result.exit_code != 2 or len(lines) != 1 or "Traceback" in text:
        raise Crash(f"exit status {result.exit_code}, {len(lines)} lines: {text[-2000:]}")
    return "rejected"


def _library(call):
    from caffedsd.plan import PlanError
    from caffedsd.recipe import RecipeError

    try:
        call()
    except (CaffeDsdError, RecipeError, PlanError) as exc:  # the CLI's exit-status-2 errors
        if "\n" in str(exc).strip():
            raise Crash(f"{type(exc).__name__} of several lines: {exc}") from None
        return "rejected"
    except Exception as exc:  # noqa: BLE001 - anything else is what this tool looks for
        raise Crash(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}") from None
    return "ok"


def _load_recipe(path):
    from caffedsd.recipe import load_recipe

    return lambda: load_recipe(path)


def _read_solver(path):
    from caffedsd.solver_spec import read_solver

    return lambda: read_solver(path)


def _clean_state(path, out, seeds):
    from caffedsd.maskfile import load_masks
    from caffedsd.solverstate import clean_solverstate

    masks = load_masks(seeds["masks"]).per_layer()
    return lambda: clean_solverstate(path, out, seeds["pycaffe_net"], masks)


# reader: (seed key, suffix, run(path, out, seeds) -> "ok" | "rejected")
READERS = {
    "caffemodel": ("weights", ".caffemodel", lambda p, o, s: _cli(["stats", "-w", p])),
    "masks": ("masks", ".masks.h5", lambda p, o, s: _cli(["stats", "-w", s["pruned"], "--masks", p])),
    "dcz": ("dcz", ".dcz", lambda p, o, s: _cli(["decompress", p, "-o", o])),
    "net": ("net", ".prototxt", lambda p, o, s: _cli(["prune", "-w", s["weights"], "-p", p, "-s", 0.5, "-o", o])),
    "solver": ("solver", ".prototxt", lambda p, o, s: _library(_read_solver(p))),
    "solver-inline": ("solver_inline", ".prototxt", lambda p, o, s: _library(_read_solver(p))),
    "plan": ("plan", ".yaml", lambda p, o, s: _cli(["prune", "-w", s["weights"], "--plan", p, "-o", o])),
    "recipe": ("recipe", ".yaml", lambda p, o, s: _library(_load_recipe(p))),
    "sensitivity": ("sensitivity", ".json",
                    lambda p, o, s: _cli(["plan", "--sensitivity", p, "--max-drop", 1.0, "-o", o])),
    "solverstate": ("solverstate", ".solverstate", lambda p, o, s: _library(_clean_state(p, o, s))),
    "hdf5-weights": ("hdf5_weights", ".caffemodel.h5",
                     lambda p, o, s: _cli(["convert", "-p", s["net"], "-w", p, "-o", o])),
}


def fuzz_reader(name, seeds, work, runs, seed, crash_dir=None):
    """Run ``runs`` mutations of one reader's seed; returns a result dict."""
    key, suffix, run = READERS[name]
    rng = random.Random(f"{seed}:{name}")
    original = Path(seeds[key]).read_bytes()
    counts = {"reader": name, "tried": 0, "ok": 0, "rejected": 0, "crashes": 0, "left_output": 0, "examples": []}
    work = Path(work) / name
    work.mkdir(parents=True, exist_ok=True)
    for i in range(runs):
        path = work / f"input{suffix}"
        out = work / ("out.yaml" if name == "sensitivity" else "out.caffemodel")
        for stale in (path, out):
            if stale.exists():
                stale.unlink()
        if name == "masks" and rng.random() < 0.5:
            path.write_bytes(original)
            mutate_h5(path, rng)
        else:
            path.write_bytes(mutate(original, rng))
        counts["tried"] += 1
        problem = None
        try:
            with redirect_stderr(io.StringIO()):
                outcome = run(path, out, seeds)
            counts[outcome] += 1
            if outcome == "rejected" and out.exists():
                counts["left_output"] += 1
                problem = "an output file was left behind after an error"
        except Crash as exc:
            counts["crashes"] += 1
            problem = str(exc)
        if problem is not None:
            if len(counts["examples"]) < 5:
                counts["examples"].append(problem.splitlines()[0][:300])
            if crash_dir is not None:
                target = Path(crash_dir) / name
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target / f"{i}{suffix}")
                (target / f"{i}.txt").write_text(problem)
    return counts


def main():
    parser = benchlib.script_parser(__doc__)
    parser.add_argument("--runs", type=int, default=1000, help="mutated inputs per reader")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--readers", default=",".join(READERS), help="comma-separated, of: " + ", ".join(READERS))
    parser.add_argument("--output", "-o", type=Path, default=Path("work/fuzz"))
    args = parser.parse_args()
    os.environ.setdefault("GLOG_minloglevel", "2")
    names = [n.strip() for n in args.readers.split(",") if n.strip()]
    unknown = [n for n in names if n not in READERS]
    if unknown:
        parser.error(f"unknown reader(s) {', '.join(unknown)}")
    if args.output.exists():
        shutil.rmtree(args.output)
    with tempfile.TemporaryDirectory() as tmp:
        seeds = make_seeds(Path(tmp) / "seeds")
        rows = []
        for name in names:
            start = time.perf_counter()
            counts = fuzz_reader(name, seeds, Path(tmp) / "work", args.runs, args.seed, args.output / "crashes")
            counts["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(counts)
            print(f"{name:13s} tried {counts['tried']:6d}  ok {counts['ok']:6d}  rejected {counts['rejected']:6d}  "
                  f"crashes {counts['crashes']:4d}  left output {counts['left_output']:3d}  {counts['seconds']:7.1f} s",
                  flush=True)
            for example in counts["examples"]:
                print(f"    {example}")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "summary.json").write_text(json.dumps({"seed": args.seed, "runs": args.runs, "readers": rows},
                                                         indent=1))
    return 1 if any(r["crashes"] or r["left_output"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
