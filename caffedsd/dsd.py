"""A whole Dense-Sparse-Dense run from a recipe, resumable at any point.

RUN_DIR holds:
  run.json                the recipe's fingerprint: a RUN_DIR is only ever
                          continued by the recipe that made it
  recipe.yaml             the recipe, as run
  NN-KIND/                one folder per stage, e.g. 01-dense, 02-prune:
    model.caffemodel      stock-Caffe-loadable weights (+ model.masks.h5
                          for prune and sparse stages)
    curve.csv             iteration, loss, lr (training stages)
    stage.json            the stage's summary; written last, it marks the
                          stage finished
    checkpoint/           solver snapshots while the stage runs
  report.md, report.json, curves.png

Rerunning the same command after a kill skips finished stages and resumes a
training stage from its last checkpoint. Masks are computed once, in their
prune stage, and never again.
"""
import ctypes
import hashlib
import json
import shutil
import time
from pathlib import Path

from . import report
from .atomic import atomic_open
from .caffemodel import read_caffemodel
from .errors import InputError
from .layers import PRUNABLE_TYPES, prunable_targets
from .maskfile import load_masks, masks_path_for
from .pruning import prune_file
from .recipe import Recipe
from .training import Phase, read_solver, run_phase

RUN_FILE = "run.json"


def _write_json(path, data):
    with atomic_open(path, "w") as handle:
        handle.write(report.to_json(data) + "\n")


def _read_json(path):
    return json.loads(Path(path).read_text())


def run_fingerprint(recipe, spec):
    """The recipe, and the contents of the solver and net files it trains."""
    digest = hashlib.sha256(recipe.fingerprint().encode())
    for path in (spec.path, spec.net_path):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def seed_c_rand(seed, stage):
    """Seed the C library's rand(): Caffe's HDF5Data shuffles with it, and the
    solver's random_seed does not reach it. Per stage, so a stage's data
    order does not depend on what ran before it in this process."""
    ctypes.CDLL(None).srand(ctypes.c_uint((seed * 1000003 + stage) & 0xFFFFFFFF))


def prepare_run_dir(run_dir, recipe, fingerprint):
    """Create RUN_DIR for ``recipe``, or check it was made by the same one
    (same recipe, same solver and net files)."""
    run_dir = Path(run_dir)
    marker = run_dir / RUN_FILE
    if marker.exists():
        made_by = _read_json(marker).get("recipe_fingerprint")
        if made_by != fingerprint:
            raise InputError(f"{run_dir}: made by a different recipe, solver or net; give a new -o, "
                             "or remove it to start over")
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        raise InputError(f"{run_dir}: exists and is not a caffedsd run folder; give a new -o")
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(run_dir / "recipe.yaml", "w") as handle:
        handle.write(recipe.to_yaml())
    _write_json(marker, {"recipe_fingerprint": fingerprint})
    return run_dir


def weight_sparsity(weights_path):
    """Fraction of prunable weights (blob 0 of conv/deconv/fc) that are 0.0."""
    model = read_caffemodel(weights_path)
    total = zeros = 0
    for target in prunable_targets(model):
        data = model.layer(target.owner).blobs[0].data
        total += data.size
        zeros += data.size - int((data != 0).sum())
    return zeros / total if total else 0.0


class _Checkpoints:
    """Solver snapshots of one training stage, every ``every`` iterations;
    the newest complete one is recorded in checkpoint.json only after Caffe
    has written both files."""

    def __init__(self, folder, every=None):
        self.folder = Path(folder)
        self.every = every
        self.record = self.folder / "checkpoint.json"

    @property
    def prefix(self):
        return self.folder / "iter"

    def latest(self):
        return _read_json(self.record) if self.record.exists() else None

    @staticmethod
    def curve(record):
        return _read_csv(record["curve"])

    def save(self, solver, curve):
        self.folder.mkdir(parents=True, exist_ok=True)
        solver.snapshot()
        iteration = int(solver.iter)
        state = Path(f"{self.prefix}_iter_{iteration}.solverstate")
        _write_csv(self.folder / f"curve_{iteration}.csv", curve)
        previous = self.latest()
        _write_json(self.record, {"iter": iteration, "solverstate": str(state),
                                  "curve": str(self.folder / f"curve_{iteration}.csv")})
        if previous:  # keep only the newest pair
            for old in (previous["solverstate"], previous["solverstate"].replace(".solverstate", ".caffemodel"),
                        previous["curve"]):
                Path(old).unlink(missing_ok=True)

    def clear(self):
        shutil.rmtree(self.folder, ignore_errors=True)


def _write_csv(path, curve):
    with atomic_open(path, "w") as handle:
        handle.write(report.curve_csv(curve))


def _read_csv(path):
    return report.parse_curve_csv(Path(path).read_text())


def _run_training(stage, spec, recipe, stage_dir, weights_in, masks, gpu, progress):
    """A dense or sparse stage: train, evaluate, save; resumes a checkpoint."""
    checkpoints = _Checkpoints(stage_dir / "checkpoint", recipe.checkpoint_every)
    latest = checkpoints.latest()
    callback = progress(stage_dir.name, stage.iterations, latest["iter"] if latest else 0) if progress else None
    phase = Phase(stage.iterations, weights_in, stage_dir / "model.caffemodel", masks, lr_scale=stage.lr_scale,
                  test_iterations=recipe.test_iterations)
    try:
        result = run_phase(spec, phase, stage_dir, gpu=gpu, checkpoints=checkpoints, on_iteration=callback)
    finally:
        if callback is not None:
            callback.close()
    _write_csv(stage_dir / "curve.csv", result["curve"])
    return {"iterations": stage.iterations, "lr": result["base_lr"], "test": result["test"], "curve": "curve.csv"}


def _run_prune(stage, spec, recipe, stage_dir, weights_in, gpu):
    """Prune (masks computed here, once), then evaluate the pruned model."""
    rows, _ = prune_file(weights_in, stage_dir / "model.caffemodel", stage.plan, seed=recipe.seed, force=True)
    result = run_phase(spec, Phase(0, stage_dir / "model.caffemodel", test_iterations=recipe.test_iterations),
                       stage_dir, gpu=gpu, checkpoints=_Checkpoints(stage_dir / "checkpoint"))
    return {"iterations": 0, "lr": None, "test": result["test"],
            "layers": {r.layer: r.sparsity for r in rows}}


def run_recipe(recipe, run_dir, gpu=None, progress=None):
    """Run (or continue) ``recipe`` in ``run_dir``; returns the report data.

    ``progress(label, total, done)`` may return a callback for train()'s
    on_iteration, with a close() method."""
    if not isinstance(recipe, Recipe):
        raise TypeError("recipe must be a Recipe")
    spec = read_solver(recipe.solver)
    if any(stage.kind == "prune" for stage in recipe.stages) and \
            not any(layer.type in PRUNABLE_TYPES for layer in spec.net.layer):
        raise InputError(f"{spec.net_path}: no prunable layer (Convolution, Deconvolution or InnerProduct) to prune")
    if recipe.weights and not Path(recipe.weights).is_file():
        raise InputError(f"{recipe.where}: weights {recipe.weights} do not exist")
    run_dir = prepare_run_dir(run_dir, recipe, run_fingerprint(recipe, spec))
    weights, masks, summaries = (Path(recipe.weights) if recipe.weights else None), None, []
    for number, stage in enumerate(recipe.stages, 1):
        stage_dir = run_dir / f"{number:02d}-{stage.kind}"
        done = stage_dir / "stage.json"
        if done.exists():
            summary = _read_json(done)
        else:
            stage_dir.mkdir(exist_ok=True)
            started = time.time()
            seed_c_rand(recipe.seed, number)
            if stage.kind == "prune":
                summary = _run_prune(stage, spec, recipe, stage_dir, weights, gpu)
            else:
                summary = _run_training(stage, spec, recipe, stage_dir, weights,
                                        masks if stage.kind == "sparse" else None, gpu, progress)
            model = stage_dir / "model.caffemodel"
            summary.update({"stage": number, "kind": stage.kind, "folder": stage_dir.name,
                            "model": f"{stage_dir.name}/model.caffemodel",
                            "sparsity": weight_sparsity(model), "seconds": round(time.time() - started, 1)})
            _write_json(done, summary)
        # Only once stage.json marks the stage finished may its checkpoints go.
        _Checkpoints(stage_dir / "checkpoint").clear()
        weights = stage_dir / "model.caffemodel"
        if stage.kind == "prune":
            masks = load_masks(masks_path_for(weights))
        elif stage.kind == "dense":
            masks = None
        summaries.append(summary)
    data = {"recipe": recipe.to_dict(), "stages": summaries}
    report.write_dsd_report(run_dir, data)
    return data
