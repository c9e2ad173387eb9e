"""DSD recipes: the stages of a Dense-Sparse-Dense run, as a validated value.

A recipe file (YAML)::

    solver: solvers/lenet_solver.prototxt   # net, data, lr policy (paths from the current folder)
    weights: work/lenet_iter_500.caffemodel # optional: start from these weights
    seed: 0                                 # seeds the data shuffling, and the random criterion
                                            # of plans that name no seed of their own
    checkpoint_every: 500                   # iterations between resume checkpoints
    test_iterations: 100                    # optional: TEST batches per pass (default: the solver's test_iter)
    test_interval: 1000                     # optional: iterations between TEST passes within a
                                            # stage (default: the solver's test_interval; 0: none)
    stages:
      - dense:  {iterations: 1000}                       # initial dense training
      - prune:  {sparsity: 0.5, layers: {ip1: 0.9}}      # a plan inline (plan.py) ...
      - sparse: {iterations: 500}
      - dense:  {iterations: 500, lr_scale: 0.1}         # re-dense at 1/10 the lr
      - prune:  {plan: plan.yaml}                        # ... or a plan file
      - sparse: {iterations: 500, lr_scale: 0.1}
      - dense:  {iterations: 500, lr_scale: 0.01}        # second cycle: lr / 10 again

A first prune stage may take a plan `caffedsd plan --verify` measured on the
recipe's weights, and insist on it: {plan: plan.yaml, require_verified: true}.

Any number of prune/sparse/dense cycles may follow. A sparse stage trains
with the masks of the prune stage before it; a dense stage drops them. The
fused variant of the paper (prune before the first dense stage converges) is
a short first dense stage. ``lr_scale`` multiplies the solver's base_lr.
"""
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from .atomic import read_input
from .errors import PlanError, RecipeError
from .plan import PLAN_KEYS, SparsityPlan, load_plan
from .values import INT32_MAX, LEAST_NORMAL_FLOAT32, is_finite_number, is_whole
from .yamlio import check_keys, dump_yaml, parse_yaml

MAX_SEED = 2 ** 32 - 1
_RECIPE_KEYS = {"solver", "weights", "seed", "checkpoint_every", "stages", "test_iterations", "test_interval"}


def _whole_hint(value):
    # 1e3 in YAML is the float 1000.0: say what to write instead.
    if isinstance(value, float) and value.is_integer():
        return f" (write {int(value)}, without a point or an exponent)"
    return ""


def _iterations(value, where):
    if not is_whole(value) or value < 0:
        raise RecipeError(f"{where}: iterations {value!r} must be a whole number >= 0{_whole_hint(value)}")
    if value > INT32_MAX:
        raise RecipeError(f"{where}: iterations {value} must be at most {INT32_MAX}, the last iteration "
                          "Caffe's counter (a C int) holds")
    return int(value)


def _lr_scale(value, where):
    if not is_finite_number(value) or value <= 0:
        raise RecipeError(f"{where}: lr_scale {value!r} must be a number > 0")
    if value < LEAST_NORMAL_FLOAT32:
        raise RecipeError(f"{where}: lr_scale {value!r} must be at least {LEAST_NORMAL_FLOAT32:.4g}: Caffe keeps "
                          "the learning rate in a 32-bit float, where a base_lr up to 1 times less is 0 or subnormal")
    return float(value)


@dataclass(frozen=True)
class DenseStage:
    iterations: int
    lr_scale: float = 1.0
    where: str = field(default=None, compare=False)  # for messages; None: "dense stage"
    kind = "dense"

    def __post_init__(self):
        where = self.where or f"{self.kind} stage"
        object.__setattr__(self, "iterations", _iterations(self.iterations, where))
        object.__setattr__(self, "lr_scale", _lr_scale(self.lr_scale, where))

    @classmethod
    def from_dict(cls, data, where):
        check_keys(data, {"iterations", "lr_scale"}, where, RecipeError)
        if "iterations" not in data:
            raise RecipeError(f"{where}: needs iterations")
        return cls(data["iterations"], data.get("lr_scale", 1.0), where)

    def to_dict(self):
        return {"iterations": self.iterations, "lr_scale": self.lr_scale}


@dataclass(frozen=True)
class SparseStage(DenseStage):
    kind = "sparse"


@dataclass(frozen=True)
class PruneStage:
    plan: SparsityPlan
    # A plan whose whole-net drop `caffedsd plan --verify` measured.
    require_verified: bool = False
    where: str = field(default="prune stage", compare=False)
    plan_file: str = field(default=None, compare=False)  # where the plan was read from, if a file
    kind = "prune"

    def __post_init__(self):
        if not isinstance(self.plan, SparsityPlan):
            raise RecipeError(f"{self.where}: plan {self.plan!r} must be a SparsityPlan")
        if not isinstance(self.require_verified, bool):
            raise RecipeError(f"{self.where}: require_verified {self.require_verified!r} must be true or false")
        if self.require_verified and self.plan.verified is None:
            raise RecipeError(f"{self.where}: require_verified, but the plan was not verified "
                              "(make it with `caffedsd plan --verify`)")
        if self.require_verified and not {"plan_sha256", "weights_sha256"} <= set(self.plan.verified):
            raise RecipeError(f"{self.where}: require_verified, but the plan's verified: record does not name the "
                              "plan and the weights it measured (an earlier caffedsd's, or written by hand); "
                              "verify it again with `caffedsd plan --verify`")

    @classmethod
    def from_dict(cls, data, where):
        if not isinstance(data, dict):
            raise RecipeError(f"{where}: expected a mapping")
        # Of a stage with a plan file, or with the plan's own keys in place of it.
        check_keys(data, {"plan", "require_verified"} | (set() if "plan" in data else PLAN_KEYS), where,
                   RecipeError)
        data = dict(data)
        require = data.pop("require_verified", False)
        if "plan" in data:
            path = data["plan"]
            if not isinstance(path, str) or not path.strip():
                raise RecipeError(f"{where}: plan {path!r} must be the path of a plan file "
                                  "(or the plan's own keys in place of plan:)")
            try:
                plan = load_plan(path)
            except PlanError as exc:  # which recipe, which stage: the plan file alone says neither
                raise RecipeError(f"{where}: {exc}") from None
            return cls(plan, require, where, plan_file=path)
        return cls(SparsityPlan.from_dict(data, where=where), require, where)

    def to_dict(self):
        out = self.plan.to_dict()
        if self.require_verified:
            out["require_verified"] = True
        return out


STAGES = {"dense": DenseStage, "sparse": SparseStage, "prune": PruneStage}


@dataclass(frozen=True)
class Recipe:
    solver: str
    stages: tuple
    weights: str = None
    seed: int = 0
    checkpoint_every: int = 500
    test_iterations: int = None
    test_interval: int = None
    where: str = field(default="recipe", compare=False)

    def __post_init__(self):
        where = self.where
        if self.solver is None or self.solver == "":
            raise RecipeError(f"{where}: needs a solver")
        # YAML makes numbers and booleans of unquoted names: weights: 0 or
        # no was dropped as if left out, and training started from scratch.
        if not isinstance(self.solver, str) or not self.solver.strip():
            raise RecipeError(f"{where}: solver {self.solver!r} must be the path of a solver prototxt "
                              "(quote a name YAML reads as something else)")
        if self.weights is not None and (not isinstance(self.weights, str) or not self.weights.strip()):
            raise RecipeError(f"{where}: weights {self.weights!r} must be the path of a .caffemodel (quote a "
                              "name YAML reads as something else; leave weights out to train from scratch)")
        if isinstance(self.stages, (str, bytes)) or not isinstance(self.stages, Iterable):
            raise RecipeError(f"{where}: stages {self.stages!r} must be a list of stages")
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages:
            raise RecipeError(f"{where}: has no stages")
        if not is_whole(self.seed) or self.seed < 0:
            raise RecipeError(f"{where}: seed {self.seed!r} must be a whole number >= 0{_whole_hint(self.seed)}")
        if self.seed > MAX_SEED:
            # dsd seeds the C library's rand() with 32 bits of it: seed 2**32 would be seed 0 again.
            raise RecipeError(f"{where}: seed {self.seed} must be at most {MAX_SEED} (the 32 bits that seed "
                              "the C library's rand(), which Caffe's HDF5Data shuffles with)")
        if not is_whole(self.checkpoint_every) or self.checkpoint_every < 1:
            raise RecipeError(f"{where}: checkpoint_every {self.checkpoint_every!r} must be a whole number >= 1"
                              f"{_whole_hint(self.checkpoint_every)}")
        if self.test_iterations is not None and (not is_whole(self.test_iterations) or self.test_iterations < 1):
            # 0 would not mean "no TEST batches": run_phase takes it for the solver's test_iter.
            hint = _whole_hint(self.test_iterations) or " (leave it out for the solver's test_iter)"
            raise RecipeError(f"{where}: test_iterations {self.test_iterations!r} must be a whole number >= 1{hint}")
        if self.test_interval is not None:
            _iterations(self.test_interval, f"{where}: test_interval")
        for name in ("seed", "checkpoint_every", "test_iterations", "test_interval"):  # numpy's as Python's ints
            if getattr(self, name) is not None:
                object.__setattr__(self, name, int(getattr(self, name)))
        masked = False
        for number, stage in enumerate(self.stages, 1):
            if type(stage) not in STAGES.values():
                raise RecipeError(f"{where}: stage {number} {stage!r} must be one of "
                                  f"{', '.join(kind.__name__ for kind in STAGES.values())}")
            if stage.kind == "sparse" and not masked:
                raise RecipeError(f"{where}: stage {number} (sparse) has no prune stage before it")
            if stage.kind == "prune" and number == 1 and not self.weights:
                raise RecipeError(f"{where}: stage 1 prunes, but no weights are given")
            if stage.kind == "prune" and number > 1 and stage.require_verified:
                # What `plan --verify` measured is of the weights it was given, not of a model this run makes.
                raise RecipeError(f"{where}: stage {number} (prune) has require_verified, but prunes the model "
                                  f"stage {number - 1} makes, which no plan measured: make the verified prune "
                                  "stage 1, with the weights the plan was verified on")
            if stage.kind != "sparse":
                masked = stage.kind == "prune"

    @classmethod
    def from_dict(cls, data, where="recipe"):
        check_keys(data, _RECIPE_KEYS, where, RecipeError)
        stages = []
        raw_stages = data.get("stages")
        if not isinstance(raw_stages, list):
            raise RecipeError(f"{where}: 'stages' must be a list of stages ({', '.join(STAGES)})")
        for number, item in enumerate(raw_stages, 1):
            if not isinstance(item, dict) or len(item) != 1:
                raise RecipeError(f"{where}: stage {number} must be one of {', '.join(STAGES)} with its settings")
            (kind, settings), = item.items()
            if kind not in STAGES:
                raise RecipeError(f"{where}: stage {number}: unknown stage {kind!r} (known: {', '.join(STAGES)})")
            stages.append(STAGES[kind].from_dict(settings or {}, f"{where}: stage {number} ({kind})"))
        return cls(solver=data.get("solver"), stages=tuple(stages), weights=data.get("weights"),
                   seed=data.get("seed", 0), checkpoint_every=data.get("checkpoint_every", 500),
                   test_iterations=data.get("test_iterations"), test_interval=data.get("test_interval"),
                   where=where)

    def to_dict(self):
        out = {"solver": self.solver}
        if self.weights:
            out["weights"] = self.weights
        out["seed"] = self.seed
        out["checkpoint_every"] = self.checkpoint_every
        if self.test_iterations is not None:
            out["test_iterations"] = self.test_iterations
        if self.test_interval is not None:
            out["test_interval"] = self.test_interval
        out["stages"] = [{stage.kind: stage.to_dict()} for stage in self.stages]
        return out

    def to_yaml(self):
        return dump_yaml(self.to_dict())

    def fingerprint(self, rule_order=True):
        """sha256 of the canonical recipe (plan files included by value).
        ``rule_order`` False: the fingerprint of caffedsd before it counted
        the order of a plan's rules, which sort_keys lost."""
        data = self.to_dict()
        # A plan's rules in their order: the last rule that matches a layer wins.
        for stage in data["stages"] if rule_order else ():
            for settings in stage.values():
                if "layers" in settings:
                    settings["layers"] = [[pattern, value] for pattern, value in settings["layers"].items()]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def load_recipe(path):
    text = read_input(path, "recipe file", RecipeError)
    data = parse_yaml(text, str(path), RecipeError)
    return Recipe.from_dict(data, where=str(path))
