"""A whole Dense-Sparse-Dense run from a recipe, resumable at any point.

RUN_DIR holds:
  run.json                the fingerprint of the recipe and of the solver,
                          net and weights files it names: a RUN_DIR is
                          continued by the recipe that made it (or, with
                          --force, keeps the stages another recipe shares
                          with it)
  recipe.yaml             the recipe, as run
  NN-KIND/                one folder per stage, e.g. 01-dense, 02-prune:
    model.caffemodel      stock-Caffe-loadable weights (+ model.masks.h5
                          for prune and sparse stages)
    curve.csv             iteration (Caffe's log's numbering), loss, lr
                          (training stages)
    tests.csv             iteration, TEST outputs: the solver's periodic
                          passes (test_interval) and the stage's end
    solver.prototxt       the solver as the stage ran it
    stage.json            the stage's summary; written last, it marks the
                          stage finished
    checkpoint/           solver snapshots while the stage runs
  report.md, report.json, curves.png

Rerunning the same command after a kill (from any working folder, with the
run folder where it was or moved) skips finished stages and resumes a
training stage from its last checkpoint, its data layers replayed up to it,
so that the stage reads the batches an uninterrupted run would. Masks are
computed once, in their prune stage, and never again.
"""
import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import time
import warnings
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

from . import report
from .atomic import check_room, raise_no_room, temporary_folder, write_text
from .caffe_env import check_gpu
from .caffemodel import file_sha256, read_caffemodel
from .errors import CaffeDsdError, CaffeDsdWarning, Diverged, InputError, OutputError, PlanError, RecipeError
from .layers import PRUNABLE_TYPES, check_shared_shapes
from .maskfile import beside_check, masks_for, masks_path_for
from .pruning import check_shared_amounts, prune_file
from .recipe import Recipe, load_recipe
from .runfolder import (COUNT, FRACTION, NAME, NUMBER, SHA256, RunFolder, optional, read_json, read_own_text, table,
                        write_json)
from .solverstate import learned_net, set_learned_net
from .stats import model_stats
from .values import next_multiple
from .netcheck import data_files
from .solver_spec import (built_nets, check_schedule, check_solver_weights, read_solver, scaled_lr, test_only_params,
                          solver_output_kinds, solver_weights)
from .testnets import check_test_options
from .training import Phase, check_solver_builds, run_phase, solver_device

RUN_FILE = "run.json"
_STAGE_FOLDER = re.compile(r"([0-9]{2,})-(dense|prune|sparse)")


@dataclass(frozen=True)
class StageSummary:
    """One finished stage, as its stage.json and report.json hold it."""

    stage: int
    kind: str
    folder: str
    model: str  # relative to the run folder
    iterations: int
    lr: float  # None for a prune stage
    test: dict  # TEST outputs after the stage
    sparsity: float  # of the prunable weights of its model
    seconds: float
    curve: str = None  # training stages: the curve's file in the stage folder
    tests: str = None  # training stages: the TEST passes' file in the stage folder
    layers: dict = None  # prune stages: {layer: sparsity}
    model_sha256: str = None  # of the model as the stage wrote it (stage.json of earlier runs: none)
    # Of the model it started from: the stage before's, or the recipe's
    # weights (none: from the solver's fillers, or an earlier run's stage.json).
    input_sha256: str = None
    # Of its curve and tests files: the report plots them (earlier runs' record none).
    curve_sha256: str = None
    tests_sha256: str = None

    def to_dict(self):
        return {key: value for key, value in asdict(self).items() if value is not None or key == "lr"}


_SUMMARY_FIELDS = tuple(f.name for f in fields(StageSummary))
_SUMMARY_REQUIRED = tuple(f.name for f in fields(StageSummary) if f.default is MISSING)
_SUMMARY_KINDS = {"stage": COUNT, "kind": NAME, "folder": NAME, "model": NAME, "iterations": COUNT,
                  "lr": optional(NUMBER), "test": table(optional(NUMBER)), "sparsity": FRACTION, "seconds": NUMBER,
                  "curve": optional(NAME), "tests": optional(NAME), "layers": optional(table(FRACTION)),
                  "model_sha256": optional(SHA256), "input_sha256": optional(SHA256),
                  "curve_sha256": optional(SHA256), "tests_sha256": optional(SHA256)}
_CHECKPOINT_KINDS = {"iter": COUNT, "solverstate": NAME, "curve": NAME, "tests": optional(NAME),
                     "sha256": table(SHA256, keys=("solverstate", "caffemodel", "curve", "tests")),
                     "seconds": NUMBER, "start_sha256": SHA256}


def run_fingerprint(recipe, spec, with_weights=True, rule_order=True):
    """The recipe, and the contents of the solver and net files it trains
    and tests and of the weights it starts from. ``with_weights`` False: the
    fingerprint caffedsd wrote before it counted the weights, with which a
    run folder it made can still be taken over; ``rule_order`` False: the
    one before it counted the order of plan rules (Recipe.fingerprint)."""
    digest = hashlib.sha256(recipe.fingerprint(rule_order).encode())
    for contents in _net_files(spec):
        digest.update(contents)
    if not recipe.weights and with_weights:  # then what the first stage starts from is the solver's own
        for path in solver_weights(spec):
            digest.update(b"solver weights " + file_sha256(path).encode())
    if recipe.weights and with_weights:  # retrained in place, they are another start
        digest.update(file_sha256(recipe.weights).encode())
        # A prune stage keeps their masks pruned: other masks prune otherwise.
        # (Weights without masks add nothing: runs made before this are still theirs.)
        if masks_path_for(recipe.weights).is_file():
            digest.update(b"masks " + file_sha256(masks_path_for(recipe.weights)).encode())
    return digest.hexdigest()


def _net_files(spec):
    """The contents of the solver and net files, which Caffe reads again for
    every stage (the weights, read by the first stage only, are
    run_fingerprint's alone)."""
    for path in (spec.path, spec.net_path, *spec.test_net_paths):
        try:
            yield Path(path).read_bytes()
        except OSError as exc:
            raise InputError(f"{path}: cannot be read ({exc.strerror}) while the run goes on") from None


def _net_files_digest(spec):
    digest = hashlib.sha256()
    for contents in _net_files(spec):
        digest.update(contents)
    return digest.hexdigest()


def seed_c_rand(seed, stage):
    """Seed the C library's rand(): Caffe's HDF5Data shuffles with it, and the
    solver's random_seed does not reach it. Per stage, so a stage's data
    order does not depend on what ran before it in this process."""
    ctypes.CDLL(None).srand(ctypes.c_uint((seed * 1000003 + stage) & 0xFFFFFFFF))


def prepare_run_dir(run_dir, recipe, spec, force=False, notify=None):
    """Create RUN_DIR for ``recipe``, or check it was made by the same one
    (same recipe, same solver, net and weights files). Returns its RunFolder, held
    until closed.

    A RUN_DIR made by another recipe is refused, or with ``force`` taken
    over: the leading stages both recipes share are kept, finished or under
    way, and the rest removed (``notify(line)`` says which)."""
    def takeover(folder, found):
        if _same_run(folder.path, found.get("recipe_fingerprint"), recipe, spec):
            return  # made by an earlier caffedsd, whose fingerprint differed
        shared = shared_stages(folder.path, found.get("recipe_fingerprint"), recipe, spec)
        if not force and _same_run(folder.path, found.get("recipe_fingerprint"), recipe, spec, with_weights=False):
            raise InputError(f"{folder.path}: made by an earlier caffedsd, which did not record the weights this "
                             f"recipe started from; give a new -o, or --force to keep its stages {_numbers(shared)} "
                             "if they were these")
        if not force:
            offer = (f"keep its stages {_numbers(shared)}, which this recipe shares, and run the rest anew"
                     if shared else "start it over (no stage of it is the same in this recipe)")
            raise InputError(f"{folder.path}: made by a different recipe, solver, net or weights; give a new -o, "
                             f"or --force to {offer}")
        _check_inputs_kept(recipe, spec, folder.path, shared)
        removed = _remove_stages_after(folder.path, shared)
        if notify is not None:
            kept = f"kept stages {_numbers(shared)}" if shared else "kept no stage"
            notify(f"{folder.path}: {kept} of the run an earlier recipe made"
                   + (f"; removed {', '.join(removed)}" if removed else ""))

    return RunFolder(run_dir, RUN_FILE, "run", "recipe, solver, net or weights").open(
        {"recipe_fingerprint": run_fingerprint(recipe, spec)}, files={"recipe.yaml": recipe.to_yaml()},
        takeover=takeover)


def _same_run(run_dir, made, recipe, spec, with_weights=True):
    """Whether ``run_dir`` is this recipe's run under the fingerprint of a
    caffedsd that did not count the order of plan rules: its recipe.yaml
    (which keeps them in order) is this recipe, with these files. With
    ``with_weights`` False: of one that did not count the weights either,
    which it may not have started from."""
    try:
        old = load_recipe(Path(run_dir) / "recipe.yaml")
    except CaffeDsdError:
        return False
    orders = (False,) if with_weights else (True, False)
    return old == recipe and any(made == run_fingerprint(recipe, spec, with_weights, order) for order in orders)


def shared_stages(run_dir, made, recipe, spec):
    """How many leading stages of the run in ``run_dir`` (its run.json's
    fingerprint: ``made``) ``recipe`` can keep: none unless the run's
    recipe.yaml is the recipe that made it, with the solver, net and weights
    files as they are now, and every setting but the stages is the same."""
    try:
        old = load_recipe(Path(run_dir) / "recipe.yaml")
    except CaffeDsdError:
        return 0
    old_data, new_data = old.to_dict(), recipe.to_dict()
    old_data.pop("stages"), new_data.pop("stages")
    if old_data != new_data:  # first: then its weights are this recipe's, which exist
        return 0
    # This caffedsd's fingerprint, or an earlier one's: each hashes the files, the first usually matches.
    legacies = ((True, True), (False, True), (True, False), (False, False))
    if not any(made == run_fingerprint(old, spec, *legacy) for legacy in legacies):
        return 0
    count = 0
    # The stages as values, whose plans' rules compare in order (as dicts they would not).
    for before, now in zip(old.stages, recipe.stages):
        if before != now:
            break
        count += 1
    return count


def _numbers(count):
    return "1" if count == 1 else f"1-{count}"


def _stages_after(run_dir, count):
    """The stage folders numbered above ``count``, in order."""
    matches = ((_STAGE_FOLDER.fullmatch(entry.name), entry) for entry in Path(run_dir).iterdir()
               if entry.is_dir() or entry.is_symlink())
    return [entry for _, entry in sorted((int(match.group(1)), entry) for match, entry in matches
                                         if match and int(match.group(1)) > count)]


def _check_inputs_kept(recipe, spec, run_dir, count):
    """Refuse a takeover that would remove a file the recipe reads: weights
    it continues from, kept in a stage folder of the run, are gone before
    the run could read them (and its failure then empties the folder); the
    recipe, its plan files, the solver's weights and the nets' data, before
    a rerun could."""
    inputs = [spec.path, spec.net_path, *spec.test_net_paths, *solver_weights(spec)]
    inputs += [path for net, net_path, states in built_nets(spec) for path in data_files(net, states, net_path)]
    if recipe.weights:
        inputs += [recipe.weights, masks_path_for(recipe.weights)]
    inputs += [stage.plan_file for stage in recipe.stages if getattr(stage, "plan_file", None)]
    if Path(recipe.where).is_file():  # loaded from that file (load_recipe)
        inputs.append(recipe.where)
    for stage in _stages_after(run_dir, count):
        if stage.is_symlink():  # only the link goes
            continue
        for path in inputs:
            if Path(path).exists() and Path(path).resolve().is_relative_to(stage.resolve()):
                raise InputError(f"{path}: {recipe.where} reads it, and --force would remove it with {stage}; "
                                 f"copy it out of {run_dir} first, or give a new -o")


def _remove_stages_after(run_dir, count):
    """Remove stage folders numbered above ``count`` (the last first) and
    the reports of the whole run; returns the names removed."""
    stages = _stages_after(run_dir, count)
    for path in [*reversed(stages), *(run_dir / name for name in report.DSD_REPORT_FILES)]:
        try:
            if path in stages and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:  # a folder at a report's name is none of caffedsd's: not emptied
                path.unlink(missing_ok=True)
        except OSError as exc:  # a stage folder made read-only: those after it are gone, it and those before not
            raise InputError(f"{path}: cannot remove it to run the recipe's later stages anew "
                             f"({exc.strerror})") from None
    return [stage.name for stage in stages]


def _nothing_done(run_dir):
    """No stage finished and no checkpoint written: nothing to keep."""
    return not any(run_dir.glob("*/stage.json")) and not any(run_dir.glob("*/checkpoint/checkpoint.json"))


def weight_sparsity(weights_path):
    """Fraction of prunable weights (blob 0 of conv/deconv/fc) that are 0.0,
    each shared blob counted once (a dense stage's model may tie weights of
    two shapes, which only pruning refuses)."""
    return model_stats(read_caffemodel(weights_path))["totals"]["weight_sparsity"] or 0.0


class _Checkpoints:
    """Solver snapshots of one training stage, every ``every`` iterations;
    the newest complete one is recorded in checkpoint.json only after Caffe
    has written both files. ``replay``: a resumed stage replays its data
    layers up to the checkpoint (replay.replay_data), so that it reads the
    batches an uninterrupted run would; else they restart from their first."""

    def __init__(self, folder, every=None, replay=True, start_sha256=None):
        self.folder = Path(folder)
        self.every = every
        self.replay = replay
        self.record = self.folder / "checkpoint.json"
        self.start_sha256 = start_sha256  # of the model the stage started from
        # The stage's seconds: this process's, and those of the run(s) that
        # made the checkpoint it goes on from (latest).
        self.started, self.earlier = time.monotonic(), 0.0  # a clock stepped back would count negative time
        self._latest = None  # latest()'s, once read: it hashes the snapshots, a GB for VGG16

    def seconds(self):
        return self.earlier + time.monotonic() - self.started

    def next_after(self, iteration):
        """The next iteration a checkpoint is due at, or None for none."""
        return next_multiple(iteration, self.every)

    @property
    def prefix(self):
        """The snapshot_prefix the stage's solver is opened with (Caffe
        appends _iter_N.solverstate): a folder inside the checkpoint's, from
        which save renames each pair once Caffe has written it whole, so a
        run killed while Caffe wrote leaves no cut file under a checkpoint's
        name."""
        return self.folder / ".writing" / "snapshot"

    def remove_cut_writes(self):
        """Remove what a run killed while Caffe wrote a checkpoint left."""
        shutil.rmtree(self.prefix.parent, ignore_errors=True)

    def _file(self, recorded):
        """A file the record names, in this folder. Records hold bare names;
        older ones held paths from the folder the run was started in, which
        a run continued from elsewhere, or moved, does not find."""
        return self.folder / Path(recorded).name

    def latest(self):
        """The newest checkpoint's record, its files as paths in this folder
        (None: no checkpoint), checked when first asked for."""
        if self._latest is None:
            self._latest = (self._read(),)
        return self._latest[0]

    def _read(self):
        if not self.record.exists():
            return None
        remedy = f"delete {self.folder} to restart the stage"
        record = read_json(self.record, keys=("iter", "solverstate", "curve"), remedy=remedy,
                           kinds=_CHECKPOINT_KINDS)
        if None not in (record.get("start_sha256"), self.start_sha256) and record["start_sha256"] != self.start_sha256:
            raise InputError(f"{self.record}: the stage went this far from another model than it starts from now "
                             f"(the stage before it was run again since); delete {self.folder} to restart the stage")
        record.update((key, str(self._file(record[key]))) for key in ("solverstate", "curve", "tests")
                      if record.get(key))
        state = Path(record["solverstate"])
        model = state.with_suffix(".caffemodel")  # Caffe's snapshot writes the pair
        for kind, path in (("solverstate", state), ("caffemodel", model)):
            if not path.is_file():  # Caffe would abort the process on it
                raise InputError(f"{self.record}: its {kind} {path} is missing; "
                                 f"delete {self.folder} to restart the stage")
        files = {"solverstate": state, "caffemodel": model, "curve": record["curve"], "tests": record.get("tests")}
        self._check_hashes(record, files, ("solverstate", "caffemodel"), remedy)
        curve = read_stage_csv(record["curve"], report.parse_curve_csv, remedy)
        if curve and curve[-1]["iter"] == record["iter"]:
            # Made before curves took Caffe's numbering (one less: the
            # iteration a step starts at, not the count after it).
            curve = [{**row, "iter": row["iter"] - 1} for row in curve]
        # Checkpoints from before periodic test passes were recorded have none.
        tests = read_stage_csv(record["tests"], report.parse_tests_csv, remedy) if record.get("tests") else []
        self._check_hashes(record, files, ("curve", "tests"), remedy)  # after the CSVs' own, more telling, checks
        # None in checkpoints of earlier versions; below 0 in those timed with
        # the wall clock when it was stepped back.
        self.earlier = max(0.0, float(record.get("seconds", 0.0)))
        return {**record, "curve_rows": curve, "test_rows": tests}

    def _check_hashes(self, record, files, kinds, remedy):
        """The ``kinds`` of ``files`` are those the record hashed (those of
        earlier versions hash none). Caffe continues from an empty
        caffemodel with the weights it started from, and the CSVs decide
        which batches are replayed."""
        for kind in kinds:
            recorded = record.get("sha256", {}).get(kind)
            if recorded is not None and (files[kind] is None or file_sha256(files[kind]) != recorded):
                raise InputError(f"{self.record}: its {kind} {files[kind]} is not the file it recorded (changed, "
                                 f"cut or replaced since); {remedy}")

    @contextlib.contextmanager
    def restorable(self, record):
        """The solverstate of checkpoint ``record`` to restore, for the
        block: one naming the caffemodel beside it, where it names another
        path (the run continued from elsewhere, or moved) a copy in a
        scratch folder beside it, removed at the block's end."""
        state = Path(record["solverstate"])
        model = state.with_suffix(".caffemodel")
        try:
            named = learned_net(state)
        except InputError as exc:
            raise InputError(f"{exc}; delete {self.folder} to restart the stage") from None
        if named is not None and os.path.isfile(named) and os.path.samefile(named, model):
            yield state
            return
        what = f"{state}: its copy to restore from, naming the caffemodel beside it"
        with contextlib.ExitStack() as scratch_folder:
            try:
                copy = scratch_folder.enter_context(temporary_folder(state)) / state.name
                check_room(copy, state.stat().st_size)
                set_learned_net(state, os.fsencode(os.path.abspath(model)), copy)
            except OutputError as exc:  # the scratch file is nothing the user asked for: name the state
                raise OutputError(what, exc.reason) from None
            except OSError as exc:
                raise_no_room(what, exc)
                raise
            yield copy

    @staticmethod
    def curve(record):
        return record["curve_rows"]

    @staticmethod
    def tests(record):
        return record["test_rows"]

    @staticmethod
    def check_room(where, nbytes):
        """Raise OutputError unless a checkpoint of ``nbytes`` (save's) fits
        at ``where``: the pair, and its state once more, rewritten beside it
        to name the model where it goes. New files at most at once: the
        pair, two CSVs and the record's temporary (.writing/ and the
        rewrite's temporary are gone by then)."""
        check_room(where, sum(nbytes) + nbytes[1], max(nbytes), files=5)

    def save(self, solver, curve, tests, nbytes=(0, 0)):
        """``nbytes``: at least what Caffe writes (snapshot_bytes), checked
        for room first, since Caffe aborts the process on a failed write."""
        try:  # never its parents: a stage folder removed while the run goes on is not made anew
            self.folder.mkdir(exist_ok=True)
        except FileNotFoundError:
            raise InputError(f"{self.folder.parent}: removed while the run went on; nothing more was written") \
                from None
        writing = self.prefix.parent
        self.remove_cut_writes()  # first: they hold room the check counts on
        where = self.folder / self.prefix.name
        self.check_room(where, nbytes)
        try:
            writing.mkdir()
        except OSError as exc:  # no inode left: a want of room too
            raise_no_room(where, exc)
            raise
        solver.snapshot()
        iteration = int(solver.iter)
        made = Path(f"{self.prefix}_iter_{iteration}.solverstate")
        if not made.is_file():
            raise RuntimeError(f"Caffe's snapshot did not write {made}")
        state = self.folder / made.name
        try:
            # The state names the caffemodel it goes with where it now is; the
            # model goes first, so no state names one not yet in place.
            set_learned_net(made, os.fsencode(os.path.abspath(state.with_suffix(".caffemodel"))))
            os.replace(made.with_suffix(".caffemodel"), state.with_suffix(".caffemodel"))
            os.replace(made, state)
        except OSError as exc:
            shutil.rmtree(writing, ignore_errors=True)
            raise_no_room(state, exc)
            raise
        writing.rmdir()
        _write_csv(self.folder / f"curve_{iteration}.csv", curve)
        write_text(self.folder / f"tests_{iteration}.csv", report.tests_csv(tests))
        previous = read_json(self.record) if self.record.exists() else None
        # Caffe does not sync its snapshots: on disk before a record names
        # them, and hashed, so that a file cut or replaced since is refused
        # rather than continued from (an empty caffemodel restores nothing).
        named = {"solverstate": state, "caffemodel": state.with_suffix(".caffemodel"),
                 "curve": self.folder / f"curve_{iteration}.csv", "tests": self.folder / f"tests_{iteration}.csv"}
        self._latest = None
        write_json(self.record, {"iter": iteration, "solverstate": state.name,
                                  "curve": f"curve_{iteration}.csv", "tests": f"tests_{iteration}.csv",
                                  "sha256": {kind: file_sha256(path, sync=True) for kind, path in named.items()},
                                  "seconds": round(self.seconds(), 3),
                                  **({"start_sha256": self.start_sha256} if self.start_sha256 else {})})
        if previous:  # keep only the newest set
            for old in (previous["solverstate"], previous["solverstate"].replace(".solverstate", ".caffemodel"),
                        previous["curve"], previous.get("tests")):
                if old:
                    self._file(old).unlink(missing_ok=True)

    def clear(self):
        self._latest = None
        shutil.rmtree(self.folder, ignore_errors=True)


def _write_csv(path, curve):
    write_text(path, report.curve_csv(curve))


def read_stage_csv(path, parse, remedy):
    """A curve or tests CSV a stage wrote, parsed by ``parse``; one that is
    gone or damaged (edited, cut) is named, with ``remedy``."""
    try:
        return parse(read_own_text(path))
    except FileNotFoundError:
        raise InputError(f"{path}: missing; {remedy}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror}); {remedy}") from None
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise InputError(f"{path}: damaged, not the CSV caffedsd wrote ({exc}); {remedy}") from None


def _check_run_dir(run_dir):
    """The run folder is still there: removed while the run went on, the
    rest of the run would have made a folder no rerun can go on from."""
    if not (run_dir / RUN_FILE).is_file():
        raise InputError(f"{run_dir}: removed while the run went on (no {RUN_FILE}); nothing more was written")


def _check_finished(stage_dir, stage, number, count, summary):
    """A finished stage's record is of this stage, its files are there, its
    model is the one it wrote, its masks are that model's, and its curve
    and TEST passes read: the report would name a stage, model or curve of
    another, the next stage would start from nothing, from another model,
    or from another model's masks, and the report's plot would fail on a
    CSV. ``stage``: the recipe's; ``summary``: its stage.json's (earlier
    runs' record no model sha256). Returns those masks (None for a dense
    stage)."""
    model = stage_dir / "model.caffemodel"
    done = stage_dir / "stage.json"
    later = " and the stages after it" if number < count else ""
    remedy = f"delete {stage_dir}{later} to run it again"
    kind = stage.kind
    written = {"stage": number, "kind": kind, "folder": stage_dir.name, "model": f"{stage_dir.name}/model.caffemodel",
               "iterations": stage.iterations if kind != "prune" else 0}
    for key, value in written.items():
        if getattr(summary, key) != value:
            raise InputError(f"{done}: damaged, its {key} is {getattr(summary, key)!r} where this stage's is "
                             f"{value!r}; {remedy}")
    for key, name in (("curve", "curve.csv"), ("tests", "tests.csv")):
        if getattr(summary, key) not in (None, name):  # read beside it, the report's plot would draw another's
            raise InputError(f"{done}: damaged, its {key} is {getattr(summary, key)!r}, not {name!r}; {remedy}")
    recorded_sha256 = summary.model_sha256
    # Whole, as written: a row per iteration, and the stage's end last.
    if summary.curve and len(read_stage_csv(stage_dir / summary.curve, report.parse_curve_csv, remedy)) \
            != summary.iterations:
        raise InputError(f"{stage_dir / summary.curve}: cut short, not the {summary.iterations} rows {done} "
                         f"records; {remedy}")
    if summary.tests:
        passes = read_stage_csv(stage_dir / summary.tests, report.parse_tests_csv, remedy)
        if summary.test and (not passes or passes[-1]["iter"] != summary.iterations):
            raise InputError(f"{stage_dir / summary.tests}: cut short, without the stage's end (iteration "
                             f"{summary.iterations}) {done} records; {remedy}")
    for name, recorded in ((summary.curve, summary.curve_sha256), (summary.tests, summary.tests_sha256)):
        if recorded is not None and (name is None or file_sha256(stage_dir / name) != recorded):
            raise InputError(f"{stage_dir / str(name)}: not the file stage {number} finished with (its sha256 "
                             f"differs from the one {done} records); {remedy}")
    masked = kind in ("prune", "sparse")
    for path in (model, masks_path_for(model)) if masked else (model,):
        if not path.is_file():
            raise InputError(f"{path}: missing, though {done} says stage {number} finished; {remedy}")
    # A masked stage's model is read whole to check its masks: hashed once, there.
    try:
        opened = read_caffemodel(model) if masked else None
    except InputError as exc:
        raise InputError(f"{exc}, though {done} says stage {number} finished; {remedy}") from None
    if recorded_sha256 is not None and (opened.sha256() if masked else file_sha256(model)) != recorded_sha256:
        raise InputError(f"{model}: not the model stage {number} finished with (its sha256 differs from the one "
                         f"{done} records); {remedy}")
    if not masked:
        return None
    maskset, (ok, detail) = beside_check(opened)
    if not ok:
        raise InputError(f"{detail}, though {done} says stage {number} finished; {remedy}")
    return maskset


def _run_training(stage, spec, recipe, stage_dir, weights_in, masks, gpu, progress, replay, start_sha256):
    """A dense or sparse stage: train, evaluate, save; resumes a checkpoint
    made from the model of ``start_sha256``."""
    checkpoints = _Checkpoints(stage_dir / "checkpoint", recipe.checkpoint_every, replay, start_sha256)
    latest = checkpoints.latest()
    callback = progress(stage_dir.name, stage.iterations, latest["iter"] if latest else 0) if progress else None
    phase = Phase(stage.iterations, weights_in, stage_dir / "model.caffemodel", masks, lr_scale=stage.lr_scale,
                  test_iterations=recipe.test_iterations, test_interval=recipe.test_interval)
    try:
        result = run_phase(spec, phase, stage_dir, gpu=gpu, checkpoints=checkpoints, on_iteration=callback)
    finally:
        if callback is not None:
            callback.close()
    _write_csv(stage_dir / "curve.csv", result.curve)
    end = [{"iter": stage.iterations, "test": result.test}] if result.test else []  # none: no test net
    write_text(stage_dir / "tests.csv", report.tests_csv(list(result.tests) + end))
    return dict(iterations=stage.iterations, lr=result.base_lr, test=result.test, curve="curve.csv",
                tests="tests.csv", earlier_seconds=checkpoints.earlier)


def _run_prune(stage, spec, recipe, stage_dir, weights_in, gpu):
    """Prune (masks computed here, once), then evaluate the pruned model."""
    rows, _ = prune_file(weights_in, stage_dir / "model.caffemodel", stage.plan,
                         seed=recipe.seed, force=True, masks_option=None)
    result = run_phase(spec, Phase(0, stage_dir / "model.caffemodel", test_iterations=recipe.test_iterations),
                       stage_dir, gpu=gpu, checkpoints=_Checkpoints(stage_dir / "checkpoint"))
    return dict(iterations=0, lr=None, test=result.test, layers={r.layer: r.sparsity for r in rows})


def check_stages(recipe, spec):
    """What each stage will find, before anything trains: found by the
    stage itself, the fault costs the stages before it, and leaves the run
    folder to this recipe. A training stage's length against the solver's
    schedule (each stage starts its solver at iteration 0); the TEST passes
    asked for against the test nets; every prune stage's plan against the
    layers it will prune: the prunable layers the solver's nets build, which
    each stage's model holds (those of phase TEST only too, written beside
    the trained ones). Returns what the user should know once a prune
    stage has pruned, though the run goes on: {stage number: line}."""
    try:
        check_test_options(spec, recipe.test_iterations, recipe.test_interval, ("test_iterations", "test_interval"))
    except InputError as exc:
        raise RecipeError(f"{recipe.where}: {exc}") from None
    for number, stage in enumerate(recipe.stages, 1):
        if stage.kind != "prune":
            try:
                check_schedule(spec.param, spec.path, 0, stage.iterations)
                scaled_lr(spec, stage.lr_scale, "lr_scale")
            except InputError as exc:
                raise RecipeError(f"{recipe.where}: stage {number} ({stage.kind}): {exc}") from None
    prunes = [(number, stage) for number, stage in enumerate(recipe.stages, 1) if stage.kind == "prune"]
    notes = {}
    if not prunes:
        return notes
    prunable = _prunable_layers(spec)
    frozen = _frozen_weights(spec.train_layers(), prunable)
    names = list(prunable)
    if not names:
        raise InputError(f"{spec.net_path}: no prunable layer (Convolution, Deconvolution or InnerProduct) to prune")
    groups = _tied_groups(prunable)
    for number, stage in prunes:
        where = f"{recipe.where}: stage {number} (prune)"
        try:
            amounts = stage.plan.amounts(names, spec.net_path)
        except PlanError as exc:
            # An inline plan's rule names the recipe and stage it is in; a plan file's, only the file.
            raise RecipeError(str(exc) if stage.plan_file is None else f"{where}: {exc}") from None
        try:
            check_shared_amounts(groups, amounts)
        except InputError as exc:
            raise RecipeError(f"{where}, net {spec.net_path}: {exc}") from None
        pruned_frozen = [name for name in frozen if amounts.get(name)]
        if pruned_frozen and any(later.kind == "dense" for later in recipe.stages[number:]):
            notes[number] = (f"{where} pruned {', '.join(pruned_frozen)}, which the train net does not train "
                             "(lr_mult: 0, or a layer of phase TEST only): their pruned weights stay 0.0 through "
                             f"the dense stage after it; a rule '{pruned_frozen[0]}: 0' leaves one unpruned")
    return notes


def _frozen_weights(layers, prunable=None):
    """The names of the train net's ``layers`` (LayerParameters) whose
    weights (param 0) Caffe does not train: lr_mult 0, their own or, for a
    blob shared by a param name, any sharer's (Net::AppendParam gives an
    owner without one its sharer's, and aborts on two that differ); then
    those of ``prunable`` ({name: LayerParameter}, _prunable_layers) of
    phase TEST only that share no blob with the train net."""
    set_by_name, trained_names = {}, set()
    for layer in layers:
        for spec in layer.param:
            trained_names.add(spec.name)
            if spec.name and spec.HasField("lr_mult"):
                set_by_name.setdefault(spec.name, spec.lr_mult)
    built = {layer.name for layer in layers}
    untrained = [name for name, layer in (prunable or {}).items() if name not in built
                 and not (layer.param and layer.param[0].name and layer.param[0].name in trained_names)]
    frozen = []
    for layer in layers:
        spec = layer.param[0] if layer.param else None
        if spec is None:
            continue
        rate = set_by_name.get(spec.name) if spec.name else None
        if rate is None and spec.HasField("lr_mult"):
            rate = spec.lr_mult
        if rate == 0:
            frozen.append(layer.name)
    return frozen + untrained


def check_tied_shapes(recipe, spec, shapes):
    """Layers a prune stage would prune as one, tied by a param name, whose
    weights Caffe built in two shapes (share_mode PERMISSIVE), before a
    stage trains: ``shapes`` as check_solver_builds returns them."""
    number = next((number for number, stage in enumerate(recipe.stages, 1) if stage.kind == "prune"), None)
    if number is None:
        return
    for param_name, members in _tied_groups(_prunable_layers(spec)):
        built = {name: shapes[name] for name in members if name in shapes}
        if built:
            check_shared_shapes(f"{recipe.where}: stage {number} (prune), net {spec.net_path}", param_name, built)


def _prunable_layers(spec):
    """{name: LayerParameter} of the prunable layers each stage's model
    holds: the train net's, then those of phase TEST only, with the param
    names they are written with."""
    prunable = {}
    for layer in [*spec.train_layers(), *(written for _, written in test_only_params(spec).values())]:
        if layer.type in PRUNABLE_TYPES:
            prunable.setdefault(layer.name, layer)
    return prunable


def _tied_groups(prunable):
    """(param name, layer names) of the layers that share blob 0 by a param
    name: they take one amount and one mask (prune_model's rule)."""
    tied = {}
    for layer in prunable.values():
        if layer.param and layer.param[0].name:
            tied.setdefault(layer.param[0].name, []).append(layer.name)
    return [(name, tuple(members)) for name, members in tied.items()]


def run_recipe(recipe, run_dir, gpu=None, progress=None, replay=True, force=False, notify=None,
               allow_python_layers=False):
    """Run (or continue) ``recipe`` in ``run_dir``; returns the report data.

    ``progress(label, total, done)`` may return a callback for train()'s
    on_iteration, with a close() method. ``replay`` False: a continued stage's
    data layers restart from their first batch instead of replaying
    (faster, as `caffe train --snapshot` does, but the rest of the stage
    then reads other batches than an uninterrupted run). ``force``: take
    over a run folder another recipe made (prepare_run_dir).
    ``notify(line)`` gets what the user should hear of: a run folder taken
    over, and each stage as it finishes.
    ``allow_python_layers``: accept the solver's nets with Python layers."""
    if not isinstance(recipe, Recipe):
        raise TypeError("recipe must be a Recipe")
    spec = read_solver(recipe.solver, allow_python_layers)
    gpu = solver_device(spec, gpu)
    if gpu is not None:  # before the run folder is made
        check_gpu(gpu)
    notes = check_stages(recipe, spec)
    if recipe.weights and not Path(recipe.weights).is_file():
        what = "are not a regular file (a folder, device or pipe)" if Path(recipe.weights).exists() else \
            "do not exist"
        raise InputError(f"{recipe.where}: weights {recipe.weights} {what}")
    if recipe.weights:
        # As the first training stage would find it, but before a first
        # prune stage has pruned them all, naming its own output.
        model = read_caffemodel(recipe.weights)
        check_solver_weights(spec, model)
        _check_verified_weights(recipe, model)
    check_tied_shapes(recipe, spec, check_solver_builds(spec, gpu))
    with prepare_run_dir(run_dir, recipe, spec, force, notify) as folder:
        try:
            return _run_stages(recipe, spec, folder.path, gpu, progress, replay, notify, notes)
        except CaffeDsdError:  # bad input found once the folder existed
            if _nothing_done(folder.path):
                folder.abandon()
            raise


def _check_verified_weights(recipe, model):
    """A first prune stage that requires a verified plan prunes the weights
    (``model``) the plan was verified on (Recipe allows it on no other stage)."""
    stage = recipe.stages[0]
    if stage.kind == "prune" and stage.require_verified and model.sha256() != stage.plan.verified["weights_sha256"]:
        raise RecipeError(f"{recipe.where}: stage 1 (prune) has require_verified, but weights {recipe.weights} "
                          "are not those its plan was verified on (their sha256 differs)")


def _run_stages(recipe, spec, run_dir, gpu, progress, replay, notify, notes):
    weights, masks, summaries = (Path(recipe.weights) if recipe.weights else None), None, []
    start_sha256 = file_sha256(weights) if weights else None
    begun, trained = _net_files_digest(spec), False
    for number, stage in enumerate(recipe.stages, 1):
        _check_run_dir(run_dir)
        finished_masks = None
        stage_dir = run_dir / f"{number:02d}-{stage.kind}"
        done = stage_dir / "stage.json"
        earlier = done.exists()  # finished by a run before
        if earlier:
            summary = StageSummary(**read_json(done, keys=_SUMMARY_REQUIRED, known=_SUMMARY_FIELDS,
                                               kinds=_SUMMARY_KINDS))
            if summary.seconds < 0:  # timed on a wall clock stepped back (earlier versions)
                summary = replace(summary, seconds=0.0)
            finished_masks = _check_finished(stage_dir, stage, number, len(recipe.stages), summary)
            if None not in (summary.input_sha256, start_sha256) and summary.input_sha256 != start_sha256:
                # Its model is of a start that is gone: a report would mix two lineages.
                later = " and the stages after it" if number < len(recipe.stages) else ""
                source = f"the one stage {number - 1} finished with now" if number > 1 else f"{weights} now"
                raise InputError(f"{done}: stage {number} started from another model than {source} (run again "
                                 f"or rewritten since); delete {stage_dir}{later} to run them again")
        else:
            # Caffe reads the net files again for every stage: an edit while
            # the run goes on would train its later stages on another net
            # than run.json says, and a rerun with the files put back would
            # take the folder for finished as recorded.
            if stage.kind != "prune":
                if trained and _net_files_digest(spec) != begun:
                    raise InputError(f"{recipe.where}: the solver or net files changed while this run went on; "
                                     f"stage {number} would train another net than the stages before: put them "
                                     "back and run again, or give --force to start over from them")
                trained = True
            try:
                stage_dir.mkdir(exist_ok=True)
            except OSError as exc:
                raise_no_room(stage_dir, exc)
                raise InputError(f"{stage_dir}: cannot be made ({exc.strerror})") from None
            started = time.monotonic()
            seed_c_rand(recipe.seed, number)
            try:
                if stage.kind == "prune":
                    summary = _run_prune(stage, spec, recipe, stage_dir, weights, gpu)
                    if number in notes:  # once it pruned: not a warning before a bad input's one line
                        warnings.warn(CaffeDsdWarning(notes[number]))
                else:
                    summary = _run_training(stage, spec, recipe, stage_dir, weights,
                                            masks if stage.kind == "sparse" else None, gpu, progress, replay,
                                            start_sha256)
            except Diverged as exc:  # the stage's lr_scale may be what is at fault
                raise Diverged(f"{recipe.where}: stage {number} ({stage.kind}): {exc} (with this stage edited, "
                               "dsd --force keeps the stages before it)") from None
            # A resumed stage's: with those of the runs that made its checkpoint.
            seconds = time.monotonic() - started + summary.pop("earlier_seconds", 0.0)
            hashes = {f"{key}_sha256": file_sha256(stage_dir / summary[key], sync=True)
                      for key in ("curve", "tests") if key in summary}
            summary = StageSummary(stage=number, kind=stage.kind, folder=stage_dir.name,
                                   model=f"{stage_dir.name}/model.caffemodel",
                                   sparsity=weight_sparsity(stage_dir / "model.caffemodel"),
                                   model_sha256=file_sha256(stage_dir / "model.caffemodel", sync=True),
                                   input_sha256=start_sha256, seconds=round(seconds, 1), **hashes, **summary)
            write_json(done, summary.to_dict())
        # Only once stage.json marks the stage finished may its checkpoints go.
        _Checkpoints(stage_dir / "checkpoint").clear()
        weights, start_sha256 = stage_dir / "model.caffemodel", summary.model_sha256
        if stage.kind == "prune":  # read and checked already where the stage was finished before
            masks = finished_masks or masks_for(read_caffemodel(weights), required=True, option=None)
        elif stage.kind == "dense":
            masks = None
        summaries.append(summary)
        if notify is not None and not earlier:  # (a rerun's bad input stays one line; the table has them)
            notify(report.stage_line(summary.to_dict(), run_dir))
    data = {"recipe": recipe.to_dict(), "outputs": solver_output_kinds(spec),
            "stages": [s.to_dict() for s in summaries]}
    _check_run_dir(run_dir)
    report.write_dsd_report(run_dir, data)
    return data
